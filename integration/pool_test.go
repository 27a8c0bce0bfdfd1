package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/gitlab"
	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

// newPoolRunner is a runner with a warm pool of size machines of the base
// image. Before the harness's teardown, the pool is set to 0 and gc must
// empty it (what the README tells an admin to do).
func newPoolRunner(t *testing.T, o Options, size int) *Runner {
	t.Helper()
	o.Machine += fmt.Sprintf("  pool: {%s: %d}\n", BaseImage, size)
	r := NewRunner(t, o)
	t.Cleanup(func() {
		r.setPool(t, 0)
		r.waitRefills(t)
		out, errOut, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd("gc")...)
		if code != 0 {
			t.Errorf("gc with pool 0: exit %d: %s", code, errOut)
		}
		if n := len(r.pooled(t)); n != 0 {
			t.Errorf("gc with pool 0 left %d pooled machines (gc said %q)", n, out)
		}
	})
	return r
}

// setPool rewrites the pool size of the base image in the config.
func (r *Runner) setPool(t *testing.T, size int) {
	t.Helper()
	setPoolIn(t, r.ConfigPath, size)
}

// waitRefills waits until no detached refill runs (its cgroup is empty).
func (r *Runner) waitRefills(t *testing.T) { waitRefills(t, r.CgroupParent) }

