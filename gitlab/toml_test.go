package gitlab

import (
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func runnerOf(t testing.TB, doc string) (runner, custom map[string]any) {
	t.Helper()
	m, err := parseTOML(doc)
	if err != nil {
		t.Fatalf("output is not valid TOML: %v\n%s", err, doc)
	}
	rs, ok := m["runners"].([]map[string]any)
	if !ok || len(rs) != 1 {
		t.Fatalf("want exactly one [[runners]] table, got %#v", m["runners"])
	}
	if len(m) != 1 {
		t.Errorf("top level has keys besides runners: %v", m)
	}
	custom, ok = rs[0]["custom"].(map[string]any)
	if !ok {
		t.Fatalf("no [runners.custom] table in\n%s", doc)
	}
	return rs[0], custom
}

func strs(v any) []string {
	a, ok := v.([]any)
	if !ok {
		return nil
	}
	out := []string{}
	for _, x := range a {
		s, ok := x.(string)
		if !ok {
			return nil
		}
		out = append(out, s)
	}
	return out
}

func TestRunnerSectionTOML(t *testing.T) {
	for _, tc := range []struct {
		name string
		sec  RunnerSection
		args map[string][]string
	}{
		{
			name: "plain",
			sec:  RunnerSection{Name: "nspawn-runner on ci1", Executable: "/usr/local/bin/nspawn-runner"},
			args: map[string][]string{
				"config_args":  {"gitlab-config"},
				"prepare_args": {"prepare"},
				"run_args":     {"run"},
				"cleanup_args": {"cleanup"},
			},
		},
		{
			name: "default image and config",
			sec: RunnerSection{Name: "ci", Executable: "/opt/nr/nspawn-runner",
				GlobalArgs: []string{"--config", "/etc/nr.yaml"}, DefaultImage: "bookworm"},
			args: map[string][]string{
				"config_args":  {"--config", "/etc/nr.yaml", "gitlab-config"},
				"prepare_args": {"--config", "/etc/nr.yaml", "prepare", "--default-image", "bookworm"},
				"run_args":     {"--config", "/etc/nr.yaml", "run"},
				"cleanup_args": {"--config", "/etc/nr.yaml", "cleanup"},
			},
		},
		{
			name: "stage executable",
			sec: RunnerSection{Name: "ci", Executable: "/usr/bin/nspawn-runner", StageExecutable: "/usr/lib/nspawn-runner/nspawn-runner-stage",
				GlobalArgs: []string{"--config", "/etc/nr.yaml"}},
			args: map[string][]string{
				"prepare_args": {"--config", "/etc/nr.yaml", "prepare"},
				"run_args":     {"--config", "/etc/nr.yaml", "run"},
			},
		},
		{
			name: "hostile strings stay strings",
			sec: RunnerSection{Name: "a\"b\\c\nd\x7f é ✓", Executable: "/opt/my \"runner\"/nspawn-runner",
				GlobalArgs: []string{"--config", "/etc/x\ty#z].yaml"}},
			args: map[string][]string{
				"config_args":  {"--config", "/etc/x\ty#z].yaml", "gitlab-config"},
				"prepare_args": {"--config", "/etc/x\ty#z].yaml", "prepare"},
				"run_args":     {"--config", "/etc/x\ty#z].yaml", "run"},
				"cleanup_args": {"--config", "/etc/x\ty#z].yaml", "cleanup"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := tc.sec.TOML()
			if err != nil {
				t.Fatal(err)
			}
			r, c := runnerOf(t, doc)
			want := map[string]any{
				"name": tc.sec.Name, "executor": "custom", "shell": "bash",
				"builds_dir": MachineBuildsDir, "cache_dir": MachineCacheDir,
			}
			for k, v := range want {
				if r[k] != v {
					t.Errorf("runners.%s = %#v, want %#v", k, r[k], v)
				}
			}
			for _, k := range []string{"url", "token"} {
				if s, _ := r[k].(string); s == "" {
					t.Errorf("runners.%s placeholder missing", k)
				}
			}
			for _, k := range []string{"config_exec", "prepare_exec", "run_exec", "cleanup_exec"} {
				want := tc.sec.Executable
				if k == "run_exec" && tc.sec.StageExecutable != "" {
					want = tc.sec.StageExecutable
				}
				if c[k] != want {
					t.Errorf("runners.custom.%s = %#v, want %q", k, c[k], want)
				}
			}
			for k, v := range tc.args {
				if got := strs(c[k]); !reflect.DeepEqual(got, v) {
					t.Errorf("runners.custom.%s = %q, want %q", k, got, v)
				}
			}
			for k, v := range map[string]int64{
				"config_exec_timeout": ConfigExecTimeout, "prepare_exec_timeout": PrepareExecTimeout,
				"cleanup_exec_timeout": CleanupExecTimeout, "graceful_kill_timeout": GracefulKillTimeout,
				"force_kill_timeout": ForceKillTimeout,
			} {
				if c[k] != v {
					t.Errorf("runners.custom.%s = %#v, want %d", k, c[k], v)
				}
			}
		})
	}
}

func TestRunnerSectionRefuses(t *testing.T) {
	for _, s := range []RunnerSection{
		{Executable: "nspawn-runner"},
		{Executable: ""},
		{Executable: "/bin/x", Name: "\xff"},
		{Executable: "/bin/x", StageExecutable: "nspawn-runner-stage"},
	} {
		if doc, err := s.TOML(); err == nil {
			t.Errorf("%+v.TOML() = %q, want an error", s, doc)
		}
	}
}

// TestParseTOMLCatchesBreakage proves the parser the tests rely on rejects
// broken documents, including the real output with one character damaged.
func TestParseTOMLCatchesBreakage(t *testing.T) {
	good, err := RunnerSection{Name: "n", Executable: "/bin/nspawn-runner", DefaultImage: "bookworm"}.TOML()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseTOML(good); err != nil {
		t.Fatalf("good document refused: %v", err)
	}
	bad := []string{
		`a = "unterminated`,
		`a = "bad \q escape"`,
		"a = \"raw\x01control\"",
		`a = 1` + "\n" + `a = 2`,
		`a = `,
		`a = 01`,
		`a = 1 2`,
		`a = ["x", "y"`,
		`a = ["x" "y"]`,
		`a b = 1`,
		`= 1`,
		`[t]` + "\n" + `[t]`,
		`[t`,
		`[[r]`,
		`[t] x`,
		`a = 1` + "\n" + `[a]`,
		`a = yes`,
		`a = "x" # ok` + "\n" + `b = "y" z`,
		"a = \"\xff\"",
		`a = "\u00"`,
		`[[r]]` + "\n" + `[r.c]` + "\n" + `x = 1` + "\n" + `[r.c]`,
	}
	for _, doc := range bad {
		if m, err := parseTOML(doc); err == nil {
			t.Errorf("parseTOML(%q) = %v, want an error", doc, m)
		}
	}
	// Damage the real output: drop a closing quote, a bracket, an equals sign.
	for _, d := range []struct{ from, to string }{{`"custom"`, `"custom`}, {`]`, ``}, {` = `, `  `}, {`[[runners]]`, `[[runners]`}} {
		i := strings.LastIndex(good, d.from)
		broken := good[:i] + d.to + good[i+len(d.from):]
		if _, err := parseTOML(broken); err == nil {
			t.Errorf("parseTOML accepted the output with %q damaged:\n%s", d.from, broken)
		}
	}
	// A second [[runners]] element may define its own [runners.custom].
	if _, err := parseTOML(good + good); err != nil {
		t.Errorf("two runner sections refused: %v", err)
	}
}

func FuzzRunnerSectionTOML(f *testing.F) {
	f.Add("ci", "/usr/bin/nspawn-runner", "/etc/nspawn-runner.yaml", "bookworm")
	f.Add("a\"\\\n\x00", "/x y/\"z\"", "#]", "")
	f.Fuzz(func(t *testing.T, name, exe, cfg, image string) {
		s := RunnerSection{Name: name, Executable: "/" + exe, GlobalArgs: []string{"--config", cfg}, DefaultImage: image}
		doc, err := s.TOML()
		if err != nil {
			if utf8.ValidString(name) && utf8.ValidString(exe) && utf8.ValidString(cfg) && utf8.ValidString(image) {
				t.Fatalf("valid input refused: %v", err)
			}
			return
		}
		r, c := runnerOf(t, doc)
		if r["name"] != name || c["run_exec"] != s.Executable {
			t.Fatalf("round trip: name %q exe %q, want %q %q", r["name"], c["run_exec"], name, s.Executable)
		}
		want := []string{"--config", cfg, "prepare"}
		if image != "" {
			want = append(want, "--default-image", image)
		}
		if got := strs(c["prepare_args"]); !reflect.DeepEqual(got, want) {
			t.Fatalf("prepare_args = %q, want %q", got, want)
		}
	})
}

// FuzzParseTOML keeps the test parser itself honest: it must never panic,
// and what it accepts must survive a second parse of the same text.
func FuzzParseTOML(f *testing.F) {
	good, _ := RunnerSection{Name: "n", Executable: "/bin/x", DefaultImage: "b"}.TOML()
	f.Add(good)
	f.Add("[[a]]\n[a.b]\nx = [1, \"\\u00e9\", true]\n")
	f.Add("a = \"\\U0001F680\" # c\n")
	f.Fuzz(func(t *testing.T, doc string) {
		m1, err1 := parseTOML(doc)
		m2, err2 := parseTOML(doc)
		if (err1 == nil) != (err2 == nil) || !reflect.DeepEqual(m1, m2) {
			t.Fatalf("parseTOML is not deterministic on %q", doc)
		}
	})
}
