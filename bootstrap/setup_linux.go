package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/loop"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
)

// SetupOptions says how to prepare the root directory.
type SetupOptions struct {
	// Loopback, when not 0 and the root is not on btrfs, is the size in
	// bytes of a sparse btrfs image file mounted on the root.
	Loopback int64
	// LoopbackFile is that file; empty means ROOT.btrfs beside the root.
	LoopbackFile string
}

// SetupResult says what Setup found and did.
type SetupResult struct {
	Root string
	// Btrfs is whether the root is on btrfs now.
	Btrfs bool
	// Mounted is true when Setup mounted the loopback file now;
	// AlreadyMounted when it was mounted before.
	Mounted, AlreadyMounted bool
	// File and Device are the loopback file and its loop device.
	File, Device string
	// Fstab is the /etc/fstab line that mounts the loopback file at boot.
	Fstab string
}

// LoopbackFile is the default loopback file of a root: ROOT.btrfs beside it.
func LoopbackFile(root string) string { return filepath.Clean(root) + ".btrfs" }

// FstabLine is the /etc/fstab(5) line mounting file on root at boot;
// nofail keeps a missing file from stopping the boot. Spaces and tabs in
// paths are written as octal escapes, as fstab(5) requires.
func FstabLine(file, root string) string {
	esc := strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`)
	return esc.Replace(file) + " " + esc.Replace(root) + " btrfs loop,nofail 0 0"
}

// Setup prepares the root directory: creates it and its internal
// directories, and, when it is not on btrfs and o.Loopback is set, makes a
// sparse btrfs file, attaches it to a loop device and mounts it on the
// root. Running it again changes nothing.
func (s *Store) Setup(ctx context.Context, o SetupOptions) (SetupResult, error) {
	root := filepath.Clean(s.Root)
	res := SetupResult{Root: root}
	if !filepath.IsAbs(root) {
		return res, fmt.Errorf("setup %s: the root must be an absolute path", root)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return res, fmt.Errorf("setup %s: %w", root, err)
	}
	onBtrfs, err := btrfs.IsBtrfs(root)
	if err != nil {
		return res, fmt.Errorf("setup %s: %w", root, err)
	}
	file := o.LoopbackFile
	if file == "" {
		file = LoopbackFile(root)
	}
	if file, err = filepath.Abs(file); err != nil {
		return res, fmt.Errorf("setup %s: %w", root, err)
	}
	if onBtrfs && o.Loopback > 0 {
		// Mounted by an earlier setup, or by the fstab line?
		if dev, ok := mountSource(root); ok && strings.HasPrefix(dev, "/dev/loop") {
			if back, err := loop.BackingFile(dev); err == nil && back == file {
				res.AlreadyMounted, res.File, res.Device = true, file, dev
				res.Fstab = FstabLine(file, root)
			}
		}
	}
	if !onBtrfs && o.Loopback > 0 {
		if err := s.mountLoopback(ctx, file, o.Loopback, &res); err != nil {
			return res, fmt.Errorf("setup %s: %w", root, err)
		}
		onBtrfs = true
	}
	res.Btrfs = onBtrfs
	for _, d := range []string{lockDir, metaDir} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return res, fmt.Errorf("setup %s: %w", root, err)
		}
	}
	// The root of a freshly made filesystem is 0755 already; an existing
	// directory keeps the mode its admin gave it.
	return res, nil
}

func (s *Store) mountLoopback(ctx context.Context, file string, size int64, res *SetupResult) error {
	root := filepath.Clean(s.Root)
	// Mounting over a root with images would hide them.
	ents, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() != lockDir && e.Name() != metaDir {
			return fmt.Errorf("%s is not empty (it holds %s): mounting a btrfs file on it would hide what is there; move it away or choose another --root", root, e.Name())
		}
	}
	if rel, err := filepath.Rel(root, file); err == nil && !strings.HasPrefix(rel, "..") {
		return fmt.Errorf("the loopback file %s must not be inside the root %s", file, root)
	}
	fi, err := os.Stat(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.log().Info("creating btrfs image file", "file", file, "size", size)
		if err := makeBtrfsFile(ctx, file, size); err != nil {
			return err
		}
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("loopback file %s is not a regular file", file)
	default:
		// An earlier setup made it and the host rebooted without the
		// fstab line: mount it again, keeping its images.
		s.log().Info("reusing the existing btrfs image file", "file", file)
	}
	// A loop device left attached to the file (a mount that failed, an
	// unmount without detach) is reused: btrfs refuses to mount one
	// filesystem from two devices that carry the same fsid.
	var devPath string
	attached := false
	if devs, err := loop.Find(file); err == nil && len(devs) > 0 {
		devPath = devs[0]
		s.log().Info("reusing the loop device already attached to the file", "file", file, "device", devPath)
	} else {
		dev, err := loop.Attach(file, loop.Options{})
		if err != nil {
			return err
		}
		defer dev.Close()
		devPath, attached = dev.Path, true
	}
	if err := unix.Mount(devPath, root, "btrfs", 0, ""); err != nil {
		if attached {
			_ = loop.Detach(devPath)
		}
		return fmt.Errorf("mount %s (%s) on %s: %w", devPath, file, root, err)
	}
	// The new filesystem's root directory is what the image root is now.
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	res.Mounted, res.File, res.Device = true, file, devPath
	res.Fstab = FstabLine(file, root)
	return nil
}

// makeBtrfsFile creates a sparse file of size bytes and formats it; a
// failure leaves no file.
func makeBtrfsFile(ctx context.Context, file string, size int64) (err error) {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(file)
		}
	}()
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("truncate %s: %w", file, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "mkfs.btrfs", "-q", file)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", cmd, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// mountSource returns the source of the filesystem mounted exactly on dir
// (the last such mount: the one on top).
func mountSource(dir string) (string, bool) {
	infos, err := mount.Mountinfo()
	if err != nil {
		return "", false
	}
	src, ok := "", false
	for _, in := range infos {
		if in.Mountpoint == dir {
			src, ok = in.Source, true
		}
	}
	return src, ok
}
