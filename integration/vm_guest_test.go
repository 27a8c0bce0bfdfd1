package integration

// Tests that only a host with systemd as PID 1, D-Bus, machined and a
// unified cgroup v2 hierarchy can run: `make vm-test` boots such hosts in
// qemu and runs them there (NSPAWN_RUNNER_VM_GUEST names the profile).
// Elsewhere they skip: they would prove nothing on a host without systemd.

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

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
		{"Maintenance", vmMaintenance},
		{"PrivateNetwork", vmPrivateNetwork},
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
			out = append(out, l, "  ready_timeout: 300s", "  mode: "+mode)
			// The guest has no network and no DNS server for a private
			// one but the one vmPrivateNetwork starts.
			if !strings.Contains(extra, "network:") {
				out = append(out, "  network: host")
			}
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
					// machined knows the machine, and its unit is that scope.
					if _, err := os.Stat(filepath.Join("/run/systemd/machines", name)); err != nil {
						t.Errorf("machined does not know machine %s: %v", name, err)
					}
					out, err := exec.Command("machinectl", "show", name, "--property=Unit", "--value").Output()
					if unit := strings.TrimSpace(string(out)); err != nil || "machine.slice/"+unit != cg {
						t.Errorf("machinectl show %s: unit %q (%v), want the scope of %s", name, unit, err, cg)
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
						// By command line: a fast machine's own payload
						// is a sleep too (sleep infinity).
						for _, c := range cgroupComms(cg) {
							pid, _, _ := strings.Cut(c, ":")
							cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline")
							if line := strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " "); line == "sleep 1000" || strings.Contains(line, "/run/nspawn-runner/stage-") {
								t.Errorf("after run exited on SIGTERM, the stage's process %s (%s) still runs in %s; run's stderr:\n%s", c, line, cg, s.Stderr)
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

// vmMaintenance runs chroot-maintenance (ansible-playbook on a copy of the
// image, then the swap) while a booted job runs from that image, on btrfs
// and on overlays: the job keeps its tree and finishes, the next job gets
// the maintained image, and gc leaves no retired tree once the job ended.
func vmMaintenance(t *testing.T, rs map[string]*Runner) {
	testutil.RequireBinary(t, "ansible-playbook")
	for _, storage := range []string{"btrfs", "overlay"} {
		t.Run(storage, func(t *testing.T) {
			r := rs[storage]
			configure(t, r, "boot", "")
			dir := t.TempDir()
			mark := "maintained-" + storage
			playbook := "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: mark the image\n" +
				"      ansible.builtin.copy:\n        dest: /etc/nr-vm-maintained\n        content: \"" + mark + "\\n\"\n"
			if err := os.WriteFile(filepath.Join(dir, BaseImage+".yaml"), []byte(playbook), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := os.ReadFile(r.ConfigPath)
			if err != nil {
				t.Fatal(err)
			}
			cfg = append(cfg, []byte("\nplaybook_dirs: ["+dir+"]\n")...)
			if err := os.WriteFile(r.ConfigPath, cfg, 0o644); err != nil {
				t.Fatal(err)
			}

			type outcome struct {
				out, errOut string
				code        int
			}
			done := make(chan outcome, 1)
			res := r.RunJob(t, Job{
				// The stage runs while the maintenance does (started
				// after get_sources); whenever the swap comes, this
				// machine's tree is the old image.
				Script: []string{"sleep 5", "test ! -e /etc/nr-vm-maintained", "echo old-image-kept"},
				AfterStage: func(s StageResult) {
					if s.Name != "get_sources" {
						return
					}
					go func() {
						out, errOut, code := r.call(context.Background(), "/", os.Environ(), append(append([]string{}, r.Global...), "chroot-maintenance", BaseImage)...)
						done <- outcome{out, errOut, code}
					}()
				},
			})
			m := <-done
			if m.code != 0 {
				t.Fatalf("chroot-maintenance while a job ran: exit %d\n%s%s", m.code, m.out, m.errOut)
			}
			mustPass(t, res)
			if !strings.Contains(res.Stage("build_script").Stdout, "old-image-kept") {
				t.Errorf("the running job did not keep its tree:\n%s", res.Log)
			}
			res = r.RunJob(t, Job{Script: []string{"cat /etc/nr-vm-maintained"}})
			mustPass(t, res)
			if !strings.Contains(res.Stage("build_script").Stdout, mark) {
				t.Errorf("the job after the maintenance does not run the new image:\n%s", res.Log)
			}
			_, errOut, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd("gc")...)
			if code != 0 {
				t.Fatalf("gc: exit %d\n%s", code, errOut)
			}
			if left, _ := filepath.Glob(filepath.Join(r.Root, ".*-"+BaseImage+"-*")); len(left) > 0 {
				t.Errorf("after the job ended and gc: %v left", left)
			}
			r.AssertClean(t)
			waitNoMachineUnits(t)
		})
	}
}

// vmPrivateNetwork runs a job on a private network whose DNS server is a
// resolver of this test on a host address (the guest has no network of
// its own): the machine has its own address and resolv.conf,
// resolves a name through it, and nothing of the network is left.
func vmPrivateNetwork(t *testing.T, rs map[string]*Runner) {
	r := rs["btrfs"]
	// A host address outside the subnet for the resolver (machine.dns may
	// not be in the subnet): a dummy interface of this test.
	dummy := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "nrvm-dns0"}}
	if err := netlink.LinkAdd(dummy); err != nil {
		t.Fatalf("add dummy interface: %v", err)
	}
	t.Cleanup(func() { netlink.LinkDel(dummy) })
	if err := netlink.AddrAdd(dummy, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(198, 18, 0, 53), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(dummy); err != nil {
		t.Fatal(err)
	}
	serveDNS(t, "/proc/self/ns/net", "198.18.0.53", net.IPv4(192, 0, 2, 53))
	for _, mode := range []string{"boot", "fast"} {
		t.Run(mode, func(t *testing.T) {
			configure(t, r, mode, "  network: private\n  bridge: nrvm-br0\n  subnet: 10.213.64.0/24\n  dns: [198.18.0.53]\n")
			res := r.RunJob(t, Job{Script: []string{
				"cat /etc/resolv.conf",
				"getent hosts nr-vm-dns.test",
				"cat /proc/net/dev",
			}})
			mustPass(t, res)
			out := res.Stage("build_script").Stdout
			for _, want := range []string{"nameserver 198.18.0.53", "192.0.2.53", "eth0:"} {
				if !strings.Contains(out, want) {
					t.Errorf("the job's output lacks %q:\n%s", want, res.Log)
				}
			}
			r.AssertClean(t)
			waitNoMachineUnits(t)
		})
	}
	// gc removes the bridge once no machine uses it.
	if _, errOut, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd("gc")...); code != 0 {
		t.Fatalf("gc: exit %d\n%s", code, errOut)
	}
	if _, err := net.InterfaceByName("nrvm-br0"); err == nil {
		t.Errorf("bridge nrvm-br0 left after the jobs and gc")
	}
}
