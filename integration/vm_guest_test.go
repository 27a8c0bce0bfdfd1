package integration

// Tests that only a host with systemd as PID 1, D-Bus, machined and a
// unified cgroup v2 hierarchy can run: `make vm-test` boots such hosts in
// qemu and runs them there (NSPAWN_RUNNER_VM_GUEST names the profile).
// Elsewhere they skip: they would prove nothing on a host without systemd.

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

// vmGuest skips the test outside the guests of make vm-test.
func vmGuest(t *testing.T) {
	t.Helper()
	if os.Getenv("NSPAWN_RUNNER_VM_GUEST") == "" {
		t.Skip("runs inside the VMs of make vm-test only (NSPAWN_RUNNER_VM_GUEST unset)")
	}
}

// TestVM runs the guest tests (vm* below) as subtests of one test, so
// that they share two runner hosts (images on a loopback btrfs, and on a
// plain directory with overlays): placing the image of each is the slowest
// step under emulation. Profiles select subtests: TestVM/(WholeJob|Limits).
func TestVM(t *testing.T) {
	vmGuest(t)
	rs := map[string]*Runner{
		"btrfs":   NewRunner(t, Options{StandIn: true}),
		"overlay": NewRunner(t, Options{PlainRoot: true, StandIn: true}),
	}
	for _, c := range []struct {
		name string
		f    func(*testing.T, map[string]*Runner)
	}{
		{"WholeJob", vmWholeJob},
		{"Limits", vmLimits},
		{"MemoryMax", vmMemoryMax},
		{"Cancel", vmCancel},
		{"KilledNspawnThenGC", vmKilledNspawnThenGC},
		{"Concurrent", vmConcurrent},
	} {
		t.Run(c.name, func(t *testing.T) { c.f(t, rs) })
	}
}

