package integration

// Where one run stage's time goes (issue 11): the executables built with
// -tags stagetrace (nspawn-runner-stage and nspawn-runner) mark the end of
// each phase of the process with the wall clock and its minor page faults
// so far (internal/stagetrace), and this benchmark runs them interleaved
// with the floors (an empty Go program, nsenter into the same machine with
// bash and with sh), so that the noise of a shared machine hits all of
// them alike.

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// stagePhases are the marks of one run stage, in order, and what the
// time up to each one is.
var stagePhases = []struct{ mark, what string }{
	{"start", "exec"},        // fork+exec, Go runtime start, package inits
	{"parse", "parse"},       // the command line
	{"signals", "signals"},   // SIGTERM and SIGINT handed to os/signal
	{"config", "config"},     // logging set up, the config file read
	{"job", "job"},           // the job's identity, the run arguments
	{"record", "record"},     // the machine's record read, its leader pinned
	{"script", "script"},     // the script copied into the scripts dir
	{"cgroup", "cgroup"},     // the stage's cgroup made and opened
	{"started", "enter"},     // setns, fork and exec of the shell
	{"exited", "shell"},      // the shell ran the script
	{"teardown", "teardown"}, // script and cgroup removed
	{"exit", "exit-code"},    // the outcome mapped to the exit status
	{"", "reap"},             // from our exit to the parent's wait
}

// BenchmarkStageBreakdown: one run stage of a fast-mode machine phase by
// phase (ms and page faults each), of nspawn-runner-stage and of
// nspawn-runner run (main-*), next to an empty Go program, the least a Go
// stage can do (go-enter: testdata/goenter) and the nsenter floors, all
// interleaved. The phases' medians need not add up to the
// median stage.
func BenchmarkStageBreakdown(b *testing.B) {
	h, _ := benchHost(b)
	traced := filepath.Join(b.TempDir(), "nspawn-runner-traced")
	if err := makeBuild(traced, "EXTRA_TAGS=stagetrace"); err != nil {
		b.Fatal(err)
	}
	empty := emptyGoProgram(b)
	goEnter := goEnterProgram(b)
	script := filepath.Join(b.TempDir(), "true.sh")
	os.WriteFile(script, []byte("true\n"), 0o644)
	trace := filepath.Join(b.TempDir(), "trace")
	j := h.newJob()
	j.must("prepare", "bookworm", "--mode", "fast")
	defer j.must("cleanup")
	leader := strconv.Itoa(num(h.recordOf(j)["leader_pid"]))

	type breakdown struct {
		prefix string // of the metrics
		exe    string
		ms     [][]time.Duration
		faults [][]int64
		whole  []time.Duration
		total  []int64 // page faults up to the exit mark
	}
	runs := []*breakdown{{prefix: "", exe: stageBinary(traced)}, {prefix: "main-", exe: traced}}
	for _, r := range runs {
		r.ms, r.faults = make([][]time.Duration, len(stagePhases)), make([][]int64, len(stagePhases))
	}
	var goEmpty, goFloor, bash, sh []time.Duration
	timed := func(cmd *exec.Cmd) time.Duration {
		t0 := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("%v: %v", cmd.Args, err)
		}
		return time.Since(t0)
	}
	for i := 0; i < b.N; i++ {
		for _, r := range runs {
			os.Remove(trace)
			cmd := h.command(context.Background(), []string{"NSPAWN_RUNNER_STAGETRACE=" + trace}, j.dir, "run", script, "build_script", "--id", j.id)
			cmd.Path, cmd.Args[0] = r.exe, r.exe
			t0 := time.Now()
			if err := cmd.Run(); err != nil {
				b.Fatalf("traced run %s: %v", r.exe, err)
			}
			end := time.Now()
			r.whole = append(r.whole, end.Sub(t0))
			marks := readMarks(b, trace)
			prevAt, prevFaults := t0.UnixNano(), int64(0)
			for k, p := range stagePhases {
				at, faults := end.UnixNano(), prevFaults
				if p.mark != "" {
					m, ok := marks[p.mark]
					if !ok {
						b.Fatalf("%s: no mark %s in %v", r.exe, p.mark, marks)
					}
					at, faults = m[0], m[1]
				}
				r.ms[k] = append(r.ms[k], time.Duration(at-prevAt))
				r.faults[k] = append(r.faults[k], faults-prevFaults)
				prevAt, prevFaults = at, faults
			}
			r.total = append(r.total, prevFaults)
		}
		goEmpty = append(goEmpty, timed(exec.Command(empty)))
		goFloor = append(goFloor, timed(exec.Command(goEnter, leader)))
		bash = append(bash, timed(exec.Command("nsenter", "-t", leader, "-a", "bash", "-c", "true")))
		sh = append(sh, timed(exec.Command("nsenter", "-t", leader, "-a", "sh", "-c", "true")))
	}
	for _, r := range runs {
		for k, p := range stagePhases {
			b.ReportMetric(ms(median(r.ms[k])), r.prefix+p.what+"-ms")
			if p.mark != "" {
				b.ReportMetric(float64(median(r.faults[k])), r.prefix+p.what+"-faults")
			}
		}
		b.ReportMetric(float64(median(r.total)), r.prefix+"faults/stage")
		b.ReportMetric(ms(median(r.whole)), r.prefix+"ms/stage")
		b.ReportMetric(float64(median(r.whole))/float64(median(bash)), r.prefix+"x-nsenter-bash")
		b.ReportMetric(float64(median(r.whole))/float64(median(sh)), r.prefix+"x-nsenter-sh")
	}
	b.ReportMetric(ms(median(goEmpty)), "empty-go-ms")
	b.ReportMetric(ms(median(goFloor)), "go-enter-ms")
	b.ReportMetric(float64(median(goFloor))/float64(median(bash)), "go-enter-x-nsenter-bash")
	b.ReportMetric(float64(median(goFloor))/float64(median(sh)), "go-enter-x-nsenter-sh")
	b.ReportMetric(ms(median(bash)), "nsenter-bash-ms")
	b.ReportMetric(ms(median(sh)), "nsenter-sh-ms")
}

// goEnterProgram builds testdata/goenter, the floor of any run stage
// written in Go (the runtime's start, setns, bash -c true), static as the
// stage executable is.
func goEnterProgram(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "goenter")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-trimpath", "-o", bin, "./testdata/goenter")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build testdata/goenter: %v\n%s", err, out)
	}
	return bin
}

// readMarks reads a stagetrace file: mark -> {unix nanoseconds, faults}.
func readMarks(b *testing.B, path string) map[string][2]int64 {
	f, err := os.Open(path)
	if err != nil {
		b.Fatalf("the traced binary wrote no marks: %v", err)
	}
	defer f.Close()
	out := map[string][2]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 3 {
			b.Fatalf("bad mark line %q", sc.Text())
		}
		at, _ := strconv.ParseInt(fs[1], 10, 64)
		faults, _ := strconv.ParseInt(fs[2], 10, 64)
		out[fs[0]] = [2]int64{at, faults}
	}
	return out
}

// emptyGoProgram builds a Go program that does nothing: the cost of
// starting the Go runtime alone.
func emptyGoProgram(b *testing.B) string {
	dir := b.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module empty\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644)
	bin := filepath.Join(dir, "empty")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build an empty Go program: %v\n%s", err, out)
	}
	return bin
}