func waitRefills(t testing.TB, cgParent string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		busy := false
		for _, root := range cgroupRoots() {
			b, err := os.ReadFile(filepath.Join(root, cgParent, "pool-fill", "cgroup.procs"))
			if err == nil && len(strings.TrimSpace(string(b))) > 0 {
				busy = true
			}
		}
		if !busy {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("a refill still runs after 3 minutes")
}

// setPoolIn rewrites the pool size of image bookworm in a config file.
func setPoolIn(t testing.TB, path string, size int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b = regexp.MustCompile(`pool: \{bookworm: \d+\}`).ReplaceAll(b, []byte(fmt.Sprintf("pool: {bookworm: %d}", size)))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// poolLCHost registers, on a host whose config has a pool, the emptying
// of the pool before the host's own cleanup.
func poolLCHost(t testing.TB, h *lcHost) {
	t.Cleanup(func() {
		setPoolIn(t, h.config, 0)
		waitRefills(t, h.cgParent)
		if r := h.exec(context.Background(), nil, "", "gc"); r.code != 0 {
			t.Errorf("gc with pool 0: exit %d: %s", r.code, r.stderr)
		}
	})
}

// TestPoolPrivateNetwork: a pooled private machine, attached to the
// network when it was filled, serves its job as a fresh one would
// (masqueraded internet, the denied network unreachable, DNS, no other
// machine reachable), and its network follows it to the job's name:
// cleanup and gc leave no veth, allocation or port rule.
func TestPoolPrivateNetwork(t *testing.T) { poolPrivateNetwork(t, "") }

// TestPoolPrivateUsersNetwork: the same with private users: pooled
// machines were started inside their network namespace (their root has
// no capability over it), and their jobs are root of their own range.
func TestPoolPrivateUsersNetwork(t *testing.T) { poolPrivateNetwork(t, "  private_users: true\n") }

func poolPrivateNetwork(t *testing.T, machineYAML string) {
	h, w := newNetHost(t, netYAML+"  pool: {bookworm: 2}\n"+machineYAML)
	privateUsers := machineYAML != ""
	poolLCHost(t, h)
	serve(t, w.inet, "192.0.2.1:8080")
	serve(t, w.inet, "198.51.100.1:8080")
	dnsQueries := serveDNS(t, w.inet, "192.0.2.1", net.ParseIP("203.0.113.7"))
	if r := h.exec(context.Background(), nil, "", "gc"); r.code != 0 || strings.Count(r.stdout, "started pooled machine") != 2 {
		t.Fatalf("gc filling the pool: exit %d, stdout %q: %s", r.code, r.stdout, r.stderr)
	}
	var jobs []*job
	var addrs []string
	for range 2 {
		j := h.newJob()
		r := j.must("prepare", "bookworm")
		t.Cleanup(func() { j.call("cleanup") })
		if !strings.Contains(r.stdout, "(pooled machine ") {
			t.Fatalf("prepare did not claim a pooled machine: %s", r.stdout)
		}
		rec := h.recordOf(j)
		addr, _ := rec["address"].(string)
		if rec["network"] != "private" || addr == "" {
			t.Fatalf("record of a claimed private machine: network %v address %v", rec["network"], rec["address"])
		}
		if privateUsers && (rec["private_users"] != true || num(rec["uid_shift"]) < 65536) {
			t.Fatalf("record of a claimed machine: private_users %v uid_shift %v", rec["private_users"], rec["uid_shift"])
		}
		if _, err := os.Stat(filepath.Join(h.runDir, "network", rec["name"].(string)+".json")); err != nil {
			t.Errorf("the network allocation did not follow the machine to its job's name: %v", err)
		}
		jobs, addrs = append(jobs, j), append(addrs, addr)
	}
	closer := serve(t, filepath.Join(h.recordOf(jobs[0])["run_dir"].(string), "netns"), ":8084")
	defer closer()
	script := strings.Join([]string{
		probe("internet", "192.0.2.1:8080"),
		probe("denied", "198.51.100.1:8080"),
		probe("machine", addrs[0]+":8084"),
		dnsProbe("ci.test.example"),
		`echo "uid=$(id -u) map=$(tr -s ' ' </proc/self/uid_map)"`,
	}, "\n")
	r := jobs[1].must("run", jobs[1].script("probe", script), "build_script")
	got := results(r.stdout)
	want := map[string]string{"internet": "ok:hello-from-192.0.2.2", "denied": "no", "machine": "no", "dns": "203.0.113.7", "uid": "0 map= 0 0 4294967295"}
	if privateUsers {
		want["uid"] = fmt.Sprintf("0 map= 0 %d 65536", num(h.recordOf(jobs[1])["uid_shift"]))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q (the test resolver got %d queries)\n%s", k, got[k], v, dnsQueries(), r.stdout)
		}
	}
	closer()
	for _, j := range jobs {
		j.must("cleanup")
	}
	setPoolIn(t, h.config, 0)
	waitRefills(t, h.cgParent)
	if r := h.exec(context.Background(), nil, "", "gc"); r.code != 0 {
		t.Fatalf("gc: exit %d: %s", r.code, r.stderr)
	}
	if left := netLeftovers(t, h, w); len(left) > 0 {
		t.Errorf("left behind: %s", strings.Join(left, "; "))
	}
}

type psEntry struct {
	Name  string `json:"name"`
	JobID string `json:"job_id"`
	Image string `json:"image"`
	State string `json:"state"`
}

func (r *Runner) ps(t *testing.T) []psEntry {
	t.Helper()
	out, errOut, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd("ps", "--json")...)
	if code != 0 {
		t.Fatalf("ps: exit %d: %s", code, errOut)
	}
	var v []psEntry
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("ps --json: %v\n%s", err, out)
	}
	return v
}

// pooled returns the names of pooled machines ps shows.
func (r *Runner) pooled(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, e := range r.ps(t) {
		if e.State == "pooled" {
			names = append(names, e.Name)
		}
	}
	return names
}

// fillPool runs gc, which tops the pool up, and checks ps shows want
// pooled machines.
func (r *Runner) fillPool(t *testing.T, want int) []string {
	t.Helper()
	r.waitRefills(t)
	r.mustMachine(t, "fill", "gc")
	got := r.pooled(t)
	if len(got) != want {
		t.Fatalf("after gc: %d pooled machines %q, want %d", len(got), got, want)
	}
	return got
}

var rePooled = regexp.MustCompile(`Machine (\S+) is running image \S+ \(pooled machine (\S+)\)`)

// claimed returns the job's machine and the pooled machine it claimed
// ("" for a fresh one), from prepare's output.
func claimed(res *Result) (machine, pooled string) {
	for _, p := range res.Prepares {
		if m := rePooled.FindStringSubmatch(p.Stdout); m != nil {
			return m[1], m[2]
		}
	}
	return "", ""
}

