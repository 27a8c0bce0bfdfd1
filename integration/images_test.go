package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
)

// imHost is a root directory and a config for the image commands, driven
// through the built binary.
type imHost struct {
	bin, dir, root, config string
}

func newIMHost(t *testing.T, bin string) *imHost {
	t.Helper()
	dir := t.TempDir()
	h := &imHost{bin: bin, dir: dir, root: filepath.Join(dir, "root"), config: filepath.Join(dir, "nspawn-runner.yaml")}
	// Registered after TempDir, so it runs before the directory is
	// removed: never let RemoveAll walk into a mounted /proc or /sys.
	t.Cleanup(func() { imKillAndUnmount(t, dir) })
	// Logins get cgroups below a parent of this test's, removed after.
	cgParent := "nrt-im-cg-" + filepath.Base(dir)
	t.Cleanup(func() {
		if hier, err := cgroup.Detect(); err == nil {
			_ = hier.Remove(cgParent)
		}
	})
	cfg := "root: " + h.root + "\nplaybook_dirs: [" + filepath.Join(dir, "playbooks") + "]\nmachine:\n  cgroup_parent: " + cgParent + "\n"
	if err := os.WriteFile(h.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *imHost) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, h.bin, append([]string{"--config", h.config, "--root", h.root}, args...)...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

// run runs the binary and returns stdout, stderr and the exit code.
func (h *imHost) run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := h.command(ctx, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	case err != nil:
		t.Fatalf("%s: %v", cmd, err)
	}
	return out.String(), errb.String(), 0
}

