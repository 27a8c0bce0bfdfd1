package integration

// machine.private_users (issue 9 part 2): the job's root is an
// unprivileged uid range on the host, in boot and fast mode, with caches,
// a persistent builds dir and the bind-mounted runner binary still
// working; refusals where it cannot work.

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/gitlab"
)

func TestPrivateUsers(t *testing.T) {
	for _, mode := range []string{"fast", "boot"} {
		t.Run(mode, func(t *testing.T) {
			r := NewRunner(t, Options{StandIn: true, BuildsDir: true, Machine: "  private_users: true\n  mode: " + mode + "\n"})
			var shifts []string
			job := func(script ...string) *Result {
				j := Job{ProjectID: 7, ProjectPath: "group/users", Script: script}
				cacheStages(&j, gitlab.MachineCacheDir, filepath.Join(gitlab.MachineBuildsDir, j.ProjectPath))
				j.AfterStage = func(s StageResult) {
					if s.Name != "build_script" {
						return
					}
					// The machine's record names the range systemd-nspawn
					// picked while it runs.
					for _, rec := range runnerRecords(r) {
						shifts = append(shifts, strconv.Itoa(num(rec["uid_shift"])))
					}
				}
				return r.RunJob(t, j)
			}
			res := job(
				`echo "uid=$(id -u) gid=$(id -g)"`,
				`echo "map=$(cat /proc/self/uid_map | tr -s ' ')"`,
				`mkdir -p vendor && echo cached > vendor/data.txt`,
				`echo built > "$CI_PROJECT_DIR/built-by-job"`,
				`echo rootfs > /root/in-tree`,
				`echo "runner=$(gitlab-runner --version 2>&1 | head -c 60)"`,
			)
			mustPass(t, res)
			out := res.Stage("build_script").Stdout
			if !strings.Contains(out, "uid=0 gid=0") {
				t.Errorf("the job's id inside is not 0:\n%s", out)
			}
			// Inside, uid 0 maps to a range starting far from the host's 0.
			var shift, size string
			for _, l := range strings.Split(out, "\n") {
				if v, ok := strings.CutPrefix(l, "map= 0 "); ok {
					shift, size, _ = strings.Cut(strings.TrimSpace(v), " ")
				}
			}
			if n, _ := strconv.Atoi(shift); n < 65536 || size != "65536" {
				t.Fatalf("uid_map inside the machine: shift %q size %q, want a range of 65536 away from the host's root:\n%s", shift, size, out)
			}
			if len(shifts) != 1 || shifts[0] != shift {
				t.Errorf("record uid_shift = %q, want [%s]", shifts, shift)
			}
			if s := res.Stage("archive_cache"); !strings.Contains(s.Stdout, "STANDIN archived") {
				t.Errorf("archive_cache did not run the runner binary:\n%s", res.Log)
			}
			// Through the idmapped bind, the job's root writes as the
			// host's root: the builds dir and the cache stay usable by
			// every later job, whatever range it gets.
			found := 0
			_ = filepath.WalkDir(r.BuildsDir, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Name() == "built-by-job" {
					found++
					var st unix.Stat_t
					if err := unix.Stat(p, &st); err != nil || st.Uid != 0 || st.Gid != 0 {
						t.Errorf("%s on the host: owner %d:%d (%v), want 0:0 (idmapped bind)", p, st.Uid, st.Gid, err)
					}
				}
				return nil
			})
			if found != 1 {
				t.Errorf("found %d built-by-job files in the builds dir, want 1", found)
			}
			res = job(
				`test "$(cat vendor/data.txt)" = cached`,
				`test "$(cat "$CI_PROJECT_DIR/built-by-job")" = built`,
				`test ! -e /root/in-tree`,
				`echo again > "$CI_PROJECT_DIR/built-by-job"`,
			)
			mustPass(t, res)
			if s := res.Stage("restore_cache"); !strings.Contains(s.Stdout, "STANDIN extracted") {
				t.Errorf("restore_cache did not extract:\n%s", res.Log)
			}
			if len(shifts) != 2 {
				t.Errorf("uid shifts seen: %q, want 2", shifts)
			}
			r.AssertClean(t)
			// systemd-nspawn's lock of the range is gone with the machine.
			for _, s := range shifts {
				if _, err := os.Stat(filepath.Join("/run/systemd/nspawn-uid", s)); err == nil {
					t.Errorf("/run/systemd/nspawn-uid/%s is left after cleanup", s)
				}
			}
		})
	}
}

// runnerRecords reads the state records of r's running machines.
func runnerRecords(r *Runner) []map[string]any {
	h := &lcHost{runDir: r.RunDir}
	return h.records()
}

