// Package config is the YAML configuration of nspawn-runner: its schema,
// defaults and validation. Unknown keys and bad values are errors naming the
// key and its line.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultPath is the configuration file read when --config is not given.
// It lives beside, not inside, /etc/nspawn-runner, so it can never be taken
// for an image playbook (NAME.yaml in that directory).
const DefaultPath = "/etc/nspawn-runner.yaml"

// Defaults of the original tool.
const (
	DefaultRoot        = "/var/lib/nspawn-runner"
	DefaultRunDir      = "/run/nspawn-runner"
	DefaultPlaybookDir = "/etc/nspawn-runner"
	DefaultSuite       = "bookworm"
	// DefaultCgroupParent is the cgroup (relative to the v2 root) below
	// which machines, logins and playbook runs get groups of their own.
	DefaultCgroupParent = "nspawn-runner"
)

// BasePackages are always installed in an image: what jobs and ansible need.
var BasePackages = []string{"ca-certificates", "dbus", "git", "python3", "systemd"}

// Mode of a machine.
const (
	ModeBoot = "boot" // systemd as PID 1, as the original
	ModeFast = "fast" // no boot: a minimal init, no systemd needed
)

// Storage of a machine.
const (
	StorageAuto     = "auto"     // btrfs snapshot on btrfs, overlay elsewhere
	StorageBtrfs    = "btrfs"    // a btrfs snapshot of the image
	StorageOverlay  = "overlay"  // the image as lower layer, a per-machine upper dir
	StorageVolatile = "volatile" // --volatile=overlay: changes live in a tmpfs
)

// Config is the whole configuration file.
type Config struct {
	// Root holds the base images, one per name (ROOT/NAME).
	Root string `yaml:"root"`
	// RunDir holds the state of running machines.
	RunDir string `yaml:"run_dir"`
	// PlaybookDirs are searched for NAME.yaml / NAME.yml playbooks; the
	// default is /etc/nspawn-runner and Root.
	PlaybookDirs []string `yaml:"playbook_dirs"`
	// DefaultImage is used by prepare when the job names none.
	DefaultImage string `yaml:"default_image"`
	// AllowedImages, when not empty, is the only images jobs may select.
	AllowedImages []string `yaml:"allowed_images"`

	Bootstrap Bootstrap `yaml:"bootstrap"`
	Machine   Machine   `yaml:"machine"`
	GitLab    GitLab    `yaml:"gitlab"`
}

// Bootstrap configures how chroot-create builds images.
type Bootstrap struct {
	// Suite is the Debian suite when neither flag nor playbook names one.
	Suite string `yaml:"suite"`
	// Mirror is passed to debootstrap; empty means debootstrap's default.
	Mirror string `yaml:"mirror"`
	// Packages are installed in addition to BasePackages.
	Packages []string `yaml:"packages"`
}

