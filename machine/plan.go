package machine

import (
	"fmt"
	"strconv"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/machine/state"
	"github.com/nspawn-runner/nspawn-runner/stage"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// ErrNotFound is returned when a job has no machine.
var ErrNotFound = state.ErrNotFound

// ExitError is the job script's own non-zero exit status.
type ExitError = stage.ExitError

// DefaultNamePrefix starts every machine name.
const DefaultNamePrefix = state.DefaultNamePrefix

// ScriptDir is where a machine sees the stage scripts (a read-only bind of
// RUN_DIR/machines/NAME/scripts).
const ScriptDir = stage.ScriptDir

// Name returns the machine name of a job (state.Name).
func Name(prefix, id, key string) (string, error) { return state.Name(prefix, id, key) }

// Storages resolved from config.StorageAuto.
const (
	StorageBtrfs    = config.StorageBtrfs
	StorageOverlay  = config.StorageOverlay
	StorageVolatile = config.StorageVolatile
)

// ChooseStorage resolves the configured storage for an image: auto takes
// a btrfs snapshot when the image is a btrfs subvolume, an overlay
// elsewhere.
func ChooseStorage(configured string, imageIsSubvolume bool) (string, error) {
	switch configured {
	case config.StorageAuto, "":
		if imageIsSubvolume {
			return StorageBtrfs, nil
		}
		return StorageOverlay, nil
	case StorageBtrfs:
		if !imageIsSubvolume {
			return "", fmt.Errorf("storage btrfs: the image is not a btrfs subvolume (use storage: auto or overlay)")
		}
		return StorageBtrfs, nil
	case StorageOverlay, StorageVolatile:
		return configured, nil
	}
	return "", fmt.Errorf("unknown storage %q", configured)
}

// Layout is where one machine's things live.
type Layout = state.Layout

// MachinesDirName is the directory under ROOT holding per-machine storage.
const MachinesDirName = state.MachinesDirName

// LayoutOf is the layout of machine name.
func LayoutOf(root, runDir, cgroupParent, name string) Layout {
	return state.LayoutOf(root, runDir, cgroupParent, name)
}

// Host is what the plan needs to know about the host.
type Host struct {
	// NoBus: no system D-Bus (or no systemd): --register=no --keep-unit.
	NoBus bool
	// NspawnVersion is systemd-nspawn's major version.
	NspawnVersion int
}

// PlanInput is everything a machine's nspawn command line depends on.
type PlanInput struct {
	Layout    Layout
	ImagePath string
	Storage   string
	Mode      string
	Seccomp   bool
	Binds     []Bind
	Host      Host
	// Limits become --property= values of the scope systemd makes for
	// the machine on a host with systemd and a bus; elsewhere they are
	// written to the cgroup we make.
	Limits cgroup.Limits
	// Network is the machine's network mode (config.Network*); with
	// private, NetNS is its pinned namespace and ResolvConf the file
	// bound onto its /etc/resolv.conf.
	Network, NetNS, ResolvConf string
	// Hosts, when not empty, is a file bound (writable: it is the
	// machine's own copy) onto /etc/hosts.
	Hosts string
	// Command, in fast mode, runs instead of the sleeping payload (a
	// service's command); ServiceEnv is then bound read-only on
	// ServiceEnvPath.
	Command    []string
	ServiceEnv string
	// PrivateUsers gives the machine a user namespace of its own.
	PrivateUsers bool
}

// StartsInNetNS reports whether systemd-nspawn must be started inside the
// machine's network namespace (in.NetNS) rather than told to join it.
// With private users it must: systemd-nspawn 252 joins
// --network-namespace-path from its inner child, after that child has
// entered the user namespace it made, where it has no CAP_SYS_ADMIN over
// a namespace the host's user namespace owns (setns(2) fails with EPERM:
// "Failed to join network namespace: Operation not permitted"). Started
// inside it, and given no network option, systemd-nspawn makes no network
// namespace and its machine inherits that one, sysfs included.
func StartsInNetNS(in PlanInput) bool {
	return in.PrivateUsers && in.Network == config.NetworkPrivate
}

// Plan returns the systemd-nspawn arguments and its extra environment.
func Plan(in PlanInput) (nspawn.Spec, []string) {
	s := nspawn.Spec{
		Machine:      in.Layout.Name,
		Quiet:        true,
		LinkJournal:  "no",
		ResolvConf:   "copy-host",
		SuppressSync: in.Host.NspawnVersion >= 250,
		NoRegister:   in.Host.NoBus,
		Binds:        []nspawn.Bind{{Host: in.Layout.Scripts, Machine: ScriptDir, ReadOnly: true}},
	}
	for _, b := range in.Binds {
		// With private users, writable binds (cache, builds) are
		// idmapped: the job's root reads and writes them as the host's
		// root, whatever range the machine got. Read-only ones (the
		// runner binary) only need to be readable: they show as owned
		// by nobody, and need no idmap support of their filesystem.
		s.Binds = append(s.Binds, nspawn.Bind{Host: b.Host, Machine: b.Machine, ReadOnly: b.ReadOnly, IDMap: in.PrivateUsers && !b.ReadOnly})
	}
	if in.PrivateUsers {
		// pick: systemd-nspawn chooses a free 65536-id range (hashed
		// from the machine name, checked against the host's users and
		// locked under /run/systemd/nspawn-uid while it runs), so
		// concurrent machines never share one. map: the root tree is
		// an idmapped mount, so a snapshot needs no chown and what the
		// job writes there belongs to the host's root.
		s.PrivateUsers = "pick"
		s.PrivateUsersOwnership = "map"
	}
	if !in.Host.NoBus {
		s.Properties = properties(in.Limits)
	}
	if in.Hosts != "" {
		// Not idmapped with private users: adoptRunFiles gives the file
		// to the machine's root.
		s.Binds = append(s.Binds, nspawn.Bind{Host: in.Hosts, Machine: "/etc/hosts"})
	}
	if in.ServiceEnv != "" {
		s.Binds = append(s.Binds, nspawn.Bind{Host: in.ServiceEnv, Machine: ServiceEnvPath, ReadOnly: true})
	}
	switch in.Network {
	case config.NetworkPrivate:
		// The namespace is ready before systemd-nspawn starts; the
		// machine's resolv.conf names resolvers it can reach.
		if !StartsInNetNS(in) {
			s.NetworkNamespacePath = in.NetNS
			// With --private-network as well, systemd-nspawn 252
			// mounts a sysfs of that namespace: without it
			// /sys/class/net shows the host's links.
			s.PrivateNetwork = true
		}
		s.ResolvConf = "off"
		s.Binds = append(s.Binds, nspawn.Bind{Host: in.ResolvConf, Machine: "/etc/resolv.conf", ReadOnly: true})
	case config.NetworkNone:
		s.PrivateNetwork = true
	}
	switch in.Storage {
	case StorageVolatile:
		s.Directory = in.ImagePath
		s.Volatile = "overlay"
		s.ReadOnly = true
	default:
		s.Directory = in.Layout.Tree
	}
	if in.Mode == config.ModeBoot {
		s.Boot = true
		s.NotifyReady = true
		// The console goes to a log file: no getty on it.
		s.Command = []string{"systemd.mask=console-getty.service"}
	} else {
		// A stub init of systemd-nspawn as PID 1 and a sleeping payload:
		// no systemd needed in the image, running in milliseconds.
		s.AsPID2 = true
		s.Command = []string{"sleep", "infinity"}
		if len(in.Command) > 0 {
			s.Command = in.Command
		}
	}
	var env []string
	if !in.Seccomp {
		// systemd-nspawn(1), ENVIRONMENT: SYSTEMD_SECCOMP=0 turns the
		// system call filter off.
		env = append(env, "SYSTEMD_SECCOMP=0")
	}
	return s, env
}

// properties are systemd.resource-control(5) settings for the limits.
func properties(l cgroup.Limits) []string {
	var p []string
	if l.CPUWeight > 0 {
		p = append(p, "CPUWeight="+strconv.Itoa(l.CPUWeight))
	}
	if l.MemoryHigh > 0 {
		p = append(p, "MemoryHigh="+strconv.FormatUint(l.MemoryHigh, 10))
	}
	if l.MemoryMax > 0 {
		p = append(p, "MemoryMax="+strconv.FormatUint(l.MemoryMax, 10))
	}
	if l.PidsMax > 0 {
		p = append(p, "TasksMax="+strconv.Itoa(l.PidsMax))
	}
	return p
}

// Expired reports whether a machine created at created is older than
// maxAge at now; maxAge 0 never expires.
func Expired(created, now time.Time, maxAge time.Duration) bool {
	return maxAge > 0 && now.Sub(created) > maxAge
}
