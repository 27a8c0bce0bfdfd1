package gitlab

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestPlanMounts(t *testing.T) {
	proj := Project{Instance: "https://gitlab.example.com", ID: 5}
	key := proj.Key()
	local := Project{Local: "/home/dev/app"}
	noProject := errors.New("job_info.project_id missing")
	for _, tc := range []struct {
		name    string
		in      MountInput
		mounts  []Mount
		notices []string // substrings, one per notice
	}{
		{
			name: "cache and runner",
			in:   MountInput{CacheRoot: "/var/cache/nr", RunnerBinary: "/usr/bin/gitlab-runner", Project: proj},
			mounts: []Mount{
				{Host: "/var/cache/nr/" + key, Machine: "/cache", Dir: true},
				{Host: "/usr/bin/gitlab-runner", Machine: MachineRunnerBinary, ReadOnly: true},
			},
		},
		{
			name: "persistent builds",
			in:   MountInput{CacheRoot: "/c", BuildsRoot: "/b", RunnerBinary: "/r", Project: proj},
			mounts: []Mount{
				{Host: "/c/" + key, Machine: "/cache", Dir: true},
				{Host: "/b/" + key, Machine: "/builds", Dir: true},
				{Host: "/r", Machine: MachineRunnerBinary, ReadOnly: true},
			},
		},
		{
			name: "local job (gitlab-runner exec)",
			in:   MountInput{CacheRoot: "/c", RunnerBinary: "/r", Project: local},
			mounts: []Mount{
				{Host: "/c/" + local.Key(), Machine: "/cache", Dir: true},
				{Host: "/r", Machine: MachineRunnerBinary, ReadOnly: true},
			},
		},
		{
			name:    "no runner binary",
			in:      MountInput{CacheRoot: "/c", Project: proj},
			mounts:  []Mount{{Host: "/c/" + key, Machine: "/cache", Dir: true}},
			notices: []string{"caches and artifacts are disabled"},
		},
		{
			name:    "unknown project keeps nothing",
			in:      MountInput{CacheRoot: "/c", BuildsRoot: "/b", RunnerBinary: "/r", ProjectErr: noProject},
			mounts:  []Mount{{Host: "/r", Machine: MachineRunnerBinary, ReadOnly: true}},
			notices: []string{"project_id missing"},
		},
		{
			name: "nothing persistent configured",
			in:   MountInput{RunnerBinary: "/r", ProjectErr: noProject},
			mounts: []Mount{
				{Host: "/r", Machine: MachineRunnerBinary, ReadOnly: true},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := PlanMounts(tc.in)
			if !reflect.DeepEqual(p.Mounts, tc.mounts) {
				t.Errorf("PlanMounts mounts = %+v, want %+v", p.Mounts, tc.mounts)
			}
			var path []string
			if tc.in.RunnerBinary != "" {
				path = []string{MachineRunnerDir}
			}
			if !reflect.DeepEqual(p.Path, path) {
				t.Errorf("PlanMounts path = %q, want %q", p.Path, path)
			}
			if len(p.Notices) != len(tc.notices) {
				t.Fatalf("PlanMounts notices = %q, want %d", p.Notices, len(tc.notices))
			}
			for i, n := range tc.notices {
				if !strings.Contains(p.Notices[i], n) {
					t.Errorf("notice %q lacks %q", p.Notices[i], n)
				}
			}
		})
	}
}

// Two projects, one project id on two instances, or two local
// repositories never share a dir.
func TestPlanMountsSeparatesProjects(t *testing.T) {
	dirs := map[string]Project{}
	for _, p := range []Project{
		{Instance: "https://a.example", ID: 5}, {Instance: "https://a.example", ID: 6}, {Instance: "https://b.example", ID: 5},
		{Local: "/home/dev/a"}, {Local: "/home/dev/b"},
	} {
		m := PlanMounts(MountInput{CacheRoot: "/c", RunnerBinary: "/r", Project: p}).Mounts[0].Host
		if q, dup := dirs[m]; dup {
			t.Errorf("%+v and %+v share cache dir %s", p, q, m)
		}
		dirs[m] = p
	}
}
