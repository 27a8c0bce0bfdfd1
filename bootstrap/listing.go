package bootstrap

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
)

// Image is one base image on disk.
type Image struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// Kind is KindSubvolume or KindDirectory.
	Kind string `json:"kind"`
	// Size is the disk space of the tree in bytes (hard links counted once;
	// on btrfs, extents shared with snapshots are counted in full).
	Size int64 `json:"size"`
	// Created is when the image was installed (its metadata, else the
	// directory's birth time).
	Created time.Time `json:"created"`
	// Maintained is the last successful maintenance; zero when never.
	Maintained time.Time `json:"maintained,omitzero"`
	// Suite is the Debian suite it was created from, when known.
	Suite string `json:"suite,omitempty"`
}

// Path returns the path of an existing image. A name that is not a valid
// image name is refused; a missing image is a *NotFoundError listing the
// images that exist.
func (s *Store) Path(name string) (string, error) {
	if err := config.CheckImageName(name); err != nil {
		return "", err
	}
	p := s.path(name)
	fi, err := os.Lstat(p)
	if err == nil && fi.IsDir() {
		return p, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("image %q: %w", name, err)
	}
	return "", s.notFound(name)
}

func (s *Store) notFound(name string) error {
	names, _ := s.Names()
	return &NotFoundError{Name: name, Root: s.Root, Available: names}
}

// Names lists the image names on disk, sorted. It only reads the root
// directory, so prepare can afford it for every job.
func (s *Store) Names() ([]string, error) {
	ents, err := s.rootEntries()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		// Type() is from getdents: a symlink to a directory is not an image.
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") || config.CheckImageName(e.Name()) != nil {
			continue
		}
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out, nil
}

// rootEntries reads the root; a root not made yet holds nothing.
func (s *Store) rootEntries() ([]os.DirEntry, error) {
	ents, err := os.ReadDir(s.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the image root %s: %w", s.Root, err)
	}
	return ents, nil
}

// List returns the images on disk, sorted by name. Internal entries (names
// beginning with a dot) are never listed. It only reads: the debris of
// killed creates is for CleanWorkspaces, which create, remove, maintenance
// and gc call.
func (s *Store) List() ([]Image, error) {
	names, err := s.Names()
	if err != nil {
		return nil, err
	}
	out := make([]Image, 0, len(names))
	for _, n := range names {
		img, err := s.image(n)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed while we listed
			}
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

func (s *Store) image(name string) (Image, error) {
	p := s.path(name)
	img := Image{Name: name, Path: p, Kind: KindDirectory}
	sub, err := isSubvolume(p)
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", name, err)
	}
	if sub {
		img.Kind = KindSubvolume
	}
	size, err := treeSize(p)
	if err != nil {
		return Image{}, err
	}
	img.Size = size
	m, err := s.ReadMeta(name)
	if err != nil {
		s.log().Warn("ignoring unreadable image metadata", "image", name, "err", err)
	}
	img.Suite, img.Maintained, img.Created = m.Suite, m.Maintained, m.Created
	if img.Created.IsZero() {
		img.Created = birthTime(p)
	}
	return img, nil
}

// treeSize sums the allocated blocks of a tree, counting hard links once
// and not descending into other mounts (a tree may have /proc mounted by a
// running debootstrap or login).
func treeSize(root string) (int64, error) {
	type key struct{ dev, ino uint64 }
	seen := map[key]bool{}
	var total int64
	var rootDev uint64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
				return nil
			}
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return nil
		}
		if p == root {
			rootDev = st.Dev
		} else if d.IsDir() && st.Dev != rootDev && !isSubvolRoot(&st) {
			return fs.SkipDir
		}
		k := key{st.Dev, st.Ino}
		if st.Nlink > 1 && !d.IsDir() {
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		total += st.Blocks * 512
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", root, err)
	}
	return total, nil
}

// isSubvolRoot reports whether st is the root directory of a btrfs
// subvolume (inode BTRFS_FIRST_FREE_OBJECTID): nested subvolumes have a
// device number of their own but belong to the tree.
func isSubvolRoot(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Ino == 256
}

func birthTime(p string) time.Time {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BTIME|unix.STATX_MTIME, &stx); err != nil {
		return time.Time{}
	}
	if stx.Mask&unix.STATX_BTIME != 0 {
		return time.Unix(stx.Btime.Sec, int64(stx.Btime.Nsec))
	}
	return time.Unix(stx.Mtime.Sec, int64(stx.Mtime.Nsec))
}
