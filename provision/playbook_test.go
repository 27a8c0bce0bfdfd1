package provision

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/config"
)

func TestParseVars(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Vars
		// warn lists substrings, one per expected warning, in order.
		warn []string
		err  bool
	}{
		{name: "empty file", in: "", warn: []string{"empty"}},
		{name: "only a comment", in: "# nothing\n", warn: []string{"empty"}},
		{name: "null document", in: "---\n~\n", warn: []string{"empty"}},
		{name: "mapping", in: "hosts: all\n", warn: []string{"line 1: the playbook is not a list of plays"}},
		{name: "scalar", in: "hello\n", warn: []string{"not a list of plays"}},
		{name: "no plays", in: "[]\n", warn: []string{"no plays"}},
		{name: "play is a string", in: "- hello\n", warn: []string{"first play is not a mapping"}},
		{name: "no vars", in: "- hosts: all\n  tasks: []\n"},
		{name: "null vars", in: "- hosts: all\n  vars:\n"},
		{name: "vars list", in: "- hosts: all\n  vars: [a]\n", warn: []string{"line 2: vars of the first play is not a mapping"}},
		{name: "syntax error", in: "- hosts: all\n  vars: {\n", err: true},
		{name: "tab indent", in: "- hosts: all\n\tvars: {}\n", err: true},
		{
			name: "all vars",
			in: `- hosts: all
  vars:
    nspawn_runner_chroot_suite: sid
    nspawn_runner_maint_recreate: true
    nspawn_runner_mirror: http://deb.example.org/debian
    nspawn_runner_include: [build-essential, git]
    other_var: 1
`,
			want: Vars{Suite: "sid", Recreate: true, Mirror: "http://deb.example.org/debian", Include: []string{"build-essential", "git"}},
		},
		{
			name: "include as comma string",
			in:   "- vars:\n    nspawn_runner_include: 'vim, curl,,less '\n",
			want: Vars{Include: []string{"vim", "curl", "less"}},
		},
		{name: "recreate yes", in: "- vars:\n    nspawn_runner_maint_recreate: yes\n", want: Vars{Recreate: true}},
		{name: "recreate quoted false", in: "- vars:\n    nspawn_runner_maint_recreate: 'false'\n", want: Vars{}},
		{name: "recreate number", in: "- vars:\n    nspawn_runner_maint_recreate: 1\n", warn: []string{"line 2: nspawn_runner_maint_recreate must be true or false"}},
		{name: "suite number", in: "- vars:\n    nspawn_runner_chroot_suite: 12\n", warn: []string{"nspawn_runner_chroot_suite must be a string"}},
		{name: "suite quoted number", in: "- vars:\n    nspawn_runner_chroot_suite: '12'\n", want: Vars{Suite: "12"}},
		{name: "suite with slash", in: "- vars:\n    nspawn_runner_chroot_suite: ../x\n", warn: []string{`"../x" is not a Debian suite`}},
		{name: "suite template", in: "- vars:\n    nspawn_runner_chroot_suite: '{{ suite }}'\n", warn: []string{"must be a string"}},
		{name: "suite list", in: "- vars:\n    nspawn_runner_chroot_suite: [sid]\n", warn: []string{"must be a string"}},
		{name: "mirror not a url", in: "- vars:\n    nspawn_runner_mirror: mirror\n", warn: []string{"not a mirror URL"}},
		{name: "mirror with space", in: "- vars:\n    nspawn_runner_mirror: 'http://a b'\n", warn: []string{"not a mirror URL"}},
		{name: "include map", in: "- vars:\n    nspawn_runner_include: {a: b}\n", warn: []string{"must be a list of packages"}},
		{name: "include nested list", in: "- vars:\n    nspawn_runner_include: [[a]]\n", warn: []string{"must be a list of packages"}},
		{
			name: "include bad package",
			in:   "- vars:\n    nspawn_runner_include: [git, 'rm -rf', Vim]\n",
			want: Vars{Include: []string{"git"}},
			warn: []string{`"rm -rf" is not a Debian package`, `"Vim" is not a Debian package`},
		},
		{name: "service ports", in: "- vars:\n    nspawn_runner_service_ports: [5432, '6379', 5432]\n", want: Vars{ServicePorts: []int{5432, 6379}}},
		{name: "service port one", in: "- vars:\n    nspawn_runner_service_ports: 80\n", want: Vars{ServicePorts: []int{80}}},
		{name: "service ports string", in: "- vars:\n    nspawn_runner_service_ports: '80, 443'\n", want: Vars{ServicePorts: []int{80, 443}}},
		{name: "service port out of range", in: "- vars:\n    nspawn_runner_service_ports: [0]\n", warn: []string{"must be a list of TCP ports"}},
		{name: "service port not a number", in: "- vars:\n    nspawn_runner_service_ports: [http]\n", warn: []string{"must be a list of TCP ports"}},
		{name: "service port map", in: "- vars:\n    nspawn_runner_service_ports: {a: 1}\n", warn: []string{"must be a list of TCP ports"}},
		{name: "unknown var", in: "- vars:\n    nspawn_runner_suite: sid\n", warn: []string{"line 2: unknown variable nspawn_runner_suite"}},
		{
			name: "several plays",
			in:   "- vars: {nspawn_runner_chroot_suite: sid}\n- vars: {nspawn_runner_chroot_suite: trixie}\n",
			want: Vars{Suite: "sid"},
			warn: []string{"2 plays"},
		},
		{
			name: "alias",
			in:   "- vars:\n    x: &s sid\n    nspawn_runner_chroot_suite: *s\n",
			want: Vars{Suite: "sid"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warn, err := ParseVars([]byte(tc.in))
			if (err != nil) != tc.err {
				t.Fatalf("ParseVars(%q) error = %v, want error %v", tc.in, err, tc.err)
			}
			if err != nil {
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseVars(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
			if len(warn) != len(tc.warn) {
				t.Fatalf("ParseVars(%q) warnings = %q, want %d like %q", tc.in, warn, len(tc.warn), tc.warn)
			}
			for i, w := range tc.warn {
				if !strings.Contains(warn[i], w) {
					t.Errorf("ParseVars(%q) warning %d = %q, want it to contain %q", tc.in, i, warn[i], w)
				}
			}
		})
	}
}

func FuzzParseVars(f *testing.F) {
	for _, s := range []string{
		"",
		"- hosts: all\n  vars:\n    nspawn_runner_chroot_suite: sid\n",
		"- vars: {nspawn_runner_include: 'a,b', nspawn_runner_maint_recreate: yes}\n",
		"- vars: {nspawn_runner_include: [x, y], nspawn_runner_mirror: http://m/}\n",
		"{}", "[[]]", "- &a {vars: *a}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, _, err := ParseVars(data)
		if err != nil {
			return
		}
		if v.Suite != "" && config.CheckSuite(v.Suite) != nil {
			t.Errorf("ParseVars accepted suite %q", v.Suite)
		}
		if v.Mirror != "" && config.CheckMirror(v.Mirror) != nil {
			t.Errorf("ParseVars accepted mirror %q", v.Mirror)
		}
		for _, p := range v.Include {
			if config.CheckPackage(p) != nil {
				t.Errorf("ParseVars accepted package %q", p)
			}
		}
	})
}

