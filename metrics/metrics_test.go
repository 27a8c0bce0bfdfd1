package metrics

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/machine"
)

// parse reads the text format with Prometheus' own parser.
func parse(t *testing.T, b []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("Prometheus' parser: %v\n%s", err, b)
	}
	return fams
}

// value finds the sample of family name whose labels include want.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no family %s", name)
	}
next:
	for _, m := range f.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		return m
	}
	t.Fatalf("%s has no sample with labels %v", name, want)
	return nil
}

func TestFamilies(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	var st State
	for _, d := range []float64{0.07, 0.4, 0.45, 3, 500} {
		st.Prepare.Duration.Observe(d)
	}
	st.Prepare.Failures = 1
	st.Cleanup.Duration.Observe(0.2)
	st.GCMachines, st.GCImages, st.GCRuns, st.LastGC = 3, 1, 7, now.Add(-time.Minute)
	st.Maintenance = map[string]Maintenance{"bookworm": {Time: now.Add(-time.Hour), OK: true}, "sid": {Time: now, OK: false}}
	in := Input{
		Now: now,
		Machines: []machine.Status{
			{Name: "nr-1-aaaaaaaaaaaa", Image: "bookworm", Mode: "boot", State: machine.StateRunning, Memory: 40 << 20, Created: now.Add(-90 * time.Second)},
			{Name: "nr-2-aaaaaaaaaaaa", Image: "bookworm", Mode: "boot", State: machine.StateRunning, Memory: 30 << 20, Created: now.Add(-10 * time.Second)},
			{Name: "nr-3-aaaaaaaaaaaa", Image: "sid", Mode: "fast", State: machine.StateDead},
		},
		Images: []bootstrap.Image{
			{Name: "bookworm", Size: 400 << 20, Created: now.Add(-48 * time.Hour), Maintained: now.Add(-time.Hour)},
			{Name: "sid", Size: 300 << 20, Created: now.Add(-2 * time.Hour)},
			{Name: `we"ird\name`, Size: 1},
		},
		State: st,
	}
	var b bytes.Buffer
	if err := Write(&b, Families(in)); err != nil {
		t.Fatal(err)
	}
	fams := parse(t, b.Bytes())

	if v := value(t, fams, "nspawn_runner_machines", map[string]string{"state": "running", "image": "bookworm", "mode": "boot"}).GetGauge().GetValue(); v != 2 {
		t.Errorf("running bookworm boot machines = %v, want 2", v)
	}
	if v := value(t, fams, "nspawn_runner_machines", map[string]string{"state": "dead", "image": "sid", "mode": "fast"}).GetGauge().GetValue(); v != 1 {
		t.Errorf("dead sid machines = %v, want 1", v)
	}
	if v := value(t, fams, "nspawn_runner_machines", map[string]string{"state": "preparing", "image": "sid"}).GetGauge().GetValue(); v != 0 {
		t.Errorf("preparing sid machines = %v, want 0 (present, zero)", v)
	}
	if v := value(t, fams, "nspawn_runner_machine_memory_bytes", map[string]string{"machine": "nr-1-aaaaaaaaaaaa"}).GetGauge().GetValue(); v != 40<<20 {
		t.Errorf("memory = %v", v)
	}
	if v := value(t, fams, "nspawn_runner_machine_age_seconds", map[string]string{"machine": "nr-1-aaaaaaaaaaaa"}).GetGauge().GetValue(); v != 90 {
		t.Errorf("age = %v, want 90", v)
	}
	if v := value(t, fams, "nspawn_runner_image_size_bytes", map[string]string{"image": `we"ird\name`}).GetGauge().GetValue(); v != 1 {
		t.Errorf("escaped image label: size = %v", v)
	}
	if v := value(t, fams, "nspawn_runner_image_age_seconds", map[string]string{"image": "bookworm"}).GetGauge().GetValue(); v != 3600 {
		t.Errorf("image age = %v, want 3600 (since maintenance)", v)
	}
	if v := value(t, fams, "nspawn_runner_image_last_maintenance_success", map[string]string{"image": "sid"}).GetGauge().GetValue(); v != 0 {
		t.Errorf("sid maintenance success = %v, want 0", v)
	}
	if v := value(t, fams, "nspawn_runner_image_last_maintenance_timestamp_seconds", map[string]string{"image": "bookworm"}).GetGauge().GetValue(); v != float64(now.Add(-time.Hour).Unix()) {
		t.Errorf("maintenance time = %v", v)
	}

	h := value(t, fams, "nspawn_runner_prepare_duration_seconds", nil).GetHistogram()
	if fams["nspawn_runner_prepare_duration_seconds"].GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("prepare durations are a %v", fams["nspawn_runner_prepare_duration_seconds"].GetType())
	}
	if h.GetSampleCount() != 5 || math.Abs(h.GetSampleSum()-503.92) > 1e-9 {
		t.Errorf("prepare histogram count %d sum %v, want 5, 503.92", h.GetSampleCount(), h.GetSampleSum())
	}
	want := map[float64]uint64{0.05: 0, 0.1: 1, 0.25: 1, 0.5: 3, 2.5: 3, 5: 4, 120: 4}
	for _, bk := range h.Bucket {
		if w, ok := want[bk.GetUpperBound()]; ok && bk.GetCumulativeCount() != w {
			t.Errorf("bucket le=%v = %d, want %d", bk.GetUpperBound(), bk.GetCumulativeCount(), w)
		}
	}
	for name, want := range map[string]float64{
		"nspawn_runner_prepare_failures_total": 1, "nspawn_runner_cleanup_failures_total": 0,
		"nspawn_runner_gc_removed_machines_total": 3, "nspawn_runner_gc_removed_images_total": 1, "nspawn_runner_gc_runs_total": 7,
	} {
		if f := fams[name]; f == nil || f.GetType() != dto.MetricType_COUNTER || f.Metric[0].GetCounter().GetValue() != want {
			t.Errorf("%s = %v, want counter %v", name, f, want)
		}
	}
	if c := value(t, fams, "nspawn_runner_cleanup_duration_seconds", nil).GetHistogram().GetSampleCount(); c != 1 {
		t.Errorf("cleanup count = %d", c)
	}
}

