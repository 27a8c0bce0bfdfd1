package state

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nspawn-runner/nspawn-runner/sys/ns"
)

// States of a record.
const (
	Preparing = "preparing"
	Running   = "running"
	// Stopping: cleanup or gc started removing the machine.
	Stopping = "stopping"
	// Dead is never written: machine.List reports it for machines gc
	// would remove.
	Dead = "dead"
	// Pooled: a machine of the warm pool, up and waiting for a job to
	// claim it (machine/pool.go).
	Pooled = "pooled"
	// Claimed: a pooled machine a prepare is taking over; garbage if that
	// prepare died (its lock is free).
	Claimed = "claimed"
)

// Record is the state of one machine, in RUN_DIR/machines/NAME.json.
type Record struct {
	Name    string `json:"name"`
	JobID   string `json:"job_id"`
	State   string `json:"state"`
	Mode    string `json:"mode"`
	Storage string `json:"storage"`
	Image   string `json:"image"`
	// ImagePath, ImageDev and ImageIno identify the image tree the
	// machine started from; an overlay or volatile machine keeps using it
	// as its lower layer, so gc must not remove it while the machine runs.
	ImagePath string `json:"image_path"`
	ImageDev  uint64 `json:"image_dev"`
	ImageIno  uint64 `json:"image_ino"`
	// Tree is the directory systemd-nspawn runs.
	Tree       string `json:"tree"`
	MachineDir string `json:"machine_dir"`
	RunDir     string `json:"run_dir"`
	Cgroup     string `json:"cgroup"`
	// Network is the network mode; Address the private machine's address.
	Network string `json:"network,omitempty"`
	Address string `json:"address,omitempty"`
	// PrivateUsers: the machine has its own user namespace, whose root
	// is host uid and gid UIDShift (systemd-nspawn's pick).
	PrivateUsers bool   `json:"private_users,omitempty"`
	UIDShift     uint32 `json:"uid_shift,omitempty"`
	// NspawnPID/NspawnStart and LeaderPID/LeaderStart: pid and start
	// time (/proc/PID/stat field 22), so a reused pid is never taken for
	// the machine.
	NspawnPID   int    `json:"nspawn_pid,omitempty"`
	NspawnStart uint64 `json:"nspawn_start,omitempty"`
	LeaderPID   int    `json:"leader_pid,omitempty"`
	LeaderStart uint64 `json:"leader_start,omitempty"`
	// Path and Env extend the stages' environment inside the machine.
	Path    []string  `json:"path,omitempty"`
	Env     []string  `json:"env,omitempty"`
	Binds   []Bind    `json:"binds,omitempty"`
	Created time.Time `json:"created"`
	// Job is, for a service machine, its job's machine; Service the
	// service's name and Aliases its host names.
	Job     string   `json:"job,omitempty"`
	Service string   `json:"service,omitempty"`
	Aliases []string `json:"aliases,omitempty"`
	// PoolKey, on a machine of the warm pool, is the digest of the
	// configuration it was started with (poolKey): only a prepare with the
	// same one claims it.
	PoolKey string `json:"pool_key,omitempty"`
	// Machine is systemd-nspawn's name of the machine when it is not Name:
	// a claimed pooled machine keeps the name it was started with.
	Machine string `json:"machine,omitempty"`
	// DebugServices: the job set CI_DEBUG_SERVICES, and every stage
	// streams its services' output.
	DebugServices bool `json:"debug_services,omitempty"`
	// Shell runs the stage scripts (machine.shell of the configuration
	// prepare read) and MemoryMax is the machine's memory.max in bytes
	// (0: none): a run stage needs nothing of the configuration but
	// these and the run directory. Records of earlier binaries lack
	// Shell.
	Shell     string `json:"shell,omitempty"`
	MemoryMax uint64 `json:"memory_max,omitempty"`
}

