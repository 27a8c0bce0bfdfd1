package machine

import "github.com/nspawn-runner/nspawn-runner/machine/state"

// Record is the state of one machine, in RUN_DIR/machines/NAME.json
// (state.Record: a run stage reads it without this package).
type Record = state.Record

// Bind is a host directory or file bind-mounted into a machine (part of
// the record's format).
type Bind = state.Bind

// States of a record (state.Running, ...).
const (
	StatePreparing = state.Preparing
	StateRunning   = state.Running
	StateStopping  = state.Stopping
	StateDead      = state.Dead
	StatePooled    = state.Pooled
	StateClaimed   = state.Claimed
)

// writeRecord writes r atomically (state.Write).
func writeRecord(path string, r *Record) error { return state.Write(path, r) }

// readRecord reads a record; a missing one is ErrNotFound (state.Read).
func readRecord(path string) (*Record, error) { return state.Read(path) }
