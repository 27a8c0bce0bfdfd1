package mount_test

import (
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
)

// A thread in another mount namespace (as when a stage is started in a
// machine) must see its own mounts, and every other thread the host's:
// /proc/self/mountinfo would show the main thread's view to both.
func TestMountinfoIsPerThread(t *testing.T) {
	testutil.RequireRoot(t)
	target := filepath.Join(t.TempDir(), "private")
	if err := unix.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	type result struct {
		seen bool
		err  error
	}
	done := make(chan result)
	go func() {
		// Never unlocked: the runtime ends the thread with the goroutine,
		// and its private namespace (and the tmpfs in it) with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
			done <- result{err: err}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			done <- result{err: err}
			return
		}
		if err := unix.Mount("tmpfs", target, "tmpfs", 0, "size=1m"); err != nil {
			done <- result{err: err}
			return
		}
		infos, err := mount.Mountinfo()
		done <- result{seen: mounted(infos, target), err: err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.seen {
		t.Errorf("Mountinfo() on the thread that mounted %s does not list it", target)
	}
	infos, err := mount.Mountinfo()
	if err != nil {
		t.Fatal(err)
	}
	if mounted(infos, target) {
		t.Errorf("Mountinfo() on another thread lists %s, mounted only in a private namespace", target)
	}
}

func mounted(infos []mount.Info, target string) bool {
	for _, in := range infos {
		if in.Mountpoint == target {
			return true
		}
	}
	return false
}
