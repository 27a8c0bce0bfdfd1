package runstage

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// Defaults of the configuration (package config's DefaultPath and
// DefaultRunDir; a test checks they agree).
const (
	DefaultConfig = "/etc/nspawn-runner.yaml"
	DefaultRunDir = "/run/nspawn-runner"
)

// Settings are what a run stage needs of the configuration file: where
// the machines' records are and where a job's identity may come from.
// Everything else a stage needs is in the machine's record.
type Settings struct {
	RunDir             string
	JobIDFromVariables bool
}

// ErrComplex is returned by ReadConfig for a configuration file it cannot
// read with certainty: cmd/nspawn-runner-stage then hands the stage to
// nspawn-runner run, which reads it with the YAML library.
var ErrComplex = errors.New("configuration beyond the run stage's reader")

// ReadConfig reads run_dir and gitlab.job_id_from_variables from the
// configuration file at path (a missing file is the defaults unless
// mustExist) without a YAML library. It reads the block-style mapping that
// the commented default file and the README show: "key: value" lines,
// comments, blank lines, and "- item" lines of lists. The two settings must
// be plain: an absolute path of ordinary characters, true or false. Any
// other line shape (flow collections over several lines, quotes around
// the two settings, anchors, aliases, tags, block scalars, tabs, multi-line
// plain scalars, documents, a repeated key) is ErrComplex, never a guess.
// The file is the admin's (the path comes from --config or the default),
// never the job's.
func ReadConfig(path string, mustExist bool) (Settings, error) {
	s := Settings{RunDir: DefaultRunDir}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !mustExist {
			return s, nil
		}
		return Settings{}, fmt.Errorf("read config: %w", err)
	}
	decline := func(line int, why string) (Settings, error) {
		return Settings{}, fmt.Errorf("config %s: line %d: %s: %w", path, line, why, ErrComplex)
	}
	var (
		top        string // the top-level key whose block this is
		childStart = -1   // indentation of the first key below top
		seen       = map[string]bool{}
	)
	for i, raw := range bytes.Split(data, []byte("\n")) {
		n := i + 1
		line := strings.TrimRight(string(raw), " \r")
		body := strings.TrimLeft(line, " ")
		indent := len(line) - len(body)
		if body == "" || body[0] == '#' {
			continue
		}
		if strings.ContainsAny(line, "\t") {
			return decline(n, "a tab")
		}
		if indent == 0 && (strings.HasPrefix(body, "---") || strings.HasPrefix(body, "...") || strings.HasPrefix(body, "%")) {
			return decline(n, "a document marker or directive")
		}
		if strings.HasPrefix(body, "- ") || body == "-" {
			if indent == 0 && top == "" {
				return decline(n, "a list at the top")
			}
			if _, why := lineValue(strings.TrimPrefix(body, "-")); why != "" {
				return decline(n, why)
			}
			continue
		}
		key, value, ok := strings.Cut(body, ":")
		if !ok || !isKey(key) || value != "" && value[0] != ' ' {
			return decline(n, "not a key: value line")
		}
		value, why := lineValue(value)
		if why != "" {
			return decline(n, why)
		}
		var dotted string
		switch {
		case indent == 0:
			top, childStart, dotted = key, -1, key
		case top == "":
			return decline(n, "indented key at the top")
		default:
			if childStart < 0 {
				childStart = indent
			}
			if indent != childStart {
				continue // deeper: a mapping's value (machine.pool)
			}
			dotted = top + "." + key
		}
		if seen[dotted] {
			return decline(n, "repeated key "+dotted)
		}
		seen[dotted] = true
		switch dotted {
		case "run_dir":
			if value == "" || value[0] != '/' || strings.ContainsAny(value, "'\"\\{}[]&*!|>%@`,?:# ") {
				return decline(n, "run_dir is not a plain absolute path")
			}
			s.RunDir = value
		case "gitlab.job_id_from_variables":
			switch value {
			case "true":
				s.JobIDFromVariables = true
			case "false":
				s.JobIDFromVariables = false
			default:
				return decline(n, "job_id_from_variables is neither true nor false")
			}
		case "gitlab":
			if value != "" {
				return decline(n, "gitlab is not a block mapping")
			}
		}
	}
	return s, nil
}

// isKey: a setting's name (lower case letters, digits, '_'), as every key
// of the schema is.
func isKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// lineValue is the value v of a "key: value" or "- value" line without
// its comment, or why it could be more than that line: the start of a
// block scalar, an anchor, alias or tag, a quoted string with escapes or
// not closed on the line, quotes inside a plain value, an unbalanced flow
// collection.
func lineValue(v string) (value, why string) {
	v = strings.TrimSpace(v)
	if v == "" || v[0] == '#' {
		return "", ""
	}
	switch v[0] {
	case '|', '>', '&', '*', '!', '?', '%', '@', '`':
		return "", "a block scalar, anchor, alias, tag or reserved character"
	case '"', '\'':
		end := strings.IndexByte(v[1:], v[0])
		if end < 0 || strings.ContainsRune(v[1:1+end], '\\') {
			return "", "a quoted string with escapes or beyond one line"
		}
		if rest := strings.TrimSpace(v[2+end:]); rest != "" && rest[0] != '#' {
			return "", "a quoted string beyond one line"
		}
		return v[:2+end], ""
	}
	if i := strings.Index(v, " #"); i >= 0 {
		v = strings.TrimSpace(v[:i])
	}
	if strings.ContainsAny(v, "\"'") {
		return "", "quotes inside a value"
	}
	if (v[0] == '{' || v[0] == '[') && (strings.Count(v, "{") != strings.Count(v, "}") || strings.Count(v, "[") != strings.Count(v, "]")) {
		return "", "a flow collection beyond one line"
	}
	return v, ""
}
