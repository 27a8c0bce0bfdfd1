package bootstrap_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/config"
)

func TestParseLine(t *testing.T) {
	for _, tc := range []struct {
		line  string
		ok    bool
		phase bootstrap.Phase
		pkg   string
	}{
		{"I: Retrieving InRelease ", true, bootstrap.PhaseIndex, ""},
		{"I: Checking Release signature", true, bootstrap.PhaseIndex, ""},
		{"I: Valid Release signature (key id 4D64FEC119C2029067D6E791F8D2585B8783D481)", true, bootstrap.PhaseIndex, ""},
		{"I: Retrieving Packages ", true, bootstrap.PhaseIndex, ""},
		{"I: Validating Packages ", true, bootstrap.PhaseIndex, ""},
		{"I: Resolving dependencies of base packages...", true, bootstrap.PhaseIndex, ""},
		{"I: Checking component main on http://example.org/debian...", true, bootstrap.PhaseIndex, ""},
		{"I: Retrieving libc6 2.36-9+deb12u4", true, bootstrap.PhaseRetrieve, "libc6"},
		{"I: Validating libc6 2.36-9+deb12u4", true, bootstrap.PhaseRetrieve, "libc6"},
		{"I: Extracting base-files...", true, bootstrap.PhaseExtract, "base-files"},
		{"I: Installing core packages...", true, bootstrap.PhaseInstall, ""},
		{"I: Unpacking required packages...", true, bootstrap.PhaseUnpack, ""},
		{"I: Unpacking the base system...", true, bootstrap.PhaseUnpack, ""},
		{"I: Unpacking libc6:amd64...", true, bootstrap.PhaseUnpack, "libc6:amd64"},
		{"I: Configuring required packages...", true, bootstrap.PhaseConfigure, ""},
		{"I: Configuring systemd...", true, bootstrap.PhaseConfigure, "systemd"},
		{"I: Base system installed successfully.", true, bootstrap.PhaseDone, ""},
		{"W: Cannot check Release signature; keyring file not available", true, bootstrap.PhaseMessage, ""},
		{"E: Couldn't find these debs: nosuchpkg", true, bootstrap.PhaseMessage, ""},
		{"I: Keyring file not available", false, bootstrap.PhaseNone, ""},
		{"Setting up libc6 (2.36-9) ...", false, bootstrap.PhaseNone, ""},
		{"", false, bootstrap.PhaseNone, ""},
		{"I:", false, bootstrap.PhaseNone, ""},
	} {
		ev, ok := bootstrap.ParseLine(tc.line)
		if ok != tc.ok || ev.Phase != tc.phase || ev.Package != tc.pkg {
			t.Errorf("ParseLine(%q) = %+v, %v, want phase %v package %q, %v", tc.line, ev, ok, tc.phase, tc.pkg, tc.ok)
		}
	}
}

func FuzzParseLine(f *testing.F) {
	for _, s := range []string{"I: Retrieving libc6 2.36", "I: Unpacking the base system...", "W: x", "I: ", "I: Base", "I: Extracting ...", "E: \n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		ev, ok := bootstrap.ParseLine(line)
		if !ok {
			if ev != (bootstrap.Event{}) {
				t.Errorf("ParseLine(%q) = %+v, false: want the zero Event", line, ev)
			}
			return
		}
		if ev.Phase <= bootstrap.PhaseNone || ev.Phase > bootstrap.PhaseMessage {
			t.Errorf("ParseLine(%q) phase = %d", line, ev.Phase)
		}
		if strings.ContainsAny(ev.Package, " \t\n") {
			t.Errorf("ParseLine(%q) package = %q, has blanks", line, ev.Package)
		}
		if ev.Package != "" && !strings.Contains(line, ev.Package) {
			t.Errorf("ParseLine(%q) package = %q, not in the line", line, ev.Package)
		}
		if strings.Contains(ev.Phase.String(), "phase(") {
			t.Errorf("ParseLine(%q) phase %d has no name", line, ev.Phase)
		}
	})
}