// Machine configures the per-job machines.
type Machine struct {
	Mode    string `yaml:"mode"`
	Storage string `yaml:"storage"`
	// Seccomp keeps systemd-nspawn's system call filter on.
	Seccomp bool `yaml:"seccomp"`
	// PrivateUsers runs the machine in a user namespace of its own: the
	// job's root is an unprivileged uid range on the host
	// (systemd-nspawn --private-users=pick with idmapped mounts). It
	// needs btrfs storage.
	PrivateUsers bool `yaml:"private_users"`
	// CPUWeight is the cgroup v2 cpu.weight (1-10000).
	CPUWeight int `yaml:"cpu_weight"`
	// MemoryHigh and MemoryMax are bytes ("2G") or a share of host RAM ("30%").
	MemoryHigh Size `yaml:"memory_high"`
	MemoryMax  Size `yaml:"memory_max"`
	// TasksMax limits the processes of one machine; 0 means no limit.
	TasksMax int `yaml:"tasks_max"`
	// Shell runs the job scripts inside the machine.
	Shell string `yaml:"shell"`
	// ReadyTimeout bounds how long prepare waits for the machine.
	ReadyTimeout Duration `yaml:"ready_timeout"`
	// StopTimeout bounds the graceful shutdown in cleanup before the
	// machine's cgroup is killed.
	StopTimeout Duration `yaml:"stop_timeout"`
	// ServicesTimeout bounds how long prepare waits for a job's services
	// to boot and accept connections; past it the job goes on with a
	// warning.
	ServicesTimeout Duration `yaml:"services_timeout"`
	// CgroupParent is the cgroup, relative to the cgroup v2 root, under
	// which each machine gets its own (hosts without systemd).
	CgroupParent string `yaml:"cgroup_parent"`

	// Network is private (a namespace of its own behind a bridge, NAT
	// and our nftables rules), host (the host's network, as before) or
	// none (loopback only).
	Network string `yaml:"network"`
	// Bridge is the host bridge of private machines, made on demand.
	Bridge string `yaml:"bridge"`
	// Subnet is the private machines' IPv4 subnet; its first address is
	// the bridge's (the machines' gateway).
	Subnet string `yaml:"subnet"`
	// AllowNetworks are CIDRs private machines may reach even on the
	// host itself (GitLab, a cache server); DenyNetworks are CIDRs they
	// may not reach (allow wins).
	AllowNetworks []string `yaml:"allow_networks"`
	DenyNetworks  []string `yaml:"deny_networks"`
	// DNS are the resolvers private machines use; empty means the host's,
	// or the upstream servers of a local stub resolver.
	DNS []string `yaml:"dns"`

	// Pool gives, per image, how many booted machines to keep ready for
	// prepare to claim (the warm pool); an image not named has none.
	Pool map[string]int `yaml:"pool"`
	// PoolMaxAge retires pooled machines older than this (0: never).
	PoolMaxAge Duration `yaml:"pool_max_age"`
}

// MaxPool bounds one image's pool: every pooled machine holds its memory
// (about 40 MiB idle in boot mode) whether jobs come or not.
const MaxPool = 64

// Network modes.
const (
	NetworkPrivate = "private"
	NetworkHost    = "host"
	NetworkNone    = "none"
)

// Network defaults: private machines.  10.213.0.0/20 (4093 machines) is an arbitrary block
// of RFC 1918 space away from the ones tools and home routers default to
// (docker 172.17/16, libvirt 192.168.122/24, 10.0.0/24, 192.168.0-1/24).
const (
	DefaultBridge = "nr-br0"
	DefaultSubnet = "10.213.0.0/20"
)

// ParseSubnet reads a machines' subnet: IPv4 CIDR without host bits, room
// for the bridge and at least one machine (/30 at most).
func ParseSubnet(v string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(v)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("want an IPv4 CIDR like %s, got %q", DefaultSubnet, v)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set: did you mean %s?", v, p.Masked())
	}
	if p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("%s is too small: /30 at most (the bridge and one machine)", v)
	}
	return p, nil
}

