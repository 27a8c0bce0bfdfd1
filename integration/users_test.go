package integration

// machine.private_users (issue 9 part 2): the job's root is an
// unprivileged uid range on the host, in boot and fast mode, with caches,
// a persistent builds dir and the bind-mounted runner binary still
// working; refusals where it cannot work.

import (
	"context"
	"fmt"
	"io/fs"
	"net"
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

// withBuildsDir gives h persistent builds and cache dirs on its images'
// btrfs, and returns the builds dir and the environment that names the
// job's project (a JOB_RESPONSE_FILE), without which prepare binds
// neither.
func withBuildsDir(t *testing.T, h *lcHost) (string, []string) {
	t.Helper()
	fs := filepath.Dir(h.root)
	builds, cache := filepath.Join(fs, "builds"), filepath.Join(fs, "cache")
	for _, d := range []string{builds, cache} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(h.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(f, "gitlab:\n  builds_dir: %s\n  cache_dir: %s\n", builds, cache)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	payload := filepath.Join(t.TempDir(), "job.json")
	if err := os.WriteFile(payload, []byte(`{"job_info":{"project_id":7},"git_info":{"repo_url":"https://gitlab.test.example/group/users.git"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return builds, []string{"JOB_RESPONSE_FILE=" + payload}
}

// TestPrivateUsersNetwork: private users on the private network (the
// default network), in both modes: the job is root in a user namespace of
// its own, what it writes to its builds dir belongs to the host's root
// (idmapped bind), it reaches the test internet through the NAT and not
// the host's addresses, it may bind a port below 1024 and ping but not
// open a raw socket, and sees only its own links; cleanup and gc leave nothing. systemd-nspawn 252 cannot join
// a network namespace from inside the user namespace it makes ("Failed
// to join network namespace: Operation not permitted"): the machine's
// systemd-nspawn is started inside the namespace instead.
func TestPrivateUsersNetwork(t *testing.T) {
	h, w := newNetHost(t, netYAML+"  private_users: true\n")
	h.prefix = "nrt-unet-"
	builds, env := withBuildsDir(t, h)
	serve(t, w.inet, "192.0.2.1:8080")
	serve(t, w.inet, "198.51.100.1:8080")
	serve(t, w.host, "127.0.0.1:8081")
	dnsQueries := serveDNS(t, w.inet, "192.0.2.1", net.ParseIP("203.0.113.7"))
	var shifts []int
	for _, mode := range []string{"fast", "boot"} {
		t.Run(mode, func(t *testing.T) {
			j := h.newJob()
			// Every stage with the payload: it names the machine too.
			must := func(args ...string) result {
				t.Helper()
				r := h.exec(context.Background(), append([]string{"BUILD_EXIT_CODE_FILE=" + filepath.Join(j.dir, "code")}, env...), j.dir, append(args, "--id", j.id)...)
				if r.code != 0 {
					t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", args[0], r.code, r.stdout, r.stderr)
				}
				return r
			}
			t.Cleanup(func() { h.exec(context.Background(), env, j.dir, "cleanup", "--id", j.id) })
			must("prepare", "bookworm", "--mode", mode)
			rec := h.recordOf(j)
			shift := num(rec["uid_shift"])
			if rec["network"] != "private" || rec["address"] == nil || rec["private_users"] != true || shift < 65536 {
				t.Fatalf("record: network %v address %v private_users %v uid_shift %d", rec["network"], rec["address"], rec["private_users"], shift)
			}
			shifts = append(shifts, shift)
			// The bridge exists now.
			serve(t, w.host, "10.99.0.1:8082")
			script := strings.Join([]string{
				`echo "uid=$(id -u)"`,
				`echo "map=$(tr -s ' ' </proc/self/uid_map)"`,
				`echo job > /builds/by-` + mode + ` && mkdir -p /builds/dir-` + mode + ` && echo job > /builds/dir-` + mode + `/f`,
				`echo job > /root/in-tree`,
				probe("internet", "192.0.2.1:8080"),
				probe("loopback", "127.0.0.1:8081"),
				probe("bridge", "10.99.0.1:8082"),
				probe("denied", "198.51.100.1:8080"),
				`echo links=$(ls /sys/class/net | tr '\n' ' ')`,
				`python3 -c 'import socket; s = socket.socket(); s.bind(("0.0.0.0", 80)); print("low=ok")' 2>/dev/null || echo low=no`,
				// ping's datagram socket works; a raw socket needs a
				// capability the machine's root lacks in the namespace.
				`python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); print("icmp=ok")' 2>/dev/null || echo icmp=no`,
				`python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print("raw=ok")' 2>/dev/null || echo raw=no`,
				dnsProbe("ci.test.example"),
			}, "\n")
			r := must("run", j.script("probe", script), "build_script")
			got := results(r.stdout)
			want := map[string]string{
				"uid": "0", "map": fmt.Sprintf(" 0 %d 65536", shift),
				"internet": "ok:hello-from-192.0.2.2", // masqueraded
				"loopback": "no", "bridge": "no", "denied": "no",
				"links": "eth0 lo", "low": "ok", "icmp": "ok", "raw": "no", "dns": "203.0.113.7",
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q (the test resolver got %d queries)\n%s", k, got[k], v, dnsQueries(), r.stdout)
				}
			}
			// The builds dir is an idmapped bind: the job's root writes
			// as the host's root. The machine's root tree too.
			tree, _ := rec["tree"].(string)
			for _, p := range []string{"by-" + mode, "dir-" + mode, "dir-" + mode + "/f", filepath.Join(tree, "root/in-tree")} {
				var found []string
				if filepath.IsAbs(p) {
					found = []string{p}
				} else {
					found, _ = filepath.Glob(filepath.Join(builds, "*", p))
				}
				if len(found) != 1 {
					t.Errorf("%s: found %q on the host, want one file", p, found)
					continue
				}
				var st unix.Stat_t
				if err := unix.Stat(found[0], &st); err != nil || st.Uid != 0 || st.Gid != 0 {
					t.Errorf("%s on the host: owner %d:%d (%v), want 0:0", found[0], st.Uid, st.Gid, err)
				}
			}
			must("cleanup")
		})
	}
	if left := netLeftovers(t, h, w); len(left) > 0 {
		t.Errorf("left after cleanup: %s", strings.Join(left, "; "))
	}
	if r := h.exec(context.Background(), nil, "", "gc"); r.code != 0 {
		t.Fatalf("gc: exit %d: %s", r.code, r.stderr)
	}
	if _, err := nlHandle(t, w.host).LinkByName("nrt-net-br"); err == nil {
		t.Errorf("bridge left after gc with no machine")
	}
	h.assertClean(t)
	for _, s := range shifts {
		if _, err := os.Stat(filepath.Join("/run/systemd/nspawn-uid", strconv.Itoa(s))); err == nil {
			t.Errorf("/run/systemd/nspawn-uid/%d is left after cleanup", s)
		}
	}
}
