package treecopy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Options changes how Copy works.
type Options struct {
	// NoReflink skips FICLONE and copies data with copy_file_range(2)
	// and read/write. (On xfs and btrfs copy_file_range itself may still
	// share extents; on ext4 and tmpfs it copies.)
	NoReflink bool
}

// Stats counts what Copy did.
type Stats struct {
	Files       int   // regular files (distinct inodes) created
	Dirs        int   // directories, the root included
	Cloned      int   // regular files whose data was shared with FICLONE
	CopiedBytes int64 // bytes of file data copied (not cloned)
	HardLinks   int   // extra names linked to an inode copied once
	Symlinks    int
	Specials    int // device nodes, fifos and sockets recreated with mknod
}

func (s *Stats) add(o Stats) {
	s.Files += o.Files
	s.Dirs += o.Dirs
	s.Cloned += o.Cloned
	s.CopiedBytes += o.CopiedBytes
	s.HardLinks += o.HardLinks
	s.Symlinks += o.Symlinks
	s.Specials += o.Specials
}

// Copy copies the directory tree src to dst, like `cp -a --reflink=auto`:
// regular files share their extents with FICLONE where the filesystem can
// (ioctl_ficlone(2)) and are copied otherwise, per file; owners, modes
// (setuid, setgid and sticky included), timestamps, extended attributes
// (ACLs and file capabilities included), symlinks, device nodes, fifos,
// sockets and hard links are reproduced.
//
// dst must not exist or be an empty directory. Symlinks inside src are
// copied, never followed: every lookup in src is relative to an open
// directory with symlinks refused (openat2(2) RESOLVE_NO_SYMLINKS, or
// O_NOFOLLOW per component). Mount points inside src are crossed.
// dst may not lie inside src. Nothing is fsynced: call syncfs(2) or
// sync(2) when the copy must survive a crash.
//
// When ctx ends, the workers stop after the file (or the chunk of a large
// file's data) each is copying, and Copy returns an error wrapping
// context.Cause(ctx). On any error dst is left partly copied for the
// caller to remove: Copy never removes anything, and never writes outside
// dst.
func Copy(ctx context.Context, src, dst string, opts Options) (Stats, error) {
	if ctx.Err() != nil {
		return Stats{}, fmt.Errorf("copy tree %s -> %s: %w", src, dst, context.Cause(ctx))
	}
	c, err := newCopier(src, dst, opts)
	if err != nil {
		return Stats{}, fmt.Errorf("copy tree %s -> %s: %w", src, dst, err)
	}
	defer c.close()
	stop := context.AfterFunc(ctx, func() { c.fail(context.Cause(ctx)) })
	defer stop()
	st, err := c.run()
	if err == nil && ctx.Err() != nil {
		// Cancelled after the last check: what was copied is complete,
		// but the caller asked to stop, and may already be removing dst.
		err = context.Cause(ctx)
	}
	if err != nil {
		return st, fmt.Errorf("copy tree %s -> %s: %w", src, dst, err)
	}
	return st, nil
}

// copyTask is one batch of entries of one directory (rel to the roots).
// ents == nil means: read the directory, copy its own metadata, and batch
// its entries.
type copyTask struct {
	dir  string
	ents []dirent
}

type dirent struct {
	name string
	typ  uint8 // DT_* from getdents64
}

type inodeKey struct{ dev, ino uint64 }

type dirMeta struct {
	rel          string
	mode         uint32
	atime, mtime unix.Timespec
	xattrs       []xattr
}

type xattr struct {
	name  string
	value []byte
}

type link struct{ first, rel string }

type copier struct {
	opts     Options
	src, dst string
	srcRoot  int
	dstRoot  int

	// Work queue: a stack of tasks; pending counts queued and running
	// tasks, so idle workers wait while a running one may still add some.
	mu      sync.Mutex
	cond    *sync.Cond
	tasks   []copyTask
	pending int
	err     error
	failed  atomic.Bool

	linkMu sync.Mutex
	inodes map[inodeKey]string // first dst rel path of an inode with nlink > 1
	links  []link
	dirs   []dirMeta
	stats  Stats
}

