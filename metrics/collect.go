package metrics

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/machine"
	"github.com/nspawn-runner/nspawn-runner/sys/atomicfile"
)

// TextfileName is the file --textfile writes in node_exporter's directory
// (the collector reads *.prom).
const TextfileName = "nspawn_runner.prom"

// Input is what the families are made of.
type Input struct {
	Now      time.Time
	Machines []machine.Status
	Images   []bootstrap.Image
	State    State
}

// Gather reads the input from a run directory's machines and state and an
// image store.
func Gather(ctx context.Context, m *machine.Manager, store *bootstrap.Store, runDir string) (Input, error) {
	in := Input{Now: time.Now()}
	var errs []error
	var err error
	if in.Machines, err = m.List(ctx); err != nil {
		errs = append(errs, err)
	}
	if in.Images, err = store.List(); err != nil {
		errs = append(errs, err)
	}
	if in.State, err = ReadState(runDir); err != nil {
		errs = append(errs, err)
	}
	return in, errors.Join(errs...)
}

// machineStates are the states every (image, mode) series shows, 0 or
// not, so that a dashboard's series do not come and go.
var machineStates = []string{machine.StatePreparing, machine.StateRunning, machine.StateStopping, machine.StateDead}

// Families turns the input into metric families.
func Families(in Input) []Family {
	const p = "nspawn_runner_"
	type key struct{ image, mode string }
	counts := map[key]map[string]int{}
	machines := Family{Name: p + "machines", Type: Gauge, Help: "Machines by state, image and mode."}
	memory := Family{Name: p + "machine_memory_bytes", Type: Gauge, Help: "Memory of each machine (its cgroup's memory.current, else the RSS of its processes)."}
	age := Family{Name: p + "machine_age_seconds", Type: Gauge, Help: "Seconds since each machine was prepared."}
	for _, s := range in.Machines {
		k := key{s.Image, s.Mode}
		if counts[k] == nil {
			counts[k] = map[string]int{}
		}
		counts[k][s.State]++
		labels := []Label{{"machine", s.Name}, {"image", s.Image}, {"mode", s.Mode}, {"state", s.State}}
		memory.Samples = append(memory.Samples, Sample{Labels: labels, Value: float64(s.Memory)})
		if !s.Created.IsZero() {
			age.Samples = append(age.Samples, Sample{Labels: labels, Value: in.Now.Sub(s.Created).Seconds()})
		}
	}
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int {
		if a.image != b.image {
			return cmp.Compare(a.image, b.image)
		}
		return cmp.Compare(a.mode, b.mode)
	})
	for _, k := range keys {
		for _, st := range machineStates {
			machines.Samples = append(machines.Samples, Sample{Labels: []Label{{"state", st}, {"image", k.image}, {"mode", k.mode}}, Value: float64(counts[k][st])})
		}
	}

	size := Family{Name: p + "image_size_bytes", Type: Gauge, Help: "Disk space of each base image."}
	imgAge := Family{Name: p + "image_age_seconds", Type: Gauge, Help: "Seconds since each base image was created or last maintained successfully."}
	maintTime := Family{Name: p + "image_last_maintenance_timestamp_seconds", Type: Gauge, Help: "When chroot-maintenance last ran on each image (Unix time; absent when never on this boot)."}
	maintOK := Family{Name: p + "image_last_maintenance_success", Type: Gauge, Help: "1 when the last chroot-maintenance of the image succeeded, 0 when it failed."}
	for _, im := range in.Images {
		l := []Label{{"image", im.Name}}
		size.Samples = append(size.Samples, Sample{Labels: l, Value: float64(im.Size)})
		last := im.Created
		if im.Maintained.After(last) {
			last = im.Maintained
		}
		if !last.IsZero() {
			imgAge.Samples = append(imgAge.Samples, Sample{Labels: l, Value: in.Now.Sub(last).Seconds()})
		}
		if m, ok := in.State.Maintenance[im.Name]; ok {
			maintTime.Samples = append(maintTime.Samples, Sample{Labels: l, Value: float64(m.Time.Unix())})
			v := 0.0
			if m.OK {
				v = 1
			}
			maintOK.Samples = append(maintOK.Samples, Sample{Labels: l, Value: v})
		}
	}

	st := in.State
	fams := []Family{machines, memory, age, size, imgAge, maintTime, maintOK,
		{Name: p + "prepare_duration_seconds", Type: Histogram, Help: "Duration of prepare stages (start of the machine until ready, or failure).", Samples: HistogramSamples(st.Prepare.Duration.orEmpty())},
		{Name: p + "prepare_failures_total", Type: Counter, Help: "Prepare stages that failed.", Samples: []Sample{{Value: float64(st.Prepare.Failures)}}},
		{Name: p + "cleanup_duration_seconds", Type: Histogram, Help: "Duration of cleanup stages.", Samples: HistogramSamples(st.Cleanup.Duration.orEmpty())},
		{Name: p + "cleanup_failures_total", Type: Counter, Help: "Cleanup stages that failed.", Samples: []Sample{{Value: float64(st.Cleanup.Failures)}}},
		{Name: p + "gc_removed_machines_total", Type: Counter, Help: "Machines gc removed (dead, or older than --max-age).", Samples: []Sample{{Value: float64(st.GCMachines)}}},
		{Name: p + "gc_removed_images_total", Type: Counter, Help: "Retired image trees gc removed.", Samples: []Sample{{Value: float64(st.GCImages)}}},
		{Name: p + "gc_runs_total", Type: Counter, Help: "Runs of gc.", Samples: []Sample{{Value: float64(st.GCRuns)}}},
	}
	if !st.LastGC.IsZero() {
		fams = append(fams, Family{Name: p + "gc_last_run_timestamp_seconds", Type: Gauge, Help: "When gc last ran (Unix time).", Samples: []Sample{{Value: float64(st.LastGC.Unix())}}})
	}
	return fams
}

// WriteTextfile writes fams to dir/TextfileName atomically.
func WriteTextfile(dir string, fams []Family) (string, error) {
	path := filepath.Join(dir, TextfileName)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("textfile directory %s: %w", dir, errors.Join(err, errNotDir(fi)))
	}
	var b bytes.Buffer
	if err := Write(&b, fams); err != nil {
		return "", err
	}
	return path, atomicfile.Write(path, b.Bytes(), 0o644)
}

func errNotDir(fi os.FileInfo) error {
	if fi != nil && !fi.IsDir() {
		return errors.New("not a directory")
	}
	return nil
}
