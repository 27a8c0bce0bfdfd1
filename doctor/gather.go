package doctor

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/gitlab"
	"github.com/nspawn-runner/nspawn-runner/limits"
	"github.com/nspawn-runner/nspawn-runner/machine"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/ns"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
	"github.com/nspawn-runner/nspawn-runner/sys/sysctl"
)

// DefaultRunnerConfig is gitlab-runner's config.toml when it runs as root.
const DefaultRunnerConfig = "/etc/gitlab-runner/config.toml"

// Host says where Gather looks.
type Host struct {
	Config   config.Config
	Store    *bootstrap.Store
	Machines *machine.Manager
	// Self is this program's path (os.Executable); Stage the stage
	// executable installed with it, or "".
	Self, Stage string
	// RunnerConfig is gitlab-runner's config.toml (DefaultRunnerConfig
	// when empty).
	RunnerConfig string
	// PathEnv is the PATH gitlab-runner is looked up on.
	PathEnv string
	// Sysctl is /proc/sys (empty) or a tree laid out like it.
	Sysctl sysctl.Dir
	// Etc is the root of /etc/systemd/system and /etc/cron.d ("/" when
	// empty).
	Etc string
}

// Gather reads the facts of the host. It never fails: what it cannot read
// is in the facts' errors, and the checks say what that means.
func Gather(ctx context.Context, h Host) Facts {
	f := Facts{
		Now: time.Now(), Root: h.Config.Root, Storage: h.Config.Machine.Storage, Self: h.Self, Stage: h.Stage,
		DefaultImage: h.Config.DefaultImage,
		ReadyTimeout: h.Config.Machine.ReadyTimeout.D(), StopTimeout: h.Config.Machine.StopTimeout.D(),
		ServicesTimeout: h.Config.Machine.ServicesTimeout.D(),
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		f.KernelRelease = unix.ByteSliceToString(uts.Release[:])
	}
	f.Filesystems = procFilesystems()
	if ents, err := os.ReadDir("/sys/module"); err == nil {
		for _, e := range ents {
			f.Modules = append(f.Modules, e.Name())
		}
	}
	f.KernelConfig = kernelConfig(f.KernelRelease)
	f.UserNamespaces, _ = h.Sysctl.GetInt("user.max_user_namespaces")

	if hier, err := cgroup.Detect(); err != nil {
		f.CgroupErr = err
	} else {
		f.Cgroup2 = true
		f.Controllers, f.CgroupErr = hier.Controllers("")
	}

	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	prog, nerr := nspawn.Find(vctx, "")
	f.NspawnVersion, f.NspawnErr = prog.Version, nerr
	cancel()

	var st unix.Statfs_t
	if err := unix.Statfs(h.Config.Root, &st); err != nil {
		f.RootErr = err
	} else {
		f.RootFree = st.Bavail * uint64(st.Bsize)
		f.RootBtrfs, _ = btrfs.IsBtrfs(h.Config.Root)
	}

	f.RunnerConfigured = h.Config.GitLab.RunnerBinary != ""
	f.RunnerBinary, f.RunnerErr = gitlab.RunnerBinary(h.Config.GitLab.RunnerBinary, h.PathEnv)
	if f.RunnerBinary != "" {
		f.RunnerVersion, f.RunnerErr = runnerVersion(ctx, f.RunnerBinary)
	}
	f.RunnerConfigPath = cmpOr(h.RunnerConfig, DefaultRunnerConfig)
	if b, err := os.ReadFile(f.RunnerConfigPath); err != nil {
		f.RunnerConfigErr = err
	} else {
		f.RunnerConfig = string(b)
	}

	if f.RootErr == nil {
		f.Images, f.ImagesErr = h.Store.List()
	} else {
		f.ImagesErr = f.RootErr
	}

	f.Systemd = nspawn.HasSystemd()
	etc := cmpOr(h.Etc, "/")
	for _, t := range Timers {
		if _, err := os.Stat(filepath.Join(etc, "etc/systemd/system/timers.target.wants", t)); err == nil {
			f.TimersEnabled = append(f.TimersEnabled, t)
		}
	}
	_, err := os.Stat(filepath.Join(etc, "etc/cron.d/nspawn-runner"))
	f.Cron = err == nil

	f.Machines, f.MachinesErr = h.Machines.List(ctx)
	f.Limits = limits.Check(h.Sysctl)

	f.PrivateUsers, f.CanEnterUserNS = h.Config.Machine.PrivateUsers, ns.CanEnterUserNS
	for _, d := range []struct{ key, path string }{{"gitlab.cache_dir", h.Config.GitLab.CacheDir}, {"gitlab.builds_dir", h.Config.GitLab.BuildsDir}} {
		if d.path != "" {
			f.BindFS = append(f.BindFS, BindFS{Key: d.key, Path: d.path, FS: fsName(d.path)})
		}
	}
	return f
}

// fsName is the filesystem type of path, or of its nearest existing
// parent (a cache directory is made at the first job), by statfs(2).
func fsName(path string) string {
	var st unix.Statfs_t
	for p := path; ; p = filepath.Dir(p) {
		if unix.Statfs(p, &st) == nil {
			break
		}
		if p == "/" {
			return "unknown"
		}
	}
	switch uint32(st.Type) {
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	case unix.MSDOS_SUPER_MAGIC:
		return "vfat"
	case unix.EROFS_SUPER_MAGIC_V1:
		return "erofs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.V9FS_MAGIC:
		return "9p"
	case unix.RAMFS_MAGIC:
		return "ramfs"
	case unix.CIFS_SUPER_MAGIC:
		return "cifs"
	case unix.SMB2_SUPER_MAGIC:
		return "smb2"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay"
	}
	return fmt.Sprintf("type %#x", uint32(st.Type))
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// procFilesystems lists the filesystem types the kernel knows
// (/proc/filesystems: "nodev\tname" or "\tname").
func procFilesystems() []string {
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return nil
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 {
			out = append(out, fields[len(fields)-1])
		}
	}
	// overlay and btrfs may be modules not yet loaded: the kernel loads
	// them on the first mount. A module file for them counts.
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		rel := unix.ByteSliceToString(uts.Release[:])
		for _, fs := range []string{"overlay", "btrfs"} {
			if slices.Contains(out, fs) {
				continue
			}
			matches, _ := filepath.Glob(filepath.Join("/lib/modules", rel, "kernel/fs", fs, fs+".ko*"))
			if len(matches) > 0 {
				out = append(out, fs)
			}
		}
	}
	return out
}

// runnerVersion is the "Version: ..." line of gitlab-runner --version.
func runnerVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			return "", errors.New(strings.TrimSpace(string(nspawn.Tail(ee.Stderr, 200))))
		}
		return "", err
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0]), nil
}

// kernelConfig reads the kernel's build configuration: /proc/config.gz
// (CONFIG_IKCONFIG_PROC), else Debian's /boot/config-RELEASE; nil when
// neither exists.
func kernelConfig(release string) map[string]string {
	var r io.Reader
	if f, err := os.Open("/proc/config.gz"); err == nil {
		defer f.Close()
		if zr, err := gzip.NewReader(f); err == nil {
			r = zr
		}
	}
	if r == nil {
		f, err := os.Open("/boot/config-" + release)
		if err != nil {
			return nil
		}
		defer f.Close()
		r = f
	}
	return ParseKernelConfig(r)
}

// ParseKernelConfig reads CONFIG_X=value lines.
func ParseKernelConfig(r io.Reader) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(k, "CONFIG_") {
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}
