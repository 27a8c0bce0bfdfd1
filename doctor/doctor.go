package doctor

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/limits"
	"github.com/nspawn-runner/nspawn-runner/machine"
)

// Levels of a finding.
const (
	OK   = "ok"
	Warn = "warn"
	// Fail: a job on this host would fail.
	Fail = "fail"
)

// Finding is the outcome of one check.
type Finding struct {
	Check  string `json:"check"`
	Level  string `json:"level"`
	Detail string `json:"detail"`
	// Fix says what to do; empty when Level is OK.
	Fix string `json:"fix,omitempty"`
}

// Failed reports whether any finding fails (a job would fail).
func Failed(fs []Finding) bool {
	return slices.ContainsFunc(fs, func(f Finding) bool { return f.Level == Fail })
}

// Facts are what the checks look at. Each group has the error that kept
// Gather from reading it, if any.
type Facts struct {
	Now time.Time

	KernelRelease string
	// Filesystems are the names in /proc/filesystems.
	Filesystems []string
	// Modules are kernel modules present (/sys/module), built in or loaded.
	Modules []string
	// KernelConfig is the kernel's build configuration (/proc/config.gz
	// or /boot/config-RELEASE: CONFIG_VETH -> y, m); nil when unknown.
	KernelConfig map[string]string
	// UserNamespaces is user.max_user_namespaces.
	UserNamespaces int64

	// Cgroup2 is whether a cgroup v2 hierarchy is mounted; Controllers
	// are its root's cgroup.controllers.
	Cgroup2     bool
	Controllers []string
	CgroupErr   error

	NspawnVersion int
	NspawnErr     error

	Root string
	// RootErr: the root directory is missing or unreadable.
	RootErr   error
	RootBtrfs bool
	// RootFree is the space left for machines and images, in bytes.
	RootFree uint64
	// Storage is machine.storage of the config.
	Storage string

	// RunnerBinary is the gitlab-runner found ("" when none);
	// RunnerConfigured whether the config names it (so that a missing
	// one fails jobs); RunnerVersion its version line.
	RunnerBinary     string
	RunnerConfigured bool
	RunnerVersion    string
	RunnerErr        error

	// RunnerConfigPath is gitlab-runner's config.toml; RunnerConfig its
	// text, RunnerConfigErr why it could not be read.
	RunnerConfigPath string
	RunnerConfig     string
	RunnerConfigErr  error
	// Self is this nspawn-runner's path, which the runner section's
	// *_exec should name; Stage, when not empty, the stage executable
	// installed with it, which run_exec may name instead (toml writes it).
	Self, Stage string
	// ReadyTimeout, StopTimeout and ServicesTimeout are the config's
	// machine timeouts.
	ReadyTimeout, StopTimeout, ServicesTimeout time.Duration

	Images       []bootstrap.Image
	ImagesErr    error
	DefaultImage string

	// Systemd is whether the host runs systemd; TimersEnabled the
	// nspawn-runner timers enabled; Cron whether the cron file exists.
	Systemd       bool
	TimersEnabled []string
	Cron          bool

	Machines    []machine.Status
	MachinesErr error

	Limits []limits.Shortfall

	// PrivateUsers is machine.private_users; CanEnterUserNS whether this
	// binary can enter machines with a user namespace (built with cgo);
	// BindFS the filesystem of each directory machines get as an
	// idmapped bind with private users.
	PrivateUsers   bool
	CanEnterUserNS bool
	BindFS         []BindFS
}

// BindFS is the filesystem (statfs(2) type, by name) of a directory
// bound writable into machines.
type BindFS struct {
	Key, Path, FS string
}

// Check runs every check on f, in a fixed order.
func Check(f Facts) []Finding {
	var out []Finding
	for _, c := range []func(Facts) []Finding{
		checkKernel, checkCgroup, checkNspawn, checkRoot, checkRunner,
		checkRunnerConfig, checkImages, checkTimers, checkMachines, checkLimits,
		checkPrivateUsers,
	} {
		out = append(out, c(f)...)
	}
	return out
}

func ok(check, detail string) Finding { return Finding{Check: check, Level: OK, Detail: detail} }
func warn(check, detail, fix string) Finding {
	return Finding{Check: check, Level: Warn, Detail: detail, Fix: fix}
}
func fail(check, detail, fix string) Finding {
	return Finding{Check: check, Level: Fail, Detail: detail, Fix: fix}
}

