package machine

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/nspawn-runner/nspawn-runner/sys/ns"
)

// ErrPrivateUsers is the cause of every refusal of machine.private_users
// on this host or image.
var ErrPrivateUsers = errors.New("machine.private_users cannot work here")

// checkPrivateUsers refuses, before anything starts, what private users
// cannot work with: the kernel idmaps btrfs (Linux 5.15), ext4 and xfs
// mounts, but not an overlayfs mount (systemd-nspawn 252 says "ID mapped
// mounts are apparently not available"), which overlay and volatile
// storage are; a kernel without user namespaces; a binary that cannot
// join one.
func checkPrivateUsers(storage, imagePath string) error {
	if storage != StorageBtrfs {
		return fmt.Errorf("%w: it needs btrfs storage and image %s runs on %s (the kernel cannot idmap an overlayfs root): put the images on btrfs (nspawn-runner setup --loopback SIZE) or turn private_users off", ErrPrivateUsers, imagePath, storage)
	}
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return fmt.Errorf("%w: user namespaces are off (user.max_user_namespaces = 0): raise it (sysctl user.max_user_namespaces=15000) or turn private_users off", ErrPrivateUsers)
	}
	if !ns.CanEnterUserNS {
		return fmt.Errorf("%w: %v: rebuild it with CGO_ENABLED=1 (make build) or turn private_users off", ErrPrivateUsers, ns.ErrNoUserNSEntry)
	}
	return nil
}

// idmapCause turns systemd-nspawn's failure to idmap a mount (a cache or
// builds directory on a filesystem the kernel cannot idmap, such as ramfs,
// nfs or 9p, or a kernel older than 5.12) into one line saying so.
func idmapCause(log, tree string, err error) error {
	b, rerr := os.ReadFile(log)
	if rerr != nil {
		return err
	}
	what := ""
	for _, line := range strings.Split(string(b), "\n") {
		// systemd-nspawn 252: "Failed to map ids for bind mount
		// TREE/cache: Invalid argument" for a bind, "ID mapped mounts
		// are apparently not available, sorry." for the root.
		if rest, ok := strings.CutPrefix(line, "Failed to map ids for bind mount "); ok {
			p, _, _ := strings.Cut(rest, ": ")
			what = "the bind mount of " + "/" + strings.TrimPrefix(strings.TrimPrefix(p, tree), "/")
			break
		}
		if strings.Contains(line, "ID mapped mounts are apparently not available") {
			what = "the machine's root"
			break
		}
	}
	if what == "" {
		return err
	}
	return fmt.Errorf("%w: the kernel cannot idmap %s (the images, gitlab.cache_dir and gitlab.builds_dir must be on btrfs, ext4, xfs or another filesystem with idmapped mounts, Linux 5.12 or later): move them or turn private_users off", ErrPrivateUsers, what)
}

// adoptRunFiles gives the machine's root (the first id of the range
// systemd-nspawn picked, read from the leader's uid map) what the machine
// sees through plain binds from the run directory: the stage scripts
// (read-only) and, with services, its own /etc/hosts (writable). Idmapped
// binds would need Linux 6.3 for the run directory's tmpfs. They stay out
// of reach of the host's users (their parent is 0700).
func (m *Manager) adoptRunFiles(l Layout, leader int) (uint32, error) {
	shift, _, err := ns.ReadIDMap(leader)
	if err != nil {
		return 0, fmt.Errorf("machine leader: %w", err)
	}
	if shift == 0 {
		return 0, fmt.Errorf("%w: systemd-nspawn started the machine without a user namespace of its own", ErrPrivateUsers)
	}
	for _, p := range []string{l.Scripts, l.Hosts} {
		if err := os.Chown(p, int(shift), int(shift)); err != nil && !(p == l.Hosts && errors.Is(err, os.ErrNotExist)) {
			return 0, fmt.Errorf("give %s to the machine's root (uid %s): %w", p, strconv.FormatUint(uint64(shift), 10), err)
		}
	}
	return shift, nil
}
