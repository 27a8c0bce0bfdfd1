package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nspawn-runner/nspawn-runner/sys/atomicfile"
	"github.com/nspawn-runner/nspawn-runner/sys/flock"
)

// DurationBounds are the upper bounds (seconds) of the duration buckets:
// a fast-mode prepare takes about 0.1 s, a booted one 0.3-0.5 s, a
// prepare under load or with a slow image several seconds; the ready
// timeout is 60 s.
var DurationBounds = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// Hist is a histogram as the state file keeps it: per-bucket counts (not
// cumulative; the last bucket's upper bound is the last of Bounds, and
// Count - sum(Counts) observations lie above it).
type Hist struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"`
	Sum    float64   `json:"sum"`
	Count  uint64    `json:"count"`
}

// Observe adds one observation v to h, resetting h when its bounds are
// not DurationBounds (a state file of another version).
func (h *Hist) Observe(v float64) {
	if !slices.Equal(h.Bounds, DurationBounds) || len(h.Counts) != len(DurationBounds) {
		*h = Hist{Bounds: slices.Clone(DurationBounds), Counts: make([]uint64, len(DurationBounds))}
	}
	for i, b := range h.Bounds {
		if v <= b {
			h.Counts[i]++
			break
		}
	}
	h.Sum += v
	h.Count++
}

// orEmpty returns h, or an empty histogram of DurationBounds.
func (h Hist) orEmpty() Hist {
	if len(h.Bounds) == 0 {
		return Hist{Bounds: slices.Clone(DurationBounds), Counts: make([]uint64, len(DurationBounds))}
	}
	return h
}

// Stage is what one executor stage (prepare, cleanup) recorded.
type Stage struct {
	Duration Hist   `json:"duration"`
	Failures uint64 `json:"failures"`
}

// Maintenance is the last chroot-maintenance of an image.
type Maintenance struct {
	Time time.Time `json:"time"`
	OK   bool      `json:"ok"`
}

// State is what the stages, gc and maintenance record for metrics, in
// RUN_DIR/metrics/state.json. The run directory is volatile: after a
// reboot the counters start again from 0, which Prometheus handles as a
// counter reset.
type State struct {
	Prepare Stage `json:"prepare"`
	Cleanup Stage `json:"cleanup"`
	// GCMachines and GCImages count what gc removed; GCRuns its runs.
	GCMachines uint64    `json:"gc_machines"`
	GCImages   uint64    `json:"gc_images"`
	GCRuns     uint64    `json:"gc_runs"`
	LastGC     time.Time `json:"last_gc,omitzero"`
	// Maintenance is by image name.
	Maintenance map[string]Maintenance `json:"maintenance,omitempty"`
}

// statePaths are the state file and its lock in runDir.
func statePaths(runDir string) (file, lock string) {
	d := filepath.Join(runDir, "metrics")
	return filepath.Join(d, "state.json"), filepath.Join(d, "state.lock")
}

// ReadState reads the state of runDir; a missing file is an empty state.
func ReadState(runDir string) (State, error) {
	file, _ := statePaths(runDir)
	var s State
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read metrics state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("read metrics state %s: %w", file, err)
	}
	return s, nil
}

// Update changes the state of runDir under its lock: concurrent stages
// each add their observation. An unreadable state file starts afresh.
func Update(ctx context.Context, runDir string, change func(*State)) error {
	file, lockPath := statePaths(runDir)
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return fmt.Errorf("metrics state: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err := flock.Wait(ctx, lockPath, flock.Exclusive)
	if err != nil {
		return fmt.Errorf("metrics state: %w", err)
	}
	defer l.Unlock()
	s, err := ReadState(runDir)
	if err != nil {
		s = State{}
	}
	change(&s)
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("metrics state: %w", err)
	}
	return atomicfile.Write(file, append(b, '\n'), 0o644)
}

// ObserveStage records one run of stage ("prepare" or "cleanup") that took
// d and failed when failed.
func ObserveStage(ctx context.Context, runDir, stage string, d time.Duration, failed bool) error {
	return Update(ctx, runDir, func(s *State) {
		st := &s.Prepare
		if stage == "cleanup" {
			st = &s.Cleanup
		}
		st.Duration.Observe(d.Seconds())
		if failed {
			st.Failures++
		}
	})
}

// ObserveGC records one gc run that removed machines and images.
func ObserveGC(ctx context.Context, runDir string, now time.Time, machines, images int) error {
	return Update(ctx, runDir, func(s *State) {
		s.GCRuns++
		s.GCMachines += uint64(machines)
		s.GCImages += uint64(images)
		s.LastGC = now.UTC()
	})
}

// ObserveMaintenance records the outcome of one image's maintenance.
func ObserveMaintenance(ctx context.Context, runDir, image string, now time.Time, ok bool) error {
	return Update(ctx, runDir, func(s *State) {
		if s.Maintenance == nil {
			s.Maintenance = map[string]Maintenance{}
		}
		s.Maintenance[image] = Maintenance{Time: now.UTC(), OK: ok}
	})
}
