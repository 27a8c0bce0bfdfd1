package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkNetwork: whole jobs (prepare, 10 stages, cleanup) and single
// run stages with machine.network private against host, alternating, both
// runners calling the binary from the same test-made host namespace.
func BenchmarkNetwork(b *testing.B) {
	w := newNetWorld(b)
	priv := newLCHost(b, true, netYAML)
	priv.netNS, priv.prefix = w.host, "nrt-netb-p-"
	host := newLCHost(b, true, "  network: host\n")
	host.netNS, host.prefix = w.host, "nrt-netb-h-"
	script := filepath.Join(b.TempDir(), "true.sh")
	if err := os.WriteFile(script, []byte("true\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"fast", "boot"} {
		b.Run("job-"+mode, func(b *testing.B) {
			var p, h []time.Duration
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				benchJob(b, priv, mode, script)
				p = append(p, time.Since(t0))
				t0 = time.Now()
				benchJob(b, host, mode, script)
				h = append(h, time.Since(t0))
			}
			b.ReportMetric(ms(median(p)), "private-ms/job")
			b.ReportMetric(ms(median(h)), "host-ms/job")
			b.ReportMetric(ms(median(p)-median(h)), "extra-ms/job")
		})
	}
	b.Run("run-stage", func(b *testing.B) {
		jp, jh := priv.newJob(), host.newJob()
		for _, j := range []*job{jp, jh} {
			if r := j.call("prepare", "bookworm", "--mode", "fast"); r.code != 0 {
				b.Fatalf("prepare: %d %s", r.code, r.stderr)
			}
		}
		var p, h []time.Duration
		for i := 0; i < b.N; i++ {
			for _, j := range []*job{jp, jh} {
				t0 := time.Now()
				if r := j.call("run", script, "step_"+strconv.Itoa(i)); r.code != 0 {
					b.Fatalf("run: %d %s", r.code, r.stderr)
				}
				d := time.Since(t0)
				if j == jp {
					p = append(p, d)
				} else {
					h = append(h, d)
				}
			}
		}
		for _, j := range []*job{jp, jh} {
			if r := j.call("cleanup"); r.code != 0 {
				b.Fatalf("cleanup: %d %s", r.code, r.stderr)
			}
		}
		b.ReportMetric(ms(median(p)), "private-ms/stage")
		b.ReportMetric(ms(median(h)), "host-ms/stage")
	})
}