// batch is how many entries of one directory a task copies; big
// directories (/usr/bin, /usr/lib/x86_64-linux-gnu) spread over workers.
const batch = 64

// newCopier opens both roots; on error it has closed what it opened.
func newCopier(src, dst string, opts Options) (_ *copier, err error) {
	c := &copier{opts: opts, src: filepath.Clean(src), dst: filepath.Clean(dst), srcRoot: -1, dstRoot: -1,
		inodes: make(map[inodeKey]string)}
	c.cond = sync.NewCond(&c.mu)
	if inside(c.src, c.dst) {
		return nil, fmt.Errorf("%s is inside %s", c.dst, c.src)
	}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	c.srcRoot, err = openRetry(c.src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: c.src, Err: err}
	}
	if err := prepareDst(c.dst); err != nil {
		return nil, err
	}
	// A default ACL dst inherited from its parent would pass on to every
	// entry created inside; the source's own is set at the end.
	if err := unix.Removexattr(c.dst, "system.posix_acl_default"); err != nil && err != unix.ENODATA && err != unix.ENOTSUP {
		return nil, &os.PathError{Op: "removexattr system.posix_acl_default", Path: c.dst, Err: err}
	}
	c.dstRoot, err = openRetry(c.dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: c.dst, Err: err}
	}
	return c, nil
}

func (c *copier) close() {
	if c.srcRoot >= 0 {
		unix.Close(c.srcRoot)
	}
	if c.dstRoot >= 0 {
		unix.Close(c.dstRoot)
	}
}

// inside reports whether dst is src or below it, comparing absolute paths
// with symlinks resolved as far as they exist (dst usually does not yet).
func inside(src, dst string) bool {
	resolve := func(p string) string {
		p, err := filepath.Abs(p)
		if err != nil {
			return p
		}
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r
		}
		if r, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil {
			return filepath.Join(r, filepath.Base(p))
		}
		return p
	}
	s, d := resolve(src), resolve(dst)
	return d == s || strings.HasPrefix(d, s+"/") || s == "/"
}

// prepareDst creates dst, or accepts it if it is an empty directory.
func prepareDst(dst string) error {
	err := os.Mkdir(dst, 0o700)
	if err == nil || !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dst)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s exists and is not a directory", dst)
	}
	f, err := os.Open(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	if names, _ := f.Readdirnames(1); len(names) > 0 {
		return fmt.Errorf("%s is not empty", dst)
	}
	return nil
}

func (c *copier) push(t copyTask) {
	c.mu.Lock()
	c.tasks = append(c.tasks, t)
	c.pending++
	c.mu.Unlock()
	c.cond.Signal()
}

func (c *copier) pop() (copyTask, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.tasks) == 0 && c.pending > 0 && c.err == nil {
		c.cond.Wait()
	}
	if c.err != nil || len(c.tasks) == 0 {
		return copyTask{}, false
	}
	t := c.tasks[len(c.tasks)-1]
	c.tasks = c.tasks[:len(c.tasks)-1]
	return t, true
}

// finish ends a task that push queued, with its error if it failed.
func (c *copier) finish(err error) {
	c.mu.Lock()
	c.pending--
	wake := c.pending == 0
	c.mu.Unlock()
	if err != nil {
		c.fail(err)
	} else if wake {
		c.cond.Broadcast()
	}
}

// failure is the error that stopped the copy, if any.
func (c *copier) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// fail stops the copy with err (the first one wins): workers finish the
// entry they copy and take no more tasks.
func (c *copier) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		c.failed.Store(true)
	}
	c.mu.Unlock()
	c.cond.Broadcast()
}