// TestPoolConcurrentClaims: eight prepares at once from a pool of four:
// every pooled machine is claimed by exactly one, the other four start
// fresh machines (the refills they trigger boot for longer than the
// claims take); each job then runs in its own machine under its own host
// name. Then eight whole jobs at once, while refills run.
func TestPoolConcurrentClaims(t *testing.T) {
	r := newPoolRunner(t, Options{StandIn: true}, 4)
	initial := r.fillPool(t, 4)
	type outcome struct {
		id, out, errOut string
		code            int
	}
	results := make([]outcome, 8)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range results {
		results[i].id = r.ID()
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			o := &results[i]
			o.out, o.errOut, o.code = r.call(context.Background(), "/", os.Environ(), r.machineCmd("prepare", "--id", o.id, BaseImage)...)
		}()
	}
	close(start)
	wg.Wait()
	byPooled := map[string][]string{}
	fresh := 0
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("echo \"host=$(hostname)\"\ntest ! -e /var/tmp/claimed-before && touch /var/tmp/claimed-before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, o := range results {
		if o.code != 0 {
			t.Errorf("prepare %s: exit %d: %s", o.id, o.code, o.errOut)
			continue
		}
		if m := rePooled.FindStringSubmatch(o.out); m != nil {
			byPooled[m[2]] = append(byPooled[m[2]], o.id)
		} else {
			fresh++
		}
		out, errOut, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd("run", "--id", o.id, script, "build_script")...)
		if code != 0 || !strings.Contains(out, "host=") || strings.Contains(out, "pool-") {
			t.Errorf("run in %s: exit %d, output %q (want a host name that is not the pooled one): %s", o.id, code, out, errOut)
		}
	}
	for _, o := range results {
		r.mustMachine(t, "cleanup", "cleanup", "--id", o.id)
	}
	for p, ids := range byPooled {
		if len(ids) > 1 {
			t.Errorf("pooled machine %s was claimed by %d jobs: %q", p, len(ids), ids)
		}
	}
	for _, p := range initial {
		if len(byPooled[p]) != 1 {
			t.Errorf("pooled machine %s was claimed %d times, want once (claims: %v)", p, len(byPooled[p]), byPooled)
		}
	}
	if len(byPooled) != 4 || fresh != 4 {
		t.Errorf("%d claims and %d fresh machines, want 4 and 4", len(byPooled), fresh)
	}

	var mu sync.Mutex
	seen := map[string]bool{}
	t.Run("jobs", func(t *testing.T) {
		for i := 0; i < 8; i++ {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				res := r.RunJob(t, Job{
					ProjectID: int64(100 + i),
					Script: []string{
						`echo "$CI_JOB_ID" > /var/tmp/who`,
						`test ! -e /var/tmp/claimed-before`,
						`touch /var/tmp/claimed-before`,
						`sleep 1`,
						`test "$(cat /var/tmp/who)" = "$CI_JOB_ID"`,
					},
				})
				mustPass(t, res)
				if _, p := claimed(res); p != "" {
					mu.Lock()
					defer mu.Unlock()
					if seen[p] {
						t.Errorf("pooled machine %s claimed twice", p)
					}
					seen[p] = true
				}
			})
		}
	})
	t.Logf("8 concurrent jobs with refills running: %d claimed pooled machines", len(seen))
}

