package treecopy_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
	"github.com/nspawn-runner/nspawn-runner/sys/treecopy"
)

// benchCopy times Copy(src, dst) against `cp -a extra... src dst`, both
// on the filesystem of dir, alternating in one run so that cache state and
// noise hit both alike. ns/op counts only Copy.
func benchCopy(b *testing.B, src, dir string, opts treecopy.Options, cpArgs ...string) {
	ours, theirs := filepath.Join(dir, "ours"), filepath.Join(dir, "cp")
	var tOurs, tFloor time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := treecopy.Copy(context.Background(), src, ours, opts); err != nil {
			b.Fatal(err)
		}
		tOurs += time.Since(t0)

		b.StopTimer()
		args := append(append([]string{"-a"}, cpArgs...), src, theirs)
		t0 = time.Now()
		if out, err := exec.Command("cp", args...).CombinedOutput(); err != nil {
			b.Fatalf("cp %v: %v\n%s", args, err, out)
		}
		tFloor += time.Since(t0)
		for _, p := range []string{ours, theirs} {
			if err := os.RemoveAll(p); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
	}
	n := float64(b.N)
	o := float64(tOurs.Microseconds()) / 1000 / n
	f := float64(tFloor.Microseconds()) / 1000 / n
	b.ReportMetric(o, "ms/op")
	b.ReportMetric(f, "floor-ms/op")
	if f > 0 {
		b.ReportMetric(o/f, "x-floor")
	}
}

// BenchmarkCopyTreeReflink: the image within xfs, FICLONE per file, against
// cp -a --reflink=always.
func BenchmarkCopyTreeReflink(b *testing.B) {
	img := testutil.Image(b)
	xfs := testutil.NewXFS(b, 2<<30)
	base := filepath.Join(xfs, "base")
	if _, err := treecopy.Copy(context.Background(), img, base, treecopy.Options{}); err != nil {
		b.Fatal(err)
	}
	benchCopy(b, base, xfs, treecopy.Options{}, "--reflink=always")
}

// BenchmarkCopyTreePlain: the image copied with data (no FICLONE) onto
// ext4, against cp -a. Every iteration gets a fresh loop-mounted ext4: on
// an ext4 that just lost thousands of files, inode allocation scans past the
// recently deleted ones (recently_deleted() in fs/ext4/ialloc.c) and that,
// not the copy, dominated both timings. The two copies alternate order.
func BenchmarkCopyTreePlain(b *testing.B) {
	img := testutil.Image(b)
	testutil.RequireBinary(b, "mkfs.ext4")
	dir := b.TempDir()
	// Warm the page cache with the source for both.
	if out, err := exec.Command("sh", "-c", "tar -C \"$1\" -cf - . >/dev/null", "sh", img).CombinedOutput(); err != nil {
		b.Fatalf("tar: %v\n%s", err, out)
	}
	var tOurs, tFloor time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		mnt := freshExt4(b, dir)
		ours, theirs := filepath.Join(mnt, "ours"), filepath.Join(mnt, "cp")
		for _, first := range []bool{i%2 == 0, i%2 != 0} {
			t0 := time.Now()
			if first {
				b.StartTimer()
				if _, err := treecopy.Copy(context.Background(), img, ours, treecopy.Options{NoReflink: true}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				tOurs += time.Since(t0)
			} else {
				if out, err := exec.Command("cp", "-a", img, theirs).CombinedOutput(); err != nil {
					b.Fatalf("cp -a: %v\n%s", err, out)
				}
				tFloor += time.Since(t0)
			}
		}
		if err := mount.Unmount(mnt); err != nil {
			b.Fatal(err)
		}
		if err := os.Remove(mnt + ".img"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	n := float64(b.N)
	o := float64(tOurs.Microseconds()) / 1000 / n
	f := float64(tFloor.Microseconds()) / 1000 / n
	b.ReportMetric(o, "ms/op")
	b.ReportMetric(f, "floor-ms/op")
	if f > 0 {
		b.ReportMetric(o/f, "x-floor")
	}
}

// freshExt4 makes and mounts a new ext4 on a sparse file in dir (a loop
// device that the kernel frees on unmount, LO_FLAGS_AUTOCLEAR).
func freshExt4(b *testing.B, dir string) string {
	b.Helper()
	mnt, err := os.MkdirTemp(dir, "ext4-")
	if err != nil {
		b.Fatal(err)
	}
	img := mnt + ".img"
	testutil.Run(b, "truncate", "-s", "4G", img)
	testutil.Run(b, "mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", img)
	testutil.Run(b, "mount", "-o", "loop", img, mnt)
	b.Cleanup(func() { _ = mount.UnmountAll(mnt) })
	return mnt
}