func (c *copier) run() (Stats, error) {
	c.push(copyTask{dir: "."})
	n := runtime.GOMAXPROCS(0) * 2
	var wg sync.WaitGroup
	stats := make([]Stats, n)
	dirs := make([][]dirMeta, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{c: c, buf: make([]byte, 128*1024), xlist: make([]byte, 64*1024), xval: make([]byte, 64*1024)}
			for {
				t, ok := c.pop()
				if !ok {
					break
				}
				c.finish(w.do(t))
			}
			stats[i] = w.stats
			dirs[i] = w.dirs
		}()
	}
	wg.Wait()
	for i := range stats {
		c.stats.add(stats[i])
		c.dirs = append(c.dirs, dirs[i]...)
	}
	if err := c.failure(); err != nil {
		return c.stats, err
	}
	// Hard links last, once every first copy is complete.
	for _, l := range c.links {
		if c.failed.Load() {
			return c.stats, c.failure()
		}
		if err := linkRetry(filepath.Join(c.dst, l.first), filepath.Join(c.dst, l.rel)); err != nil {
			return c.stats, fmt.Errorf("link %s to %s: %w", l.rel, l.first, err)
		}
		c.stats.HardLinks++
	}
	// Directory xattrs, modes and times after their contents, deepest
	// first: creating entries changes a directory's mtime, a read-only mode
	// would stop an unprivileged copy from filling it, and a default ACL
	// would be inherited.
	slices.SortFunc(c.dirs, func(a, b dirMeta) int { return depth(b.rel) - depth(a.rel) })
	for _, d := range c.dirs {
		if c.failed.Load() {
			return c.stats, c.failure()
		}
		p := filepath.Join(c.dst, d.rel)
		if d.rel == "." {
			// dst itself may have inherited ACLs from its parent.
			for _, name := range []string{"system.posix_acl_access", "system.posix_acl_default"} {
				if !slices.ContainsFunc(d.xattrs, func(x xattr) bool { return x.name == name }) {
					if err := unix.Removexattr(p, name); err != nil && err != unix.ENODATA && err != unix.ENOTSUP {
						return c.stats, &os.PathError{Op: "removexattr " + name, Path: p, Err: err}
					}
				}
			}
		}
		for _, x := range d.xattrs {
			if err := unix.Setxattr(p, x.name, x.value, 0); err != nil {
				return c.stats, &os.PathError{Op: "setxattr " + x.name, Path: p, Err: err}
			}
		}
		if err := unix.Fchmodat(unix.AT_FDCWD, p, d.mode, 0); err != nil {
			return c.stats, &os.PathError{Op: "chmod", Path: p, Err: err}
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{d.atime, d.mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return c.stats, &os.PathError{Op: "utimensat", Path: p, Err: err}
		}
	}
	return c.stats, nil
}

// depth is 0 for the root ".", 1 for its entries, and so on.
func depth(rel string) int {
	if rel == "." {
		return 0
	}
	return strings.Count(rel, "/") + 1
}

// worker holds the buffers one goroutine reuses for every file.
type worker struct {
	c     *copier
	buf   []byte // getdents64 and read/write
	xlist []byte // flistxattr; XATTR_LIST_MAX is 64 KiB
	xval  []byte // fgetxattr; XATTR_SIZE_MAX is 64 KiB
	st    unix.Stat_t
	stats Stats
	dirs  []dirMeta
}

