package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
)

// percentile is the p-th percentile (nearest rank) of d.
func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// BenchmarkPool: the warm pool (issue 11) on a host with a pool of 4
// booted machines of image bookworm and an image "fresh" without one.
// prepare: pooled prepares (4 per fill, p50 and p99) against fresh ones,
// and the refill's cost (gc booting 4 machines at once, per machine);
// job: a whole job with a pool against the raw boot floor; concurrent8:
// 8 jobs at once with a pool of 4; memory: an idle pooled machine.
func BenchmarkPool(b *testing.B) {
	testutil.RequireBinary(b, "nsenter")
	h := newLCHost(b, true, "  pool: {bookworm: 4}\n")
	poolLCHost(b, h)
	image := filepath.Join(h.root, "bookworm")
	if err := btrfs.Snapshot(image, filepath.Join(h.root, "fresh")); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { btrfs.Delete(filepath.Join(h.root, "fresh")) })
	script := filepath.Join(b.TempDir(), "true.sh")
	os.WriteFile(script, []byte("true\n"), 0o644)
	fill := func() time.Duration {
		waitRefills(b, h.cgParent)
		t0 := time.Now()
		if r := h.exec(context.Background(), nil, "", "gc"); r.code != 0 {
			b.Fatalf("gc: %d %s", r.code, r.stderr)
		}
		return time.Since(t0)
	}
	b.Run("prepare", func(b *testing.B) {
		var pooled, fresh []time.Duration
		for i := 0; i < b.N; i++ {
			fill()
			var jobs []*job
			for k := 0; k < 4; k++ {
				j := h.newJob()
				t0 := time.Now()
				r := j.must("prepare", "bookworm")
				pooled = append(pooled, time.Since(t0))
				if !strings.Contains(r.stdout, "(pooled machine ") {
					b.Fatalf("prepare %d of a full pool of 4 started a fresh machine: %s", k, r.stdout)
				}
				jobs = append(jobs, j)
			}
			for _, j := range jobs {
				j.must("cleanup")
			}
			j := h.newJob()
			t0 := time.Now()
			j.must("prepare", "fresh")
			fresh = append(fresh, time.Since(t0))
			j.must("cleanup")
		}
		b.ReportMetric(ms(percentile(pooled, 50)), "pooled-p50-ms")
		b.ReportMetric(ms(percentile(pooled, 99)), "pooled-p99-ms")
		b.ReportMetric(ms(percentile(fresh, 50)), "fresh-p50-ms")
		b.ReportMetric(ms(percentile(fresh, 99)), "fresh-p99-ms")
		b.ReportMetric(float64(percentile(pooled, 50))/float64(percentile(fresh, 50)), "x-fresh")
	})
	b.Run("refill", func(b *testing.B) {
		// gc booting the whole pool of 4 (up to 4 at once), from empty.
		var walls []time.Duration
		for i := 0; i < b.N; i++ {
			setPoolIn(b, h.config, 0)
			fill()
			setPoolIn(b, h.config, 4)
			walls = append(walls, fill())
		}
		b.ReportMetric(ms(median(walls)), "ms/4-machines")
		b.ReportMetric(ms(median(walls))/4, "ms/machine")
	})
	b.Run("job", func(b *testing.B) {
		var ours, floor []time.Duration
		for i := 0; i < b.N; i++ {
			fill()
			t0 := time.Now()
			benchJob(b, h, "boot", script)
			ours = append(ours, time.Since(t0))
			t0 = time.Now()
			floorJob(b, image, true, i)
			floor = append(floor, time.Since(t0))
		}
		b.ReportMetric(ms(median(ours)), "ms/job")
		b.ReportMetric(ms(median(floor)), "floor-ms/job")
		b.ReportMetric(float64(median(ours))/float64(median(floor)), "x-floor")
	})
	b.Run("concurrent8", func(b *testing.B) {
		var walls []time.Duration
		for i := 0; i < b.N; i++ {
			fill()
			t0 := time.Now()
			var wg sync.WaitGroup
			for k := 0; k < 8; k++ {
				wg.Add(1)
				go func() { defer wg.Done(); benchJob(b, h, "boot", script) }()
			}
			wg.Wait()
			walls = append(walls, time.Since(t0))
		}
		b.ReportMetric(ms(median(walls)), "ms/8-boot-jobs")
	})
	b.Run("memory", func(b *testing.B) {
		var per []float64
		for i := 0; i < b.N; i++ {
			fill()
			time.Sleep(2 * time.Second)
			r := h.exec(context.Background(), nil, "", "ps", "--json")
			var list []struct {
				State  string
				Memory uint64
			}
			if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
				b.Fatal(err)
			}
			var sum uint64
			n := 0
			for _, s := range list {
				if s.State == "pooled" {
					sum += s.Memory
					n++
				}
			}
			if n > 0 {
				per = append(per, float64(sum)/float64(n)/(1<<20))
			}
		}
		slices.Sort(per)
		if len(per) > 0 {
			b.ReportMetric(per[len(per)/2], "MiB/pooled-machine")
		}
	})
}