func TestDebootstrapCommand(t *testing.T) {
	base := strings.Join(config.BasePackages, ",")
	for _, tc := range []struct {
		name      string
		o         bootstrap.CreateOptions
		eatmydata string
		want      []string
	}{
		{"plain", bootstrap.CreateOptions{Suite: "bookworm"}, "",
			[]string{"debootstrap", "--variant=minbase", "--include=" + base, "bookworm", "/r/.tmp-x-1"}},
		{"eatmydata", bootstrap.CreateOptions{Suite: "bookworm"}, "/usr/bin/eatmydata",
			[]string{"/usr/bin/eatmydata", "debootstrap", "--variant=minbase", "--include=" + base, "bookworm", "/r/.tmp-x-1"}},
		{"mirror and packages", bootstrap.CreateOptions{Suite: "sid", Mirror: "http://mirror.example/debian", Packages: []string{"vim", "git", "build-essential", "vim"}}, "",
			[]string{"debootstrap", "--variant=minbase", "--include=build-essential,ca-certificates,dbus,git,python3,systemd,vim", "sid", "/r/.tmp-x-1", "http://mirror.example/debian"}},
	} {
		c := bootstrap.DebootstrapCommand(tc.o, "/r/.tmp-x-1", tc.eatmydata)
		if got := append([]string{c.Path}, c.Args...); !slices.Equal(got, tc.want) {
			t.Errorf("%s: DebootstrapCommand = %q, want %q", tc.name, got, tc.want)
		}
		if !slices.Contains(c.Env, "LC_ALL=C") {
			t.Errorf("%s: env %q lacks LC_ALL=C, which the progress parser relies on", tc.name, c.Env)
		}
	}
}

func TestPackages(t *testing.T) {
	got := bootstrap.Packages([]string{" systemd", "", "zsh", "apt", "zsh"})
	want := []string{"apt", "ca-certificates", "dbus", "git", "python3", "systemd", "zsh"}
	if !slices.Equal(got, want) {
		t.Errorf("Packages = %q, want %q", got, want)
	}
}

func TestMachineName(t *testing.T) {
	for _, name := range []string{"bookworm", "a_b+c.d", strings.Repeat("x", 64), "Z"} {
		got, err := bootstrap.MachineName("nrt-im-", name)
		if err != nil || len(got) > 63 || !strings.HasPrefix(got, "nrt-im-") {
			t.Errorf("MachineName(%q) = %q, %v: want at most 63 characters with the prefix", name, got, err)
		}
		for _, c := range got {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				t.Errorf("MachineName(%q) = %q: %q is not valid in a machine name", name, got, c)
			}
		}
		if again, _ := bootstrap.MachineName("nrt-im-", name); got == again {
			t.Errorf("MachineName(%q) twice = %q: want unique names", name, got)
		}
	}
}

func TestLoginSpec(t *testing.T) {
	s := bootstrap.LoginSpec("/r/img", "nrt-im-x", []string{"true"}, false)
	if s.Directory != "/r/img" || s.Ephemeral || s.Console != "pipe" || s.ResolvConf != "copy-host" || !s.Quiet || !slices.Equal(s.Command, []string{"true"}) {
		t.Errorf("LoginSpec(pipe) = %+v", s)
	}
	if s := bootstrap.LoginSpec("/r/img", "m", nil, true); s.Console != "interactive" || s.Command != nil {
		t.Errorf("LoginSpec(tty) = %+v", s)
	}
}

func TestFstabLine(t *testing.T) {
	for _, tc := range []struct{ file, root, want string }{
		{"/var/lib/nspawn-runner.btrfs", "/var/lib/nspawn-runner", "/var/lib/nspawn-runner.btrfs /var/lib/nspawn-runner btrfs loop,nofail 0 0"},
		{"/srv/my images.btrfs", "/srv/my images", `/srv/my\040images.btrfs /srv/my\040images btrfs loop,nofail 0 0`},
	} {
		if got := bootstrap.FstabLine(tc.file, tc.root); got != tc.want {
			t.Errorf("FstabLine(%q, %q) = %q, want %q", tc.file, tc.root, got, tc.want)
		}
	}
	if got := bootstrap.LoopbackFile("/var/lib/nspawn-runner/"); got != "/var/lib/nspawn-runner.btrfs" {
		t.Errorf("LoopbackFile = %q", got)
	}
}
