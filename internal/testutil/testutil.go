// Package testutil gates tests on root and tools, and builds the throwaway
// filesystems and the cached base image that root tests run against.
//
// Outside CI a test whose requirement is missing is skipped with the reason;
// in CI (CI=true) the same test fails, so that CI always runs every test.
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/flock"
)

// InCI reports whether the tests run in CI, where nothing may be skipped.
func InCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "0" && v != "false"
}

func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s (CI=true: gated tests must run in CI)", msg)
	}
	t.Skip(msg)
}

// RequireRoot skips (or fails in CI) a test that needs root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "needs root (run the tests as root, e.g. sudo make test)")
	}
}

// RequireBinary skips (or fails in CI) a test that needs a program on PATH,
// and returns its path.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		missing(t, "needs %s on PATH (apt-get install it; see .ci/run)", name)
	}
	return p
}

// Run runs a command and fails the test with its output if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// NewBtrfs makes a sparse file of size bytes, formats it as btrfs, mounts it
// with a loop device on a fresh directory and returns that directory. The
// mount, the loop device and the file are removed when the test ends.
func NewBtrfs(t testing.TB, size int64) string {
	t.Helper()
	RequireRoot(t)
	RequireBinary(t, "mkfs.btrfs")
	return newLoopFS(t, size, "mkfs.btrfs", "-q")
}

// NewXFS is NewBtrfs for an xfs filesystem with reflink support.
func NewXFS(t testing.TB, size int64) string {
	t.Helper()
	RequireRoot(t)
	RequireBinary(t, "mkfs.xfs")
	return newLoopFS(t, size, "mkfs.xfs", "-q", "-m", "reflink=1")
}

func newLoopFS(t testing.TB, size int64, mkfs string, mkfsArgs ...string) string {
	t.Helper()
	RequireBinary(t, "losetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		t.Fatal(err)
	}
	f.Close()
	Run(t, mkfs, append(mkfsArgs, img)...)
	loop := strings.TrimSpace(Run(t, "losetup", "--find", "--show", img))
	t.Cleanup(func() {
		// Detach even if the test left something mounted inside.
		if out, err := exec.Command("umount", "-R", "-l", mnt).CombinedOutput(); err != nil && !bytes.Contains(out, []byte("not mounted")) {
			t.Logf("umount %s: %v: %s", mnt, err, out)
		}
		if out, err := exec.Command("losetup", "-d", loop).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", loop, err, out)
		}
	})
	if err := unix.Mount(loop, mnt, fsType(mkfs), 0, ""); err != nil {
		t.Fatalf("mount %s on %s: %v", loop, mnt, err)
	}
	return mnt
}

func fsType(mkfs string) string { return strings.TrimPrefix(mkfs, "mkfs.") }

// CacheDir is where expensive test artefacts (the debootstrapped image) are
// kept between runs: $NSPAWN_RUNNER_TEST_CACHE, else
// /var/cache/nspawn-runner-test. It is outside the repository and outside
// every path the product itself uses.
func CacheDir() string {
	if d := os.Getenv("NSPAWN_RUNNER_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/nspawn-runner-test"
}

// Lock takes an exclusive flock on path (created if needed) and returns the
// function that releases it; test binaries of several packages run at once
// and must not build the same cached artefact twice.
func Lock(t testing.TB, path string) func() {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	l, err := flock.Wait(ctx, path, flock.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	return func() { l.Unlock() }
}

// CgroupParent returns a cgroup parent of the test's own (prefix, the
// test process's pid and the test's name), never the default one that
// other tests and a real runner share; when the test ends, RemoveCgroups
// removes it.
func CgroupParent(t testing.TB, prefix string) string {
	t.Helper()
	parent := fmt.Sprintf("%s%d-%s", prefix, os.Getpid(), strings.NewReplacer("/", "-", " ", "-").Replace(t.Name()))
	t.Cleanup(func() { RemoveCgroups(t, parent) })
	return parent
}

// RemoveCgroups removes the cgroup parent (relative to the hierarchies'
// roots), empty by now, with its descendants, from every hierarchy under
// /sys/fs/cgroup: the unified one, and on a hybrid host the v1 ones where
// systemd-nspawn mirrors it.
func RemoveCgroups(t testing.TB, parent string) {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", parent))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", parent))
	for _, d := range dirs {
		var sub []string
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				sub = append(sub, p)
			}
			return nil
		})
		// Deepest first: a cgroup directory goes only once it has no children.
		for i := len(sub) - 1; i >= 0; i-- {
			if err := os.Remove(sub[i]); err != nil && !os.IsNotExist(err) {
				t.Logf("remove cgroup %s: %v", sub[i], err)
			}
		}
	}
}

// NspawnRootGroups records which of payload/ and supervisor/ (what
// systemd-nspawn --keep-unit makes in the cgroup it runs in) exist at the
// root of the cgroup hierarchy at dir, and returns a check that reports,
// as an error of t, those that appeared since: a systemd-nspawn started
// without a cgroup of its own by the code under test. One that existed
// before (left by another process) cannot tell this test's run apart: the
// check says so in the log.
func NspawnRootGroups(t testing.TB, dir string) (check func()) {
	t.Helper()
	before := map[string]bool{}
	for _, d := range []string{"payload", "supervisor"} {
		if _, err := os.Stat(filepath.Join(dir, d)); err == nil {
			before[d] = true
			t.Logf("cgroup %s was already at the root of %s (another process left it): not checked", d, dir)
		}
	}
	return func() {
		t.Helper()
		for _, d := range []string{"payload", "supervisor"} {
			if _, err := os.Stat(filepath.Join(dir, d)); err == nil && !before[d] {
				t.Errorf("cgroup %s left at the root of %s", d, dir)
			}
		}
	}
}