func (w *worker) do(t copyTask) error {
	srcDir, err := openBeneath(w.c.srcRoot, t.dir)
	if err != nil {
		return &os.PathError{Op: "open", Path: filepath.Join(w.c.src, t.dir), Err: err}
	}
	defer unix.Close(srcDir)
	dstDir, err := openBeneath(w.c.dstRoot, t.dir)
	if err != nil {
		return &os.PathError{Op: "open", Path: filepath.Join(w.c.dst, t.dir), Err: err}
	}
	defer unix.Close(dstDir)
	ents := t.ents
	if ents == nil {
		if err := w.dirSelf(t.dir, srcDir, dstDir); err != nil {
			return err
		}
		if ents, err = w.readDir(srcDir); err != nil {
			return &os.PathError{Op: "getdents", Path: filepath.Join(w.c.src, t.dir), Err: err}
		}
		for len(ents) > batch {
			w.c.push(copyTask{dir: t.dir, ents: ents[len(ents)-batch:]})
			ents = ents[:len(ents)-batch]
		}
	}
	for _, e := range ents {
		if w.c.failed.Load() {
			return nil
		}
		rel := e.name
		if t.dir != "." {
			rel = t.dir + "/" + e.name
		}
		if err := w.entry(srcDir, dstDir, e, rel); err != nil {
			return err
		}
	}
	return nil
}

// dirSelf copies a directory's owner and xattrs and records its mode and
// times for the end.
func (w *worker) dirSelf(rel string, srcDir, dstDir int) error {
	if err := fstat(srcDir, &w.st); err != nil {
		return &os.PathError{Op: "stat", Path: filepath.Join(w.c.src, rel), Err: err}
	}
	if err := unix.Fchown(dstDir, int(w.st.Uid), int(w.st.Gid)); err != nil {
		return &os.PathError{Op: "chown", Path: filepath.Join(w.c.dst, rel), Err: err}
	}
	d := dirMeta{rel: rel, mode: w.st.Mode & 0o7777, atime: w.st.Atim, mtime: w.st.Mtim}
	// A directory's xattrs wait for the end with its mode: a default ACL
	// set now would be inherited by everything created inside.
	err := w.listXattrs(srcDir, rel, func(name string, v []byte) error {
		d.xattrs = append(d.xattrs, xattr{name, slices.Clone(v)})
		return nil
	})
	w.dirs = append(w.dirs, d)
	w.stats.Dirs++
	return err
}

func (w *worker) entry(srcDir, dstDir int, e dirent, rel string) error {
	if e.typ == unix.DT_REG {
		// The common case: open first and fstat the fd, one lookup.
		// O_NONBLOCK so that an entry replaced by a fifo meanwhile
		// cannot block the open; O_NOFOLLOW for one replaced by a symlink.
		fd, err := openatRetry(srcDir, e.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err == nil {
			if err := fstat(fd, &w.st); err != nil {
				unix.Close(fd)
				return &os.PathError{Op: "stat", Path: filepath.Join(w.c.src, rel), Err: err}
			}
			if w.st.Mode&unix.S_IFMT == unix.S_IFREG {
				err := w.file(fd, dstDir, e.name, rel)
				unix.Close(fd)
				return err
			}
			unix.Close(fd)
		} else if err != unix.ELOOP && err != unix.ENXIO && err != unix.ENOENT {
			return &os.PathError{Op: "open", Path: filepath.Join(w.c.src, rel), Err: err}
		}
	}
	if err := unix.Fstatat(srcDir, e.name, &w.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return nil // removed while we copy
		}
		return &os.PathError{Op: "stat", Path: filepath.Join(w.c.src, rel), Err: err}
	}
	st := &w.st
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := unix.Mkdirat(dstDir, e.name, 0o700); err != nil {
			return &os.PathError{Op: "mkdir", Path: filepath.Join(w.c.dst, rel), Err: err}
		}
		w.c.push(copyTask{dir: rel})
		return nil
	case unix.S_IFREG:
		fd, err := openatRetry(srcDir, e.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: filepath.Join(w.c.src, rel), Err: err}
		}
		defer unix.Close(fd)
		if err := fstat(fd, st); err != nil {
			return &os.PathError{Op: "stat", Path: filepath.Join(w.c.src, rel), Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fmt.Errorf("%s changed type while copying", filepath.Join(w.c.src, rel))
		}
		return w.file(fd, dstDir, e.name, rel)
	}
	if w.linked(st, rel) {
		return nil
	}
	dst := filepath.Join(w.c.dst, rel)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		target, err := readlinkat(srcDir, e.name, w.buf)
		if err != nil {
			return &os.PathError{Op: "readlink", Path: filepath.Join(w.c.src, rel), Err: err}
		}
		if err := unix.Symlinkat(target, dstDir, e.name); err != nil {
			return &os.PathError{Op: "symlink", Path: dst, Err: err}
		}
		w.stats.Symlinks++
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
		if err := unix.Mknodat(dstDir, e.name, st.Mode&(unix.S_IFMT|0o7777), int(st.Rdev)); err != nil {
			return &os.PathError{Op: "mknod", Path: dst, Err: err}
		}
		w.stats.Specials++
	default:
		return fmt.Errorf("%s: unknown file type %#o", filepath.Join(w.c.src, rel), st.Mode&unix.S_IFMT)
	}
	if err := unix.Fchownat(dstDir, e.name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "lchown", Path: dst, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		// Symlinks have no mode of their own; for the rest the name is
		// the node just made, so following is moot.
		if err := unix.Fchmodat(dstDir, e.name, st.Mode&0o7777, 0); err != nil {
			return &os.PathError{Op: "chmod", Path: dst, Err: err}
		}
	}
	if err := w.pathXattrs(srcDir, dstDir, e.name, rel); err != nil {
		return err
	}
	if err := unix.UtimesNanoAt(dstDir, e.name, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimensat", Path: dst, Err: err}
	}
	return nil
}

