package treecopy

import (
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// readDir returns the entries of the open directory fd, parsing struct
// linux_dirent64 (getdents64(2)) to keep d_type.
func (w *worker) readDir(fd int) ([]dirent, error) {
	var out []dirent
	for {
		n, err := eintr.Retry1(func() (int, error) { return unix.Getdents(fd, w.buf) })
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return out, nil
		}
		b := w.buf[:n]
		for len(b) > 0 {
			// struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
			reclen := int(*(*uint16)(unsafe.Pointer(&b[16])))
			if reclen < 20 || reclen > len(b) {
				return nil, fmt.Errorf("bad dirent record length %d", reclen)
			}
			typ := b[18]
			name := b[19:reclen]
			if i := indexNUL(name); i >= 0 {
				name = name[:i]
			}
			b = b[reclen:]
			if string(name) == "." || string(name) == ".." {
				continue
			}
			out = append(out, dirent{name: string(name), typ: typ})
		}
	}
}

func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// Helpers for the *at(2) calls: lookups relative to an open directory,
// retried when a signal interrupts them.

// openBeneath opens the directory rel below root without following any
// symlink: openat2(2) with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS (Linux 5.6),
// else one O_NOFOLLOW openat per component.
const maxOpenat2Again = 16

func openBeneath(root int, rel string) (int, error) {
	flags := uint64(unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC)
	how := unix.OpenHow{Flags: flags, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	// EAGAIN is openat2(2)'s own "retry": a concurrent rename or mount
	// raced the lookup, and the kernel could not prove that ".." stayed
	// beneath. Retried a few times only (a tree that keeps changing could
	// be an attack), then the per-component walk below decides.
	for range maxOpenat2Again {
		fd, err := eintr.Retry1(func() (int, error) { return unix.Openat2(root, rel, &how) })
		if err == unix.EAGAIN {
			continue
		}
		if err != unix.ENOSYS {
			return fd, err
		}
		break
	}
	fd, err := unix.Dup(root)
	if err != nil {
		return -1, err
	}
	for _, part := range strings.Split(rel, "/") {
		if part == "." || part == "" {
			continue
		}
		if part == ".." {
			unix.Close(fd)
			return -1, unix.EXDEV
		}
		next, err := openatRetry(fd, part, int(flags), 0)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

func openRetry(path string, flags int, mode uint32) (int, error) {
	return eintr.Retry1(func() (int, error) { return unix.Open(path, flags, mode) })
}

func openatRetry(dir int, name string, flags int, mode uint32) (int, error) {
	return eintr.Retry1(func() (int, error) { return unix.Openat(dir, name, flags, mode) })
}

func fstat(fd int, st *unix.Stat_t) error {
	return eintr.Retry(func() error { return unix.Fstat(fd, st) })
}

func linkRetry(oldpath, newpath string) error {
	return eintr.Retry(func() error { return unix.Linkat(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, 0) })
}

// readlinkat reads a symlink's target into buf, growing past it if needed.
func readlinkat(dir int, name string, buf []byte) (string, error) {
	for {
		n, err := unix.Readlinkat(dir, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}
