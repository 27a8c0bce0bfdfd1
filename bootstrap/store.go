package bootstrap

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/logx"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/flock"
)

// ErrNotFound is returned when an image does not exist.
var ErrNotFound = errors.New("image not found")

// NotFoundError is a missing image, with the images that do exist. It is
// ErrNotFound for errors.Is.
type NotFoundError struct {
	Name, Root string
	// Available are the images of Root, sorted; none when empty.
	Available []string
}

func (e *NotFoundError) Error() string {
	if len(e.Available) == 0 {
		return fmt.Sprintf("image %q not found in %s, which holds no image yet", e.Name, e.Root)
	}
	return fmt.Sprintf("image %q not found in %s; available: %s", e.Name, e.Root, strings.Join(e.Available, ", "))
}

// Is makes errors.Is(err, ErrNotFound) true.
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// ErrExists is returned when creating or installing an image that exists.
var ErrExists = errors.New("image already exists")

// Kinds of image.
const (
	KindSubvolume = "subvolume"
	KindDirectory = "directory"
)

// Internal names inside the root.
const (
	lockDir       = ".lock"
	metaDir       = ".meta"
	tmpPrefix     = ".tmp-"
	swapPrefix    = ".swap-"
	retiredPrefix = ".retired-"
)

// Store is the directory of base images.
type Store struct {
	// Root is the directory holding the images, one per name.
	Root string
	// Log receives what the store does; nil discards it.
	Log *slog.Logger
	// LoginPrefix starts the machine names of Login; empty means
	// DefaultLoginPrefix.
	LoginPrefix string
	// CgroupParent is where Login's systemd-nspawn gets a cgroup of its
	// own on hosts without systemd; empty means config.DefaultCgroupParent.
	CgroupParent string

	// renameHook, when set (by tests), runs instead of renameat2(2) in
	// Replace, to inject the failures of a real filesystem (EIO, ENOSPC,
	// EROFS) at each of its steps.
	renameHook func(from, to string, flags uint) error
}

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

// Meta is what the store remembers about an image, in ROOT/.meta/NAME.json.
type Meta struct {
	Created    time.Time `json:"created,omitzero"`
	Suite      string    `json:"suite,omitempty"`
	Mirror     string    `json:"mirror,omitempty"`
	Packages   []string  `json:"packages,omitempty"`
	Maintained time.Time `json:"maintained,omitzero"`
}

func (s *Store) log() *slog.Logger {
	return logx.OrDiscard(s.Log)
}

// path joins an internal name to the root.
func (s *Store) path(name string) string { return filepath.Join(s.Root, name) }

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
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list images in %s: %w", s.Root, err)
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

// Lock takes the exclusive lock of an image (ROOT/.lock/NAME, flock(2)), so
// that create, remove and maintenance of one image never overlap. It waits
// until the lock is free or ctx is done, logging that it waits. The lock is
// released by unlock, or by the kernel when the process dies: a SIGKILLed
// holder never leaves a stale lock.
func (s *Store) Lock(ctx context.Context, name string) (unlock func(), err error) {
	unlock, err = s.TryLock(name)
	if !errors.Is(err, flock.ErrBusy) {
		return unlock, err
	}
	p := filepath.Join(s.path(lockDir), name)
	s.log().Warn("waiting for another create, remove or maintenance of this image to finish", "image", name, "lock", p)
	l, err := flock.Wait(ctx, p, flock.Exclusive)
	if err != nil {
		return nil, fmt.Errorf("lock image %s: %w", name, err)
	}
	return func() { l.Unlock() }, nil
}

// TryLock takes the image lock of Lock without waiting: when another
// process (or another open of the lock in this process) holds it, the
// error wraps flock.ErrBusy.
func (s *Store) TryLock(name string) (unlock func(), err error) {
	if err := config.CheckImageName(name); err != nil {
		return nil, err
	}
	dir := s.path(lockDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock image %s: %w", name, err)
	}
	l, err := flock.Try(filepath.Join(dir, name), flock.Exclusive)
	if err != nil {
		return nil, fmt.Errorf("lock image %s: %w", name, err)
	}
	return func() { l.Unlock() }, nil
}