// linked reports whether st is a further name of an inode already being
// copied; if so it records the link to make at the end.
func (w *worker) linked(st *unix.Stat_t, rel string) bool {
	if st.Nlink < 2 {
		return false
	}
	k := inodeKey{uint64(st.Dev), st.Ino}
	w.c.linkMu.Lock()
	defer w.c.linkMu.Unlock()
	if first, ok := w.c.inodes[k]; ok {
		w.c.links = append(w.c.links, link{first: first, rel: rel})
		return true
	}
	w.c.inodes[k] = rel
	return false
}

// file copies the regular file open as src into a new file name in dstDir.
func (w *worker) file(src, dstDir int, name, rel string) error {
	st := &w.st
	if w.linked(st, rel) {
		return nil
	}
	dstPath := func() string { return filepath.Join(w.c.dst, rel) }
	dst, err := openatRetry(dstDir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "create", Path: dstPath(), Err: err}
	}
	defer unix.Close(dst)
	w.stats.Files++
	if st.Size > 0 {
		cloned := false
		if !w.c.opts.NoReflink {
			err := unix.IoctlFileClone(dst, src)
			switch err {
			case nil:
				cloned = true
				w.stats.Cloned++
			case unix.EOPNOTSUPP, unix.EXDEV, unix.EINVAL, unix.ENOTTY, unix.ENOSYS:
			default:
				return &os.PathError{Op: "ficlone", Path: dstPath(), Err: err}
			}
		}
		if !cloned {
			n, err := w.copyData(src, dst, st)
			w.stats.CopiedBytes += n
			if err != nil {
				return &os.PathError{Op: "copy", Path: dstPath(), Err: err}
			}
		}
	}
	uid, gid, mode := int(st.Uid), int(st.Gid), st.Mode&0o7777
	atime, mtime := st.Atim, st.Mtim
	if err := unix.Fchown(dst, uid, gid); err != nil {
		return &os.PathError{Op: "chown", Path: dstPath(), Err: err}
	}
	// chown clears setuid and setgid: chmod after it.
	if err := unix.Fchmod(dst, mode); err != nil {
		return &os.PathError{Op: "chmod", Path: dstPath(), Err: err}
	}
	// chown also drops security.capability: xattrs after it.
	if err := w.fdXattrs(src, dst, rel); err != nil {
		return err
	}
	if err := unix.UtimesNanoAt(dstDir, name, []unix.Timespec{atime, mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimensat", Path: dstPath(), Err: err}
	}
	return nil
}