// ParseNetworks reads a list of IPv4 CIDRs; a bare address is a /32.
func ParseNetworks(vs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range vs {
		if a, err := netip.ParseAddr(v); err == nil && a.Is4() {
			out = append(out, netip.PrefixFrom(a, 32))
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() {
			return nil, fmt.Errorf("want IPv4 CIDRs like 192.0.2.0/24, got %q", v)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ParseDNS reads resolver addresses (IPv4).
func ParseDNS(vs []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, v := range vs {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("want IPv4 addresses like 192.0.2.53, got %q", v)
		}
		out = append(out, a)
	}
	return out, nil
}

// CheckBridgeName accepts a Linux interface name for the bridge.
func CheckBridgeName(n string) error {
	if n == "" || len(n) > 15 || n == "." || n == ".." {
		return fmt.Errorf("want an interface name of 1 to 15 characters, got %q", n)
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("want letters, digits, '-', '_' or '.' in an interface name, got %q", n)
		}
	}
	return nil
}

// GitLab configures the GitLab integration.
type GitLab struct {
	// CacheDir is the host directory holding one local cache per project.
	CacheDir string `yaml:"cache_dir"`
	// BuildsDir, when set, keeps a persistent builds directory per project
	// on the host; empty means builds are ephemeral inside the machine.
	BuildsDir string `yaml:"builds_dir"`
	// RunnerBinary is the gitlab-runner binary bind-mounted into machines;
	// empty means the one on PATH.
	RunnerBinary string `yaml:"runner_binary"`
	// JobIDFromVariables lets the stages take the job id from
	// CUSTOM_ENV_CI_JOB_ID when gitlab-runner gives no JOB_RESPONSE_FILE
	// (runners too old to write it), as the original nspawn-runner did.
	// Off by default: job variables can override predefined ones, so a job
	// could then name another job's machine.
	JobIDFromVariables bool `yaml:"job_id_from_variables"`
}

// Default returns the configuration used when there is no file.
func Default() Config {
	return Config{
		Root:      DefaultRoot,
		RunDir:    DefaultRunDir,
		Bootstrap: Bootstrap{Suite: DefaultSuite},
		Machine: Machine{
			Mode:            ModeBoot,
			Storage:         StorageAuto,
			Seccomp:         true,
			CPUWeight:       50,
			MemoryHigh:      Size{Percent: 30},
			MemoryMax:       Size{Percent: 40},
			Shell:           "bash",
			ReadyTimeout:    Duration(60 * time.Second),
			StopTimeout:     Duration(10 * time.Second),
			ServicesTimeout: Duration(30 * time.Second),
			CgroupParent:    DefaultCgroupParent,
			Network:         NetworkPrivate,
			Bridge:          DefaultBridge,
			Subnet:          DefaultSubnet,
			Pool:            map[string]int{},
		},
		GitLab: GitLab{CacheDir: "/var/cache/nspawn-runner"},
	}
}

// Playbooks returns the playbook directories in search order.
func (c *Config) Playbooks() []string {
	if len(c.PlaybookDirs) > 0 {
		return c.PlaybookDirs
	}
	return []string{DefaultPlaybookDir, c.Root}
}

// Load reads path over the defaults. A missing file means the defaults when
// mustExist is false (the default path) and an error otherwise (--config).
func Load(path string, mustExist bool) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !mustExist {
			return Default(), nil
		}
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a configuration over the defaults and validates it. Its
// errors are one line naming the key and its line; yaml.v3's error stays
// their cause (errors.As finds a *yaml.TypeError, a *KeyError).
func Parse(data []byte) (Config, error) {
	c := Default()
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		// yaml.v3's syntax errors already say "yaml: line N: ...".
		return Config{}, fmt.Errorf("parse: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 || len(root.Content) == 0 {
		return c, nil
	}
	if err := decodeNode(root.Content[0], reflect.ValueOf(&c).Elem(), ""); err != nil {
		return Config{}, err
	}
	if err := c.validate(&root); err != nil {
		return Config{}, err
	}
	return c, nil
}

// fieldError names the key and its line.
func fieldError(root *yaml.Node, key string, format string, args ...any) error {
	return &KeyError{Line: lineOf(root, key), Key: key, Err: fmt.Errorf(format, args...)}
}

// lineOf finds the line of a dotted key ("machine.mode") in a document.
func lineOf(root *yaml.Node, key string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range strings.Split(key, ".") {
		if n == nil || n.Kind != yaml.MappingNode {
			return line
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				line = n.Content[i].Line
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}

func (c *Config) validate(root *yaml.Node) error {
	abs := func(key, p string, empty bool) error {
		if p == "" && empty {
			return nil
		}
		if !filepath.IsAbs(p) {
			return fieldError(root, key, "must be an absolute path, got %q", p)
		}
		return nil
	}
	if err := abs("root", c.Root, false); err != nil {
		return err
	}
	if err := abs("run_dir", c.RunDir, false); err != nil {
		return err
	}
	for _, d := range c.PlaybookDirs {
		if err := abs("playbook_dirs", d, false); err != nil {
			return err
		}
	}
	if err := abs("gitlab.cache_dir", c.GitLab.CacheDir, true); err != nil {
		return err
	}
	if err := abs("gitlab.builds_dir", c.GitLab.BuildsDir, true); err != nil {
		return err
	}
	if err := abs("gitlab.runner_binary", c.GitLab.RunnerBinary, true); err != nil {
		return err
	}
	if c.DefaultImage != "" {
		if err := CheckImageName(c.DefaultImage); err != nil {
			return fieldError(root, "default_image", "%v", err)
		}
	}
	for _, n := range c.AllowedImages {
		if err := CheckImageName(n); err != nil {
			return fieldError(root, "allowed_images", "%v", err)
		}
	}
	if err := CheckSuite(c.Bootstrap.Suite); err != nil {
		return fieldError(root, "bootstrap.suite", "%v", err)
	}
	if err := CheckMirror(c.Bootstrap.Mirror); err != nil {
		return fieldError(root, "bootstrap.mirror", "%v", err)
	}
	for _, p := range c.Bootstrap.Packages {
		if err := CheckPackage(p); err != nil {
			return fieldError(root, "bootstrap.packages", "%v", err)
		}
	}
	m := &c.Machine
	switch m.Mode {
	case ModeBoot, ModeFast:
	default:
		return fieldError(root, "machine.mode", "must be %q or %q, got %q", ModeBoot, ModeFast, m.Mode)
	}
	switch m.Storage {
	case StorageAuto, StorageBtrfs, StorageOverlay, StorageVolatile:
	default:
		return fieldError(root, "machine.storage", "must be one of auto, btrfs, overlay, volatile, got %q", m.Storage)
	}
	if m.PrivateUsers && (m.Storage == StorageOverlay || m.Storage == StorageVolatile) {
		return fieldError(root, "machine.private_users", "needs btrfs storage (machine.storage auto or btrfs, images on btrfs): the kernel cannot idmap an overlayfs root, got storage %s", m.Storage)
	}
	if m.CPUWeight < 1 || m.CPUWeight > 10000 {
		return fieldError(root, "machine.cpu_weight", "must be between 1 and 10000, got %d", m.CPUWeight)
	}
	if m.TasksMax < 0 {
		return fieldError(root, "machine.tasks_max", "must be 0 (no limit) or more, got %d", m.TasksMax)
	}
	if m.Shell == "" {
		return fieldError(root, "machine.shell", "must not be empty")
	}
	if m.ReadyTimeout <= 0 {
		return fieldError(root, "machine.ready_timeout", "must be positive")
	}
	if m.StopTimeout <= 0 {
		return fieldError(root, "machine.stop_timeout", "must be positive")
	}
	if m.ServicesTimeout <= 0 {
		return fieldError(root, "machine.services_timeout", "must be positive")
	}
	if err := checkCgroupPath(m.CgroupParent); err != nil {
		return fieldError(root, "machine.cgroup_parent", "%v", err)
	}
	for img, n := range m.Pool {
		if err := CheckImageName(img); err != nil {
			return fieldError(root, "machine.pool", "%v", err)
		}
		if n < 0 || n > MaxPool {
			return fieldError(root, "machine.pool", "%s: want 0 to %d machines, got %d", img, MaxPool, n)
		}
	}
	if m.PoolMaxAge < 0 {
		return fieldError(root, "machine.pool_max_age", "must not be negative")
	}
	return m.validateNetwork(root)
}

func (m *Machine) validateNetwork(root *yaml.Node) error {
	switch m.Network {
	case NetworkPrivate, NetworkHost, NetworkNone:
	default:
		return fieldError(root, "machine.network", "must be private, host or none, got %q", m.Network)
	}
	if err := CheckBridgeName(m.Bridge); err != nil {
		return fieldError(root, "machine.bridge", "%v", err)
	}
	subnet, err := ParseSubnet(m.Subnet)
	if err != nil {
		return fieldError(root, "machine.subnet", "%v", err)
	}
	allow, err := ParseNetworks(m.AllowNetworks)
	if err != nil {
		return fieldError(root, "machine.allow_networks", "%v", err)
	}
	for _, a := range allow {
		if a.Overlaps(subnet) {
			return fieldError(root, "machine.allow_networks", "%s overlaps machine.subnet %s: machines never reach each other or the bridge", a, subnet)
		}
	}
	if _, err := ParseNetworks(m.DenyNetworks); err != nil {
		return fieldError(root, "machine.deny_networks", "%v", err)
	}
	dns, err := ParseDNS(m.DNS)
	if err != nil {
		return fieldError(root, "machine.dns", "%v", err)
	}
	for _, d := range dns {
		if subnet.Contains(d) || d.IsLoopback() {
			return fieldError(root, "machine.dns", "%s is not reachable from a private machine (loopback or machine.subnet)", d)
		}
	}
	return nil
}

// checkCgroupPath accepts a relative cgroup path of plain names: it is
// joined to the cgroup root, so it must not climb out of it.
func checkCgroupPath(p string) error {
	if p == "" || strings.HasPrefix(p, "/") {
		return fmt.Errorf("want a relative cgroup path like nspawn-runner or ci/machines, got %q", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." || part == ".." || strings.ContainsAny(part, "\x00\n") {
			return fmt.Errorf("want a relative cgroup path of plain names, got %q", p)
		}
	}
	return nil
}

// Size is an amount of memory: bytes, or a percentage of host RAM.
// The zero Size means no limit.
type Size struct {
	Bytes   uint64
	Percent float64
}

// IsZero reports whether no limit is set.
func (s Size) IsZero() bool { return s.Bytes == 0 && s.Percent == 0 }

// Resolve returns the limit in bytes for a host with total bytes of RAM.
func (s Size) Resolve(total uint64) uint64 {
	if s.Percent > 0 {
		return uint64(float64(total) * s.Percent / 100)
	}
	return s.Bytes
}

func (s Size) String() string {
	switch {
	case s.Percent > 0:
		return strconv.FormatFloat(s.Percent, 'f', -1, 64) + "%"
	case s.Bytes > 0:
		return strconv.FormatUint(s.Bytes, 10)
	}
	return "none"
}

// ParseSize reads "30%", "2G", "512M", "1073741824", or "none"/"" for no limit.
func ParseSize(v string) (Size, error) {
	v = strings.TrimSpace(v)
	if v == "" || v == "none" || v == "infinity" || v == "0" {
		return Size{}, nil
	}
	if p, ok := strings.CutSuffix(v, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || f <= 0 || f > 100 {
			return Size{}, fmt.Errorf("invalid percentage %q: want more than 0%% and at most 100%%", v)
		}
		return Size{Percent: f}, nil
	}
	mult := uint64(1)
	num := v
	if n := len(v); n > 0 {
		switch v[n-1] {
		case 'K', 'k':
			mult, num = 1<<10, v[:n-1]
		case 'M', 'm':
			mult, num = 1<<20, v[:n-1]
		case 'G', 'g':
			mult, num = 1<<30, v[:n-1]
		case 'T', 't':
			mult, num = 1<<40, v[:n-1]
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n == 0 || n > (1<<63)/mult {
		return Size{}, fmt.Errorf("invalid size %q: want bytes with an optional K/M/G/T suffix, a percentage of RAM like 30%%, or none", v)
	}
	return Size{Bytes: n * mult}, nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New("want a size like 2G or 30%")
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Duration is a time.Duration written as "30s" or "2m".
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New("want a Go duration like 30s or 2m")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("want a Go duration like 30s or 2m: %w", err)
	}
	*d = Duration(v)
	return nil
}
