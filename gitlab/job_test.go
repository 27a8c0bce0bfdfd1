package gitlab

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeResp(t *testing.T, dir, body string) string {
	t.Helper()
	p := filepath.Join(dir, "response.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestJobFromEnv(t *testing.T) {
	dir := t.TempDir()
	resp := writeResp(t, dir, `{"id": 4711, "token": "x", "job_info": {"project_id": 12, "name": "build"}}`)
	for _, tc := range []struct {
		name    string
		env     map[string]string
		src     JobSources
		wantID  string
		wantSrc string
		wantErr string
	}{
		{"response file", map[string]string{"JOB_RESPONSE_FILE": resp, "CUSTOM_ENV_CI_JOB_ID": "99"}, JobSources{}, "4711", "job-response-file", ""},
		{"response file wins over variables", map[string]string{"JOB_RESPONSE_FILE": resp, "CUSTOM_ENV_CI_JOB_ID": "99"}, JobSources{Variables: true}, "4711", "job-response-file", ""},
		{"flag wins", map[string]string{"JOB_RESPONSE_FILE": resp}, JobSources{Flag: "harness-1_a"}, "harness-1_a", "flag", ""},
		{"flag without payload", map[string]string{"CUSTOM_ENV_CI_JOB_ID": "99"}, JobSources{Flag: "h1"}, "h1", "flag", ""},
		// Job variables can override predefined ones: by default they
		// never name the job.
		{"variables refused by default", map[string]string{"CUSTOM_ENV_CI_JOB_ID": "99", "CUSTOM_ENV_CI_PROJECT_ID": "5"}, JobSources{}, "", "", "no job id: JOB_RESPONSE_FILE is not set and no --id"},
		{"variables when allowed", map[string]string{"CUSTOM_ENV_CI_JOB_ID": "99", "CUSTOM_ENV_CI_PROJECT_ID": "5"}, JobSources{Variables: true}, "99", "variables", ""},
		{"nothing", map[string]string{}, JobSources{}, "", "", "no job id"},
		{"nothing, variables allowed", map[string]string{}, JobSources{Variables: true}, "", "", "CUSTOM_ENV_CI_JOB_ID are all missing"},
		{"hostile variable id", map[string]string{"CUSTOM_ENV_CI_JOB_ID": "1;rm -rf /"}, JobSources{Variables: true}, "", "", "invalid CUSTOM_ENV_CI_JOB_ID"},
		{"hostile flag path", nil, JobSources{Flag: "../x"}, "", "", "invalid --id"},
		{"hostile flag long", nil, JobSources{Flag: strings.Repeat("a", 65)}, "", "", "invalid --id"},
		{"hostile flag space", nil, JobSources{Flag: "a b"}, "", "", "invalid --id"},
		{"missing file", map[string]string{"JOB_RESPONSE_FILE": filepath.Join(dir, "nope")}, JobSources{Variables: true}, "", "", "JOB_RESPONSE_FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := JobFromEnv(envOf(tc.env), tc.src)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("JobFromEnv() = %+v, %v, want error containing %q", j, err, tc.wantErr)
				}
				if strings.HasPrefix(err.Error(), "no job id") != errors.Is(err, ErrNoJobID) {
					t.Errorf("JobFromEnv() = %v: wraps ErrNoJobID %v", err, errors.Is(err, ErrNoJobID))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if j.ID != tc.wantID || j.Source != tc.wantSrc || len(j.Key) != 16 {
				t.Errorf("JobFromEnv() = %+v, want id %s source %s", j, tc.wantID, tc.wantSrc)
			}
		})
	}
}

func TestParseJobID(t *testing.T) {
	for _, tc := range []struct {
		body, id string
		ok       bool
	}{
		{`{"id": 1}`, "1", true},
		{`{"id": "123"}`, "123", true},
		{`{"id": 1, "job_info": {"project_id": "x/y"}}`, "1", true},
		{`{"id": -1}`, "", false},
		{`{"id": 1.5}`, "", false},
		{`{"id": "../../etc"}`, "", false},
		{`{"id": null}`, "", false},
		{`{}`, "", false},
		{`[1]`, "", false},
		{`{"id": 123456789012345678901}`, "", false},
	} {
		id, err := parseJobID(strings.NewReader(tc.body))
		if (err == nil) != tc.ok || id != tc.id {
			t.Errorf("parseJobID(%s) = %q, %v; want id %q ok %v", tc.body, id, err, tc.id, tc.ok)
		}
	}
}

func TestJobKey(t *testing.T) {
	d1, d2 := t.TempDir(), t.TempDir()
	r1 := writeResp(t, d1, `{"id": 7}`)
	r2 := writeResp(t, d2, `{"id": 7}`)
	key := func(env map[string]string) string {
		j, err := JobFromEnv(envOf(env), JobSources{})
		if err != nil {
			t.Fatal(err)
		}
		return j.Key
	}
	a := key(map[string]string{"JOB_RESPONSE_FILE": r1, "CUSTOM_ENV_CI_SERVER_URL": "https://a.example"})
	if b := key(map[string]string{"JOB_RESPONSE_FILE": r1, "CUSTOM_ENV_CI_SERVER_URL": "https://a.example"}); a != b {
		t.Errorf("two stages of one job: keys %s and %s differ", a, b)
	}
	if b := key(map[string]string{"JOB_RESPONSE_FILE": r2, "CUSTOM_ENV_CI_SERVER_URL": "https://a.example"}); a == b {
		t.Errorf("same id, other job dir: key %s collides", a)
	}
	if b := key(map[string]string{"JOB_RESPONSE_FILE": r1, "CUSTOM_ENV_CI_SERVER_URL": "https://b.example"}); a == b {
		t.Errorf("same id, other instance: key %s collides", a)
	}
}

func TestMapImage(t *testing.T) {
	for in, want := range map[string]string{
		"":                                     "",
		"bookworm":                             "bookworm",
		"registry.example/group/base:unstable": "unstable",
		"registry.example:5000/group/base":     "base",
		"debian:bookworm":                      "bookworm",
		"  trixie ":                            "trixie",
		"registry.example/group/../../etc:..":  "..",
		"registry.example/a/b:c/d":             "d",
	} {
		if got := MapImage(in); got != want {
			t.Errorf("MapImage(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParseJobID(f *testing.F) {
	f.Add([]byte(`{"id": 1, "job_info": {"project_id": 2}}`))
	f.Add([]byte(`{"id": "x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := parseJobID(strings.NewReader(string(data)))
		if err == nil && (!digits(id) || len(id) > 20) {
			t.Fatalf("accepted id %q", id)
		}
	})
}

func FuzzMapImage(f *testing.F) {
	f.Add("registry.example/group/base:unstable")
	f.Fuzz(func(t *testing.T, s string) {
		if strings.ContainsAny(MapImage(s), "/:") {
			t.Fatalf("MapImage(%q) = %q keeps a separator", s, MapImage(s))
		}
	})
}
