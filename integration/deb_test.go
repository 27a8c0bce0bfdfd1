package integration

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

// make deb builds a package that installs with dpkg, runs, and leaves
// nothing once removed and purged. It installs into this host's /usr and
// /etc (the package's own paths; nothing is there before: the test stops
// if nspawn-runner is installed already), and its postinst raises the
// host's kernel limits as a real install does (never lowers one).
func TestDebianPackage(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"dpkg", "dpkg-deb", "make"} {
		testutil.RequireBinary(t, tool)
	}
	if exec.Command("dpkg", "-s", "nspawn-runner").Run() == nil {
		t.Fatal("nspawn-runner is installed on this host already: the test would replace it")
	}
	const setupDropIn = "/etc/sysctl.d/60-nspawn-runner.conf"
	_, err := os.Stat(setupDropIn)
	hadDropIn := err == nil
	t.Cleanup(func() {
		// Whatever happened, nothing of the package stays.
		_ = exec.Command("dpkg", "--purge", "nspawn-runner").Run()
		if !hadDropIn {
			os.Remove(setupDropIn)
		}
	})

	out := t.TempDir()
	cmd := exec.Command("make", "-s", "-C", "..", "deb", "DEB_OUT="+out, "DEB_VERSION=1.0~test")
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(runtime.GOROOT(), "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "nspawn-runner_1.0~test_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %q", debs)
	}
	deb := debs[0]
	files := packageFiles(t, deb)
	for _, want := range []string{"/usr/bin/nspawn-runner", "/usr/lib/nspawn-runner/nspawn-runner-stage", "/etc/nspawn-runner.yaml", "/lib/systemd/system/nspawn-runner-gc.timer",
		"/usr/lib/sysctl.d/60-nspawn-runner.conf", "/usr/share/man/man1/nspawn-runner.1.gz",
		"/usr/share/doc/nspawn-runner/examples/nspawn-runner.cron", "/usr/share/doc/nspawn-runner/examples/bookworm.yaml"} {
		if !files[want] {
			t.Errorf("package lacks %s", want)
		}
	}

	testutil.Run(t, "dpkg", "-i", deb)
	got := testutil.Run(t, "/usr/bin/nspawn-runner", "--version")
	if !strings.Contains(got, "1.0~test") {
		t.Errorf("--version = %q, want 1.0~test", got)
	}
	// toml names the stage executable as run_exec, and the stage
	// executable finds nspawn-runner for what it hands over (help here).
	const stageExe = "/usr/lib/nspawn-runner/nspawn-runner-stage"
	if toml := testutil.Run(t, "/usr/bin/nspawn-runner", "--config", "/dev/null", "toml", "bookworm"); !strings.Contains(toml, `run_exec = "`+stageExe+`"`) ||
		!strings.Contains(toml, `prepare_exec = "/usr/bin/nspawn-runner"`) {
		t.Errorf("toml of the installed package:\n%s", toml)
	}
	if help, err := exec.Command(stageExe, "--help").CombinedOutput(); err != nil || !strings.Contains(string(help), "chroot-create") {
		t.Errorf("%s --help (handed to nspawn-runner): %v\n%s", stageExe, err, help)
	}
	if b, err := os.ReadFile("/usr/lib/sysctl.d/60-nspawn-runner.conf"); err != nil || !strings.Contains(string(b), "fs.inotify.max_user_instances = 8192") {
		t.Errorf("installed drop-in: %q, %v", b, err)
	}
	man, err := exec.Command("sh", "-c", "zcat /usr/share/man/man1/nspawn-runner.1.gz").Output()
	if err != nil || !bytes.Contains(man, []byte(".TH nspawn-runner 1")) || !bytes.Contains(man, []byte("chroot-create")) {
		t.Errorf("man page: %v\n%.300s", err, man)
	}
	// doctor with the installed default config, on a root and run dir of
	// the test's own: it runs and reports (exit 1: no image there).
	dir := t.TempDir()
	d := exec.Command("/usr/bin/nspawn-runner", "--root", filepath.Join(dir, "root"), "--run-dir", filepath.Join(dir, "run"), "doctor", "--runner-config", filepath.Join(dir, "none.toml"))
	var dout, derr bytes.Buffer
	d.Stdout, d.Stderr = &dout, &derr
	err = d.Run()
	var ee *exec.ExitError
	if (err != nil && !errors.As(err, &ee)) || !strings.Contains(dout.String(), "systemd-nspawn") || !strings.Contains(dout.String(), "FAIL  root") {
		t.Errorf("doctor: %v\n%s\n%s", err, dout.String(), derr.String())
	}
	// An admin's setup installs the drop-in in /etc too; purge removes it.
	if !hadDropIn {
		testutil.Run(t, "/usr/bin/nspawn-runner", "setup", "--sysctl-only")
	}

	testutil.Run(t, "dpkg", "-r", "nspawn-runner")
	if _, err := os.Stat("/usr/bin/nspawn-runner"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after dpkg -r: /usr/bin/nspawn-runner: %v", err)
	}
	if _, err := os.Stat("/etc/nspawn-runner.yaml"); err != nil {
		t.Errorf("after dpkg -r the conffile should stay until purge: %v", err)
	}
	testutil.Run(t, "dpkg", "-P", "nspawn-runner")
	var left []string
	for f := range files {
		if dirShared(f) {
			continue
		}
		if _, err := os.Lstat(f); !errors.Is(err, fs.ErrNotExist) {
			left = append(left, f)
		}
	}
	for _, f := range []string{"/etc/nspawn-runner.yaml", "/usr/share/doc/nspawn-runner", "/var/lib/dpkg/info/nspawn-runner.list"} {
		if _, err := os.Lstat(f); !errors.Is(err, fs.ErrNotExist) {
			left = append(left, f)
		}
	}
	if !hadDropIn {
		if _, err := os.Lstat(setupDropIn); !errors.Is(err, fs.ErrNotExist) {
			left = append(left, setupDropIn)
		}
	}
	if len(left) > 0 {
		t.Errorf("left after purge: %q", left)
	}
	if exec.Command("dpkg", "-s", "nspawn-runner").Run() == nil {
		t.Error("dpkg -s still knows nspawn-runner after purge")
	}
}

// packageFiles lists the paths in a .deb (absolute, directories too).
func packageFiles(t *testing.T, deb string) map[string]bool {
	t.Helper()
	list, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(list))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			continue
		}
		p := strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")
		if p != "" {
			files[p] = true
		}
	}
	return files
}

// dirShared: directories other packages own too, which stay.
func dirShared(p string) bool {
	switch p {
	case "/etc", "/lib", "/lib/systemd", "/lib/systemd/system", "/usr", "/usr/bin", "/usr/lib", "/usr/lib/sysctl.d",
		"/usr/share", "/usr/share/doc", "/usr/share/man", "/usr/share/man/man1":
		return true
	}
	return false
}
