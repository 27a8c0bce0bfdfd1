package treecopy

import (
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// skipXattr names the xattrs not to copy: xfs lists a file's ACLs a second
// time under their on-disk names (fs/xfs/libxfs/xfs_da_format.h), which
// system.posix_acl_* already carry and which mean nothing elsewhere.
func skipXattr(name string) bool {
	return name == "trusted.SGI_ACL_FILE" || name == "trusted.SGI_ACL_DEFAULT"
}

// listXattrs calls fn with each extended attribute of the open file src;
// the value is only valid during the call.
func (w *worker) listXattrs(src int, rel string, fn func(name string, v []byte) error) error {
	n, err := unix.Flistxattr(src, w.xlist)
	if err == unix.ENOTSUP || (err == nil && n == 0) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "listxattr", Path: filepath.Join(w.c.src, rel), Err: err}
	}
	for _, name := range splitNames(w.xlist[:n]) {
		if skipXattr(name) {
			continue
		}
		v, err := unix.Fgetxattr(src, name, w.xval)
		if err == unix.ENODATA {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "getxattr " + name, Path: filepath.Join(w.c.src, rel), Err: err}
		}
		if err := fn(name, w.xval[:v]); err != nil {
			return err
		}
	}
	return nil
}

// fdXattrs copies every extended attribute of the open file src to dst.
func (w *worker) fdXattrs(src, dst int, rel string) error {
	return w.listXattrs(src, rel, func(name string, v []byte) error {
		if err := unix.Fsetxattr(dst, name, v, 0); err != nil {
			return &os.PathError{Op: "setxattr " + name, Path: filepath.Join(w.c.dst, rel), Err: err}
		}
		return nil
	})
}

// pathXattrs copies the xattrs of a symlink or special file, which cannot
// be opened for f*xattr. The names go through /proc/self/fd/DIRFD/NAME: the
// directory is the one already open (no path lookup that could meet a
// symlink) and the l* calls do not follow the last component.
func (w *worker) pathXattrs(srcDir, dstDir int, name, rel string) error {
	sp := "/proc/self/fd/" + strconv.Itoa(srcDir) + "/" + name
	n, err := unix.Llistxattr(sp, w.xlist)
	if err == unix.ENOTSUP || (err == nil && n == 0) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "listxattr", Path: filepath.Join(w.c.src, rel), Err: err}
	}
	dp := "/proc/self/fd/" + strconv.Itoa(dstDir) + "/" + name
	for _, x := range splitNames(w.xlist[:n]) {
		if skipXattr(x) {
			continue
		}
		v, err := unix.Lgetxattr(sp, x, w.xval)
		if err == unix.ENODATA {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "getxattr " + x, Path: filepath.Join(w.c.src, rel), Err: err}
		}
		if err := unix.Lsetxattr(dp, x, w.xval[:v], 0); err != nil {
			return &os.PathError{Op: "setxattr " + x, Path: filepath.Join(w.c.dst, rel), Err: err}
		}
	}
	return nil
}

func splitNames(b []byte) []string {
	var out []string
	for len(b) > 0 {
		i := indexNUL(b)
		if i < 0 {
			i = len(b)
		}
		if i > 0 {
			out = append(out, string(b[:i]))
		}
		if i == len(b) {
			break
		}
		b = b[i+1:]
	}
	return out
}