// TestPoolBinds: a claimed machine gets every bind a fresh one gets (the
// cache and builds directories read-write, the runner binary read-only,
// the stage scripts) and its job's host name; a second claimed machine
// sees nothing of the first job.
func TestPoolBinds(t *testing.T) {
	r := newPoolRunner(t, Options{StandIn: true, BuildsDir: true}, 1)
	token := fmt.Sprintf("pool-bind-%d", os.Getpid())
	job := func(project int64, script ...string) *Result {
		j := Job{ProjectID: project, ProjectPath: "group/project", Script: script}
		cacheStages(&j, gitlab.MachineCacheDir, filepath.Join(gitlab.MachineBuildsDir, j.ProjectPath))
		return r.RunJob(t, j)
	}
	r.fillPool(t, 1)
	res := job(1,
		`mkdir -p vendor && echo `+token+` > vendor/data.txt`,
		`echo `+token+` > "$CI_PROJECT_DIR/in-builds"`,
		`echo `+token+` > /var/tmp/first`,
		`test "$(hostname)" = "$(cat /proc/sys/kernel/hostname)"`,
		`echo "host=$(hostname)"`,
		`r=$(command -v gitlab-runner) && test -x "$r" && ! touch "$r" 2>/dev/null && echo runner-ro`,
		`grep -q " /run/nspawn-runner " /proc/self/mountinfo && echo scripts-bound`,
	)
	mustPass(t, res)
	name, pooled := claimed(res)
	if pooled == "" {
		t.Fatalf("the first job did not claim the pooled machine:\n%s", res.Log)
	}
	build := res.Stage("build_script").Stdout
	for _, want := range []string{"host=", "runner-ro", "scripts-bound"} {
		if !strings.Contains(build, want) {
			t.Errorf("build_script output lacks %q:\n%s", want, res.Log)
		}
	}
	// Booted, the machine's systemd names the host from the image's
	// /etc/hostname, a fresh machine's as well; never the pooled name.
	if strings.Contains(build, "host="+pooled) || (!strings.Contains(build, "host="+name) && !hasHostnameFile(r)) {
		t.Errorf("claimed machine %s (pooled %s) has the wrong host name:\n%s", name, pooled, build)
	}
	if s := res.Stage("archive_cache"); !strings.Contains(s.Stdout, "STANDIN archived") {
		t.Errorf("archive_cache did not run the runner binary in the claimed machine:\n%s", res.Log)
	}
	// Written through the builds bind: on the host.
	found := false
	filepath.WalkDir(r.BuildsDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "in-builds" {
			found = true
		}
		return nil
	})
	if !found {
		t.Errorf("the file written to the builds dir in the claimed machine is not on the host")
	}

	r.fillPool(t, 1)
	res = job(2,
		`test ! -e /var/tmp/first`,
		`test ! -e vendor/data.txt`,
		`test ! -e "$CI_PROJECT_DIR/in-builds"`,
		`test -z "$(find /cache -type f)"`,
	)
	mustPass(t, res)
	if _, p2 := claimed(res); p2 == "" || p2 == pooled {
		t.Errorf("second job claimed %q, want a new pooled machine (first: %s):\n%s", p2, pooled, res.Log)
	}
	if s := res.Stage("restore_cache"); !strings.Contains(s.Stdout, "STANDIN no cache") {
		t.Errorf("another project's claimed machine found a cache:\n%s", res.Log)
	}
}

func hasHostnameFile(r *Runner) bool {
	b, err := os.ReadFile(filepath.Join(r.Root, BaseImage, "etc", "hostname"))
	return err == nil && len(strings.TrimSpace(string(b))) > 0
}