// KernelVersion parses "6.1.0-18-amd64" into 6, 1.
func KernelVersion(release string) (major, minor int, ok bool) {
	a, rest, _ := strings.Cut(release, ".")
	b, _, _ := strings.Cut(rest, ".")
	b = strings.TrimRightFunc(b, func(r rune) bool { return r < '0' || r > '9' })
	if i := strings.IndexFunc(b, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		b = b[:i]
	}
	x, err1 := strconv.Atoi(a)
	y, err2 := strconv.Atoi(b)
	return x, y, err1 == nil && err2 == nil
}

func checkKernel(f Facts) []Finding {
	var out []Finding
	major, minor, parsed := KernelVersion(f.KernelRelease)
	switch {
	case !parsed:
		out = append(out, warn("kernel", fmt.Sprintf("cannot read the kernel version from %q", f.KernelRelease), "run on a Linux kernel 5.12 or later"))
	case major < 5 || major == 5 && minor < 12:
		out = append(out, warn("kernel", "kernel "+f.KernelRelease+": no idmapped mounts (5.12), which user-namespaced machines need", "upgrade the kernel (Debian 12 ships 6.1)"))
	default:
		out = append(out, ok("kernel", "kernel "+f.KernelRelease))
	}
	has := func(fs string) bool { return slices.Contains(f.Filesystems, fs) }
	switch {
	case !has("overlay") && !f.RootBtrfs:
		out = append(out, fail("kernel.overlayfs", "no overlayfs, and the image root is not on btrfs: jobs have no way to run on a copy of an image", "load the overlay module (modprobe overlay), or put the root on btrfs (nspawn-runner setup --loopback 20G)"))
	case !has("overlay"):
		out = append(out, warn("kernel.overlayfs", "no overlayfs: storage overlay and volatile do not work (btrfs does)", "modprobe overlay"))
	default:
		out = append(out, ok("kernel.overlayfs", "overlayfs available"))
	}
	if has("btrfs") {
		out = append(out, ok("kernel.btrfs", "btrfs available"))
	} else {
		out = append(out, warn("kernel.btrfs", "no btrfs: images are plain directories and jobs run on overlays", "modprobe btrfs (and nspawn-runner setup --loopback SIZE) for instant snapshots"))
	}
	if f.UserNamespaces > 0 {
		out = append(out, ok("kernel.userns", fmt.Sprintf("user namespaces available (user.max_user_namespaces = %d)", f.UserNamespaces)))
	} else {
		out = append(out, warn("kernel.userns", "user namespaces are off (user.max_user_namespaces = 0): machines cannot run with private users", "sysctl user.max_user_namespaces=15000"))
	}
	for _, mod := range []struct{ name, config, what string }{
		{"nf_tables", "CONFIG_NF_TABLES", "nftables (private networks' NAT)"},
		{"veth", "CONFIG_VETH", "veth pairs (private networks)"},
	} {
		v := f.KernelConfig[mod.config]
		switch {
		case slices.Contains(f.Modules, mod.name) || v == "y" || v == "m":
			out = append(out, ok("kernel."+mod.name, mod.what+" available"))
		case f.KernelConfig == nil:
			out = append(out, warn("kernel."+mod.name, "cannot tell whether the kernel has "+mod.what+" (no /proc/config.gz, no /boot/config-"+f.KernelRelease+", module not loaded)", "modprobe "+mod.name+" if private networks fail"))
		default:
			out = append(out, warn("kernel."+mod.name, "no "+mod.what+": machines can only share the host's network", "use a kernel with "+mod.config))
		}
	}
	return out
}

// wantControllers are the cgroup v2 controllers machine limits use.
var wantControllers = []string{"cpu", "memory", "pids"}

