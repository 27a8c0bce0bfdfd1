package gitlab

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// parseTOML is a strict parser for the subset of TOML 1.0 that the runner
// section uses: comments, [tables], [[arrays of tables]], dotted header
// keys, bare keys, basic strings with all escapes, decimal integers,
// booleans and single-line arrays of those. Anything outside the subset,
// and anything TOML forbids within it (duplicate keys, redefined tables,
// unescaped control characters, trailing text), is an error, so a test
// that parses the output catches a broken one. It exists because the
// module takes no TOML library.
func parseTOML(doc string) (map[string]any, error) {
	root := map[string]any{}
	cur := root
	defined := map[string]bool{} // explicitly defined [tables], by header path
	for n, line := range strings.Split(doc, "\n") {
		n++
		fail := func(format string, a ...any) error {
			return fmt.Errorf("line %d: %s: %q", n, fmt.Sprintf(format, a...), line)
		}
		s := strings.TrimLeft(line, " \t")
		if s == "" || s[0] == '#' {
			if err := checkComment(s); err != nil {
				return nil, fail("%v", err)
			}
			continue
		}
		if s[0] == '[' {
			array := strings.HasPrefix(s, "[[")
			open, close := "[", "]"
			if array {
				open, close = "[[", "]]"
			}
			end := strings.Index(s, close)
			if end < 0 {
				return nil, fail("unterminated table header")
			}
			path, err := splitKey(strings.TrimSpace(s[len(open):end]))
			if err != nil {
				return nil, fail("%v", err)
			}
			if err := checkRest(s[end+len(close):]); err != nil {
				return nil, fail("%v", err)
			}
			t, err := descend(root, path[:len(path)-1])
			if err != nil {
				return nil, fail("%v", err)
			}
			last := path[len(path)-1]
			full := strings.Join(path, ".")
			if array {
				v, ok := t[last]
				if !ok {
					v = []map[string]any{}
				}
				arr, isArr := v.([]map[string]any)
				if !isArr {
					return nil, fail("%s is not an array of tables", full)
				}
				cur = map[string]any{}
				t[last] = append(arr, cur)
				// Tables under a new array element may be defined again.
				for k := range defined {
					if strings.HasPrefix(k, full+".") {
						delete(defined, k)
					}
				}
				continue
			}
			if defined[full] {
				return nil, fail("table %s defined twice", full)
			}
			defined[full] = true
			v, ok := t[last]
			if !ok {
				v = map[string]any{}
				t[last] = v
			}
			m, isMap := v.(map[string]any)
			if !isMap {
				return nil, fail("%s is already a value", full)
			}
			cur = m
			continue
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, fail("want key = value")
		}
		key := strings.TrimSpace(s[:eq])
		if !bareKey(key) {
			return nil, fail("invalid bare key %q", key)
		}
		if _, dup := cur[key]; dup {
			return nil, fail("duplicate key %q", key)
		}
		v, rest, err := parseValue(strings.TrimLeft(s[eq+1:], " \t"))
		if err != nil {
			return nil, fail("%v", err)
		}
		if err := checkRest(rest); err != nil {
			return nil, fail("%v", err)
		}
		cur[key] = v
	}
	return root, nil
}

func checkComment(s string) error {
	for _, r := range s {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return fmt.Errorf("control character %U in comment", r)
		}
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("invalid UTF-8")
	}
	return nil
}

// checkRest accepts only blanks and a comment after a value or header.
func checkRest(rest string) error {
	rest = strings.TrimLeft(rest, " \t")
	if rest == "" {
		return nil
	}
	if rest[0] != '#' {
		return fmt.Errorf("unexpected text after value: %q", rest)
	}
	return checkComment(rest)
}

func bareKey(k string) bool {
	if k == "" {
		return false
	}
	for _, c := range []byte(k) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func splitKey(k string) ([]string, error) {
	parts := strings.Split(k, ".")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
		if !bareKey(parts[i]) {
			return nil, fmt.Errorf("invalid header key %q", k)
		}
	}
	return parts, nil
}

// descend walks a header path; an array of tables stands for its last
// element, as TOML specifies.
func descend(t map[string]any, path []string) (map[string]any, error) {
	for _, p := range path {
		switch v := t[p].(type) {
		case nil:
			m := map[string]any{}
			t[p] = m
			t = m
		case map[string]any:
			t = v
		case []map[string]any:
			t = v[len(v)-1]
		default:
			return nil, fmt.Errorf("%s is a value, not a table", p)
		}
	}
	return t, nil
}

// parseValue parses one value at the start of s and returns the rest.
func parseValue(s string) (any, string, error) {
	switch {
	case s == "":
		return nil, "", fmt.Errorf("missing value")
	case s[0] == '"':
		return parseString(s)
	case s[0] == '[':
		var arr []any
		s = strings.TrimLeft(s[1:], " \t")
		for {
			if strings.HasPrefix(s, "]") {
				return arr, s[1:], nil
			}
			v, rest, err := parseValue(s)
			if err != nil {
				return nil, "", err
			}
			arr = append(arr, v)
			rest = strings.TrimLeft(rest, " \t")
			switch {
			case strings.HasPrefix(rest, ","):
				s = strings.TrimLeft(rest[1:], " \t")
			case strings.HasPrefix(rest, "]"):
				s = rest
			default:
				return nil, "", fmt.Errorf("want , or ] in array, got %q", rest)
			}
		}
	case strings.HasPrefix(s, "true"):
		return true, s[4:], nil
	case strings.HasPrefix(s, "false"):
		return false, s[5:], nil
	}
	end := strings.IndexAny(s, " \t,]#")
	if end < 0 {
		end = len(s)
	}
	num := s[:end]
	digits := strings.TrimLeft(num, "+-")
	if len(num)-len(digits) > 1 || digits == "" || len(digits) > 1 && digits[0] == '0' {
		return nil, "", fmt.Errorf("invalid value %q", num)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return nil, "", fmt.Errorf("invalid value %q", num)
	}
	return n, s[end:], nil
}

func parseString(s string) (string, string, error) {
	var b strings.Builder
	for i := 1; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return "", "", fmt.Errorf("invalid UTF-8 in string")
		case r == '"':
			return b.String(), s[i+1:], nil
		case r < 0x20 && r != '\t' || r == 0x7f:
			return "", "", fmt.Errorf("unescaped control character %U in string", r)
		case r != '\\':
			b.WriteRune(r)
			i += size
			continue
		}
		i++
		if i >= len(s) {
			break
		}
		esc := s[i]
		i++
		switch esc {
		case 'b':
			b.WriteByte('\b')
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'f':
			b.WriteByte('\f')
		case 'r':
			b.WriteByte('\r')
		case '"':
			b.WriteByte('"')
		case '\\':
			b.WriteByte('\\')
		case 'u', 'U':
			n := 4
			if esc == 'U' {
				n = 8
			}
			if i+n > len(s) {
				return "", "", fmt.Errorf("short \\%c escape", esc)
			}
			v, err := strconv.ParseUint(s[i:i+n], 16, 32)
			if err != nil || !utf8.ValidRune(rune(v)) {
				return "", "", fmt.Errorf("invalid \\%c escape %q", esc, s[i:i+n])
			}
			b.WriteRune(rune(v))
			i += n
		default:
			return "", "", fmt.Errorf("invalid escape \\%c", esc)
		}
	}
	return "", "", fmt.Errorf("unterminated string")
}
