package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/flock"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

func TestName(t *testing.T) {
	key := "0123456789abcdef"
	for _, tc := range []struct {
		prefix, id, key, want, err string
	}{
		{"", "4711", key, "nr-4711-0123456789ab", ""},
		{"nrt-lc-", "Harness_A", key, "nrt-lc-harness-a-0123456789ab", ""},
		{"", strings.Repeat("9", 40), key, "nr-" + strings.Repeat("9", 24) + "-0123456789ab", ""},
		{"", "../etc", key, "", "invalid character"},
		{"", "a b", key, "", "invalid character"},
		{strings.Repeat("p", 60), "1", key, "", "machine name"},
		{"nr/", "1", key, "", "machine name"},
		{"", "1", "short", "", "too short"},
		{"", "1", "ZZZZZZZZZZZZZZZZ", "", "not hex"},
	} {
		got, err := Name(tc.prefix, tc.id, tc.key)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Name(%q, %q, %q) = %q, %v; want error %q", tc.prefix, tc.id, tc.key, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Name(%q, %q, %q) = %q, %v; want %q", tc.prefix, tc.id, tc.key, got, err, tc.want)
		}
	}
}

func FuzzName(f *testing.F) {
	f.Add("nr-", "123", "0123456789abcdef")
	f.Fuzz(func(t *testing.T, prefix, id, key string) {
		n, err := Name(prefix, id, key)
		if err != nil {
			return
		}
		if nspawn.CheckMachineName(n) != nil || strings.ContainsAny(n, "/.") || len(n) > 63 {
			t.Fatalf("Name(%q, %q, %q) = %q: not a safe name", prefix, id, key, n)
		}
	})
}

func TestChooseStorage(t *testing.T) {
	for _, tc := range []struct {
		cfg  string
		sub  bool
		want string
		ok   bool
	}{
		{"auto", true, StorageBtrfs, true},
		{"auto", false, StorageOverlay, true},
		{"", false, StorageOverlay, true},
		{"btrfs", false, "", false},
		{"btrfs", true, StorageBtrfs, true},
		{"overlay", true, StorageOverlay, true},
		{"volatile", true, StorageVolatile, true},
		{"zfs", true, "", false},
	} {
		got, err := ChooseStorage(tc.cfg, tc.sub)
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("ChooseStorage(%q, %v) = %q, %v; want %q ok=%v", tc.cfg, tc.sub, got, err, tc.want, tc.ok)
		}
	}
}

