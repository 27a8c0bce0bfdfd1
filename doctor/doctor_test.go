package doctor

import (
	"errors"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/limits"
	"github.com/nspawn-runner/nspawn-runner/machine"
)

var now = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

// healthy are the facts of a host where nothing is wrong.
func healthy() Facts {
	return Facts{
		Now: now, KernelRelease: "6.1.0-18-amd64", Filesystems: []string{"ext4", "btrfs", "overlay"},
		KernelConfig: map[string]string{"CONFIG_NF_TABLES": "m", "CONFIG_VETH": "m"}, UserNamespaces: 15000,
		Cgroup2: true, Controllers: []string{"cpuset", "cpu", "io", "memory", "pids"},
		NspawnVersion: 252, Root: "/var/lib/nspawn-runner", RootBtrfs: true, RootFree: 50 << 30, Storage: "auto",
		RunnerBinary: "/usr/bin/gitlab-runner", RunnerVersion: "17.5.0",
		RunnerConfigPath: "/etc/gitlab-runner/config.toml", Self: "/usr/bin/nspawn-runner",
		RunnerConfig: `concurrent = 8
[[runners]]
  name = "nspawn-runner on h"
  executor = "custom"
  [runners.custom]
    config_exec = "/usr/bin/nspawn-runner"
    prepare_exec = "/usr/bin/nspawn-runner"
    prepare_exec_timeout = 300
    run_exec = "/usr/bin/nspawn-runner"
    cleanup_exec = "/usr/bin/nspawn-runner" # the same binary
    cleanup_exec_timeout = 120
`,
		ReadyTimeout: time.Minute, StopTimeout: 10 * time.Second,
		Images:       []bootstrap.Image{{Name: "bookworm", Created: now.Add(-48 * time.Hour), Size: 400 << 20}},
		DefaultImage: "bookworm", Systemd: true, TimersEnabled: Timers,
		Machines: []machine.Status{{Name: "nr-1-abc", State: machine.StateRunning, Created: now.Add(-time.Minute)}},
	}
}

// byCheck finds the finding of check (exact name) in fs.
func byCheck(fs []Finding, check string) (Finding, bool) {
	for _, f := range fs {
		if f.Check == check {
			return f, true
		}
	}
	return Finding{}, false
}

func TestHealthyHost(t *testing.T) {
	fs := Check(healthy())
	for _, f := range fs {
		if f.Level != OK {
			t.Errorf("healthy host: %+v", f)
		}
	}
	if Failed(fs) {
		t.Error("Failed(healthy) = true")
	}
}

