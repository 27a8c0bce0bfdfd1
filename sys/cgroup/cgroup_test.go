package cgroup

import (
	"context"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

func TestLimitsFiles(t *testing.T) {
	for _, tc := range []struct {
		l     Limits
		files []string
		want  []string
	}{
		{Limits{}, nil, nil},
		{Limits{MemoryHigh: 10, MemoryMax: 20}, []string{"memory.high", "memory.max"}, []string{"memory"}},
		{Limits{CPUWeight: 50, PidsMax: 100}, []string{"cpu.weight", "pids.max"}, []string{"cpu", "pids"}},
	} {
		var got []string
		for _, kv := range tc.l.files() {
			got = append(got, kv[0])
		}
		if !slices.Equal(got, tc.files) || !slices.Equal(tc.l.Wanted(), tc.want) {
			t.Errorf("%+v: files %v wanted %v, want %v %v", tc.l, got, tc.l.Wanted(), tc.files, tc.want)
		}
	}
}

func TestCreateKillRemove(t *testing.T) {
	testutil.RequireRoot(t)
	h, err := Detect()
	if err != nil {
		t.Skip(err)
	}
	rel := "nrt-lc-cgtest/m1"
	t.Cleanup(func() {
		_ = h.Kill(context.Background(), "nrt-lc-cgtest")
		_ = h.Remove("nrt-lc-cgtest")
	})
	missing, err := h.Create(rel, Limits{MemoryMax: 1 << 30, CPUWeight: 50}.Wanted())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("controllers missing here: %v", missing)
	if _, err := h.SetLimits(rel, Limits{MemoryMax: 1 << 30, CPUWeight: 50, PidsMax: 100}); err != nil {
		t.Fatal(err)
	}
	f, err := h.Open(rel)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sh", "-c", "sleep 1000 & sleep 1000")
	cmd.SysProcAttr = sysProcAttrInto(int(f.Fd()))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, _ := h.Procs(rel)
		if len(pids) == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pids, _ := h.Procs(rel); len(pids) != 3 {
		t.Fatalf("Procs = %v, want 3 pids", pids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Kill(ctx, rel); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if err := h.Remove("nrt-lc-cgtest"); err != nil {
		t.Fatal(err)
	}
	if h.Exists(rel) {
		t.Errorf("group %s still exists", rel)
	}
	if err := h.Remove("nrt-lc-cgtest"); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}