func checkCgroup(f Facts) []Finding {
	if !f.Cgroup2 {
		detail := "no cgroup v2 hierarchy: machines share nspawn-runner's cgroup and no limits apply"
		if f.CgroupErr != nil {
			detail += " (" + f.CgroupErr.Error() + ")"
		}
		return []Finding{warn("cgroup", detail, "boot with systemd.unified_cgroup_hierarchy=1 (Debian 12's default)")}
	}
	var missing []string
	for _, c := range wantControllers {
		if !slices.Contains(f.Controllers, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return []Finding{warn("cgroup", "cgroup v2 lacks the controllers "+strings.Join(missing, ", ")+": machine limits on them are not applied", "boot with systemd.unified_cgroup_hierarchy=1 so the controllers move to cgroup v2")}
	}
	return []Finding{ok("cgroup", "cgroup v2 with "+strings.Join(f.Controllers, " "))}
}

func checkNspawn(f Facts) []Finding {
	switch {
	case f.NspawnErr != nil:
		return []Finding{fail("systemd-nspawn", f.NspawnErr.Error(), "apt-get install systemd-container")}
	case f.NspawnVersion > 0 && f.NspawnVersion < 247:
		return []Finding{warn("systemd-nspawn", fmt.Sprintf("systemd-nspawn %d is older than tested (247 and later)", f.NspawnVersion), "upgrade systemd-container (Debian 12 has 252)")}
	}
	return []Finding{ok("systemd-nspawn", fmt.Sprintf("systemd-nspawn %d", f.NspawnVersion))}
}

const gib = 1 << 30

func checkRoot(f Facts) []Finding {
	if f.RootErr != nil {
		return []Finding{fail("root", "image root "+f.Root+": "+f.RootErr.Error(), "run nspawn-runner setup")}
	}
	var out []Finding
	if f.RootBtrfs {
		out = append(out, ok("root.btrfs", f.Root+" is on btrfs: jobs start from snapshots"))
	} else if f.Storage == machine.StorageBtrfs {
		out = append(out, fail("root.btrfs", f.Root+" is not on btrfs, but machine.storage is btrfs", "nspawn-runner setup --loopback 20G, or machine.storage: auto"))
	} else {
		out = append(out, warn("root.btrfs", f.Root+" is not on btrfs: jobs run on overlays, and images are full copies", "nspawn-runner setup --loopback 20G mounts a btrfs file there"))
	}
	free := fmt.Sprintf("%.1f GiB free in %s", float64(f.RootFree)/gib, f.Root)
	switch {
	case f.RootFree < gib:
		out = append(out, fail("root.space", free, "free space: remove unused images (chroot-remove) or run nspawn-runner gc"))
	case f.RootFree < 5*gib:
		out = append(out, warn("root.space", free+": a few jobs that write much can fill it", "free space or grow the filesystem"))
	default:
		out = append(out, ok("root.space", free))
	}
	return out
}

func checkRunner(f Facts) []Finding {
	switch {
	case f.RunnerBinary == "" && f.RunnerConfigured:
		return []Finding{fail("gitlab-runner", "gitlab.runner_binary of the config: "+errText(f.RunnerErr), "install gitlab-runner there or fix gitlab.runner_binary")}
	case f.RunnerBinary == "":
		return []Finding{warn("gitlab-runner", "no gitlab-runner on PATH: jobs run, but their caches and artifacts are disabled", "install gitlab-runner, or set gitlab.runner_binary")}
	case f.RunnerErr != nil:
		return []Finding{warn("gitlab-runner", f.RunnerBinary+" does not run: "+f.RunnerErr.Error(), "reinstall gitlab-runner")}
	}
	return []Finding{ok("gitlab-runner", strings.TrimSpace(f.RunnerBinary+" "+f.RunnerVersion))}
}

func errText(err error) string {
	if err == nil {
		return "not found"
	}
	return err.Error()
}

func checkRunnerConfig(f Facts) []Finding {
	const check = "gitlab-runner.config"
	if f.RunnerConfigErr != nil {
		return []Finding{warn(check, "cannot read "+f.RunnerConfigPath+": "+f.RunnerConfigErr.Error(), "register the runner (nspawn-runner toml prints its section), or ignore this on a host that only builds images")}
	}
	sections := ParseRunners(f.RunnerConfig)
	var ours []RunnerCustom
	for _, s := range sections {
		if s.Executor == "custom" && s.PrepareExec == f.Self {
			ours = append(ours, s)
		}
	}
	if len(ours) == 0 {
		return []Finding{warn(check, fmt.Sprintf("no [[runners]] section of %s runs %s (%d sections)", f.RunnerConfigPath, f.Self, len(sections)), "add the section nspawn-runner toml prints")}
	}
	var out []Finding
	for _, s := range ours {
		var bad []string
		for _, e := range []struct {
			key  string
			exec string
		}{{"config_exec", s.ConfigExec}, {"run_exec", s.RunExec}, {"cleanup_exec", s.CleanupExec}} {
			// run_exec may name the stage executable installed with it.
			stage := e.key == "run_exec" && f.Stage != "" && e.exec == f.Stage
			if e.exec != f.Self && !stage {
				bad = append(bad, fmt.Sprintf("%s is %q", e.key, e.exec))
			}
		}
		// prepare waits for the machine (ready_timeout) and its services
		// (services_timeout, at the same time) and may first remove a
		// machine an earlier try left (stop_timeout); cleanup stops it
		// gracefully (stop_timeout) and then removes storage.
		if need := max(f.ReadyTimeout, f.ServicesTimeout) + f.StopTimeout; s.PrepareTimeout > 0 && time.Duration(s.PrepareTimeout)*time.Second < need {
			what := "ready_timeout"
			if f.ServicesTimeout > f.ReadyTimeout {
				what = "services_timeout"
			}
			bad = append(bad, fmt.Sprintf("prepare_exec_timeout = %d is shorter than %s + stop_timeout (%s)", s.PrepareTimeout, what, need))
		}
		if need := f.StopTimeout + 10*time.Second; s.CleanupTimeout > 0 && time.Duration(s.CleanupTimeout)*time.Second < need {
			bad = append(bad, fmt.Sprintf("cleanup_exec_timeout = %d is shorter than stop_timeout + 10s (%s)", s.CleanupTimeout, need))
		}
		name := "runner " + strconv.Quote(s.Name)
		if len(bad) > 0 {
			out = append(out, warn(check, name+": "+strings.Join(bad, "; "), "compare with the section nspawn-runner toml prints"))
		} else {
			out = append(out, ok(check, name+" runs "+f.Self))
		}
	}
	return out
}

// maxImageAge is when an image that was never maintained is worth a word.
const maxImageAge = 30 * 24 * time.Hour

func checkImages(f Facts) []Finding {
	if f.RootErr != nil {
		return nil // the root check failed already
	}
	if f.ImagesErr != nil {
		return []Finding{fail("images", f.ImagesErr.Error(), "run nspawn-runner setup, then chroot-create NAME")}
	}
	if len(f.Images) == 0 {
		return []Finding{fail("images", "no base images in "+f.Root+": every job would fail", "nspawn-runner chroot-create bookworm")}
	}
	var out []Finding
	names := make([]string, 0, len(f.Images))
	for _, im := range f.Images {
		names = append(names, im.Name)
		last := im.Created
		if im.Maintained.After(last) {
			last = im.Maintained
		}
		age := f.Now.Sub(last)
		if !last.IsZero() && age > maxImageAge {
			out = append(out, warn("images."+im.Name, fmt.Sprintf("image %s was last built or maintained %d days ago", im.Name, int(age.Hours()/24)), "nspawn-runner chroot-maintenance "+im.Name+" (or enable nspawn-runner-maintenance.timer)"))
		} else {
			out = append(out, ok("images."+im.Name, fmt.Sprintf("image %s, %.0f MiB, updated %s", im.Name, float64(im.Size)/(1<<20), last.UTC().Format(time.DateOnly))))
		}
	}
	if f.DefaultImage != "" && !slices.Contains(names, f.DefaultImage) {
		out = append(out, fail("images.default", "default_image "+f.DefaultImage+" does not exist: jobs without image: would fail", "nspawn-runner chroot-create "+f.DefaultImage))
	}
	return out
}

// Timers are the systemd timers of dist/ and what they do.
var Timers = []string{"nspawn-runner-gc.timer", "nspawn-runner-maintenance.timer"}

func checkTimers(f Facts) []Finding {
	if !f.Systemd {
		if f.Cron {
			return []Finding{ok("timers", "cron file present (no systemd)")}
		}
		return []Finding{warn("timers", "no systemd and no /etc/cron.d/nspawn-runner: nothing runs gc or maintenance", "install the cron file (dist/nspawn-runner.cron)")}
	}
	var out []Finding
	for _, t := range Timers {
		if slices.Contains(f.TimersEnabled, t) {
			out = append(out, ok("timers."+t, t+" enabled"))
		} else {
			out = append(out, warn("timers."+t, t+" is not enabled", "systemctl enable --now "+t))
		}
	}
	return out
}

// staleAge is the age at which a running machine is probably forgotten.
const staleAge = 24 * time.Hour

func checkMachines(f Facts) []Finding {
	if f.MachinesErr != nil {
		return []Finding{warn("machines", f.MachinesErr.Error(), "check the run directory's permissions")}
	}
	var dead, old []string
	for _, m := range f.Machines {
		switch {
		case m.State == machine.StateDead:
			dead = append(dead, m.Name)
		case !m.Created.IsZero() && f.Now.Sub(m.Created) > staleAge:
			old = append(old, m.Name)
		}
	}
	var out []Finding
	if len(dead) > 0 {
		out = append(out, warn("machines.dead", fmt.Sprintf("%d dead machines hold storage and records: %s", len(dead), strings.Join(dead, " ")), "nspawn-runner gc"))
	}
	if len(old) > 0 {
		out = append(out, warn("machines.old", fmt.Sprintf("%d machines older than %s: %s", len(old), staleAge, strings.Join(old, " ")), "nspawn-runner gc --max-age 6h (or enable nspawn-runner-gc.timer)"))
	}
	if len(out) == 0 {
		out = append(out, ok("machines", fmt.Sprintf("%d machines, none stale", len(f.Machines))))
	}
	return out
}

func checkLimits(f Facts) []Finding {
	if len(f.Limits) == 0 {
		return []Finding{ok("limits", "kernel limits sized for many machines")}
	}
	var out []Finding
	for _, s := range f.Limits {
		have := strconv.FormatInt(s.Have, 10)
		if s.Err != nil {
			have = "unreadable (" + s.Err.Error() + ")"
		}
		out = append(out, warn("limits."+s.Name, fmt.Sprintf("%s is %s, below %d: with many machines at once they run out (%s)", s.Name, have, s.Want, s.Why), "nspawn-runner setup (installs "+limits.DefaultDropIn+")"))
	}
	return out
}

// idmapFS are filesystems whose mounts the kernel idmaps (FS_ALLOW_IDMAP)
// with the kernel version that brought it; noIDMapFS some that it never
// does.
var (
	idmapFS   = map[string][2]int{"btrfs": {5, 15}, "ext4": {5, 12}, "xfs": {5, 12}, "tmpfs": {6, 3}, "f2fs": {5, 18}, "vfat": {5, 12}, "erofs": {5, 17}}
	noIDMapFS = []string{"nfs", "9p", "ramfs", "cifs", "smb2", "fuse", "overlay"}
)

func checkPrivateUsers(f Facts) []Finding {
	const check = "machine.private_users"
	if !f.PrivateUsers {
		return []Finding{ok(check, "off: a job's root is the host's root (private_users: true maps it to an unprivileged uid range)")}
	}
	var out []Finding
	major, minor, _ := KernelVersion(f.KernelRelease)
	older := func(v [2]int) bool { return major < v[0] || major == v[0] && minor < v[1] }
	switch {
	case !f.RootBtrfs || f.Storage == machine.StorageOverlay || f.Storage == machine.StorageVolatile:
		out = append(out, fail(check, "on, but machines do not run on btrfs snapshots (the kernel cannot idmap an overlayfs root): every prepare fails", "nspawn-runner setup --loopback 20G and machine.storage auto or btrfs, or turn private_users off"))
	case f.UserNamespaces == 0:
		out = append(out, fail(check, "on, but user namespaces are off: every prepare fails", "sysctl user.max_user_namespaces=15000"))
	case !f.CanEnterUserNS:
		out = append(out, fail(check, "on, but this nspawn-runner was built without cgo and cannot enter such machines", "build it with make build (CGO_ENABLED=1)"))
	case older([2]int{5, 15}):
		out = append(out, fail(check, "on, but kernel "+f.KernelRelease+" cannot idmap btrfs mounts (5.15)", "upgrade the kernel or turn private_users off"))
	}
	for _, b := range f.BindFS {
		v, good := idmapFS[b.FS]
		switch {
		case good && older(v):
			out = append(out, fail(check, fmt.Sprintf("%s %s is on %s, which kernel %s cannot idmap (%d.%d): prepare fails", b.Key, b.Path, b.FS, f.KernelRelease, v[0], v[1]), "move it to btrfs, ext4 or xfs, or turn private_users off"))
		case slices.Contains(noIDMapFS, b.FS):
			out = append(out, fail(check, fmt.Sprintf("%s %s is on %s, which the kernel cannot idmap: prepare fails", b.Key, b.Path, b.FS), "move it to btrfs, ext4 or xfs, or turn private_users off"))
		case !good:
			out = append(out, warn(check, fmt.Sprintf("%s %s is on %s: cannot tell whether the kernel idmaps it", b.Key, b.Path, b.FS), "if prepare says it cannot idmap the bind, move it to btrfs, ext4 or xfs"))
		}
	}
	if len(out) == 0 {
		out = append(out, ok(check, "on: jobs run as an unprivileged uid range on the host (btrfs snapshots, idmapped binds)"))
	}
	return out
}
