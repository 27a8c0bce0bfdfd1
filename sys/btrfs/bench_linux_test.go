package btrfs_test

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
)

// BenchmarkSnapshot: Snapshot+Delete of the image subvolume through this
// package against the same two steps with the btrfs CLI, in one run, so
// the ratio is comparable. ns/op counts only our operation.
func BenchmarkSnapshot(b *testing.B) {
	img := testutil.Image(b)
	cli := testutil.RequireBinary(b, "btrfs")
	fs := testutil.NewBtrfs(b, 4<<30)
	base := filepath.Join(fs, "base")
	if err := btrfs.Create(base); err != nil {
		b.Fatal(err)
	}
	testutil.Run(b, "cp", "-a", img+"/.", base)
	if err := btrfs.Sync(fs); err != nil {
		b.Fatal(err)
	}
	ours, theirs := filepath.Join(fs, "ours"), filepath.Join(fs, "cli")
	var tOurs, tFloor time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := btrfs.Snapshot(base, ours); err != nil {
			b.Fatal(err)
		}
		if err := btrfs.Delete(ours); err != nil {
			b.Fatal(err)
		}
		tOurs += time.Since(t0)

		b.StopTimer()
		t0 = time.Now()
		if out, err := exec.Command(cli, "subvolume", "snapshot", base, theirs).CombinedOutput(); err != nil {
			b.Fatalf("btrfs subvolume snapshot: %v\n%s", err, out)
		}
		if out, err := exec.Command(cli, "subvolume", "delete", theirs).CombinedOutput(); err != nil {
			b.Fatalf("btrfs subvolume delete: %v\n%s", err, out)
		}
		tFloor += time.Since(t0)
		b.StartTimer()
	}
	report(b, tOurs, tFloor)
}

func report(b *testing.B, ours, floor time.Duration) {
	n := float64(b.N)
	o := float64(ours.Microseconds()) / 1000 / n
	f := float64(floor.Microseconds()) / 1000 / n
	b.ReportMetric(o, "ms/op")
	b.ReportMetric(f, "floor-ms/op")
	if f > 0 {
		b.ReportMetric(o/f, "x-floor")
	}
}
