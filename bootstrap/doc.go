// Package bootstrap keeps the base images of nspawn-runner: it creates them
// with debootstrap, lists, enters and removes them, and swaps a rebuilt image
// in atomically.
//
// The store is a directory (the root, /var/lib/nspawn-runner by default)
// holding one image per name, ROOT/NAME, a btrfs subvolume when the root is
// on btrfs and a plain directory elsewhere: the layout of the original
// Python tool, so its images keep working. Names beginning with a dot are
// internal:
//
//	ROOT/.lock/NAME               flock(2) serialising create, remove and maintenance of NAME
//	ROOT/.meta/NAME.json          creation time, suite, mirror, packages, last maintenance
//	ROOT/.tmp-NAME-RANDOM         an image being built aside (Workspace)
//	ROOT/.swap-NAME-UNIXNANO      a tree in the middle of Replace: the new one, then the old one
//	ROOT/.retired-NAME-UNIXNANO   an image replaced or removed, deleted by gc once unused
//
// An image only ever appears complete: it is built in a workspace and
// renamed into place (rename(2) is atomic within a filesystem), and a
// rebuilt image replaces the old one with renameat2(2) RENAME_EXCHANGE, so
// a reader never sees the name missing or half-swapped.
//
// debootstrap runs in its own process group and as the init of its own PID
// namespace, with the parent-death signal set: a cancelled create kills the
// group, and a SIGKILLed nspawn-runner takes debootstrap and everything it
// forked along (pid_namespaces(7)). What such a death leaves, a workspace
// with /proc and /sys still mounted in it, is removed by the next create,
// remove, maintenance or gc once nobody holds that image's lock (never by
// a listing, which only reads).
package bootstrap
