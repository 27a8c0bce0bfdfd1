package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestParseDefaults(t *testing.T) {
	for _, in := range []string{"", "\n", "# only a comment\n"} {
		c, err := Parse([]byte(in))
		if err != nil {
			t.Fatalf("Parse(%q) = %v", in, err)
		}
		d := Default()
		// Job variables never name the job unless the admin says so.
		if c.Root != d.Root || c.Machine.CPUWeight != 50 || c.Machine.MemoryHigh.Percent != 30 || c.Machine.MemoryMax.Percent != 40 || c.GitLab.JobIDFromVariables {
			t.Errorf("Parse(%q) = %+v, want the defaults", in, c)
		}
	}
}

func TestParseValues(t *testing.T) {
	c, err := Parse([]byte(`
root: /srv/images
run_dir: /run/nr
default_image: bookworm
allowed_images: [bookworm, sid]
bootstrap:
  suite: trixie
  mirror: http://mirror.example/debian
  packages: [build-essential, g++]
machine:
  mode: fast
  storage: btrfs
  seccomp: false
  private_users: true
  cpu_weight: 200
  memory_high: 2G
  memory_max: 50%
  tasks_max: 4096
  shell: sh
  ready_timeout: 2m
  stop_timeout: 3s
  cgroup_parent: ci/machines
  pool: {bookworm: 4, sid: 0}
  pool_max_age: 2h
gitlab:
  cache_dir: /srv/cache
  builds_dir: /srv/builds
  runner_binary: /usr/bin/gitlab-runner
  job_id_from_variables: true
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Root != "/srv/images" || c.RunDir != "/run/nr" || c.DefaultImage != "bookworm" || len(c.AllowedImages) != 2 {
		t.Errorf("top level = %+v", c)
	}
	if c.Bootstrap.Suite != "trixie" || c.Bootstrap.Mirror == "" || len(c.Bootstrap.Packages) != 2 {
		t.Errorf("bootstrap = %+v", c.Bootstrap)
	}
	m := c.Machine
	if m.Mode != ModeFast || m.Storage != StorageBtrfs || m.Seccomp || !m.PrivateUsers || m.CPUWeight != 200 || m.TasksMax != 4096 || m.Shell != "sh" {
		t.Errorf("machine = %+v", m)
	}
	if m.MemoryHigh.Bytes != 2<<30 || m.MemoryMax.Percent != 50 {
		t.Errorf("memory = %v, %v", m.MemoryHigh, m.MemoryMax)
	}
	if m.CgroupParent != "ci/machines" {
		t.Errorf("cgroup_parent = %q", m.CgroupParent)
	}
	if m.Pool["bookworm"] != 4 || len(m.Pool) != 2 || m.PoolMaxAge.D() != 2*time.Hour {
		t.Errorf("pool = %v, pool_max_age = %v", m.Pool, m.PoolMaxAge.D())
	}
	if m.ReadyTimeout.D() != 2*time.Minute || m.StopTimeout.D() != 3*time.Second {
		t.Errorf("timeouts = %v, %v", m.ReadyTimeout.D(), m.StopTimeout.D())
	}
	if c.GitLab.CacheDir != "/srv/cache" || c.GitLab.BuildsDir != "/srv/builds" || c.GitLab.RunnerBinary != "/usr/bin/gitlab-runner" || !c.GitLab.JobIDFromVariables {
		t.Errorf("gitlab = %+v", c.GitLab)
	}
	if got := c.Playbooks(); len(got) != 2 || got[0] != DefaultPlaybookDir || got[1] != "/srv/images" {
		t.Errorf("Playbooks() = %v", got)
	}
}

// Every bad input names the key (or the unknown field) and its line.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"rooot: /x\n", []string{"line 1", "rooot"}},
		{"machine:\n  mode: boot\n  colour: red\n", []string{"line 3", "colour"}},
		{"machine:\n  mode: turbo\n", []string{"line 2", "machine.mode", "turbo"}},
		{"machine:\n  storage: zfs\n", []string{"line 2", "machine.storage"}},
		{"machine:\n  cpu_weight: 0\n", []string{"line 2", "machine.cpu_weight"}},
		{"machine:\n  cpu_weight: lots\n", []string{"line 2", "lots"}},
		{"machine:\n\n  memory_max: 3x\n", []string{"line 3", "3x"}},
		{"machine:\n  memory_high: 120%\n", []string{"line 2", "120%"}},
		{"machine:\n  ready_timeout: soon\n", []string{"line 2", "soon"}},
		{"machine:\n  stop_timeout: -1s\n", []string{"line 2", "machine.stop_timeout"}},
		{"machine:\n  tasks_max: -4\n", []string{"line 2", "machine.tasks_max"}},
		{"machine:\n  shell: \"\"\n", []string{"line 2", "machine.shell"}},
		{"machine:\n  cgroup_parent: ../escape\n", []string{"line 2", "machine.cgroup_parent"}},
		{"machine:\n  cgroup_parent: /abs\n", []string{"line 2", "machine.cgroup_parent"}},
		{"machine:\n  storage: overlay\n  private_users: true\n", []string{"line 3", "machine.private_users", "btrfs"}},
		{"machine:\n  private_users: true\n  storage: volatile\n", []string{"machine.private_users", "btrfs"}},
		{"root: relative/dir\n", []string{"line 1", "root", "absolute"}},
		{"run_dir: run\n", []string{"line 1", "run_dir"}},
		{"gitlab:\n  cache_dir: cache\n", []string{"line 2", "gitlab.cache_dir"}},
		{"gitlab:\n  job_id_from_variables: maybe\n", []string{"line 2", "maybe"}},
		{"gitlab:\n  job_id_from_variables: 1\n", []string{"line 2", "boolean"}},
		{"gitlab:\n  job_id_from_variable: true\n", []string{"line 2", "job_id_from_variable"}},
		{"default_image: ../../etc\n", []string{"line 1", "default_image", ImageNameRule}},
		{"allowed_images: [ok, .hidden]\n", []string{"line 1", "allowed_images"}},
		{"bootstrap:\n  suite: a/b\n", []string{"line 2", "bootstrap.suite"}},
		{"bootstrap:\n  packages: [git, 'rm -rf']\n", []string{"line 2", "bootstrap.packages"}},
		{"root: [1, 2]\n", []string{"line 1"}},
		{"- a\n- b\n", []string{"line 1"}},
		{"machine: {mode: boot\n", []string{"line"}},
		{"machine:\n  network: bridge\n", []string{"line 2", "machine.network", "private, host or none"}},
		{"machine:\n  pool: {bookworm: 65}\n", []string{"line 2", "machine.pool", "bookworm", "0 to 64"}},
		{"machine:\n  pool: {bookworm: -1}\n", []string{"line 2", "machine.pool"}},
		{"machine:\n  pool: {../x: 1}\n", []string{"line 2", "machine.pool"}},
		{"machine:\n  pool: 4\n", []string{"line 2"}},
		{"machine:\n  pool_max_age: -1h\n", []string{"line 2", "machine.pool_max_age"}},
		{"machine:\n  subnet: 10.1.2.3/24\n", []string{"line 2", "machine.subnet", "10.1.2.0/24"}},
		{"machine:\n  subnet: fd00::/64\n", []string{"line 2", "machine.subnet", "IPv4"}},
		{"machine:\n  subnet: 10.1.2.0/31\n", []string{"line 2", "machine.subnet", "/30"}},
		{"machine:\n  subnet: nope\n", []string{"line 2", "machine.subnet"}},
		{"machine:\n  bridge: a-name-too-long-x\n", []string{"line 2", "machine.bridge"}},
		{"machine:\n  bridge: 'br 0'\n", []string{"line 2", "machine.bridge"}},
		{"machine:\n  subnet: 10.9.0.0/16\n  allow_networks: [10.9.4.0/24]\n", []string{"line 3", "machine.allow_networks", "overlaps"}},
		{"machine:\n  allow_networks: [gitlab.example.com]\n", []string{"line 2", "machine.allow_networks"}},
		{"machine:\n  deny_networks: [10.0.0.0/33]\n", []string{"line 2", "machine.deny_networks"}},
		{"machine:\n  dns: [127.0.0.53]\n", []string{"line 2", "machine.dns", "loopback"}},
		{"machine:\n  dns: [resolver]\n", []string{"line 2", "machine.dns"}},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil {
			t.Errorf("Parse(%q) = nil error, want one naming %v", tc.in, tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q) = %q, want it to mention %q", tc.in, err, w)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("Parse(%q) error spans lines: %q", tc.in, err)
		}
	}
}

func TestParseNetwork(t *testing.T) {
	c, err := Parse([]byte("machine:\n  network: private\n  bridge: ci-br\n  subnet: 172.31.250.0/24\n  allow_networks: [192.0.2.10, 198.51.100.0/24]\n  deny_networks: [10.0.0.0/8]\n  dns: [192.0.2.53]\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := c.Machine
	if m.Network != NetworkPrivate || m.Bridge != "ci-br" || m.Subnet != "172.31.250.0/24" || len(m.AllowNetworks) != 2 || len(m.DenyNetworks) != 1 || len(m.DNS) != 1 {
		t.Errorf("machine = %+v", m)
	}
	allow, err := ParseNetworks(m.AllowNetworks)
	if err != nil || allow[0].String() != "192.0.2.10/32" || allow[1].String() != "198.51.100.0/24" {
		t.Errorf("ParseNetworks(%q) = %v, %v", m.AllowNetworks, allow, err)
	}
	d := Default().Machine
	if d.Network != NetworkPrivate || d.Bridge != DefaultBridge || d.Subnet != DefaultSubnet {
		t.Errorf("default network settings = %+v", d)
	}
	if _, err := ParseSubnet(DefaultSubnet); err != nil {
		t.Errorf("the default subnet does not parse: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
		ok   bool
	}{
		{"30%", Size{Percent: 30}, true},
		{"12.5%", Size{Percent: 12.5}, true},
		{"2G", Size{Bytes: 2 << 30}, true},
		{"512m", Size{Bytes: 512 << 20}, true},
		{"1024", Size{Bytes: 1024}, true},
		{"none", Size{}, true},
		{"", Size{}, true},
		{"0%", Size{}, false},
		{"101%", Size{}, false},
		{"-1", Size{}, false},
		{"1.5G", Size{}, false},
		{"G", Size{}, false},
		{"99999999999T", Size{}, false},
	} {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	if got := (Size{Percent: 40}).Resolve(1000); got != 400 {
		t.Errorf("Resolve(40%% of 1000) = %d, want 400", got)
	}
	if got := (Size{Bytes: 7}).Resolve(1000); got != 7 {
		t.Errorf("Resolve(7 bytes) = %d, want 7", got)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.yaml")
	if c, err := Load(missing, false); err != nil || c.Root != DefaultRoot {
		t.Errorf("Load(missing default) = %+v, %v; want defaults", c.Root, err)
	}
	if _, err := Load(missing, true); err == nil {
		t.Errorf("Load(missing --config) = nil error, want one")
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("machine:\n  mode: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(bad, true)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("Load(bad) = %v, want the path and line", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("root: /x\nmachine:\n  mode: fast\n  memory_max: 2G\n"))
	f.Add([]byte("machine: {cpu_weight: 3}"))
	f.Add([]byte("allowed_images: [a, b]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		// Whatever parses must be valid.
		if c.Machine.CPUWeight < 1 || c.Machine.CPUWeight > 10000 || !filepath.IsAbs(c.Root) {
			t.Errorf("Parse(%q) accepted an invalid config: %+v", data, c)
		}
		if c.DefaultImage != "" && CheckImageName(c.DefaultImage) != nil {
			t.Errorf("Parse(%q) accepted default_image %q", data, c.DefaultImage)
		}
	})
}

// Errors keep yaml.v3's error as their cause and say where they are from
// the document's nodes: callers can errors.As a *yaml.TypeError or a
// *KeyError instead of reading the text.
func TestParseErrorChain(t *testing.T) {
	_, err := Parse([]byte("machine:\n  mode: boot\n  cpu_weight: lots\n"))
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		t.Errorf("Parse(cpu_weight: lots) = %v, want a *yaml.TypeError in its chain", err)
	}
	var ke *KeyError
	if !errors.As(err, &ke) || ke.Line != 3 || ke.Key != "machine.cpu_weight" {
		t.Errorf("Parse(cpu_weight: lots) = %#v, want a *KeyError for machine.cpu_weight on line 3", ke)
	}

	_, err = Parse([]byte("gitlab:\n  cache_dirs: /x\n"))
	if !errors.Is(err, ErrUnknownKey) || !errors.As(err, &ke) || ke.Line != 2 || ke.Key != "gitlab.cache_dirs" {
		t.Errorf("Parse(cache_dirs) = %v, want ErrUnknownKey for gitlab.cache_dirs on line 2", err)
	}
	if !strings.Contains(err.Error(), "cache_dir,") && !strings.HasSuffix(err.Error(), "cache_dir)") {
		t.Errorf("Parse(cache_dirs) = %q, want it to list the keys the section has", err)
	}

	_, err = Parse([]byte("machine:\n  ready_timeout: soon\n"))
	if !errors.As(err, &ke) || ke.Line != 2 || errors.Unwrap(ke.Err) == nil {
		t.Errorf("Parse(ready_timeout: soon) = %v, want a *KeyError on line 2 wrapping time.ParseDuration's error", err)
	}

	// A syntax error: yaml.v3's error (with its line) wrapped, not rewritten.
	_, err = Parse([]byte("machine: {mode: boot\n"))
	if err == nil || errors.Unwrap(err) == nil || !strings.Contains(errors.Unwrap(err).Error(), "yaml: line 1:") {
		t.Errorf("Parse(syntax error) = %v, want yaml.v3's error wrapped", err)
	}

	// A validation error is a *KeyError too.
	_, err = Parse([]byte("\nmachine:\n  mode: turbo\n"))
	if !errors.As(err, &ke) || ke.Line != 3 || ke.Key != "machine.mode" {
		t.Errorf("Parse(mode: turbo) = %v, want a *KeyError for machine.mode on line 3", err)
	}

	// A file's errors name it.
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("rooot: /x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p, true); err == nil || !strings.Contains(err.Error(), p+": line 1: rooot") || !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Load(%s) = %v, want the file, the line and ErrUnknownKey", p, err)
	}
}

// Keys are decoded one by one from the node tree: repeated keys are
// errors, anchors, aliases and merge keys work as with a whole-document
// decode.
func TestParseNodes(t *testing.T) {
	if _, err := Parse([]byte("root: /a\nroot: /b\n")); err == nil || !strings.Contains(err.Error(), "line 2: root: set twice (first on line 1)") {
		t.Errorf("Parse(root twice) = %v, want a line-2 error", err)
	}
	c, err := Parse([]byte("x-defaults: &d\n  mode: fast\n  tasks_max: 7\n"))
	if err == nil {
		t.Errorf("Parse(x-defaults) = %+v, want an unknown key", c)
	}
	c, err = Parse([]byte("bootstrap: &b {suite: trixie}\nmachine:\n  <<: {mode: fast, tasks_max: 7}\n  tasks_max: 9\ngitlab:\n  cache_dir: &c /srv/cache\n  builds_dir: *c\n"))
	if err != nil {
		t.Fatalf("Parse(merge, alias) = %v", err)
	}
	if c.Machine.Mode != ModeFast || c.Machine.TasksMax != 9 || c.GitLab.BuildsDir != "/srv/cache" || c.Bootstrap.Suite != "trixie" {
		t.Errorf("Parse(merge, alias) = %+v %+v %+v, want mode fast, tasks_max 9 (the explicit key wins), builds_dir /srv/cache", c.Machine, c.GitLab, c.Bootstrap)
	}
	c, err = Parse([]byte("machine:\nbootstrap: ~\n"))
	if err != nil || c.Machine.Mode != Default().Machine.Mode {
		t.Errorf("Parse(empty sections) = %+v, %v, want the defaults", c.Machine, err)
	}
}
