package gitlab

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

func TestParseProject(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload string
		want    Project
		fail    bool
	}{
		{
			name:    "runner payload",
			payload: `{"id": 77, "token": "x", "job_info": {"name": "test", "project_id": 5, "project_name": "p"}, "git_info": {"repo_url": "https://gitlab-ci-token:SECRET@gitlab.example.com/g/p.git"}}`,
			want:    Project{Instance: "https://gitlab.example.com", ID: 5},
		},
		{
			name:    "port and case",
			payload: `{"job_info": {"project_id": 12345678901}, "git_info": {"repo_url": "https://GitLab.Example.COM:8443/g/p.git"}}`,
			want:    Project{Instance: "https://gitlab.example.com:8443", ID: 12345678901},
		},
		{
			name:    "default port dropped",
			payload: `{"job_info": {"project_id": 5}, "git_info": {"repo_url": "https://gitlab.example.com:443/g/p.git"}}`,
			want:    Project{Instance: "https://gitlab.example.com", ID: 5},
		},
		{
			name:    "ipv6",
			payload: `{"job_info": {"project_id": 5}, "git_info": {"repo_url": "http://[fd00::1]:8080/g/p.git"}}`,
			want:    Project{Instance: "http://[fd00::1]:8080", ID: 5},
		},
		{
			name:    "job variables are ignored",
			payload: `{"job_info": {"project_id": 5}, "git_info": {"repo_url": "https://a.example/g/p.git"}, "variables": [{"key": "CI_SERVER_URL", "value": "https://b.example"}, {"key": "CI_PROJECT_ID", "value": "6"}]}`,
			want:    Project{Instance: "https://a.example", ID: 5},
		},
		// gitlab-runner exec: the local checkout as repo_url, a made-up
		// project id (1 in some versions, 0 in others, or none).
		{
			name:    "local job, project 0",
			payload: `{"id": 1, "job_info": {"project_id": 0}, "git_info": {"repo_url": "/home/dev/src/app"}}`,
			want:    Project{Local: "/home/dev/src/app"},
		},
		{
			name:    "local job, project 1, path cleaned",
			payload: `{"id": 1, "job_info": {"project_id": 1}, "git_info": {"repo_url": "/home/dev/src/app/"}}`,
			want:    Project{Local: "/home/dev/src/app"},
		},
		{
			name:    "local job, no project id",
			payload: `{"id": 1, "git_info": {"repo_url": "/srv/x/../app"}}`,
			want:    Project{Local: "/srv/app"},
		},
		{name: "project 0 on a server", payload: `{"job_info": {"project_id": 0}, "git_info": {"repo_url": "https://a.example/g/p.git"}}`, fail: true},
		{name: "relative local path", payload: `{"job_info": {"project_id": 0}, "git_info": {"repo_url": "src/app"}}`, fail: true},
		{name: "no project id", payload: `{"git_info": {"repo_url": "https://a.example/g/p.git"}}`, fail: true},
		{name: "string project id", payload: `{"job_info": {"project_id": "5x"}, "git_info": {"repo_url": "https://a.example/g/p.git"}}`, fail: true},
		{name: "negative project id", payload: `{"job_info": {"project_id": -5}, "git_info": {"repo_url": "https://a.example/g/p.git"}}`, fail: true},
		{name: "fractional project id", payload: `{"job_info": {"project_id": 5.5}, "git_info": {"repo_url": "https://a.example/g/p.git"}}`, fail: true},
		{name: "no repo url", payload: `{"job_info": {"project_id": 5}}`, fail: true},
		{name: "relative repo url", payload: `{"job_info": {"project_id": 5}, "git_info": {"repo_url": "g/p.git"}}`, fail: true},
		{name: "not json", payload: `{"job_info": `, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseProject([]byte(tc.payload))
			if tc.fail {
				if err == nil {
					t.Fatalf("ParseProject = %+v, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseProject = %+v, %v, want %+v", got, err, tc.want)
			}
		})
	}
}

func TestParseProjectHidesToken(t *testing.T) {
	_, err := ParseProject([]byte(`{"job_info": {"project_id": 5}, "git_info": {"repo_url": "https://gitlab-ci-token:SECRET@a b/\x7f"}}`))
	if err == nil || regexp.MustCompile("SECRET").MatchString(err.Error()) {
		t.Errorf("ParseProject error = %v, want an error without the token", err)
	}
}