func TestPlan(t *testing.T) {
	l := LayoutOf("/r", "/run/x", "p", "nr-1-0123456789ab")
	if l.Tree != "/r/.machines/nr-1-0123456789ab/root" || l.Record != "/run/x/machines/nr-1-0123456789ab.json" || l.Cgroup != "p/nr-1-0123456789ab" {
		t.Fatalf("LayoutOf = %+v", l)
	}
	for _, tc := range []struct {
		name    string
		in      PlanInput
		want    []string
		notWant []string
		env     []string
	}{
		{"boot btrfs no bus", PlanInput{Layout: l, ImagePath: "/r/img", Storage: StorageBtrfs, Mode: config.ModeBoot, Seccomp: true, Host: Host{NoBus: true, NspawnVersion: 252}},
			[]string{"--directory=/r/.machines/nr-1-0123456789ab/root", "--boot", "--notify-ready=yes", "--register=no", "--keep-unit", "--suppress-sync=yes", "--link-journal=no", "--resolv-conf=copy-host", "--bind-ro=/run/x/machines/nr-1-0123456789ab/scripts:/run/nspawn-runner"},
			[]string{"--as-pid2", "--ephemeral", "--private-network"}, nil},
		{"fast volatile old nspawn with bus", PlanInput{Layout: l, ImagePath: "/r/img", Storage: StorageVolatile, Mode: config.ModeFast, Host: Host{NspawnVersion: 247}},
			[]string{"--directory=/r/img", "--volatile=overlay", "--read-only", "--as-pid2", "sleep", "infinity"},
			[]string{"--boot", "--register=no", "--suppress-sync=yes", "--notify-ready=yes"}, []string{"SYSTEMD_SECCOMP=0"}},
		{"overlay binds", PlanInput{Layout: l, ImagePath: "/r/img", Storage: StorageOverlay, Mode: config.ModeFast, Seccomp: true, Binds: []Bind{{Host: "/cache", Machine: "/cache"}}},
			[]string{"--directory=/r/.machines/nr-1-0123456789ab/root", "--bind=/cache:/cache"}, []string{"--volatile=overlay"}, nil},
		{"private network", PlanInput{Layout: l, Storage: StorageBtrfs, Mode: config.ModeFast, Seccomp: true, Network: config.NetworkPrivate, NetNS: "/run/x/machines/m/netns", ResolvConf: "/run/x/machines/m/resolv.conf"},
			[]string{"--network-namespace-path=/run/x/machines/m/netns", "--private-network", "--resolv-conf=off", "--bind-ro=/run/x/machines/m/resolv.conf:/etc/resolv.conf"},
			[]string{"--resolv-conf=copy-host"}, nil},
		{"private users", PlanInput{Layout: l, Storage: StorageBtrfs, Mode: config.ModeBoot, Seccomp: true, PrivateUsers: true, Network: config.NetworkPrivate, NetNS: "/n", ResolvConf: "/rc",
			Binds: []Bind{{Host: "/cache/p", Machine: "/cache"}, {Host: "/usr/bin/gitlab-runner", Machine: "/usr/local/lib/nspawn-runner/bin/gitlab-runner", ReadOnly: true}}},
			[]string{"--private-users=pick", "--private-users-ownership=map", "--bind=/cache/p:/cache:idmap", "--bind-ro=/usr/bin/gitlab-runner:/usr/local/lib/nspawn-runner/bin/gitlab-runner",
				"--bind-ro=/run/x/machines/nr-1-0123456789ab/scripts:/run/nspawn-runner", "--bind-ro=/rc:/etc/resolv.conf", "--resolv-conf=off"},
			// Started inside the namespace instead (StartsInNetNS).
			[]string{"--network-namespace-path=/n", "--private-network"}, nil},
		{"no private users", PlanInput{Layout: l, Storage: StorageBtrfs, Mode: config.ModeFast, Seccomp: true, Binds: []Bind{{Host: "/cache/p", Machine: "/cache"}}},
			[]string{"--bind=/cache/p:/cache"}, []string{"--private-users=pick", "--private-users-ownership=map", "--bind=/cache/p:/cache:idmap"}, nil},
		{"no network", PlanInput{Layout: l, Storage: StorageBtrfs, Mode: config.ModeFast, Seccomp: true, Network: config.NetworkNone},
			[]string{"--private-network"}, []string{"--resolv-conf=off"}, nil},
	} {
		if StartsInNetNS(tc.in) != (tc.in.PrivateUsers && tc.in.Network == config.NetworkPrivate) {
			t.Errorf("%s: StartsInNetNS = %v", tc.name, StartsInNetNS(tc.in))
		}
		spec, env := Plan(tc.in)
		args := nspawn.Args(spec)
		for _, w := range tc.want {
			if !slices.Contains(args, w) {
				t.Errorf("%s: Plan args %q lack %q", tc.name, args, w)
			}
		}
		for _, w := range tc.notWant {
			if slices.Contains(args, w) {
				t.Errorf("%s: Plan args %q contain %q", tc.name, args, w)
			}
		}
		if !slices.Equal(env, tc.env) {
			t.Errorf("%s: env = %q, want %q", tc.name, env, tc.env)
		}
	}
}

func TestExpired(t *testing.T) {
	now := time.Now()
	if Expired(now.Add(-time.Hour), now, 0) || !Expired(now.Add(-time.Hour), now, time.Minute) || Expired(now, now, time.Minute) {
		t.Error("Expired is wrong")
	}
}

func TestRecordRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.json")
	if _, err := readRecord(p); !errors.Is(err, ErrNotFound) {
		t.Errorf("readRecord(missing) = %v, want ErrNotFound", err)
	}
	r := &Record{Name: "m", LeaderPID: 5, LeaderStart: 77, Binds: []Bind{{Host: "/a", Machine: "/b", ReadOnly: true}}, Created: time.Now().UTC().Round(0)}
	if err := writeRecord(p, r); err != nil {
		t.Fatal(err)
	}
	got, err := readRecord(p)
	if err != nil || got.LeaderStart != 77 || len(got.Binds) != 1 || !got.Created.Equal(r.Created) {
		t.Errorf("readRecord = %+v, %v", got, err)
	}
}

func TestLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.lock")
	ctx := context.Background()
	a, err := lock(ctx, p, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock(ctx, p, false); !errors.Is(err, flock.ErrBusy) {
		t.Errorf("second lock = %v, want flock.ErrBusy", err)
	}
	a.release(true)
	b, err := lock(ctx, p, false)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	b.release(true)
}

func TestPlanProperties(t *testing.T) {
	l := LayoutOf("/r", "/run/x", "p", "nr-1-0123456789ab")
	lim := cgroup.Limits{MemoryHigh: 300, MemoryMax: 400, CPUWeight: 50, PidsMax: 9}
	spec, _ := Plan(PlanInput{Layout: l, Storage: StorageBtrfs, Mode: config.ModeFast, Host: Host{NoBus: false}, Limits: lim})
	want := []string{"CPUWeight=50", "MemoryHigh=300", "MemoryMax=400", "TasksMax=9"}
	if !slices.Equal(spec.Properties, want) {
		t.Errorf("systemd host: properties %q, want %q", spec.Properties, want)
	}
	spec, _ = Plan(PlanInput{Layout: l, Storage: StorageBtrfs, Mode: config.ModeFast, Host: Host{NoBus: true}, Limits: lim})
	if len(spec.Properties) != 0 {
		t.Errorf("no systemd: properties %q, want none (limits go to our cgroup)", spec.Properties)
	}
}

// fakeImages is an image store whose retired trees are temp dirs.
type fakeImages struct {
	retired []string
	removed []string
	cleaned int
}

func (f *fakeImages) Path(name string) (string, error) { return "", ErrNotFound }
func (f *fakeImages) Retired() ([]string, error)       { return f.retired, nil }
func (f *fakeImages) CleanWorkspaces(context.Context, string) error {
	f.cleaned++
	return nil
}
func (f *fakeImages) RemoveTree(p string) error {
	f.removed = append(f.removed, p)
	return os.RemoveAll(p)
}

func TestGCImages(t *testing.T) {
	dir := t.TempDir()
	inUse, unused, snapped := filepath.Join(dir, ".retired-a"), filepath.Join(dir, ".retired-b"), filepath.Join(dir, ".retired-c")
	for _, d := range []string{inUse, unused, snapped} {
		os.Mkdir(d, 0o755)
	}
	m := &Manager{Root: dir, RunDir: filepath.Join(dir, "run")}
	os.MkdirAll(filepath.Join(m.RunDir, "machines"), 0o700)
	rec := func(name, storage, tree string) {
		var st unix.Stat_t
		if err := unix.Stat(tree, &st); err != nil {
			t.Fatal(err)
		}
		r := &Record{Name: name, State: StateRunning, Storage: storage, ImageDev: uint64(st.Dev), ImageIno: st.Ino}
		if err := writeRecord(m.layout(name).Record, r); err != nil {
			t.Fatal(err)
		}
	}
	rec("nr-1-0123456789ab", StorageOverlay, inUse)
	rec("nr-2-0123456789ab", StorageBtrfs, snapped)
	imgs := &fakeImages{retired: []string{inUse, unused, snapped}}
	m.Images = imgs
	removed, err := m.GCImages()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{unused, snapped}) {
		t.Errorf("GCImages removed %q, want %q (the overlay's lower layer kept)", removed, []string{unused, snapped})
	}
}

// gc is one of the commands that clean the image store's debris (chroot-list
// no longer does).
func TestGCCleansImageWorkspaces(t *testing.T) {
	dir := t.TempDir()
	m := &Manager{Root: dir, RunDir: filepath.Join(dir, "run")}
	os.MkdirAll(filepath.Join(m.RunDir, "machines"), 0o700)
	imgs := &fakeImages{}
	m.Images = imgs
	if _, err := m.GC(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if imgs.cleaned != 1 {
		t.Errorf("GC cleaned the image workspaces %d times, want 1", imgs.cleaned)
	}
}