// Workspace makes a hidden, empty ROOT/.tmp-NAME-RANDOM to build an image
// aside: a btrfs subvolume when the root is on btrfs, a directory elsewhere.
// The caller holds Lock(name) while the workspace exists: a workspace whose
// image lock is free is debris of a killed process, and CleanWorkspaces
// removes it.
func (s *Store) Workspace(name string) (string, error) {
	if err := config.CheckImageName(name); err != nil {
		return "", err
	}
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		return "", fmt.Errorf("workspace for %s: %w", name, err)
	}
	p := s.path(tmpPrefix + name + "-" + randomSuffix())
	onBtrfs, err := btrfs.IsBtrfs(s.Root)
	if err != nil {
		return "", fmt.Errorf("workspace for %s: %w", name, err)
	}
	if onBtrfs {
		if err := btrfs.Create(p); err != nil {
			return "", fmt.Errorf("workspace for %s: %w", name, err)
		}
		// debootstrap and nspawn want the root of a tree to be 0755.
		if err := os.Chmod(p, 0o755); err != nil {
			return "", fmt.Errorf("workspace for %s: %w", name, err)
		}
		return p, nil
	}
	if err := os.Mkdir(p, 0o755); err != nil {
		return "", fmt.Errorf("workspace for %s: %w", name, err)
	}
	return p, nil
}

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// checkWorkspace makes sure ws is a workspace of this store, so that a
// caller's mistake can never rename some other tree into the root.
func (s *Store) checkWorkspace(ws string) error {
	if filepath.Dir(filepath.Clean(ws)) != filepath.Clean(s.Root) || !strings.HasPrefix(filepath.Base(ws), tmpPrefix) {
		return fmt.Errorf("%s is not a workspace of %s", ws, s.Root)
	}
	return nil
}

// Install renames a finished workspace into place as image name. It fails
// with ErrExists when the image exists (renameat2 RENAME_NOREPLACE makes
// that check and the rename one atomic step). The caller holds Lock(name).
func (s *Store) Install(name, workspace string) error {
	if err := config.CheckImageName(name); err != nil {
		return err
	}
	if err := s.checkWorkspace(workspace); err != nil {
		return fmt.Errorf("install image %s: %w", name, err)
	}
	dst := s.path(name)
	if err := rename(workspace, dst, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("install image %s: %s exists: %w", name, dst, ErrExists)
		}
		return fmt.Errorf("install image %s: rename %s -> %s: %w", name, workspace, dst, err)
	}
	return nil
}

// Replace swaps a finished workspace with image name in one atomic step
// (renameat2 RENAME_EXCHANGE: at every instant ROOT/NAME is either the whole
// old image or the whole new one), and moves the old tree aside to
// ROOT/.retired-NAME-UNIXNANO, whose path it returns. Machines started from
// the old image keep it; a gc that knows the machines deletes it once none
// uses it. When the image does not exist, Replace installs the workspace
// and returns "". The caller holds Lock(name).
//
// The new tree is first renamed to ROOT/.swap-NAME-UNIXNANO, and the
// exchange leaves the old tree there: so no failure of any step can leave
// the old image, which machines and logins may be using, under a workspace
// name, where debris cleaning would kill what runs in it and delete it.
// A .swap- tree is only ever retired (renamed to .retired-) by cleaning.
// When only that last move fails, the error comes with the .swap- path.
func (s *Store) Replace(name, workspace string) (retired string, err error) {
	if err := config.CheckImageName(name); err != nil {
		return "", err
	}
	if err := s.checkWorkspace(workspace); err != nil {
		return "", fmt.Errorf("replace image %s: %w", name, err)
	}
	dst := s.path(name)
	if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
		return "", s.Install(name, workspace)
	}
	suffix := strconv.FormatInt(time.Now().UnixNano(), 10)
	swap := s.path(swapPrefix + name + "-" + suffix)
	if err := s.rename(workspace, swap, unix.RENAME_NOREPLACE); err != nil {
		return "", fmt.Errorf("replace image %s: rename %s -> %s: %w", name, workspace, swap, err)
	}
	if err := s.rename(swap, dst, unix.RENAME_EXCHANGE); err != nil {
		// Nothing was swapped: the workspace gets its name back for the
		// caller to remove. Should that fail too, the unused new tree is
		// retired by the next cleaning and deleted by gc.
		if berr := s.rename(swap, workspace, unix.RENAME_NOREPLACE); berr != nil {
			s.log().Warn("the new tree stays aside until cleaning retires it", "image", name, "path", swap, "err", berr)
		}
		return "", fmt.Errorf("replace image %s: exchange %s <-> %s: %w", name, swap, dst, err)
	}
	retired = s.path(retiredPrefix + name + "-" + suffix)
	if err := s.rename(swap, retired, unix.RENAME_NOREPLACE); err != nil {
		return swap, fmt.Errorf("replace image %s: move the old tree %s aside: %w (the next create, remove, maintenance or gc of images retires it)", name, swap, err)
	}
	return retired, nil
}

// retiredPath is a new name for a retired tree of image name.
func (s *Store) retiredPath(name string) string {
	return s.path(retiredPrefix + name + "-" + strconv.FormatInt(time.Now().UnixNano(), 10))
}

// rename is renameat2(2), or the test hook.
func (s *Store) rename(from, to string, flags uint) error {
	if s.renameHook != nil {
		return s.renameHook(from, to, flags)
	}
	return rename(from, to, flags)
}

func rename(from, to string, flags uint) error {
	for {
		err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, flags)
		if err != unix.EINTR {
			return err
		}
	}
}

// Retired returns the paths of the retired trees (replaced or removed
// images), oldest first, for gc to delete once no machine uses them.
func (s *Store) Retired() ([]string, error) {
	return s.hidden(retiredPrefix)
}