// Each case changes the healthy facts and expects one finding at a level.
func TestChecks(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Facts)
		check  string
		level  string
		detail string // a substring of the detail
	}{
		{"old kernel", func(f *Facts) { f.KernelRelease = "5.10.0-28-amd64" }, "kernel", Warn, "idmapped"},
		{"unreadable kernel", func(f *Facts) { f.KernelRelease = "weird" }, "kernel", Warn, "cannot read"},
		{"no overlay on btrfs", func(f *Facts) { f.Filesystems = []string{"btrfs"} }, "kernel.overlayfs", Warn, "no overlayfs"},
		{"no overlay, no btrfs root", func(f *Facts) { f.Filesystems = []string{"ext4"}; f.RootBtrfs = false }, "kernel.overlayfs", Fail, "no way"},
		{"no btrfs", func(f *Facts) { f.Filesystems = []string{"overlay"} }, "kernel.btrfs", Warn, "plain directories"},
		{"userns off", func(f *Facts) { f.UserNamespaces = 0 }, "kernel.userns", Warn, "off"},
		{"veth as a loaded module", func(f *Facts) { f.KernelConfig = nil; f.Modules = []string{"veth"} }, "kernel.veth", OK, "available"},
		{"no veth in config", func(f *Facts) { f.KernelConfig["CONFIG_VETH"] = "" }, "kernel.veth", Warn, "share the host's network"},
		{"no kernel config", func(f *Facts) { f.KernelConfig = nil }, "kernel.nf_tables", Warn, "cannot tell"},
		{"no cgroup2", func(f *Facts) { f.Cgroup2 = false; f.CgroupErr = errors.New("no cgroup2 mount") }, "cgroup", Warn, "no cgroup2 mount"},
		{"hybrid cgroups", func(f *Facts) { f.Controllers = nil }, "cgroup", Warn, "cpu, memory, pids"},
		{"no nspawn", func(f *Facts) { f.NspawnErr = errors.New("systemd-nspawn: not found") }, "systemd-nspawn", Fail, "not found"},
		{"old nspawn", func(f *Facts) { f.NspawnVersion = 241 }, "systemd-nspawn", Warn, "241"},
		{"no root", func(f *Facts) { f.RootErr = fs.ErrNotExist }, "root", Fail, "does not exist"},
		{"root not btrfs", func(f *Facts) { f.RootBtrfs = false }, "root.btrfs", Warn, "overlays"},
		{"btrfs storage off btrfs", func(f *Facts) { f.RootBtrfs = false; f.Storage = "btrfs" }, "root.btrfs", Fail, "machine.storage is btrfs"},
		{"disk full", func(f *Facts) { f.RootFree = 100 << 20 }, "root.space", Fail, "0.1 GiB"},
		{"disk low", func(f *Facts) { f.RootFree = 3 << 30 }, "root.space", Warn, "3.0 GiB"},
		{"no gitlab-runner", func(f *Facts) { f.RunnerBinary = "" }, "gitlab-runner", Warn, "caches and artifacts are disabled"},
		{"configured runner missing", func(f *Facts) {
			f.RunnerBinary, f.RunnerConfigured, f.RunnerErr = "", true, errors.New("gitlab.runner_binary /x: no such file")
		}, "gitlab-runner", Fail, "/x"},
		{"runner broken", func(f *Facts) { f.RunnerErr = errors.New("exec format error") }, "gitlab-runner", Warn, "does not run"},
		{"no config.toml", func(f *Facts) { f.RunnerConfigErr = fs.ErrPermission }, "gitlab-runner.config", Warn, "cannot read"},
		{"config.toml for another binary", func(f *Facts) { f.Self = "/usr/local/bin/nspawn-runner" }, "gitlab-runner.config", Warn, "no [[runners]] section"},
		{"short prepare timeout", func(f *Facts) {
			f.RunnerConfig = strings.Replace(f.RunnerConfig, "prepare_exec_timeout = 300", "prepare_exec_timeout = 30", 1)
		}, "gitlab-runner.config", Warn, "prepare_exec_timeout = 30"},
		{"services timeout past prepare timeout", func(f *Facts) {
			f.ServicesTimeout = 10 * time.Minute
		}, "gitlab-runner.config", Warn, "shorter than services_timeout + stop_timeout"},
		{"short cleanup timeout", func(f *Facts) {
			f.RunnerConfig = strings.Replace(f.RunnerConfig, "cleanup_exec_timeout = 120", "cleanup_exec_timeout = 5", 1)
		}, "gitlab-runner.config", Warn, "cleanup_exec_timeout = 5"},
		{"run_exec elsewhere", func(f *Facts) {
			f.RunnerConfig = strings.Replace(f.RunnerConfig, `run_exec = "/usr/bin/nspawn-runner"`, `run_exec = "/opt/old"`, 1)
		}, "gitlab-runner.config", Warn, `run_exec is "/opt/old"`},
		{"run_exec the installed stage executable", func(f *Facts) {
			f.Stage = "/usr/lib/nspawn-runner/nspawn-runner-stage"
			f.RunnerConfig = strings.Replace(f.RunnerConfig, `run_exec = "/usr/bin/nspawn-runner"`, `run_exec = "/usr/lib/nspawn-runner/nspawn-runner-stage"`, 1)
		}, "gitlab-runner.config", OK, ""},
		{"run_exec a stage executable not installed with it", func(f *Facts) {
			f.RunnerConfig = strings.Replace(f.RunnerConfig, `run_exec = "/usr/bin/nspawn-runner"`, `run_exec = "/usr/lib/nspawn-runner/nspawn-runner-stage"`, 1)
		}, "gitlab-runner.config", Warn, `run_exec is "/usr/lib/nspawn-runner/nspawn-runner-stage"`},
		{"config_exec the stage executable", func(f *Facts) {
			f.Stage = "/usr/lib/nspawn-runner/nspawn-runner-stage"
			f.RunnerConfig = strings.Replace(f.RunnerConfig, `config_exec = "/usr/bin/nspawn-runner"`, `config_exec = "/usr/lib/nspawn-runner/nspawn-runner-stage"`, 1)
		}, "gitlab-runner.config", Warn, `config_exec is`},
		{"no images", func(f *Facts) { f.Images = nil }, "images", Fail, "every job would fail"},
		{"images unreadable", func(f *Facts) { f.ImagesErr = fs.ErrPermission }, "images", Fail, "permission"},
		{"missing default image", func(f *Facts) { f.DefaultImage = "trixie" }, "images.default", Fail, "trixie"},
		{"old image", func(f *Facts) { f.Images[0].Created = now.Add(-60 * 24 * time.Hour) }, "images.bookworm", Warn, "60 days"},
		{"old but maintained", func(f *Facts) {
			f.Images[0].Created, f.Images[0].Maintained = now.Add(-90*24*time.Hour), now.Add(-time.Hour)
		}, "images.bookworm", OK, "bookworm"},
		{"gc timer off", func(f *Facts) { f.TimersEnabled = Timers[1:] }, "timers.nspawn-runner-gc.timer", Warn, "not enabled"},
		{"no systemd, no cron", func(f *Facts) { f.Systemd = false }, "timers", Warn, "nothing runs gc"},
		{"no systemd, cron", func(f *Facts) { f.Systemd, f.Cron = false, true }, "timers", OK, "cron"},
		{"dead machine", func(f *Facts) { f.Machines[0].State = machine.StateDead }, "machines.dead", Warn, "nr-1-abc"},
		{"old machine", func(f *Facts) { f.Machines[0].Created = now.Add(-48 * time.Hour) }, "machines.old", Warn, "nr-1-abc"},
		{"private users off", func(f *Facts) {}, "machine.private_users", OK, "off"},
		{"private users on", func(f *Facts) {
			f.PrivateUsers, f.CanEnterUserNS, f.BindFS = true, true, []BindFS{{"gitlab.cache_dir", "/var/cache/nspawn-runner", "ext4"}}
		}, "machine.private_users", OK, "unprivileged uid range"},
		{"private users on overlays", func(f *Facts) { f.PrivateUsers, f.CanEnterUserNS, f.RootBtrfs = true, true, false }, "machine.private_users", Fail, "btrfs"},
		{"private users without cgo", func(f *Facts) { f.PrivateUsers = true }, "machine.private_users", Fail, "cgo"},
		{"private users, userns off", func(f *Facts) { f.PrivateUsers, f.CanEnterUserNS, f.UserNamespaces = true, true, 0 }, "machine.private_users", Fail, "user namespaces are off"},
		{"private users, cache on nfs", func(f *Facts) {
			f.PrivateUsers, f.CanEnterUserNS, f.BindFS = true, true, []BindFS{{"gitlab.cache_dir", "/srv/cache", "nfs"}}
		}, "machine.private_users", Fail, "gitlab.cache_dir /srv/cache is on nfs"},
		{"private users, builds on tmpfs of 6.1", func(f *Facts) {
			f.PrivateUsers, f.CanEnterUserNS, f.BindFS = true, true, []BindFS{{"gitlab.builds_dir", "/b", "tmpfs"}}
		}, "machine.private_users", Fail, "(6.3)"},
		{"private users, cache on an unknown filesystem", func(f *Facts) {
			f.PrivateUsers, f.CanEnterUserNS, f.BindFS = true, true, []BindFS{{"gitlab.cache_dir", "/c", "type 0x1234"}}
		}, "machine.private_users", Warn, "cannot tell"},
		{"low inotify limit", func(f *Facts) {
			f.Limits = []limits.Shortfall{{Limit: limits.Wanted[0], Have: 128}}
		}, "limits.fs.inotify.max_user_instances", Warn, "is 128, below 8192"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := healthy()
			f.Images = append([]bootstrap.Image(nil), f.Images...)
			f.Machines = append([]machine.Status(nil), f.Machines...)
			f.KernelConfig = map[string]string{"CONFIG_NF_TABLES": "m", "CONFIG_VETH": "m"}
			tc.change(&f)
			fs := Check(f)
			got, found := byCheck(fs, tc.check)
			if !found {
				t.Fatalf("no finding %s in %+v", tc.check, fs)
			}
			if got.Level != tc.level || !strings.Contains(got.Detail, tc.detail) {
				t.Errorf("%s = %s %q, want %s with %q", tc.check, got.Level, got.Detail, tc.level, tc.detail)
			}
			if got.Level != OK && got.Fix == "" {
				t.Errorf("%s %s has no fix", tc.check, got.Level)
			}
			if Failed(fs) != (tc.level == Fail) {
				t.Errorf("Failed = %v, want %v", Failed(fs), tc.level == Fail)
			}
		})
	}
}

func TestKernelVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		a, b int
		ok   bool
	}{
		{"6.1.0-18-amd64", 6, 1, true}, {"6.18.44-fc-v1252", 6, 18, true}, {"5.12", 5, 12, true},
		{"4.19.0+", 4, 19, true}, {"6.10rc1", 6, 10, true}, {"", 0, 0, false}, {"x.y", 0, 0, false},
	} {
		a, b, ok := KernelVersion(tc.in)
		if a != tc.a || b != tc.b || ok != tc.ok {
			t.Errorf("KernelVersion(%q) = %d, %d, %v; want %d, %d, %v", tc.in, a, b, ok, tc.a, tc.b, tc.ok)
		}
	}
}

func TestParseRunners(t *testing.T) {
	doc := `concurrent = 4
[session_server]
  prepare_exec = "not a runner"
[[runners]]
  name = "a \"quoted\" name"
  executor = "custom"
  [runners.custom]
    prepare_exec = '/usr/bin/nspawn-runner'
    prepare_exec_timeout = 300 # seconds
  [runners.cache]
    run_exec = "/not/custom"
[[runners]]
  name = "docker one"
  executor = "docker"
`
	got := ParseRunners(doc)
	if len(got) != 2 {
		t.Fatalf("ParseRunners: %d sections, want 2: %+v", len(got), got)
	}
	want := RunnerCustom{Name: `a "quoted" name`, Executor: "custom", PrepareExec: "/usr/bin/nspawn-runner", PrepareTimeout: 300}
	if got[0] != want {
		t.Errorf("first section = %+v, want %+v", got[0], want)
	}
	if got[1].Executor != "docker" || got[1].PrepareExec != "" {
		t.Errorf("second section = %+v", got[1])
	}
}

func TestParseKernelConfig(t *testing.T) {
	got := ParseKernelConfig(strings.NewReader("# comment\nCONFIG_VETH=m\nCONFIG_NF_TABLES=y\n# CONFIG_X is not set\nCONFIG_LOCALVERSION=\"-fc\"\n"))
	if got["CONFIG_VETH"] != "m" || got["CONFIG_NF_TABLES"] != "y" || got["CONFIG_LOCALVERSION"] != "-fc" || len(got) != 3 {
		t.Errorf("ParseKernelConfig = %v", got)
	}
}