// TestPrivateUsersRefused: where private users cannot work, prepare is a
// system failure with one line that says why, and nothing is left.
func TestPrivateUsersRefused(t *testing.T) {
	t.Run("overlay storage", func(t *testing.T) {
		r := NewRunner(t, Options{StandIn: true, PlainRoot: true, Machine: "  private_users: true\n  mode: fast\n"})
		res := r.RunJob(t, Job{Script: []string{"true"}})
		checkRefused(t, res, "needs btrfs storage")
		r.AssertClean(t)
	})
	t.Run("cache on a filesystem without idmapped mounts", func(t *testing.T) {
		r := NewRunner(t, Options{StandIn: true, Machine: "  private_users: true\n  mode: fast\n"})
		// ramfs, unlike tmpfs, btrfs, ext4 and xfs, cannot be idmapped.
		if err := unix.Mount("ramfs", r.CacheDir, "ramfs", 0, "mode=0755"); err != nil {
			t.Fatal(err)
		}
		unmounted := false
		t.Cleanup(func() {
			if !unmounted {
				unix.Unmount(r.CacheDir, unix.MNT_DETACH)
			}
		})
		res := r.RunJob(t, Job{Script: []string{"true"}})
		checkRefused(t, res, "cannot idmap the bind mount of /cache")
		if err := unix.Unmount(r.CacheDir, 0); err != nil {
			t.Fatal(err)
		}
		unmounted = true
		r.AssertClean(t)
	})
}

func checkRefused(t *testing.T, res *Result, why string) {
	t.Helper()
	if res.Status != "system" || len(res.Prepares) == 0 {
		t.Fatalf("job status %s after %d prepares, want a system failure at prepare:\n%s", res.Status, len(res.Prepares), res.Log)
	}
	p := res.Prepares[0]
	if p.Exit != 2 || !strings.Contains(p.Stderr, "machine.private_users cannot work here") || !strings.Contains(p.Stderr, why) || strings.Contains(p.Stderr, "systemd-nspawn exited") {
		t.Errorf("prepare: exit %d, stderr %q; want 2 and one line saying %q", p.Exit, p.Stderr, why)
	}
}

// TestPrivateUsersLifecycle: the lifecycle tests of TestLifecycleBtrfs that
// concern a machine's processes and teardown, with private users: stages
// in both modes, 8 concurrent machines in distinct uid ranges, SIGKILLs
// followed by gc, a machine whose systemd-nspawn died, a cancelled stage.
func TestPrivateUsersLifecycle(t *testing.T) {
	h := newLCHost(t, true, "  private_users: true\n")
	for _, mode := range []string{"boot", "fast"} {
		t.Run(mode, func(t *testing.T) { lcStages(t, h, mode, "btrfs") })
	}
	t.Run("concurrent ranges", func(t *testing.T) {
		jobs, codes := prepareAtOnce(h, 8, "fast")
		shifts := map[int]string{}
		for i, j := range jobs {
			if codes[i].code != 0 {
				t.Errorf("prepare %s: exit %d: %s", j.id, codes[i].code, codes[i].stderr)
				continue
			}
			s := num(h.recordOf(j)["uid_shift"])
			if s < 65536 || shifts[s] != "" {
				t.Errorf("machine of %s: uid_shift %d (also %q's): want distinct ranges away from the host's root", j.id, s, shifts[s])
			}
			shifts[s] = j.id
			r := j.must("run", j.script("u", "cat /proc/self/uid_map"), "build_script")
			if f := strings.Fields(r.stdout); len(f) != 3 || f[0] != "0" || f[1] != strconv.Itoa(s) {
				t.Errorf("stage of %s: uid_map %q, want 0 %d 65536", j.id, r.stdout, s)
			}
		}
		for _, j := range jobs {
			j.must("cleanup")
		}
		h.assertClean(t)
	})
	t.Run("sigkill", func(t *testing.T) { lcSigkill(t, h) })
	t.Run("nspawn died", func(t *testing.T) { lcNspawnDied(t, h) })
	t.Run("sigterm during run", func(t *testing.T) { lcSigterm(t, h) })
	t.Run("killed nspawn's range lock", func(t *testing.T) {
		for _, mode := range []string{"fast", "boot"} {
			_, rec := h.killedMachine(t, mode, "nspawn_pid")
			lock := filepath.Join("/run/systemd/nspawn-uid", strconv.Itoa(num(rec["uid_shift"])))
			if _, err := os.Stat(lock); err != nil {
				t.Fatalf("%s: no lock file %s after systemd-nspawn was killed: nothing to test (%v)", mode, lock, err)
			}
			if r := h.exec(context.Background(), nil, "", "gc"); r.code != 0 {
				t.Fatalf("gc: %d %s", r.code, r.stderr)
			}
			h.assertClean(t)
			if _, err := os.Stat(lock); err == nil {
				t.Errorf("%s: gc left systemd-nspawn's lock file %s of the machine's uid range", mode, lock)
			}
		}
	})
}