// TestVMImage is make vm-test's host step: it builds (or finds) the cached
// job image and writes its path to $NSPAWN_RUNNER_VM_IMAGE_OUT, so the
// harness can hand the same tree to the guests.
func TestVMImage(t *testing.T) {
	out := os.Getenv("NSPAWN_RUNNER_VM_IMAGE_OUT")
	if out == "" {
		t.Skip("a step of make vm-test only (NSPAWN_RUNNER_VM_IMAGE_OUT unset)")
	}
	if err := os.WriteFile(out, []byte(testutil.Image(t)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// configure rewrites the machine: section of the runner's config for the
// next prepares: mode (boot or fast) and extra YAML lines (indented).
func configure(t *testing.T, r *Runner, mode, extra string) {
	t.Helper()
	b, err := os.ReadFile(r.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case l == "machine:":
			in = true
			// The guest has no network and no DNS server for a private one.
			out = append(out, l, "  ready_timeout: 300s", "  mode: "+mode, "  network: host")
			if extra != "" {
				out = append(out, strings.Split(strings.TrimRight(extra, "\n"), "\n")...)
			}
		case in && strings.HasPrefix(l, "  "):
		default:
			in = false
			out = append(out, l)
		}
	}
	if err := os.WriteFile(r.ConfigPath, []byte(strings.Join(out, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
}

// machineRecords reads the records of the runner's running machines.
func machineRecords(t *testing.T, r *Runner) []map[string]any {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(r.RunDir, "machines", "*.json"))
	var recs []map[string]any
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rec map[string]any
		if err := json.Unmarshal(b, &rec); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		recs = append(recs, rec)
	}
	return recs
}

// machineUnits lists systemd's units of machines (machine-*.scope and the
// like), loaded or not, as `systemctl list-units --all` shows them.
func machineUnits(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", "machine-*").Output()
	if err != nil {
		t.Fatalf("systemctl list-units: %v", err)
	}
	var units []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			units = append(units, f[0])
		}
	}
	return units
}

// assertNoMachineUnits fails when systemd still has a unit of a machine.
func assertNoMachineUnits(t *testing.T) {
	t.Helper()
	if u := machineUnits(t); len(u) > 0 {
		t.Errorf("systemd units of machines left: %s", strings.Join(u, ", "))
	}
}

// vmWholeJob runs whole jobs (config, prepare, every run stage,
// cleanup) in boot and fast mode, on btrfs snapshots and on overlays.
func vmWholeJob(t *testing.T, rs map[string]*Runner) {
	for _, storage := range []string{"btrfs", "overlay"} {
		t.Run(storage, func(t *testing.T) {
			r := rs[storage]
			for _, mode := range []string{"boot", "fast"} {
				t.Run(mode, func(t *testing.T) {
					configure(t, r, mode, "")
					var seen []map[string]any
					res := r.RunJob(t, Job{
						Script: []string{"echo whole-job-$CI_JOB_ID", "test -e /proc/1/cgroup"},
						AfterStage: func(s StageResult) {
							if s.Name == "build_script" {
								seen = machineRecords(t, r)
							}
						},
					})
					mustPass(t, res)
					if !strings.Contains(res.Log, "whole-job-") {
						t.Errorf("the job's output is not in its log:\n%s", res.Log)
					}
					if len(seen) != 1 {
						t.Fatalf("%d machine records during the job, want 1", len(seen))
					}
					if seen[0]["mode"] != mode || seen[0]["storage"] != storage {
						t.Errorf("machine ran with mode %v, storage %v; want %s, %s", seen[0]["mode"], seen[0]["storage"], mode, storage)
					}
					r.AssertClean(t)
					assertNoMachineUnits(t)
				})
			}
		})
	}
}

// vmLimits reads the machine's cgroup v2 files back while a job runs
// and compares them with the configuration; on a systemd host the cgroup
// is the scope systemd made when systemd-nspawn registered the machine.
func vmLimits(t *testing.T, rs map[string]*Runner) {
	r := rs["btrfs"]
	want := map[string]string{
		"cpu.weight":  "77",
		"memory.high": strconv.Itoa(300 << 20),
		"memory.max":  strconv.Itoa(400 << 20),
		"pids.max":    "500",
	}
	for _, mode := range []string{"boot", "fast"} {
		t.Run(mode, func(t *testing.T) {
			configure(t, r, mode, "  cpu_weight: 77\n  memory_high: 300M\n  memory_max: 400M\n  tasks_max: 500\n")
			checked := false
			res := r.RunJob(t, Job{
				Script: []string{"echo limits"},
				AfterStage: func(s StageResult) {
					if s.Name != "build_script" {
						return
					}
					checked = true
					recs := machineRecords(t, r)
					if len(recs) != 1 {
						t.Errorf("%d machine records during the job, want 1", len(recs))
						return
					}
					name, _ := recs[0]["name"].(string)
					cg, _ := recs[0]["cgroup"].(string)
					// systemd escapes the name in the unit's ("-" is \x2d).
					if want := "machine.slice/machine-" + strings.ReplaceAll(name, "-", `\x2d`) + ".scope"; cg != want {
						t.Errorf("machine cgroup %q, want systemd's scope %q", cg, want)
					}
					for file, v := range want {
						b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", cg, file))
						if got := strings.TrimSpace(string(b)); err != nil || got != v {
							t.Errorf("%s of %s = %q (%v), want %s", file, cg, got, err, v)
						}
					}
					// machined knows the machine.
					if _, err := os.Stat(filepath.Join("/run/systemd/machines", name)); err != nil {
						t.Errorf("machined does not know machine %s: %v", name, err)
					}
				},
			})
			mustPass(t, res)
			if !checked {
				t.Fatal("build_script never ran")
			}
			r.AssertClean(t)
			assertNoMachineUnits(t)
		})
	}
}

// cgroupComms lists the commands of the processes in cgroup cg (relative to
// the cgroup2 root) and every cgroup below it.
func cgroupComms(cg string) []string {
	var comms []string
	filepath.WalkDir(filepath.Join("/sys/fs/cgroup", cg), func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		for _, pid := range strings.Fields(string(b)) {
			c, _ := os.ReadFile("/proc/" + pid + "/comm")
			comms = append(comms, pid+":"+strings.TrimSpace(string(c)))
		}
		return nil
	})
	return comms
}

// waitNoMachineUnits waits until systemd has dropped every unit of a
// machine (a scope goes away once its last process is gone) and fails
// after a minute.
func waitNoMachineUnits(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for len(machineUnits(t)) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	assertNoMachineUnits(t)
}

// vmCancel cancels a job in the middle of its script: the stage's
// processes are gone from the machine's scope when run exits, the machine
// and its scope are gone after cleanup.
func vmCancel(t *testing.T, rs map[string]*Runner) {
	r := rs["btrfs"]
	for _, mode := range []string{"boot", "fast"} {
		t.Run(mode, func(t *testing.T) {
			configure(t, r, mode, "")
			var cg string
			res := r.RunJob(t, Job{
				Script:   []string{`sleep 1000 & echo "sleeping as $!"`, `echo CANCEL-READY`, `wait`},
				CancelOn: "CANCEL-READY",
				AfterStage: func(s StageResult) {
					switch s.Name {
					case "get_sources":
						if recs := machineRecords(t, r); len(recs) == 1 {
							cg, _ = recs[0]["cgroup"].(string)
						}
					case "build_script":
						for _, c := range cgroupComms(cg) {
							if strings.HasSuffix(c, ":sleep") || strings.HasSuffix(c, ":bash") {
								t.Errorf("after run exited on SIGTERM, the stage's process %s still runs in %s", c, cg)
							}
						}
					}
				},
			})
			b := res.Stage("build_script")
			if res.Status != "canceled" || b == nil || cg == "" {
				t.Fatalf("status %s, machine cgroup %q:\n%s", res.Status, cg, res.Log)
			}
			t.Logf("canceled build_script took %s in all (SIGTERM once the script printed its marker)", b.Took)
			if len(res.Cleanups) != 1 || res.Cleanups[0].Exit != 0 {
				t.Errorf("cleanup after cancel: %+v", res.Cleanups)
			}
			r.AssertClean(t)
			waitNoMachineUnits(t)
			if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", cg)); err == nil {
				t.Errorf("the machine's cgroup %s is left after cleanup", cg)
			}
		})
	}
}

