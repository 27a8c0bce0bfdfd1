package integration

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkServicesPrepare: prepare (fast-mode job machine) with no
// service, one and three booted services. Services start in parallel with
// each other and with the job's machine, so three should cost little more
// than one. The services boot the plain base image (no port to wait for):
// what is measured is the machines, not a server's start-up.
func BenchmarkServicesPrepare(b *testing.B) {
	h, _ := newServiceHost(b, "")
	for _, n := range []int{0, 1, 3} {
		b.Run(strconv.Itoa(n)+"-booted", func(b *testing.B) {
			var list []string
			for i := 0; i < n; i++ {
				list = append(list, `{"name":"bookworm","alias":"s`+strconv.Itoa(i)+`"}`)
			}
			services := ""
			if n > 0 {
				services = "[" + strings.Join(list, ",") + "]"
			}
			var d []time.Duration
			for i := 0; i < b.N; i++ {
				j := h.newJob()
				start := time.Now()
				r := j.prepareWith(services)
				d = append(d, time.Since(start))
				if r.code != 0 || strings.Contains(r.stderr, "WARNING") {
					b.Fatalf("prepare: exit %d\n%s", r.code, r.stderr)
				}
				if r := j.call("cleanup"); r.code != 0 {
					b.Fatalf("cleanup: exit %d\n%s", r.code, r.stderr)
				}
			}
			b.ReportMetric(ms(median(d)), "prepare-ms")
		})
	}
}
