package cgroup

import (
	"slices"
	"testing"
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
