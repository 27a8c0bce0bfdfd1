package provision

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/machine"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
	"github.com/nspawn-runner/nspawn-runner/sys/treecopy"
)

// syncBuffer is a bytes.Buffer several goroutines write to, with a way to
// wait until some text appears.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls until s appears in b; the generous deadline only keeps a
// broken test from hanging.
func (b *syncBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for !strings.Contains(b.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("%q never appeared in:\n%s", s, b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// storeKinds are the two kinds of image root: a btrfs filesystem (images
// are subvolumes, copies are snapshots) and a plain directory on the
// host's filesystem (copies are reflinks or plain copies).
var storeKinds = []struct {
	name string
	root func(t *testing.T) string
}{
	{"btrfs", func(t *testing.T) string { return testutil.NewBtrfs(t, 4<<30) }},
	{"dir", func(t *testing.T) string { return filepath.Join(t.TempDir(), "root") }},
}

// seedImage puts a copy of the cached test image at ROOT/name: a
// subvolume on btrfs, a directory elsewhere.
func seedImage(t *testing.T, root, name string) string {
	t.Helper()
	src := testutil.Image(t)
	p := filepath.Join(root, name)
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if ok, _ := btrfs.IsBtrfs(root); ok {
		if err := btrfs.Create(p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := treecopy.Copy(context.Background(), src, p, treecopy.Options{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// newMaintainer returns a maintainer of root with playbooks in dir.
func newMaintainer(t *testing.T, root, dir string, out io.Writer) *Maintainer {
	t.Helper()
	return &Maintainer{
		Store:         &bootstrap.Store{Root: root},
		Runner:        &Runner{Output: out, TempDir: t.TempDir(), CgroupParent: testCgroupParent(t)},
		Dirs:          []string{dir},
		Defaults:      config.Bootstrap{Suite: testutil.ImageSuite},
		Progress:      out,
		MachinePrefix: "nrt-pv-",
	}
}

// treeHash hashes everything about a tree that a change would alter:
// names, types, modes, owners, sizes, modification and change times,
// contents, symlink targets, device numbers and extended attributes.
func treeHash(t *testing.T, root string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(h, "%q %o %d:%d %d %d.%d %d.%d %d\n", rel, st.Mode, st.Uid, st.Gid, st.Size,
			st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Rdev)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "-> %q\n", target)
		case unix.S_IFREG:
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
		}
		buf := make([]byte, 64*1024)
		n, err := unix.Llistxattr(p, buf)
		if err != nil && !errors.Is(err, unix.ENOTSUP) {
			return err
		}
		for _, name := range strings.Split(string(buf[:n]), "\x00") {
			if name == "" {
				continue
			}
			v := make([]byte, 64*1024)
			vn, err := unix.Lgetxattr(p, name, v)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "xattr %q %x\n", name, v[:vn])
		}
		return nil
	})
	if err != nil {
		t.Fatalf("hash %s: %v", root, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// hidden returns the internal entries (workspaces, retired trees) of root.
func hidden(t *testing.T, root, prefix string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(root, prefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const installPlaybook = `- hosts: all
  gather_facts: false
  tasks:
    - name: install a package
      apt:
        name: hello
        update_cache: yes
    - name: write a file
      copy:
        dest: /etc/nrt-pv-provisioned
        content: "provisioned\n"
`

func TestMaintainInstallsAndWrites(t *testing.T) {
	requireAnsible(t)
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) {
			root, dir := kind.root(t), t.TempDir()
			live := seedImage(t, root, "nrt-pv-img")
			writePlaybook(t, dir, "nrt-pv-img.yaml", installPlaybook)
			var out syncBuffer
			m := newMaintainer(t, root, dir, &out)
			// No machine runs: the old image is deleted at once.
			m.Collector = &machine.Manager{Root: root, RunDir: t.TempDir(), Images: m.Store}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			if err := m.Maintain(ctx, ""); err != nil {
				t.Fatalf("Maintain: %v\n%s", err, out.String())
			}
			if _, err := os.Stat(filepath.Join(live, "usr/bin/hello")); err != nil {
				t.Errorf("the package is not installed: %v", err)
			}
			if got := readFile(t, filepath.Join(live, "etc/nrt-pv-provisioned")); got != "provisioned\n" {
				t.Errorf("provisioned file = %q", got)
			}
			if kind.name == "btrfs" {
				if ok, err := btrfs.IsSubvolume(live); !ok || err != nil {
					t.Errorf("the maintained image is not a subvolume: %v %v", ok, err)
				}
			}
			if ws := hidden(t, root, ".tmp-"); len(ws) != 0 {
				t.Errorf("workspaces left: %v", ws)
			}
			if retired := hidden(t, root, ".retired-"); len(retired) != 0 {
				t.Errorf("retired trees = %v, want the unused old image deleted at once", retired)
			}
			meta, err := m.Store.ReadMeta("nrt-pv-img")
			if err != nil || meta.Maintained.IsZero() {
				t.Errorf("Maintained not recorded: %+v %v", meta, err)
			}
			for _, s := range []string{"chroot-maintenance nrt-pv-img: copying", "running playbook", "TASK [install a package]", "done in", "the old one, unused, is deleted"} {
				if !strings.Contains(out.String(), s) {
					t.Errorf("progress lacks %q:\n%s", s, out.String())
				}
			}
		})
	}
}

func TestMaintainFailedTaskLeavesImage(t *testing.T) {
	requireAnsible(t)
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) {
			root, dir := kind.root(t), t.TempDir()
			live := seedImage(t, root, "nrt-pv-img")
			writePlaybook(t, dir, "nrt-pv-img.yml", `- hosts: all
  gather_facts: false
  tasks:
    - name: change something first
      copy:
        dest: /etc/nrt-pv-changed
        content: "changed\n"
    - name: remove something
      file:
        path: /usr/bin/git
        state: absent
    - name: break on purpose
      command: /bin/false
`)
			before := treeHash(t, live)
			var out syncBuffer
			m := newMaintainer(t, root, dir, &out)
			err := m.Maintain(context.Background(), "nrt-pv-img")
			var pe *PlaybookError
			if !errors.As(err, &pe) || pe.Task != "break on purpose" {
				t.Fatalf("Maintain = %v, want a failure of task %q\n%s", err, "break on purpose", out.String())
			}
			if !strings.Contains(err.Error(), `"break on purpose"`) || !strings.Contains(err.Error(), "unchanged") {
				t.Errorf("Maintain error = %q: does not name the task or say the image is unchanged", err)
			}
			if after := treeHash(t, live); after != before {
				t.Errorf("the live image changed: tree hash %s, was %s", after, before)
			}
			if ws := hidden(t, root, ".tmp-"); len(ws) != 0 {
				t.Errorf("workspaces left: %v", ws)
			}
			if r := hidden(t, root, ".retired-"); len(r) != 0 {
				t.Errorf("retired trees after a failure: %v", r)
			}
			if meta, _ := m.Store.ReadMeta("nrt-pv-img"); !meta.Maintained.IsZero() {
				t.Errorf("a failed maintenance was recorded: %+v", meta)
			}
		})
	}
}

// TestMaintainOneAtATime runs a maintenance whose playbook waits for the
// test, and meanwhile a second one with NoWait (refused) and a third one
// (waits, then runs).
func TestMaintainOneAtATime(t *testing.T) {
	requireAnsible(t)
	root, dir := testutil.NewBtrfs(t, 4<<30), t.TempDir()
	seedImage(t, root, "nrt-pv-img")
	writePlaybook(t, dir, "nrt-pv-img.yaml", `- hosts: all
  gather_facts: false
  tasks:
    - name: wait for the test
      wait_for:
        path: /nrt-pv-go
        timeout: 600
`)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var out1, out3 syncBuffer
	m1 := newMaintainer(t, root, dir, &out1)
	done1 := make(chan error, 1)
	go func() { done1 <- m1.Maintain(ctx, "nrt-pv-img") }()
	out1.waitFor(t, "TASK [wait for the test]")

	var out2 syncBuffer
	m2 := newMaintainer(t, root, dir, &out2)
	m2.NoWait = true
	err := m2.Maintain(ctx, "nrt-pv-img")
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "--no-wait") {
		t.Errorf("a second maintenance with NoWait = %v, want ErrBusy", err)
	}

	m3 := newMaintainer(t, root, dir, &out3)
	done3 := make(chan error, 1)
	go func() { done3 <- m3.Maintain(ctx, "nrt-pv-img") }()
	out3.waitFor(t, "waiting for another create, remove or maintenance")
	if strings.Contains(out3.String(), "running playbook") {
		t.Fatalf("the third maintenance did not wait:\n%s", out3.String())
	}

	ws := hidden(t, root, ".tmp-nrt-pv-img-")
	if len(ws) != 1 {
		t.Fatalf("workspaces = %v, want the first maintenance's", ws)
	}
	if err := os.WriteFile(filepath.Join(ws[0], "nrt-pv-go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-done1; err != nil {
		t.Fatalf("first maintenance: %v\n%s", err, out1.String())
	}
	if err := <-done3; err != nil {
		t.Fatalf("third maintenance: %v\n%s", err, out3.String())
	}
	if r := hidden(t, root, ".retired-"); len(r) != 2 {
		t.Errorf("retired trees = %v, want one per maintenance", r)
	}
}

// TestReplaceWhileInUse: a machine running on the image and an overlay
// with the image as its lower layer (how jobs use images) keep the old
// tree through a maintenance; the image path then holds the new one.
func TestReplaceWhileInUse(t *testing.T) {
	requireAnsible(t)
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) {
			root, dir := kind.root(t), t.TempDir()
			live := seedImage(t, root, "nrt-pv-img")
			if err := os.WriteFile(filepath.Join(live, "etc/nrt-pv-version"), []byte("old\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			writePlaybook(t, dir, "nrt-pv-img.yaml", `- hosts: all
  gather_facts: false
  tasks:
    - name: new version
      copy:
        dest: /etc/nrt-pv-version
        content: "new\n"
`)
			// An overlay on the image, as a job's machine has.
			ovl := t.TempDir()
			for _, d := range []string{"upper", "work", "merged"} {
				if err := os.Mkdir(filepath.Join(ovl, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			mnt, err := mount.Overlay(filepath.Join(ovl, "merged"), []string{live}, filepath.Join(ovl, "upper"), filepath.Join(ovl, "work"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = mnt.Unmount() })

			// A machine running on the image itself.
			cmd := exec.Command("systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--read-only",
				"--machine=nrt-pv-hold", "--directory="+live, "--console=pipe", "--",
				"/bin/sh", "-c", "echo ready; read x; cat /etc/nrt-pv-version")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			// A cgroup of its own, or nspawn --keep-unit leaves payload/
			// and supervisor/ in ours.
			grp, err := cgroup.Start(cmd, fmt.Sprintf("nrt-pv-hold-%d", os.Getpid()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := grp.Close(context.Background()); err != nil {
					t.Error(err)
				}
			})
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				_ = cmd.Wait()
			})
			lines := bufio.NewReader(stdout)
			if l, err := lines.ReadString('\n'); l != "ready\n" {
				t.Fatalf("machine: %q, %v\n%s", l, err, stderr.String())
			}

			var out syncBuffer
			m := newMaintainer(t, root, dir, &out)
			if err := m.Maintain(context.Background(), "nrt-pv-img"); err != nil {
				t.Fatalf("Maintain: %v\n%s", err, out.String())
			}
			if got := readFile(t, filepath.Join(live, "etc/nrt-pv-version")); got != "new\n" {
				t.Errorf("image after maintenance: version %q, want new", got)
			}
			if got := readFile(t, filepath.Join(ovl, "merged/etc/nrt-pv-version")); got != "old\n" {
				t.Errorf("overlay on the old image: version %q, want old", got)
			}
			if _, err := io.WriteString(stdin, "go\n"); err != nil {
				t.Fatal(err)
			}
			l, _ := lines.ReadString('\n')
			if err := cmd.Wait(); err != nil || l != "old\n" {
				t.Errorf("running machine after maintenance: %q, %v, want old\n%s", l, err, stderr.String())
			}
			// Once nothing uses it, the old tree can go (what gc does).
			if err := mnt.Unmount(); err != nil {
				t.Fatal(err)
			}
			retired := hidden(t, root, ".retired-")
			if len(retired) != 1 {
				t.Fatalf("retired = %v", retired)
			}
			if err := m.Store.RemoveTree(retired[0]); err != nil {
				t.Errorf("removing the retired tree: %v", err)
			}
		})
	}
}

// TestMaintainCreatesAndRecreates runs debootstrap for real: chroot-create
// of an image with a playbook runs the playbook on the new tree before it
// is put in place (no retired tree, no copy), and with
// nspawn_runner_maint_recreate maintenance rebuilds it from scratch and
// deletes the old tree at once when no machine uses it.
func TestMaintainCreatesAndRecreates(t *testing.T) {
	requireAnsible(t)
	testutil.RequireBinary(t, "debootstrap")
	root, dir := testutil.NewBtrfs(t, 4<<30), t.TempDir()
	pb := `- hosts: all
  gather_facts: false
  vars:
    nspawn_runner_chroot_suite: bookworm
    nspawn_runner_include: [less]
%s  tasks:
    - name: write a file
      copy:
        dest: /etc/nrt-pv-provisioned
        content: "provisioned\n"
`
	writePlaybook(t, dir, "nrt-pv-new.yaml", fmt.Sprintf(pb, ""))
	var out syncBuffer
	m := newMaintainer(t, root, dir, &out)
	m.Collector = &machine.Manager{Root: root, RunDir: t.TempDir(), Images: m.Store}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	// chroot-create's flags add to the playbook's packages.
	if err := m.Create(ctx, "nrt-pv-new", CreateRequest{Include: []string{"file"}, Progress: &out}); err != nil {
		t.Fatalf("Create: %v\n%s", err, out.String())
	}
	live := filepath.Join(root, "nrt-pv-new")
	for _, p := range []string{"etc/nrt-pv-provisioned", "usr/bin/less", "usr/bin/file", "usr/bin/python3"} {
		if _, err := os.Stat(filepath.Join(live, p)); err != nil {
			t.Errorf("created image lacks %s: %v", p, err)
		}
	}
	for _, s := range []string{"chroot-create nrt-pv-new: creating from bookworm", "debootstrap: base system installed", "chroot-create nrt-pv-new: running playbook", "image created"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("progress lacks %q:\n%s", s, out.String())
		}
	}
	if strings.Contains(out.String(), "copying") {
		t.Errorf("Create provisioned a copy:\n%s", out.String())
	}
	for _, prefix := range []string{".retired-", ".tmp-", ".swap-"} {
		if left := hidden(t, root, prefix); len(left) != 0 {
			t.Errorf("Create left %v", left)
		}
	}
	meta, err := m.Store.ReadMeta("nrt-pv-new")
	if err != nil || meta.Suite != "bookworm" || meta.Created.IsZero() || meta.Maintained.IsZero() {
		t.Errorf("metadata = %+v, %v", meta, err)
	}

	if err := os.WriteFile(filepath.Join(live, "etc/nrt-pv-marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	writePlaybook(t, dir, "nrt-pv-new.yaml", fmt.Sprintf(pb, "    nspawn_runner_maint_recreate: true\n"))
	if err := m.Maintain(ctx, "nrt-pv-new"); err != nil {
		t.Fatalf("Maintain (recreate): %v\n%s", err, out.String())
	}
	if _, err := os.Stat(filepath.Join(live, "etc/nrt-pv-marker")); err == nil {
		t.Errorf("the marker survived a recreate")
	}
	if _, err := os.Stat(filepath.Join(live, "etc/nrt-pv-provisioned")); err != nil {
		t.Errorf("the recreated image is not provisioned: %v", err)
	}
	if !strings.Contains(out.String(), "recreating") {
		t.Errorf("progress lacks the recreate phase:\n%s", out.String())
	}
	if left := hidden(t, root, ".retired-"); len(left) != 0 {
		t.Errorf("the unused old image was kept: %v", left)
	}
}

// TestCreateExisting: chroot-create of an image that exists, with a
// playbook, fails before anything is built and leaves the image alone.
func TestCreateExisting(t *testing.T) {
	testutil.RequireRoot(t)
	root, dir := filepath.Join(t.TempDir(), "root"), t.TempDir()
	live := seedImage(t, root, "nrt-pv-img")
	writePlaybook(t, dir, "nrt-pv-img.yaml", installPlaybook)
	before := treeHash(t, live)
	var out syncBuffer
	m := newMaintainer(t, root, dir, &out)
	err := m.Create(context.Background(), "nrt-pv-img", CreateRequest{})
	if !errors.Is(err, bootstrap.ErrExists) || strings.Contains(err.Error(), "nspawn-runner") {
		t.Errorf("Create of an existing image = %v, want ErrExists without CLI advice", err)
	}
	if strings.Contains(out.String(), "debootstrap") || strings.Contains(out.String(), "playbook") {
		t.Errorf("Create of an existing image did something:\n%s", out.String())
	}
	if after := treeHash(t, live); after != before {
		t.Errorf("the image changed")
	}
	if left := hidden(t, root, ".tmp-"); len(left) != 0 {
		t.Errorf("workspaces left: %v", left)
	}
}

// TestMaintainCancelled: a maintenance stopped in the middle of its
// playbook (SIGTERM of chroot-maintenance) stops ansible and the commands
// it runs in the workspace, removes the workspace and leaves the image.
func TestMaintainCancelled(t *testing.T) {
	requireAnsible(t)
	root, dir := testutil.NewBtrfs(t, 4<<30), t.TempDir()
	live := seedImage(t, root, "nrt-pv-img")
	writePlaybook(t, dir, "nrt-pv-img.yaml", `- hosts: all
  gather_facts: false
  tasks:
    - name: take long
      command: sleep 600
`)
	before := treeHash(t, live)
	var out syncBuffer
	m := newMaintainer(t, root, dir, &out)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Maintain(ctx, "nrt-pv-img") }()
	out.waitFor(t, "TASK [take long]")
	ws := hidden(t, root, ".tmp-nrt-pv-img-")
	if len(ws) != 1 {
		t.Fatalf("workspaces = %v", ws)
	}
	// Wait until the command runs inside the workspace, then stop.
	deadline := time.Now().Add(5 * time.Minute)
	for len(processesIn(ws[0])) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the task never started in %s\n%s", ws[0], out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Maintain after cancel = %v, want context.Canceled", err)
	}
	if left := processesIn(ws[0]); len(left) > 0 {
		t.Errorf("processes still running in the workspace: %v", left)
	}
	if _, err := os.Stat(ws[0]); err == nil {
		t.Errorf("workspace %s left behind", ws[0])
	}
	if after := treeHash(t, live); after != before {
		t.Errorf("the image changed")
	}
}

// processesIn lists the pids of the systemd-nspawn processes running on
// dir (their command line names it). The commands inside run in the
// machine's own pid and mount namespaces, and die with its stub init when
// systemd-nspawn goes.
func processesIn(dir string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte("--directory="+dir+"\x00")) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}
