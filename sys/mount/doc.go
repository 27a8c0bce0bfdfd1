// Package mount wraps the Linux mount interfaces a machine needs: mount(2)
// for bind, read-only bind, overlay and tmpfs mounts and for propagation
// changes, mount_setattr(2) for recursive read-only binds, umount2(2) with
// MNT_DETACH for idempotent teardown, open_tree(2) with OPEN_TREE_CLONE and
// move_mount(2) for detached binds attached in another mount namespace
// (Clone, Tree.MoveTo), and the mountinfo file of proc(5)
// (/proc/thread-self/mountinfo) to find what is mounted.
//
// Every mount returns a *Mount whose Unmount undoes it; unmounting what is
// no longer mounted is not an error, so teardown can always be repeated.
// Overlay options follow Documentation/filesystems/overlayfs.rst.
package mount
