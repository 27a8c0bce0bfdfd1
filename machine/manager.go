package machine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/logx"
	"github.com/nspawn-runner/nspawn-runner/network"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// Images is what the manager needs of the image store (bootstrap.Store).
type Images interface {
	// Path returns the tree of an existing image; the error lists the
	// images that exist.
	Path(name string) (string, error)
	// Retired lists old image trees swapped out by maintenance.
	Retired() ([]string, error)
	// RemoveTree removes an image tree.
	RemoveTree(path string) error
}

// WorkspaceCleaner is an image store that gc asks to clear what killed
// creates and maintenances left (bootstrap.Store): Images that have it
// get it called.
type WorkspaceCleaner interface {
	// CleanWorkspaces clears the leftovers of images whose lock nobody
	// holds (held names one the caller holds; "" none).
	CleanWorkspaces(ctx context.Context, held string) error
}

// DefaultCgroupParent is the cgroup under which machines get their own.
const DefaultCgroupParent = config.DefaultCgroupParent

// Manager prepares, enters, stops and collects machines.
type Manager struct {
	// Root is the image root; per-machine storage goes in ROOT/.machines.
	Root string
	// RunDir holds the state records.
	RunDir string
	Config config.Machine
	Log    *slog.Logger
	Images Images
	// NamePrefix starts machine names (DefaultNamePrefix when empty).
	NamePrefix string
	// CgroupParent is the parent cgroup of machines, relative to the
	// cgroup2 root (DefaultCgroupParent when empty).
	CgroupParent string
	// Nspawn is the systemd-nspawn binary ("systemd-nspawn" when empty).
	Nspawn string
	// HostMemory is the host's RAM in bytes for percentage limits; 0
	// reads it from sysinfo(2).
	HostMemory uint64

	// RefillCommand, when set, is the argv (the image name is appended)
	// that a prepare starts detached to refill the image's warm pool
	// (nspawn-runner ... pool-fill); unset, only gc refills.
	RefillCommand []string

	// attachFault, when set, fails the attach of claimed pooled machines
	// after their binds are made (tests of the fallback).
	attachFault error

	// destroyGrace overrides the package's destroyGrace (tests).
	destroyGrace time.Duration

	// Net attaches private machines; nil builds it from Config (state in
	// RUN_DIR/network).
	Net *network.Network

	once sync.Once
	cg   cgroup.Hierarchy
	cgOK error
}

func (m *Manager) log() *slog.Logger {
	return logx.OrDiscard(m.Log)
}

func (m *Manager) parent() string {
	if m.CgroupParent != "" {
		return m.CgroupParent
	}
	return DefaultCgroupParent
}

// Name is the machine name of a job.
func (m *Manager) Name(jobID, key string) (string, error) {
	return Name(m.NamePrefix, jobID, key)
}

func (m *Manager) layout(name string) Layout {
	return LayoutOf(m.Root, m.RunDir, m.parent(), name)
}

// exists reports whether anything of machine l is on disk.
func (m *Manager) exists(l Layout) bool {
	for _, p := range []string{l.Record, l.RunDir, l.MachineDir} {
		if _, err := os.Lstat(p); err == nil {
			return true
		}
	}
	return false
}

// lockMachine takes machine l's lock (see lock), creating the directory
// of lock files first: the run directory is a tmpfs, so after a reboot it
// is empty while ROOT/.machines still holds what machines left.
func (m *Manager) lockMachine(ctx context.Context, l Layout, wait bool) (*machineLock, error) {
	if err := os.MkdirAll(filepath.Dir(l.Lock), 0o700); err != nil {
		return nil, fmt.Errorf("lock %s: %w", l.Lock, err)
	}
	return lock(ctx, l.Lock, wait)
}

// names lists every machine name that has anything in the run directory
// or the machines directory.
func (m *Manager) names() ([]string, error) {
	set := map[string]bool{}
	rd := filepath.Join(m.RunDir, "machines")
	ents, err := os.ReadDir(rd)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list %s: %w", rd, err)
	}
	for _, e := range ents {
		n := e.Name()
		n = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, ".tmp"), ".json"), ".lock")
		if nspawn.CheckMachineName(n) == nil {
			set[n] = true
		}
	}
	md := filepath.Join(m.Root, MachinesDirName)
	ents, err = os.ReadDir(md)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list %s: %w", md, err)
	}
	for _, e := range ents {
		if nspawn.CheckMachineName(e.Name()) == nil {
			set[e.Name()] = true
		}
	}
	var out []string
	for n := range set {
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}