// Bind is a host directory or file bind-mounted into a machine. It is part
// of the record's format, hence the package's own tagged type (a change to
// sys/nspawn must not change what is on disk; record_test.go holds the
// format).
type Bind struct {
	Host     string `json:"host"`
	Machine  string `json:"machine"`
	ReadOnly bool   `json:"read_only"`
}

// UnmarshalJSON also reads the binds of records written before Bind had
// tags, which stored sys/nspawn's struct as {"Host", "Machine",
// "ReadOnly"}: a machine prepared by the previous binary is still cleaned
// up by this one.
func (b *Bind) UnmarshalJSON(data []byte) error {
	var v struct {
		Host           string `json:"host"`
		Machine        string `json:"machine"`
		ReadOnly       bool   `json:"read_only"`
		LegacyHost     string `json:"Host"`
		LegacyMachine  string `json:"Machine"`
		LegacyReadOnly bool   `json:"ReadOnly"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	*b = Bind{Host: cmp.Or(v.Host, v.LegacyHost), Machine: cmp.Or(v.Machine, v.LegacyMachine), ReadOnly: v.ReadOnly || v.LegacyReadOnly}
	return nil
}

// IsRunning reports whether the machine is up: its prepare finished and
// its systemd-nspawn still runs. In boot mode the machine's init outlives a
// killed systemd-nspawn, but nothing supervises that orphan any more: run
// refuses it, ps calls it dead and gc removes it, all by this one test.
func (r *Record) IsRunning() bool {
	return isRunning(r.State, r.NspawnPID, r.NspawnStart)
}

func isRunning(state string, nspawnPID int, nspawnStart uint64) bool {
	return state == Running && ns.Alive(nspawnPID, nspawnStart)
}

// StageRecord is the part of a Record that a run stage reads: the same
// keys (TestStageRecordMatches holds them to Record's), decoded without the
// rest. Decoding the whole record (its time, its binds with their own
// decoder) costs a run stage's short process about 2 ms more under load.
type StageRecord struct {
	State         string   `json:"state"`
	Cgroup        string   `json:"cgroup"`
	PrivateUsers  bool     `json:"private_users,omitempty"`
	UIDShift      uint32   `json:"uid_shift,omitempty"`
	NspawnPID     int      `json:"nspawn_pid,omitempty"`
	NspawnStart   uint64   `json:"nspawn_start,omitempty"`
	LeaderPID     int      `json:"leader_pid,omitempty"`
	LeaderStart   uint64   `json:"leader_start,omitempty"`
	Path          []string `json:"path,omitempty"`
	Env           []string `json:"env,omitempty"`
	DebugServices bool     `json:"debug_services,omitempty"`
	Shell         string   `json:"shell,omitempty"`
	MemoryMax     uint64   `json:"memory_max,omitempty"`
}

// IsRunning is Record.IsRunning.
func (r *StageRecord) IsRunning() bool {
	return isRunning(r.State, r.NspawnPID, r.NspawnStart)
}

// IsUp is IsRunning, or pooled and alive.
func (r *Record) IsUp() bool {
	return (r.State == Running || r.State == Pooled) && ns.Alive(r.NspawnPID, r.NspawnStart)
}

// Write writes r atomically (temporary file, rename): a reader sees
// the old record or the new one, never half of one. No fsync: the run
// directory is volatile by design (a tmpfs; a reboot ends every machine).
func Write(path string, r *Record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write record %s: %w", path, err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write record %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write record %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	return nil
}

// Read reads a record; a missing one is ErrNotFound.
func Read(path string) (*Record, error) {
	var r Record
	if err := read(path, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ReadStage reads the part of a record a run stage needs; a missing
// record is ErrNotFound.
func ReadStage(path string) (*StageRecord, error) {
	var r StageRecord
	if err := read(path, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func read(path string, r any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", filepath.Base(path), ErrNotFound)
		}
		return fmt.Errorf("read record: %w", err)
	}
	if err := json.Unmarshal(b, r); err != nil {
		return fmt.Errorf("parse record %s: %w", path, err)
	}
	return nil
}