// TestPoolRetiredByMaintenance: once the image's tree is replaced (as
// maintenance does: a new tree swapped in), pooled machines of the old
// tree are never claimed; gc retires them and fills the pool from the new
// tree.
func TestPoolRetiredByMaintenance(t *testing.T) {
	// Fast mode: pools work in both modes, and without systemd in the
	// machine its host name is the machine's name.
	r := newPoolRunner(t, Options{Machine: "  mode: fast\n"}, 2)
	old := r.fillPool(t, 2)
	img := filepath.Join(r.Root, BaseImage)
	aside := filepath.Join(r.FS, "old-"+BaseImage)
	if err := os.Rename(img, aside); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.Run(t, "btrfs", "-q", "subvolume", "delete", aside) })
	testutil.Run(t, "btrfs", "-q", "subvolume", "snapshot", aside, img)
	if err := os.WriteFile(filepath.Join(img, "etc", "new-tree"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res := r.RunJob(t, Job{Script: []string{`test -e /etc/new-tree`}})
	mustPass(t, res)
	if _, p := claimed(res); p != "" {
		t.Errorf("a job claimed %s, a pooled machine of the replaced tree", p)
	}
	r.waitRefills(t)
	now := r.fillPool(t, 2)
	for _, n := range now {
		for _, o := range old {
			if n == o {
				t.Errorf("pooled machine %s of the old tree survived gc", o)
			}
		}
	}
	res = r.RunJob(t, Job{Script: []string{`test -e /etc/new-tree`, `echo "host=$(hostname)"`}})
	mustPass(t, res)
	name, p := claimed(res)
	if p == "" {
		t.Errorf("no claim from the refilled pool:\n%s", res.Log)
	} else if out := res.Stage("build_script").Stdout; !strings.Contains(out, "host="+name+"\n") {
		t.Errorf("claimed fast machine: host name output %q, want %s", out, name)
	}
}

// TestPoolFaults kills prepare (claim and attach) and the refill with
// SIGKILL at increasing delays, then runs the recovery (cleanup, then gc
// with the pool set to 0): nothing may be left.
func TestPoolFaults(t *testing.T) {
	r := newPoolRunner(t, Options{}, 2)
	for _, d := range []time.Duration{0, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 60 * time.Millisecond} {
		r.setPool(t, 2)
		r.fillPool(t, 2)
		id := r.ID()
		point := fmt.Sprintf("prepare SIGKILL after %v", d)
		r.killAfter(t, d, syscall.SIGKILL, "prepare", "--id", id, BaseImage)
		r.mustMachine(t, point, "cleanup", "--id", id)
		// A refill: killed while it starts a machine.
		r.setPool(t, 3)
		point = fmt.Sprintf("pool-fill SIGKILL after %v", 5*d+50*time.Millisecond)
		r.killAfter(t, 5*d+50*time.Millisecond, syscall.SIGKILL, "pool-fill", BaseImage)
		r.setPool(t, 0)
		r.waitRefills(t)
		r.mustMachine(t, point, "gc")
		r.assertNothingLeft(t, point)
	}
}

// TestPoolPrivateUsers: with machine.private_users, a claimed machine's
// writable binds are idmapped as a fresh machine's are (the job's root
// writes the builds dir and the cache as the host's root), its job is
// root inside an unprivileged range, and the runner binary works.
func TestPoolPrivateUsers(t *testing.T) {
	r := newPoolRunner(t, Options{StandIn: true, BuildsDir: true, Machine: "  private_users: true\n"}, 1)
	r.fillPool(t, 1)
	j := Job{ProjectID: 7, ProjectPath: "group/users", Script: []string{
		`echo "uid=$(id -u)"`,
		`echo "map=$(cat /proc/self/uid_map | tr -s ' ')"`,
		`mkdir -p vendor && echo cached > vendor/data.txt`,
		`echo built > "$CI_PROJECT_DIR/built-by-job"`,
	}}
	cacheStages(&j, gitlab.MachineCacheDir, filepath.Join(gitlab.MachineBuildsDir, j.ProjectPath))
	res := r.RunJob(t, j)
	mustPass(t, res)
	if _, p := claimed(res); p == "" {
		t.Fatalf("the job did not claim the pooled machine:\n%s", res.Log)
	}
	out := res.Stage("build_script").Stdout
	if !strings.Contains(out, "uid=0\n") || strings.Contains(out, "map= 0 0 ") {
		t.Errorf("the job is not root in a user namespace of its own:\n%s", out)
	}
	if s := res.Stage("archive_cache"); !strings.Contains(s.Stdout, "STANDIN archived") {
		t.Errorf("archive_cache did not run the runner binary:\n%s", res.Log)
	}
	found := 0
	_ = filepath.WalkDir(r.BuildsDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "built-by-job" {
			found++
			var st syscall.Stat_t
			if err := syscall.Stat(p, &st); err != nil || st.Uid != 0 || st.Gid != 0 {
				t.Errorf("%s on the host: owner %d:%d (%v), want 0:0 (idmapped bind)", p, st.Uid, st.Gid, err)
			}
		}
		return nil
	})
	if found != 1 {
		t.Errorf("found %d built-by-job files in the builds dir, want 1", found)
	}
}