func (h *imHost) must(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := h.run(t, args...)
	if code != 0 {
		t.Fatalf("nspawn-runner %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// entries lists the root, hidden entries included.
func (h *imHost) entries(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(h.root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// imMountsBelow lists the mount points at or below dir.
func imMountsBelow(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// imProcessesIn returns the pids whose root or cwd lies below dir.
func imProcessesIn(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		for _, l := range []string{"root", "cwd"} {
			if p, err := os.Readlink(filepath.Join("/proc", e.Name(), l)); err == nil && (p == dir || strings.HasPrefix(p, dir+"/")) {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// imKillAndUnmount kills, by pid, what a failed test left running in dir,
// and unmounts what is mounted below it, deepest first.
func imKillAndUnmount(t *testing.T, dir string) {
	for _, pid := range imProcessesIn(dir) {
		t.Logf("killing leftover process %d in %s", pid, dir)
		unix.Kill(pid, unix.SIGKILL)
	}
	mps := imMountsBelow(dir)
	for i := len(mps) - 1; i >= 0; i-- {
		if err := unix.Unmount(mps[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmount %s: %v", mps[i], err)
		}
	}
}

// startCreate starts chroot-create and returns it with a channel that gets
// each line of its stderr.
func (h *imHost) startCreate(t *testing.T, name string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := h.command(context.Background(), "chroot-create", name, "--suite", "bookworm")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	lines := make(chan string, 1000)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return cmd, lines
}

// waitLine waits for a line containing want.
func waitLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	timeout := time.After(10 * time.Minute)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("chroot-create ended before printing %q", want)
			}
			if strings.Contains(l, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q from chroot-create in 10 minutes", want)
		}
	}
}

// The "done when" of the foundation issue, through the built binary on a
// plain directory: a create killed with SIGKILL in the middle of
// debootstrap leaves no image, and the next create cleans up its debris and
// succeeds; chroot-login enters the image, chroot-list shows it,
// chroot-remove removes it.
func TestImagesDoneWhen(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "debootstrap")
	testutil.RequireBinary(t, "ansible-playbook")
	testutil.RequireBinary(t, "systemd-nspawn")
	h := newIMHost(t, binary(t))

	// Killed while debootstrap unpacks in the target, with /proc and /sys
	// mounted there: the worst moment to die.
	cmd, lines := h.startCreate(t, "bookworm")
	waitLine(t, lines, "debootstrap: unpacking required packages")
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	for range lines {
	}
	var debris []string
	for _, e := range h.entries(t) {
		if e == "bookworm" {
			t.Fatal("a killed chroot-create left an image")
		}
		if strings.HasPrefix(e, ".tmp-bookworm-") {
			debris = append(debris, filepath.Join(h.root, e))
		}
	}
	t.Logf("a SIGKILLed create left %q, mounts %q", debris, imMountsBelow(h.root))

	// This time the image has a playbook: it runs on the new tree before
	// the image appears, and no old tree is left behind (issue 12).
	pbDir := filepath.Join(h.dir, "playbooks")
	if err := os.MkdirAll(pbDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pbDir, "bookworm.yaml"), []byte(`- hosts: all
  gather_facts: false
  tasks:
    - name: mark the image
      copy:
        dest: /etc/nrt-im-provisioned
        content: "yes\n"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs, code := h.run(t, "-v", "chroot-create", "bookworm", "--suite", "bookworm")
	if code != 0 {
		t.Fatalf("chroot-create after a killed one: exit %d\n%s", code, errs)
	}
	for _, e := range h.entries(t) {
		if strings.HasPrefix(e, ".tmp-") || strings.HasPrefix(e, ".retired-") || strings.HasPrefix(e, ".swap-") {
			t.Errorf("the next create left %s; its stderr:\n%s", e, errs)
		}
	}
	if b, err := os.ReadFile(filepath.Join(h.root, "bookworm", "etc", "nrt-im-provisioned")); err != nil || string(b) != "yes\n" {
		t.Errorf("chroot-create did not run the image's playbook: %q, %v\n%s", b, err, errs)
	}
	if err := os.Remove(filepath.Join(pbDir, "bookworm.yaml")); err != nil {
		t.Fatal(err)
	}
	if m := imMountsBelow(h.root); len(m) != 0 {
		t.Errorf("mounts left below the root: %q", m)
	}
	for _, d := range debris {
		if p := imProcessesIn(d); len(p) != 0 {
			t.Errorf("processes %v still run in the killed create's workspace", p)
		}
	}

	h.must(t, "chroot-login", "bookworm", "--", "true")
	ver := h.must(t, "chroot-login", "bookworm", "--", "cat", "/etc/debian_version")
	if !strings.HasPrefix(ver, "12.") {
		t.Errorf("chroot-login bookworm -- cat /etc/debian_version = %q, want 12.x", ver)
	}
	if _, _, code := h.run(t, "chroot-login", "bookworm", "--", "sh", "-c", "exit 3"); code != 3 {
		t.Errorf("chroot-login of a command exiting 3 = exit %d, want 3", code)
	}

	list := h.must(t, "chroot-list")
	if !strings.HasPrefix(list, "NAME") || !strings.Contains(list, "bookworm") || !strings.Contains(list, "directory") || !strings.Contains(list, filepath.Join(h.root, "bookworm")) {
		t.Errorf("chroot-list =\n%s", list)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(h.must(t, "chroot-list", "--json")), &rows); err != nil || len(rows) != 1 || rows[0]["name"] != "bookworm" || rows[0]["suite"] != "bookworm" {
		t.Errorf("chroot-list --json = %v, %v", rows, err)
	}

	_, errs, code = h.run(t, "chroot-create", "bookworm", "--suite", "bookworm")
	if code != 1 || !strings.Contains(errs, "already exists") {
		t.Errorf("chroot-create of an existing image = exit %d, %q", code, errs)
	}

	h.must(t, "chroot-remove", "bookworm")
	if _, err := os.Lstat(filepath.Join(h.root, "bookworm")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("chroot-remove left the image: %v", err)
	}
	if list := h.must(t, "chroot-list"); strings.Contains(list, "bookworm") {
		t.Errorf("chroot-list after chroot-remove =\n%s", list)
	}
	_, errs, code = h.run(t, "chroot-login", "bookworm", "--", "true")
	if code != 1 || !strings.Contains(errs, `image "bookworm" not found`) || !strings.Contains(errs, "chroot-create") {
		t.Errorf("chroot-login of a removed image = exit %d, %q", code, errs)
	}
	for _, e := range h.entries(t) {
		if e != ".lock" && e != ".meta" {
			t.Errorf("root holds %s after chroot-remove", e)
		}
	}
}

func TestImagesCLI(t *testing.T) {
	testutil.RequireRoot(t)
	bin := binary(t)

	// SIGTERM (gitlab-runner's and systemd's way to stop) ends a create
	// and removes its workspace before the process exits.
	t.Run("sigterm", func(t *testing.T) {
		testutil.RequireBinary(t, "debootstrap")
		h := newIMHost(t, bin)
		cmd, lines := h.startCreate(t, "img")
		waitLine(t, lines, "debootstrap: retrieving packages")
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("chroot-create after SIGTERM: %v, want exit 1", err)
		}
		for _, e := range h.entries(t) {
			if e != ".lock" {
				t.Errorf("SIGTERMed create left %s", e)
			}
		}
		if p := imProcessesIn(h.root); len(p) != 0 {
			t.Errorf("processes %v still run in the root", p)
		}
	})

	t.Run("hostile-names", func(t *testing.T) {
		h := newIMHost(t, bin)
		for _, name := range []string{"../../etc", ".hidden", "a/b", "..", "a\x01b", "a b", strings.Repeat("a", 65), "x\n"} {
			for _, args := range [][]string{
				{"chroot-create", name},
				{"chroot-login", name, "--", "true"},
				{"chroot-remove", name},
			} {
				_, errs, code := h.run(t, args...)
				if code != 1 || strings.Count(strings.TrimSpace(errs), "\n") != 0 || !strings.Contains(errs, config.ImageNameRule) {
					t.Errorf("nspawn-runner %q = exit %d, stderr %q: want exit 1 and one line naming the rule", args, code, errs)
				}
			}
		}
		if _, err := os.Stat(h.root); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("hostile names created the root: %q", h.entries(t))
		}
		if _, err := os.Stat("/etc/debian_version"); err != nil {
			t.Errorf("/etc/debian_version: %v", err)
		}
	})

	t.Run("missing", func(t *testing.T) {
		h := newIMHost(t, bin)
		if err := os.MkdirAll(filepath.Join(h.root, "sid"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"chroot-login", "nope"}, {"chroot-remove", "nope"}} {
			_, errs, code := h.run(t, args...)
			if code != 1 || !strings.Contains(errs, `image "nope" not found in `+h.root+"; available: sid") {
				t.Errorf("nspawn-runner %q = exit %d, %q", args, code, errs)
			}
		}
	})

	t.Run("setup-loopback", func(t *testing.T) {
		testutil.RequireBinary(t, "mkfs.btrfs")
		h := newIMHost(t, bin)
		file := filepath.Join(h.dir, "images.btrfs")
		t.Cleanup(func() {
			// Unmount (newIMHost's cleanup runs after this one) and detach.
			for unix.Unmount(h.root, unix.MNT_DETACH) == nil {
			}
			out, _ := exec.Command("losetup", "-j", file).Output()
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if dev, _, ok := strings.Cut(l, ":"); ok {
					testutil.Run(t, "losetup", "-d", dev)
				}
			}
		})
		out := h.must(t, "setup", "--no-sysctl", "--loopback", "1G", "--loopback-file", file)
		if want := file + " " + h.root + " btrfs loop,nofail 0 0"; !strings.Contains(out, want) {
			t.Errorf("setup output lacks the fstab line %q:\n%s", want, out)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(h.root, &st); err != nil || st.Type != unix.BTRFS_SUPER_MAGIC {
			t.Errorf("root is not btrfs after setup --loopback: %v", err)
		}
		out = h.must(t, "setup", "--no-sysctl", "--loopback", "1G", "--loopback-file", file)
		if !strings.Contains(out, "already mounted") {
			t.Errorf("second setup says %q, want already mounted", out)
		}
		if _, errs, code := h.run(t, "setup", "--loopback", "lots"); code != 2 || !strings.Contains(errs, "8G") {
			t.Errorf("setup --loopback lots = exit %d, %q", code, errs)
		}
	})

	// setup installs the sysctl.d drop-in and raises the limits below it,
	// here in a tree laid out like /proc/sys (the host's own limits are
	// never changed by a test).
	t.Run("setup-limits", func(t *testing.T) {
		h := newIMHost(t, bin)
		proc := filepath.Join(h.dir, "proc-sys")
		for name, v := range map[string]string{"fs/inotify/max_user_instances": "128", "fs/inotify/max_user_watches": "9999999", "kernel/keys/maxkeys": "200", "kernel/keys/maxbytes": "20000"} {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(proc, name)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(proc, name), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		dropIn := filepath.Join(h.dir, "sysctl.d", "60-nspawn-runner.conf")
		out := h.must(t, "setup", "--sysctl-file", dropIn, "--proc-sys", proc)
		if !strings.Contains(out, "raised fs.inotify.max_user_instances from 128 to 8192") || strings.Contains(out, "max_user_watches") {
			t.Errorf("setup output:\n%s\nwant max_user_instances raised, max_user_watches (higher already) left alone", out)
		}
		if b, err := os.ReadFile(filepath.Join(proc, "fs/inotify/max_user_instances")); err != nil || string(b) != "8192\n" {
			t.Errorf("max_user_instances = %q, %v; want 8192", b, err)
		}
		if b, err := os.ReadFile(dropIn); err != nil || !strings.Contains(string(b), "fs.inotify.max_user_instances = 8192") {
			t.Errorf("drop-in %s = %q, %v", dropIn, b, err)
		}
		if out := h.must(t, "setup", "--sysctl-file", dropIn, "--proc-sys", proc); !strings.Contains(out, "are in place") {
			t.Errorf("second setup says %q, want the limits in place", out)
		}
	})
}
