// Package treecopy copies a directory tree the way `cp -a --reflink=auto`
// does, for images that cannot be snapshotted: regular files share their
// extents with ioctl_ficlone(2) (FICLONE) where the filesystem can, and are
// copied with copy_file_range(2), sendfile(2) or read/write where it cannot;
// holes of sparse files are found with lseek(2) SEEK_DATA/SEEK_HOLE.
// Directories are read with getdents64(2) and walked with openat2(2)
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS (Linux 5.6), so a tree that changes
// under the copy cannot lead it outside; extended attributes go through the
// f*xattr(2) calls, or the l*xattr(2) ones on /proc/self/fd/DIR/NAME for
// symlinks and special files.
//
// A copy takes a context: an image copy lasts seconds to minutes, and a
// cancelled maintenance must not wait for it.
//
// Files: copy_linux.go (the work queue, entries, metadata), data_linux.go
// (file contents), xattr_linux.go, at_linux.go (directory reading and
// the *at(2) lookups).
package treecopy
