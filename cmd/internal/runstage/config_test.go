package runstage

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/config"
)

func TestDefaultsAgreeWithConfig(t *testing.T) {
	if DefaultConfig != config.DefaultPath || DefaultRunDir != config.DefaultRunDir {
		t.Errorf("runstage defaults %q %q, config's %q %q", DefaultConfig, DefaultRunDir, config.DefaultPath, config.DefaultRunDir)
	}
}

// readmeConfig is the configuration block of the README, every setting
// with its default and a comment.
func readmeConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(root: .*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatal("README.md: no yaml block starting with root:")
	}
	return string(m[1])
}

// TestReadConfigAgrees: ReadConfig either reads what config.Parse reads or
// says ErrComplex, never something else; the usual files (the shipped
// default, the README's, small hand-written ones) it reads itself.
func TestReadConfigAgrees(t *testing.T) {
	dist, err := os.ReadFile("../../../dist/nspawn-runner.yaml")
	if err != nil {
		t.Fatal(err)
	}
	readme := readmeConfig(t)
	for _, tc := range []struct {
		name, doc string
		simple    bool // ReadConfig must read it itself
	}{
		{"empty", "", true},
		{"shipped default", string(dist), true},
		{"README", readme, true},
		{"README, other run dir", strings.Replace(readme, "run_dir: /run/nspawn-runner ", "run_dir: /run/nr-x ", 1), true},
		{"README, job id from variables", strings.Replace(readme, "job_id_from_variables: false", "job_id_from_variables: true", 1), true},
		{"run dir", "run_dir: /srv/run\n", true},
		{"run dir, comment", "run_dir: /srv/run   # here\n", true},
		{"gitlab", "gitlab:\n  builds_dir: /b\n  job_id_from_variables: true\nmachine:\n  mode: fast\n", true},
		{"gitlab, comment and blank lines", "gitlab:   # x\n\n    # c\n    job_id_from_variables: true  # unsafe\n", true},
		{"lists", "allowed_images:\n- a\n- b\nmachine:\n  dns:\n    - 192.0.2.1\n  pool: {bookworm: 2}\nrun_dir: /x\n", true},
		{"quoted other values", "default_image: \"bookworm\"\nbootstrap:\n  mirror: ''\nrun_dir: /y\n", true},
		{"pool mapping", "machine:\n  pool:\n    bookworm: 2\n    job_id_from_variables: 3\ngitlab:\n  job_id_from_variables: false\n", true},
		// Beyond the reader: declined, never misread.
		{"quoted run dir", "run_dir: \"/srv/run\"\n", false},
		{"run dir null", "run_dir: ~\n", false},
		{"anchors", "gitlab: &g\n  job_id_from_variables: true\n", false},
		{"merge key", "x: &g\n  job_id_from_variables: true\ngitlab:\n  <<: *g\n", false},
		{"flow gitlab", "gitlab: {job_id_from_variables: true}\n", false},
		{"yes", "gitlab:\n  job_id_from_variables: yes\n", false},
		{"True", "gitlab:\n  job_id_from_variables: True\n", false},
		{"block scalar", "default_image: |\n  run_dir: /evil\n", false},
		{"multi-line flow", "machine:\n  pool: {bookworm: 2,\nrun_dir: /evil}\n", false},
		{"multi-line quoted", "default_image: \"a\nrun_dir: /evil\"\n", false},
		{"document marker", "---\nrun_dir: /x\n", false},
		{"tab", "gitlab:\n\tjob_id_from_variables: true\n", false},
		{"repeated", "run_dir: /a\nrun_dir: /b\n", false},
		{"quoted key", "\"run_dir\": /a\n", false},
		{"run dir with a space", "run_dir: /a b\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(path, []byte(tc.doc), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := ReadConfig(path, true)
			if errors.Is(err, ErrComplex) {
				if tc.simple {
					t.Fatalf("ReadConfig = %v, want it read", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.simple {
				t.Errorf("ReadConfig = %+v, want ErrComplex", got)
			}
			want, perr := config.Parse([]byte(tc.doc))
			if perr != nil {
				if tc.simple {
					t.Fatalf("config.Parse: %v (a test document must be a valid configuration)", perr)
				}
				return // invalid: prepare refuses it before any stage runs
			}
			if got.RunDir != want.RunDir || got.JobIDFromVariables != want.GitLab.JobIDFromVariables {
				t.Errorf("ReadConfig = %+v, config.Parse: run_dir %q, job_id_from_variables %v", got, want.RunDir, want.GitLab.JobIDFromVariables)
			}
		})
	}
}

func TestReadConfigMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.yaml")
	if s, err := ReadConfig(path, false); err != nil || s != (Settings{RunDir: DefaultRunDir}) {
		t.Errorf("ReadConfig(missing default) = %+v, %v; want the defaults", s, err)
	}
	if _, err := ReadConfig(path, true); err == nil || errors.Is(err, ErrComplex) {
		t.Errorf("ReadConfig(missing --config) = %v, want an error", err)
	}
}

// FuzzReadConfig: whatever the file, ReadConfig never reads a value that
// config.Parse reads otherwise.
func FuzzReadConfig(f *testing.F) {
	f.Add("run_dir: /x\ngitlab:\n  job_id_from_variables: true\n")
	f.Add("gitlab:\n  job_id_from_variables: false\nmachine:\n  pool: {a: 1}\n")
	f.Fuzz(func(t *testing.T, doc string) {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadConfig(path, true)
		if err != nil {
			return
		}
		want, perr := config.Parse([]byte(doc))
		if perr != nil {
			return
		}
		if got.RunDir != want.RunDir || got.JobIDFromVariables != want.GitLab.JobIDFromVariables {
			t.Errorf("ReadConfig(%q) = %+v, config.Parse: run_dir %q, job_id_from_variables %v", doc, got, want.RunDir, want.GitLab.JobIDFromVariables)
		}
	})
}
