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

func TestParseEvent(t *testing.T) {
	data := "low 0\nhigh 12\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n"
	for key, want := range map[string]uint64{"oom_kill": 1, "oom": 2, "high": 12, "oom_group_kill": 0} {
		if n, ok := parseEvent(data, key); !ok || n != want {
			t.Errorf("parseEvent(%s) = %d, %v; want %d", key, n, ok, want)
		}
	}
	if _, ok := parseEvent(data, "missing"); ok {
		t.Error("parseEvent found a key that is not there")
	}
}
