package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func parseMetrics(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("Prometheus' parser: %v\n%s", err, text)
	}
	return fams
}

// The stages record their durations, metrics shows them and the machines
// while they run, and gc's removals; --textfile writes the same for
// node_exporter.
func TestMetrics(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true})
	metricsNow := func() map[string]*dto.MetricFamily {
		out, errOut, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd("metrics")...)
		if code != 0 {
			t.Fatalf("metrics: exit %d: %s", code, errOut)
		}
		return parseMetrics(t, out)
	}
	var during map[string]*dto.MetricFamily
	res := r.RunJob(t, Job{Script: []string{"echo hi"}, AfterStage: func(s StageResult) {
		if s.Name == "build_script" {
			during = metricsNow()
		}
	}})
	mustPass(t, res)
	if during == nil {
		t.Fatal("no build_script stage seen")
	}
	running := 0.0
	for _, m := range during["nspawn_runner_machines"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["state"] == "running" && labels["image"] == BaseImage {
			running += m.GetGauge().GetValue()
		}
	}
	if running != 1 {
		t.Errorf("running %s machines during the job = %v, want 1", BaseImage, running)
	}
	if n := len(during["nspawn_runner_machine_memory_bytes"].GetMetric()); n != 1 {
		t.Errorf("memory samples during the job = %d, want 1", n)
	}
	after := metricsNow()
	for _, name := range []string{"nspawn_runner_prepare_duration_seconds", "nspawn_runner_cleanup_duration_seconds"} {
		f := after[name]
		if f.GetType() != dto.MetricType_HISTOGRAM || len(f.Metric) != 1 {
			t.Fatalf("%s = %v, want one histogram", name, f)
		}
		h := f.Metric[0].GetHistogram()
		if h.GetSampleCount() != 1 || h.GetSampleSum() <= 0 {
			t.Errorf("%s: count %d sum %v, want one observation", name, h.GetSampleCount(), h.GetSampleSum())
		}
	}
	if v := after["nspawn_runner_image_size_bytes"].GetMetric()[0].GetGauge().GetValue(); v < 1<<20 {
		t.Errorf("image size = %v bytes", v)
	}

	// gc counts its runs; the textfile holds the same families.
	if _, errOut, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd("gc")...); code != 0 {
		t.Fatalf("gc: exit %d: %s", code, errOut)
	}
	dir := t.TempDir()
	if _, errOut, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd("metrics", "--textfile", dir)...); code != 0 {
		t.Fatalf("metrics --textfile: exit %d: %s", code, errOut)
	}
	b, err := os.ReadFile(filepath.Join(dir, "nspawn_runner.prom"))
	if err != nil {
		t.Fatal(err)
	}
	fams := parseMetrics(t, string(b))
	if v := fams["nspawn_runner_gc_runs_total"].GetMetric()[0].GetCounter().GetValue(); v != 1 {
		t.Errorf("gc runs = %v, want 1", v)
	}
	if _, ok := fams["nspawn_runner_gc_last_run_timestamp_seconds"]; !ok {
		t.Error("no gc_last_run_timestamp after gc")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("textfile dir holds %d entries, want 1", len(ents))
	}
}