// vmKilledNspawnThenGC SIGKILLs systemd-nspawn of a prepared machine
// (the container stays behind in its scope) and runs gc, which must leave
// nothing: no processes, no scope, no unit, no machine known to machined.
func vmKilledNspawnThenGC(t *testing.T, rs map[string]*Runner) {
	r := rs["btrfs"]
	env := append(os.Environ(), "BUILD_FAILURE_EXIT_CODE=1", "SYSTEM_FAILURE_EXIT_CODE=2")
	for _, mode := range []string{"boot", "fast"} {
		t.Run(mode, func(t *testing.T) {
			configure(t, r, mode, "")
			args := append(append(append([]string{}, r.StageArgs["prepare"]...), r.MachineArgs...), "--id", r.ID())
			_, errOut, code := r.call(context.Background(), "/", env, args...)
			if code != 0 {
				t.Fatalf("prepare: exit %d\n%s", code, errOut)
			}
			recs := machineRecords(t, r)
			if len(recs) != 1 {
				t.Fatalf("%d machine records after prepare, want 1", len(recs))
			}
			name, _ := recs[0]["name"].(string)
			cg, _ := recs[0]["cgroup"].(string)
			pid, _ := recs[0]["nspawn_pid"].(float64)
			if pid <= 0 {
				t.Fatalf("no nspawn pid in the record: %v", recs[0])
			}
			if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for processState(int(pid)) != 0 && processState(int(pid)) != 'Z' && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			left := cgroupComms(cg)
			t.Logf("after SIGKILL of systemd-nspawn, %s holds %d processes", cg, len(left))
			_, errOut, code = r.call(context.Background(), "/", os.Environ(), r.machineCmd("gc")...)
			if code != 0 {
				t.Fatalf("gc: exit %d\n%s", code, errOut)
			}
			if c := cgroupComms(cg); len(c) > 0 {
				t.Errorf("processes left in %s after gc: %s", cg, strings.Join(c, " "))
			}
			r.AssertClean(t)
			waitNoMachineUnits(t)
			if _, err := os.Stat(filepath.Join("/run/systemd/machines", name)); err == nil {
				t.Errorf("machined still knows %s after gc", name)
			}
		})
	}
}

// vmMemoryMax runs a job that allocates past machine.memory_max: the
// kernel kills it inside the machine's scope, the job is a build failure
// (not a dead machine) and its log says why in one line.
func vmMemoryMax(t *testing.T, rs map[string]*Runner) {
	r := rs["btrfs"]
	for _, mode := range []string{"boot", "fast"} {
		t.Run(mode, func(t *testing.T) {
			configure(t, r, mode, "  memory_high: 200M\n  memory_max: 200M\n")
			res := r.RunJob(t, Job{Script: []string{`python3 -c "x = b'x' * (400 << 20); print('allocated', len(x))"`}})
			b := res.Stage("build_script")
			if res.Status != "failed" || b == nil {
				t.Fatalf("status %s, want a build failure; job log:\n%s", res.Status, res.Log)
			}
			if b.CodeFile != "137" {
				t.Errorf("exit code %q, want 137 (SIGKILL by the OOM killer)", b.CodeFile)
			}
			if strings.Contains(b.Stdout, "allocated 419430400") {
				t.Errorf("the job allocated 400M past memory_max 200M:\n%s", res.Log)
			}
			if !strings.Contains(b.Stderr+b.Stdout, "memory_max") {
				t.Errorf("the job log does not say the job ran out of memory_max:\n%s", res.Log)
			}
			r.AssertClean(t)
			waitNoMachineUnits(t)
		})
	}
}

// vmConcurrent runs 8 booted jobs at once: each has its own machine, scope
// and limits, and nothing of any is left.
func vmConcurrent(t *testing.T, rs map[string]*Runner) {
	r := rs["btrfs"]
	configure(t, r, "boot", "  memory_max: 400M\n")
	eightJobs(t, r)
	r.AssertClean(t)
	waitNoMachineUnits(t)
}
