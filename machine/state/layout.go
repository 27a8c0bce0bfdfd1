// Package state is the state of one job's machine on disk: its name, where
// its files are (Layout) and its record (Record, in RUN_DIR/machines).
// machine writes it; a run stage (package stage) reads it, so it needs
// nothing but the standard library and sys/* (see layout_test.go): the run
// stage's executable links only what a stage needs.
package state

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// ErrNotFound is returned when a job has no machine.
var ErrNotFound = errors.New("no machine for this job")

// DefaultNamePrefix starts every machine name.
const DefaultNamePrefix = "nr-"

// Name returns the machine name of a job: prefix, a readable form of the
// id, and 12 hex digits of the job's key, so that two jobs with the same
// id never share a machine. The result is a valid machine name
// (nspawn.MachineName: a host name label of at most 63 characters).
func Name(prefix, id, key string) (string, error) {
	if prefix == "" {
		prefix = DefaultNamePrefix
	}
	if len(key) < 12 {
		return "", fmt.Errorf("machine name: job key %q too short", key)
	}
	for i := 0; i < len(key); i++ {
		if !(key[i] >= '0' && key[i] <= '9' || key[i] >= 'a' && key[i] <= 'f') {
			return "", fmt.Errorf("machine name: job key %q is not hex", key)
		}
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", fmt.Errorf("machine name: invalid character %q in job id", c)
		}
	}
	return nspawn.MachineName(prefix, strings.ToLower(id[:min(len(id), 24)]), "-"+key[:12])
}

// Layout is where one machine's things live.
type Layout struct {
	Name string
	// Record is the state record; Lock its lock file.
	Record, Lock string
	// RunDir holds nspawn.log and scripts/ (and hosts, the /etc/hosts
	// of a job with services).
	RunDir, Log, Scripts, Hosts string
	// ServiceEnv is a command service's environment (ServiceEnvPath);
	// DebugOffset how far CI_DEBUG_SERVICES has streamed its log.
	ServiceEnv, DebugOffset string
	// MachineDir is ROOT/.machines/NAME; Tree is the root directory
	// systemd-nspawn runs (the snapshot or the overlay mount point);
	// Upper and Work are the overlay's directories.
	MachineDir, Tree, Upper, Work string
	// Cgroup is the machine's cgroup, relative to the cgroup2 root.
	Cgroup string
}

// MachinesDirName is the directory under ROOT holding per-machine storage.
// The leading dot keeps it out of the image list.
const MachinesDirName = ".machines"

// LayoutOf is the layout of machine name.
func LayoutOf(root, runDir, cgroupParent, name string) Layout {
	md := filepath.Join(root, MachinesDirName, name)
	rd := filepath.Join(runDir, "machines", name)
	return Layout{
		Name:        name,
		Record:      rd + ".json",
		Lock:        rd + ".lock",
		RunDir:      rd,
		Log:         filepath.Join(rd, "nspawn.log"),
		Scripts:     filepath.Join(rd, "scripts"),
		Hosts:       filepath.Join(rd, "hosts"),
		ServiceEnv:  filepath.Join(rd, "service.env"),
		DebugOffset: filepath.Join(rd, "debug-offset"),
		MachineDir:  md,
		Tree:        filepath.Join(md, "root"),
		Upper:       filepath.Join(md, "upper"),
		Work:        filepath.Join(md, "work"),
		Cgroup:      filepath.Join(cgroupParent, name),
	}
}