func TestReadProject(t *testing.T) {
	if _, err := ReadProject(""); !errors.Is(err, ErrNoProject) {
		t.Errorf("ReadProject(\"\") = %v, want ErrNoProject", err)
	}
	p := filepath.Join(t.TempDir(), "job.json")
	if err := os.WriteFile(p, []byte(`{"job_info": {"project_id": 9}, "git_info": {"repo_url": "https://a.example/x.git"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ReadProject(p)
	if err != nil || got.ID != 9 {
		t.Errorf("ReadProject = %+v, %v", got, err)
	}
}

var (
	keyRE      = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*-[0-9a-f]{8}-[1-9][0-9]*$`)
	localKeyRE = regexp.MustCompile(`^local-[0-9a-f]{16}-0$`)
)

func TestProjectKey(t *testing.T) {
	for _, tc := range []struct {
		p    Project
		want string
	}{
		{Project{Instance: "https://gitlab.example.com", ID: 5}, "gitlab.example.com-"},
		{Project{Instance: "https://gitlab.example.com:8443", ID: 5}, "gitlab.example.com_8443-"},
		{Project{Instance: "http://[fd00::1]:8080", ID: 5}, "fd00__1__8080-"},
		{Project{Instance: "https://..", ID: 5}, "gitlab-"},
	} {
		k := tc.p.Key()
		if !keyRE.MatchString(k) || k[:len(tc.want)] != tc.want {
			t.Errorf("%+v.Key() = %q, want %q... matching %s", tc.p, k, tc.want, keyRE)
		}
	}
	// Different instances, projects or local repositories never share a
	// key, even where the readable part is the same, and no server
	// project gets the key of a local job.
	keys := map[string]Project{}
	for _, p := range []Project{
		{Instance: "https://gitlab.example.com", ID: 5}, {Instance: "http://gitlab.example.com", ID: 5},
		{Instance: "https://gitlab.example.com:8443", ID: 5}, {Instance: "https://gitlab.example.com_8443", ID: 5},
		{Instance: "https://gitlab.example.com", ID: 55}, {Instance: "https://other.example.com", ID: 5},
		{Instance: "https://local", ID: 1}, {Instance: "file://local", ID: 1},
		{Local: "/home/dev/app"}, {Local: "/home/dev/app2"}, {Local: "/"},
	} {
		k := p.Key()
		if q, dup := keys[k]; dup {
			t.Errorf("%+v and %+v share the key %q", p, q, k)
		}
		keys[k] = p
		if re := map[bool]*regexp.Regexp{true: localKeyRE, false: keyRE}[p.Local != ""]; !re.MatchString(k) {
			t.Errorf("%+v.Key() = %q, want it to match %s", p, k, re)
		}
		if keyRE.MatchString(k) == localKeyRE.MatchString(k) {
			t.Errorf("%+v.Key() = %q matches both or neither of the server and local forms", p, k)
		}
	}
	// A local job's key is stable: the next job in the same repository
	// finds its cache.
	if a, b := (Project{Local: "/home/dev/app"}).Key(), (Project{Local: "/home/dev/app"}).Key(); a != b {
		t.Errorf("local keys differ between jobs: %s, %s", a, b)
	}
}

func FuzzParseProject(f *testing.F) {
	f.Add(`{"job_info": {"project_id": 5}, "git_info": {"repo_url": "https://gitlab-ci-token:x@gitlab.example.com/g/p.git"}}`)
	f.Add(`{"job_info": {"project_id": 1e3}, "git_info": {"repo_url": "ssh://../..//"}}`)
	f.Add(`{"job_info": {"project_id": 5}, "git_info": {"repo_url": "http://[::1]:0/"}}`)
	f.Add(`{"job_info": {"project_id": 0}, "git_info": {"repo_url": "/home/dev/app"}}`)
	f.Fuzz(func(t *testing.T, payload string) {
		p, err := ParseProject([]byte(payload))
		if err != nil {
			return
		}
		if (p.ID <= 0 || p.Instance == "") == (p.Local == "") {
			t.Fatalf("ParseProject(%q) = %+v without error", payload, p)
		}
		k := p.Key()
		if !(keyRE.MatchString(k) || localKeyRE.MatchString(k) && p.Local != "") || len(k) > 100 {
			t.Fatalf("Key() = %q for %+v: not a safe directory name", k, p)
		}
	})
}