// hidden lists the entries of the root beginning with prefix.
func (s *Store) hidden(prefix string) ([]string, error) {
	ents, err := os.ReadDir(s.Root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s: %w", s.Root, err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) && e.IsDir() {
			out = append(out, s.path(e.Name()))
		}
	}
	slices.Sort(out)
	return out, nil
}

// RemoveTree deletes a tree inside the root: an image, a workspace or a
// retired tree. Anything mounted below it is unmounted first (a killed
// debootstrap leaves proc and sys mounted), nested btrfs subvolumes are
// deleted, and a subvolume is deleted as one. Paths outside the root, and
// the root itself, are refused.
func (s *Store) RemoveTree(path string) error {
	root := filepath.Clean(s.Root)
	path = filepath.Clean(path)
	if rel, err := filepath.Rel(root, path); err != nil || rel == "." || strings.HasPrefix(rel, "..") || strings.Contains(rel, string(filepath.Separator)) {
		return fmt.Errorf("remove %s: not an entry of the image root %s", path, root)
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if !fi.IsDir() {
		// A symlink is removed itself, never followed (nor are the mounts
		// below its target undone).
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		return nil
	}
	if err := unmountBelow(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return removeTree(path)
}

// ReadMeta reads an image's metadata; a missing file is an empty Meta.
func (s *Store) ReadMeta(name string) (Meta, error) {
	if err := config.CheckImageName(name); err != nil {
		return Meta{}, err
	}
	var m Meta
	data, err := os.ReadFile(s.metaPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("read metadata of %s: %w", name, err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return Meta{}, fmt.Errorf("read metadata of %s: %s: %w", name, s.metaPath(name), err)
	}
	return m, nil
}

// WriteMeta replaces an image's metadata atomically (a temporary file
// renamed over the old one, so a reader never sees half a file).
func (s *Store) WriteMeta(name string, m Meta) error {
	if err := config.CheckImageName(name); err != nil {
		return err
	}
	dir := s.path(metaDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write metadata of %s: %w", name, err)
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("write metadata of %s: %w", name, err)
	}
	f, err := os.CreateTemp(dir, "."+name+".json-*")
	if err != nil {
		return fmt.Errorf("write metadata of %s: %w", name, err)
	}
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), s.metaPath(name))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write metadata of %s: %w", name, err)
	}
	return nil
}

func (s *Store) metaPath(name string) string {
	return filepath.Join(s.path(metaDir), name+".json")
}

// CleanWorkspaces clears what a killed or failed create, maintenance or
// Replace left, for images whose lock nobody holds: it removes workspaces
// (ROOT/.tmp-NAME-*), killing first the processes still running inside
// (children of a killed debootstrap), and retires swap trees
// (ROOT/.swap-NAME-*, renamed to .retired-): those may hold an image that
// was live, so only a gc that knows the machines deletes them. held names
// an image whose lock the caller holds itself; its leftovers are debris
// too (the caller has made nothing yet) and are cleared.
func (s *Store) CleanWorkspaces(ctx context.Context, held string) error {
	ws, err := s.hidden(tmpPrefix)
	if err != nil {
		return err
	}
	swaps, err := s.hidden(swapPrefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range slices.Concat(ws, swaps) {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		name := workspaceImage(filepath.Base(p))
		if config.CheckImageName(name) != nil {
			continue
		}
		clear := s.removeDebris
		if strings.HasPrefix(filepath.Base(p), swapPrefix) {
			clear = s.retireSwap
		}
		if name == held {
			if err := clear(name, p); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		unlock, err := s.TryLock(name)
		if errors.Is(err, flock.ErrBusy) {
			continue // someone is building it right now
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// Listed before we took the lock: whoever held it last is gone.
		err = clear(name, p)
		unlock()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Store) removeDebris(_, p string) error {
	s.log().Info("removing a workspace left by an interrupted create or maintenance", "path", p)
	killInside(p)
	return s.RemoveTree(p)
}

// retireSwap renames a swap tree that a failed Replace left to a retired
// one: nothing is killed or deleted, since it may be an image in use.
func (s *Store) retireSwap(name, p string) error {
	to := s.path(retiredPrefix + strings.TrimPrefix(filepath.Base(p), swapPrefix))
	err := rename(p, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		to = s.retiredPath(name)
		err = rename(p, to, unix.RENAME_NOREPLACE)
	}
	if err != nil {
		return fmt.Errorf("retire %s: rename to %s: %w", p, to, err)
	}
	s.log().Info("retired a tree left by an interrupted image swap", "path", to)
	return nil
}

// workspaceImage returns NAME of ".tmp-NAME-RANDOM" or ".swap-NAME-TIME".
func workspaceImage(base string) string {
	rest := strings.TrimPrefix(strings.TrimPrefix(base, tmpPrefix), swapPrefix)
	if i := strings.LastIndexByte(rest, '-'); i > 0 {
		return rest[:i]
	}
	return ""
}