func TestDiscover(t *testing.T) {
	etc, root, missing := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "none")
	write := func(dir, name string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("- hosts: all\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := write(etc, "a.yaml")
	dupSameDir := write(etc, "a.yml")
	b := write(etc, "b.yml")
	dupOtherDir := write(root, "b.yaml")
	c := write(root, "c.yaml")
	write(root, ".hidden.yaml")
	write(root, "notes.txt")
	write(root, ".yaml")
	bad := write(root, "-x.yaml")
	if err := os.Mkdir(filepath.Join(root, "dir.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(c, filepath.Join(etc, "linked.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(etc, "nowhere"), filepath.Join(etc, "dangling.yaml")); err != nil {
		t.Fatal(err)
	}

	d, err := Discover([]string{missing, etc, root})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": a, "b": b, "c": c, "linked": filepath.Join(etc, "linked.yaml")}
	if !reflect.DeepEqual(d.Playbooks, want) {
		t.Errorf("Discover playbooks = %v, want %v", d.Playbooks, want)
	}
	if got := strings.Join(d.Names(), " "); got != "a b c linked" {
		t.Errorf("Names() = %q", got)
	}
	joined := strings.Join(d.Warnings, "\n")
	for _, w := range []string{dupSameDir + ": image a already has " + a, dupOtherDir + ": image b already has " + b, bad + ": invalid image name"} {
		if !strings.Contains(joined, w) {
			t.Errorf("Discover warnings = %q, want one containing %q", d.Warnings, w)
		}
	}
	if len(d.Warnings) != 3 {
		t.Errorf("Discover warnings = %q, want 3", d.Warnings)
	}
}
