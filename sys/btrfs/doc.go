// Package btrfs wraps the btrfs subvolume ioctls (BTRFS_IOC_SUBVOL_CREATE,
// BTRFS_IOC_SNAP_CREATE_V2, BTRFS_IOC_SNAP_DESTROY, BTRFS_IOC_SUBVOL_GETFLAGS/
// SETFLAGS) and statfs(2) on the filesystem magic, through
// github.com/containerd/btrfs/v2 and golang.org/x/sys/unix.
//
// See btrfs-subvolume(8) and linux/include/uapi/linux/btrfs.h.
package btrfs
