package gitlab

import (
	"encoding/json"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

// pythonTOML decodes doc with Python's tomllib (a full TOML 1.0 parser in
// Python 3.11's standard library), as an independent check of both the
// runner section and the test parser. It returns ok=false when doc is not
// valid TOML.
func pythonTOML(t *testing.T, doc string) (map[string]any, bool) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("needs python3 for tomllib")
	}
	if exec.Command(py, "-c", "import tomllib").Run() != nil {
		t.Skip("needs python3 >= 3.11 for tomllib")
	}
	cmd := exec.Command(py, "-c", `
import json, sys, tomllib
try:
    d = tomllib.loads(sys.stdin.read())
except tomllib.TOMLDecodeError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
json.dump(d, sys.stdout)
`)
	cmd.Stdin = strings.NewReader(doc)
	out, err := cmd.Output()
	if ee, isExit := err.(*exec.ExitError); isExit && ee.ExitCode() == 3 {
		return nil, false
	}
	if err != nil {
		t.Fatalf("python3 tomllib: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m, true
}

// normalize turns parseTOML's result into what JSON decoding of tomllib's
// result looks like (float64 numbers, []any arrays).
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := map[string]any{}
		for k, e := range x {
			m[k] = normalize(e)
		}
		return m
	case []map[string]any:
		a := []any{}
		for _, e := range x {
			a = append(a, normalize(e))
		}
		return a
	case []any:
		a := []any{}
		for _, e := range x {
			a = append(a, normalize(e))
		}
		return a
	case int64:
		return float64(x)
	}
	return v
}

func TestRunnerSectionMatchesTomllib(t *testing.T) {
	for _, s := range []RunnerSection{
		{Name: "nspawn-runner on ci1", Executable: "/usr/local/bin/nspawn-runner"},
		{Name: "ci", Executable: "/opt/nr/nspawn-runner", GlobalArgs: []string{"--config", "/etc/nr.yaml"}, DefaultImage: "bookworm"},
		{Name: "a\"b\\c\nd\x7f\x01 é ✓ 🚀", Executable: "/opt/my \"runner\"/x", GlobalArgs: []string{"--root", "/x\ty#z]'.yaml"}},
	} {
		doc, err := s.TOML()
		if err != nil {
			t.Fatal(err)
		}
		want, ok := pythonTOML(t, doc)
		if !ok {
			t.Fatalf("tomllib refuses the runner section:\n%s", doc)
		}
		got, err := parseTOML(doc)
		if err != nil {
			t.Fatal(err)
		}
		if g := normalize(got); !reflect.DeepEqual(g, any(want)) {
			t.Errorf("test parser and tomllib disagree:\n got %v\nwant %v", g, want)
		}
	}
}

// The documents the test parser refuses are invalid TOML for tomllib too,
// so the parser's strictness is TOML's, not an invention.
func TestParseTOMLRefusalsMatchTomllib(t *testing.T) {
	for _, doc := range []string{
		`a = "unterminated`, `a = "bad \q escape"`, "a = \"raw\x01control\"",
		"a = 1\na = 2", `a = `, `a = 01`, `a = 1 2`, `a = ["x", "y"`, `a = ["x" "y"]`,
		`a b = 1`, `= 1`, "[t]\n[t]", `[t`, `[[r]`, `[t] x`, "a = 1\n[a]", `a = yes`,
		"[[r]]\n[r.c]\nx = 1\n[r.c]",
	} {
		if _, ok := pythonTOML(t, doc); ok {
			t.Errorf("tomllib accepts %q, which the test parser refuses", doc)
		}
		if _, err := parseTOML(doc); err == nil {
			t.Errorf("parseTOML accepts %q", doc)
		}
	}
}