// A host with nothing yet still gives every family with its type: empty
// histograms, zero counters.
func TestFamiliesEmpty(t *testing.T) {
	var b bytes.Buffer
	if err := Write(&b, Families(Input{Now: time.Now()})); err != nil {
		t.Fatal(err)
	}
	fams := parse(t, b.Bytes())
	if h := value(t, fams, "nspawn_runner_prepare_duration_seconds", nil).GetHistogram(); h.GetSampleCount() != 0 || len(h.Bucket) != len(DurationBounds)+1 { // and +Inf
		t.Errorf("empty prepare histogram = %v", h)
	}
	if _, ok := fams["nspawn_runner_gc_last_run_timestamp_seconds"]; ok {
		t.Error("gc_last_run without a gc run")
	}
}

func TestWriteRejectsDuplicates(t *testing.T) {
	f := Family{Name: "x", Type: Gauge, Help: "h"}
	if err := Write(&bytes.Buffer{}, []Family{f, f}); err == nil {
		t.Error("Write of a family twice succeeded")
	}
}

// Stages running at once each add their observation: the lock keeps
// every one.
func TestObserveConcurrent(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stage := "prepare"
			if i%2 == 1 {
				stage = "cleanup"
			}
			if err := ObserveStage(context.Background(), dir, stage, time.Duration(i)*100*time.Millisecond, i%5 == 0); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := ObserveGC(context.Background(), dir, time.Now(), 2, 1); err != nil {
		t.Fatal(err)
	}
	st, err := ReadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Prepare.Duration.Count != 10 || st.Cleanup.Duration.Count != 10 || st.Prepare.Failures+st.Cleanup.Failures != 4 || st.GCMachines != 2 || st.GCRuns != 1 {
		t.Errorf("state after 20 stages and a gc = %+v", st)
	}
	// A corrupt state file starts afresh instead of failing stages.
	file, _ := statePaths(dir)
	if err := os.WriteFile(file, []byte("{garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ObserveStage(context.Background(), dir, "prepare", time.Second, false); err != nil {
		t.Fatal(err)
	}
	if st, err := ReadState(dir); err != nil || st.Prepare.Duration.Count != 1 {
		t.Errorf("after a corrupt file: %+v, %v", st, err)
	}
}

func TestWriteTextfile(t *testing.T) {
	dir := t.TempDir()
	path, err := WriteTextfile(dir, Families(Input{Now: time.Now()}))
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, TextfileName) {
		t.Errorf("path = %s", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	parse(t, b)
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("textfile dir holds %d entries, want only %s", len(ents), TextfileName)
	}
	if _, err := WriteTextfile(filepath.Join(dir, "missing"), nil); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("WriteTextfile to a missing dir = %v", err)
	}
}
