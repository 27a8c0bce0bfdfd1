package bootstrap_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/loop"
)

func TestSetupPlain(t *testing.T) {
	testutil.RequireRoot(t)
	s := &bootstrap.Store{Root: filepath.Join(t.TempDir(), "a", "root")}
	for range 2 {
		res, err := s.Setup(context.Background(), bootstrap.SetupOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Mounted || res.AlreadyMounted {
			t.Errorf("Setup without --loopback = %+v", res)
		}
	}
	fi, err := os.Stat(s.Root)
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("root after Setup: %v, %v, want a 0755 directory", fi, err)
	}
	for _, d := range []string{".lock", ".meta"} {
		if _, err := os.Stat(filepath.Join(s.Root, d)); err != nil {
			t.Error(err)
		}
	}
}

func TestSetupLoopback(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "mkfs.btrfs")
	dir := t.TempDir()
	if ok, _ := btrfs.IsBtrfs(dir); ok {
		t.Skip("the temporary directory is on btrfs already")
	}
	s := &bootstrap.Store{Root: filepath.Join(dir, "root")}
	file := filepath.Join(dir, "root.btrfs")
	t.Cleanup(func() {
		for {
			if err := unix.Unmount(s.Root, unix.MNT_DETACH); err != nil {
				break
			}
		}
		devs, _ := loop.Find(file)
		for _, d := range devs {
			if err := loop.Detach(d); err != nil {
				t.Error(err)
			}
		}
	})
	o := bootstrap.SetupOptions{Loopback: 1 << 30}
	res, err := s.Setup(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Mounted || res.File != file || !strings.HasPrefix(res.Device, "/dev/loop") || !res.Btrfs {
		t.Fatalf("Setup = %+v, want %s mounted", res, file)
	}
	if want := file + " " + s.Root + " btrfs loop,nofail 0 0"; res.Fstab != want {
		t.Errorf("fstab line = %q, want %q", res.Fstab, want)
	}
	if ok, err := btrfs.IsBtrfs(s.Root); err != nil || !ok {
		t.Errorf("IsBtrfs(root) = %v, %v after Setup", ok, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil || st.Blocks*512 >= st.Size {
		t.Errorf("loopback file %s is not sparse: %d blocks for %d bytes (%v)", file, st.Blocks, st.Size, err)
	}
	// Images made there are subvolumes.
	ws, err := s.Workspace("x")
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := btrfs.IsSubvolume(ws); !ok {
		t.Errorf("workspace %s on the loopback root is not a subvolume", ws)
	}
	if err := s.RemoveTree(ws); err != nil {
		t.Fatal(err)
	}
	// Again: nothing changes.
	res2, err := s.Setup(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Mounted || !res2.AlreadyMounted || res2.Device != res.Device {
		t.Errorf("second Setup = %+v, want already mounted from %s", res2, res.Device)
	}
	if devs, _ := loop.Find(file); len(devs) != 1 {
		t.Errorf("loop devices of %s = %q, want one", file, devs)
	}
}

func TestSetupLoopbackRefusesNonEmpty(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if ok, _ := btrfs.IsBtrfs(dir); ok {
		t.Skip("the temporary directory is on btrfs already")
	}
	s := &bootstrap.Store{Root: filepath.Join(dir, "root")}
	if err := os.MkdirAll(filepath.Join(s.Root, "bookworm"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := s.Setup(context.Background(), bootstrap.SetupOptions{Loopback: 1 << 30})
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("Setup over a root holding images = %v, want a refusal", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "root.btrfs")); err == nil {
		t.Errorf("a refused Setup created the loopback file")
	}
}

// After an unmount without detach (or a reboot that kept the file), setup
// mounts the file again, reusing its loop device, and its images are back.
func TestSetupLoopbackRemount(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "mkfs.btrfs")
	dir := t.TempDir()
	if ok, _ := btrfs.IsBtrfs(dir); ok {
		t.Skip("the temporary directory is on btrfs already")
	}
	s := &bootstrap.Store{Root: filepath.Join(dir, "root")}
	file := filepath.Join(dir, "root.btrfs")
	t.Cleanup(func() {
		for unix.Unmount(s.Root, unix.MNT_DETACH) == nil {
		}
		devs, _ := loop.Find(file)
		for _, d := range devs {
			loop.Detach(d)
		}
	})
	o := bootstrap.SetupOptions{Loopback: 1 << 30, LoopbackFile: file}
	res, err := s.Setup(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	smallImage(t, s, "kept", "1")
	if err := unix.Unmount(s.Root, 0); err != nil {
		t.Fatal(err)
	}
	res2, err := s.Setup(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !res2.Mounted || res2.Device != res.Device {
		t.Errorf("Setup after unmount = %+v, want %s mounted again", res2, res.Device)
	}
	if _, err := s.Path("kept"); err != nil {
		t.Errorf("image lost across unmount and setup: %v", err)
	}
	// Unmounted and detached: a fresh loop device, same images.
	if err := unix.Unmount(s.Root, 0); err != nil {
		t.Fatal(err)
	}
	if err := loop.Detach(res.Device); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Setup(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Path("kept"); err != nil {
		t.Errorf("image lost across detach and setup: %v", err)
	}
}
