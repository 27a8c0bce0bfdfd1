package doctor

import (
	"strconv"
	"strings"
)

// RunnerCustom is what doctor reads of one [[runners]] section of
// gitlab-runner's config.toml.
type RunnerCustom struct {
	Name, Executor                                string
	ConfigExec, PrepareExec, RunExec, CleanupExec string
	// PrepareTimeout and CleanupTimeout are seconds; 0 when not set
	// (gitlab-runner's default, an hour).
	PrepareTimeout, CleanupTimeout int
}

// ParseRunners reads the [[runners]] sections of a config.toml: the keys
// doctor checks, in "key = value" lines with string or integer values.
// It is not a TOML parser: other lines and tables are skipped, and a
// section it cannot read only leads to a warning.
func ParseRunners(doc string) []RunnerCustom {
	var out []RunnerCustom
	var cur *RunnerCustom
	table := ""
	for _, line := range strings.Split(doc, "\n") {
		s := strings.TrimSpace(line)
		if s == "" || s[0] == '#' {
			continue
		}
		if s[0] == '[' {
			table = strings.TrimSpace(strings.Trim(s, "[]"))
			if strings.HasPrefix(s, "[[") && table == "runners" {
				out = append(out, RunnerCustom{})
				cur = &out[len(out)-1]
			}
			continue
		}
		if cur == nil {
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), value(strings.TrimSpace(v))
		switch table + "." + k {
		case "runners.name":
			cur.Name = v
		case "runners.executor":
			cur.Executor = v
		case "runners.custom.config_exec":
			cur.ConfigExec = v
		case "runners.custom.prepare_exec":
			cur.PrepareExec = v
		case "runners.custom.run_exec":
			cur.RunExec = v
		case "runners.custom.cleanup_exec":
			cur.CleanupExec = v
		case "runners.custom.prepare_exec_timeout":
			cur.PrepareTimeout, _ = strconv.Atoi(v)
		case "runners.custom.cleanup_exec_timeout":
			cur.CleanupTimeout, _ = strconv.Atoi(v)
		}
	}
	return out
}

// value is a TOML string's content (basic or literal) or the bare value,
// without a trailing comment.
func value(v string) string {
	if len(v) > 0 && v[0] == '"' {
		// A basic string: up to the first quote not escaped.
		for i := 1; i < len(v); i++ {
			if v[i] == '\\' {
				i++
				continue
			}
			if v[i] == '"' {
				if s, err := strconv.Unquote(v[:i+1]); err == nil {
					return s
				}
				return v[1:i]
			}
		}
		return v
	}
	if len(v) > 0 && v[0] == '\'' {
		if end := strings.IndexByte(v[1:], v[0]); end >= 0 {
			return v[1 : end+1]
		}
		return v
	}
	v, _, _ = strings.Cut(v, "#")
	return strings.TrimSpace(v)
}
