package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

// Exit codes the harness gives every stage, as gitlab-runner does.
const (
	buildFailure  = 1
	systemFailure = 2
)

// stageTimeout bounds one executor call so a hang fails the test instead of
// the whole run; it asserts nothing about speed.
const stageTimeout = 5 * time.Minute

var built struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// binary builds nspawn-runner once for the whole test binary, with the
// Makefile's own build rule (static, the flags users get), so that tests and
// benchmarks measure the binary that is shipped; or it returns
// $NSPAWN_RUNNER_TEST_BINARY, built beforehand (make vm-test: the guest has
// no Go).
func binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("NSPAWN_RUNNER_TEST_BINARY"); p != "" {
		return p
	}
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "nrt-gl-bin-")
		if built.err != nil {
			return
		}
		built.bin = filepath.Join(built.dir, "nspawn-runner")
		built.err = makeBuild(built.bin)
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

// makeBuild runs the Makefile's build rule into bin, with extra make
// variables (EXTRA_TAGS=...).
func makeBuild(bin string, vars ...string) error {
	cmd := exec.Command("make", append([]string{"-s", "-C", "..", "build", "BIN=" + bin, "VERSION=integration-test"}, vars...)...)
	// The go command that runs this test builds the binary too.
	goDir := filepath.Join(runtime.GOROOT(), "bin")
	cmd.Env = append(os.Environ(), "PATH="+goDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("make build: %v\n%s", err, out)
	}
	return nil
}

// Options configure one Runner.
type Options struct {
	// StandIn configures the stand-in gitlab-runner as runner_binary.
	StandIn bool
	// BuildsDir keeps persistent per-project builds dirs on the host.
	BuildsDir bool
	// AllowedImages is the config's allowlist.
	AllowedImages []string
	// Machine is extra YAML under machine: (indented by the caller).
	Machine string
	// PlainRoot puts the images on a plain directory of the host's
	// filesystem instead of a loopback btrfs.
	PlainRoot bool
	// MainRun runs the run stages with nspawn-runner run instead of the
	// run_exec toml printed (nspawn-runner-stage when it is built next to
	// the binary): what a runner section from an install without the
	// stage executable does.
	MainRun bool
}

// Runner is one runner host: its own root with a base image, run dir,
// config, cache and builds dirs, and the gitlab-runner config.toml that
// `toml` printed for it.
type Runner struct {
	Bin        string
	FS         string // the loopback btrfs (or plain dir) holding everything
	Root       string
	RunDir     string
	ConfigPath string
	CacheDir   string
	BuildsDir  string
	TOMLPath   string
	Global     []string // --config, --root, --run-dir for every call
	Images     []string // images placed in Root
	// MachineArgs follow the machine commands (prepare, run, cleanup, gc,
	// ps): this test's machine-name prefix and cgroup parent, so that
	// tests running at once never see each other's machines.
	MachineArgs  []string
	CgroupParent string
	// StageArgs are the *_args of the runner section toml printed, by
	// stage (config, prepare, run, cleanup): the harness calls the binary
	// with exactly those, as gitlab-runner would.
	StageArgs map[string][]string
	// RunExec is the executable of the run stages: the run_exec toml
	// printed (nspawn-runner-stage), or Bin with Options.MainRun.
	RunExec string

	t      *testing.T
	mu     sync.Mutex
	nextID int
}

// BaseImage is the name of the image every Runner starts with.
const BaseImage = "bookworm"

// NewRunner sets up a runner host for one test and registers its teardown:
// cleanup of every job the test left, gc, a check that nothing is left
// (reported as an error), then forced removal of whatever is.
func NewRunner(t *testing.T, o Options) *Runner {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "systemd-nspawn")
	image := testutil.Image(t)
	bin := binary(t)

	r := &Runner{Bin: bin, t: t}
	if o.PlainRoot {
		r.FS = t.TempDir()
	} else {
		testutil.RequireBinary(t, "btrfs")
		r.FS = testutil.NewBtrfs(t, 6<<30)
	}
	r.Root = filepath.Join(r.FS, "images")
	r.CacheDir = filepath.Join(r.FS, "cache")
	for _, d := range []string{r.Root, r.CacheDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The run dir holds unix sockets: keep its path short (sun_path is
	// 108 bytes), so not under t.TempDir().
	run, err := os.MkdirTemp("", "nrt-gl-run-")
	if err != nil {
		t.Fatal(err)
	}
	r.RunDir = run
	t.Cleanup(func() { os.RemoveAll(run) })
	r.placeImage(t, image, BaseImage, !o.PlainRoot)

	dir := t.TempDir()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "root: %s\nrun_dir: %s\n", r.Root, r.RunDir)
	fmt.Fprintf(&cfg, "machine:\n  ready_timeout: 120s\n%s%s", hostNetwork(o.Machine), o.Machine)
	fmt.Fprintf(&cfg, "gitlab:\n  cache_dir: %s\n", r.CacheDir)
	if o.BuildsDir {
		r.BuildsDir = filepath.Join(r.FS, "builds")
		if err := os.Mkdir(r.BuildsDir, 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&cfg, "  builds_dir: %s\n", r.BuildsDir)
	}
	if o.StandIn {
		p := filepath.Join(dir, "gitlab-runner")
		if err := os.WriteFile(p, []byte(standIn), 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&cfg, "  runner_binary: %s\n", p)
	}
	if len(o.AllowedImages) > 0 {
		fmt.Fprintf(&cfg, "allowed_images: [%s]\n", strings.Join(o.AllowedImages, ", "))
	}
	r.ConfigPath = filepath.Join(dir, "nspawn-runner.yaml")
	if err := os.WriteFile(r.ConfigPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	r.Global = []string{"--config", r.ConfigPath, "--root", r.Root, "--run-dir", r.RunDir}
	r.CgroupParent = filepath.Base(r.RunDir) // nrt-gl-run-NNN: unique
	r.MachineArgs = []string{"--name-prefix", "nrt-gl-", "--cgroup-parent", r.CgroupParent}

	// gitlab-runner gets CONFIG_FILE, its config.toml: use the one toml
	// prints, which must name this binary and these flags.
	out, errOut, code := r.call(context.Background(), dir, os.Environ(), append(r.Global, "toml", "--default-image", BaseImage)...)
	if code != 0 {
		t.Fatalf("toml: exit %d\n%s", code, errOut)
	}
	if r.StageArgs, r.RunExec, err = sectionArgs(out, bin); err != nil {
		t.Fatalf("toml output: %v\n%s", err, out)
	}
	if o.MainRun {
		r.RunExec = bin
	}
	r.TOMLPath = filepath.Join(dir, "config.toml")
	if err := os.WriteFile(r.TOMLPath, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(r.teardown)
	return r
}

// stageBinary is the run stage's executable that make build puts next to
// bin.
func stageBinary(bin string) string {
	return filepath.Join(filepath.Dir(bin), "nspawn-runner-stage")
}

// sectionArgs reads the four executables and their args from the runner
// section: every stage runs bin, but run, which runs the stage executable
// when it is built next to bin (runExec). The values are TOML basic
// strings and arrays of them, which the section writes with
// JSON-compatible escapes only, so JSON decodes them; the section's full
// TOML validity is the gitlab package's test.
func sectionArgs(doc, bin string) (args map[string][]string, runExec string, err error) {
	args = map[string][]string{}
	for _, stage := range []string{"config", "prepare", "run", "cleanup"} {
		var exe string
		var a []string
		for _, l := range strings.Split(doc, "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(l), " = ")
			switch {
			case !ok:
			case k == stage+"_exec":
				if err := json.Unmarshal([]byte(v), &exe); err != nil {
					return nil, "", fmt.Errorf("%s: %v", k, err)
				}
			case k == stage+"_args":
				if err := json.Unmarshal([]byte(v), &a); err != nil {
					return nil, "", fmt.Errorf("%s: %v", k, err)
				}
			}
		}
		want := bin
		if stage == "run" {
			if _, err := os.Stat(stageBinary(bin)); err == nil {
				want = stageBinary(bin)
			}
			runExec = exe
		}
		if exe != want || len(a) == 0 {
			return nil, "", fmt.Errorf("%s_exec = %q with args %q, want %s and args", stage, exe, a, want)
		}
		args[stage] = a
	}
	return args, runExec, nil
}

// placeImage copies the read-only cached tree into Root/name, as a btrfs
// subvolume when the root is on btrfs.
func (r *Runner) placeImage(t *testing.T, src, name string, subvol bool) {
	t.Helper()
	dst := filepath.Join(r.Root, name)
	if subvol {
		testutil.Run(t, "btrfs", "-q", "subvolume", "create", dst)
	} else if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "cp", "-a", "--reflink=auto", src+"/.", dst+"/")
	r.mu.Lock()
	r.Images = append(r.Images, name)
	r.mu.Unlock()
}

// AddImage makes another image from the base image (a snapshot on btrfs).
func (r *Runner) AddImage(t *testing.T, name string) {
	t.Helper()
	src := filepath.Join(r.Root, BaseImage)
	dst := filepath.Join(r.Root, name)
	if _, err := exec.LookPath("btrfs"); err == nil && r.FS != r.Root && isSubvolume(src) {
		testutil.Run(t, "btrfs", "-q", "subvolume", "snapshot", src, dst)
	} else {
		testutil.Run(t, "cp", "-a", "--reflink=auto", src, dst)
	}
	r.mu.Lock()
	r.Images = append(r.Images, name)
	r.mu.Unlock()
}

func isSubvolume(p string) bool {
	var st syscall.Stat_t
	return syscall.Stat(p, &st) == nil && st.Ino == 256
}

// ID returns a fresh --id for a job of this runner: the test's prefix, so
// machine names from several people's tests never collide.
func (r *Runner) ID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	return fmt.Sprintf("nrt-gl-%d-%d", os.Getpid()%100000, r.nextID)
}

// call runs the binary with args in dir with env; it returns stdout,
// stderr and the exit code (-1 when it could not run or timed out).
func (r *Runner) call(ctx context.Context, dir string, env []string, args ...string) (string, string, int) {
	return r.callExe(ctx, r.Bin, dir, env, args...)
}

// callExe is call with the executable exe (RunExec for run stages).
func (r *Runner) callExe(ctx context.Context, exe, dir string, env []string, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(ctx, stageTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Dir = dir
	cmd.Env = env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errOut.String(), 0
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return out.String(), errOut.String(), ee.ExitCode()
	}
	return out.String(), errOut.String() + "\n[harness] " + err.Error(), -1
}

// teardown runs at the end of the test: gc, the leftover check, and the
// forced removal of leftovers.
func (r *Runner) teardown() {
	t := r.t
	_, errOut, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd("gc", "--max-age", "1ns")...)
	if code != 0 {
		t.Logf("gc --max-age 1ns: exit %d: %s", code, errOut)
	}
	if left := r.leftovers(); len(left) > 0 {
		t.Errorf("left behind after the test:\n  %s", strings.Join(left, "\n  "))
		r.forceClean()
	}
	// The parent cgroup itself is ours to remove (empty by now).
	r.removeCgroupParent()
}

// machineCmd is the argv of a machine command with this runner's flags.
func (r *Runner) machineCmd(cmd string, args ...string) []string {
	a := append(append([]string{}, r.Global...), cmd)
	a = append(a, r.MachineArgs...)
	return append(a, args...)
}

// cgroupRoots are the mount points of every cgroup hierarchy: cgroup2
// (/sys/fs/cgroup/unified on hybrid hosts) and the v1 ones, where
// systemd-nspawn mirrors a machine's cgroup path in name=systemd on a
// hybrid host, creating our parent there too.
func cgroupRoots() []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var roots []string
	for _, l := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f := strings.Fields(pre)
		if ok && len(f) >= 5 && (strings.HasPrefix(post, "cgroup2 ") || strings.HasPrefix(post, "cgroup ")) {
			roots = append(roots, unescapeMount(f[4]))
		}
	}
	return roots
}

// removeCgroupParent removes this runner's parent cgroup, in every
// hierarchy, with any empty cgroups left below it (deepest first).
func (r *Runner) removeCgroupParent() {
	for _, root := range cgroupRoots() {
		parent := filepath.Join(root, r.CgroupParent)
		var dirs []string
		filepath.WalkDir(parent, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
				r.t.Errorf("remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}

// leftovers lists what machines of this runner left: processes whose root
// or cwd is inside the runner's filesystem or run dir, mounts below them,
// btrfs subvolumes that are not images, machine records in ps --json.
func (r *Runner) leftovers() []string {
	var left []string
	for _, p := range r.processes() {
		left = append(left, fmt.Sprintf("process %d (%s)", p.pid, p.comm))
	}
	for _, m := range r.mounts() {
		left = append(left, "mount "+m)
	}
	if isSubvolume(filepath.Join(r.Root, BaseImage)) {
		out, err := exec.Command("btrfs", "subvolume", "list", "-o", r.FS).Output()
		if err == nil {
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.Fields(l)
				if len(f) == 0 {
					continue
				}
				p := f[len(f)-1]
				if !r.isImage(p) {
					left = append(left, "subvolume "+p)
				}
			}
		}
	}
	out, _, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd("ps", "--json")...)
	if code == 0 {
		var v []json.RawMessage
		if err := json.Unmarshal([]byte(out), &v); err == nil && len(v) > 0 {
			left = append(left, "ps --json: "+strings.TrimSpace(out))
		}
	}
	for _, root := range cgroupRoots() {
		ents, _ := os.ReadDir(filepath.Join(root, r.CgroupParent))
		for _, e := range ents {
			if e.IsDir() {
				left = append(left, "cgroup "+filepath.Join(root, r.CgroupParent, e.Name()))
			}
		}
	}
	return left
}

func (r *Runner) isImage(subvolPath string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.Images {
		if subvolPath == "images/"+n || strings.HasSuffix(subvolPath, "/images/"+n) {
			return true
		}
	}
	return false
}

type proc struct {
	pid  int
	comm string
}

// processes finds the processes of this runner's machines: those in a
// cgroup below its cgroup parent (nspawn, the machine's init and
// everything the job started), seen from the host's /proc. (A process's
// /proc/PID/root cannot tell: it reads "/" across mount namespaces.)
func (r *Runner) processes() []proc {
	var ps []proc
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if processState(pid) == 'Z' {
			// A zombie is dead: it waits for its parent to reap it,
			// which is init for the detached nspawn, and an init that is
			// not systemd may take its time.
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(data), "\n") {
			// "0::/PATH" is the unified hierarchy (cgroup v2).
			path, ok := strings.CutPrefix(l, "0::")
			if ok && within(path, "/"+r.CgroupParent) {
				comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
				ps = append(ps, proc{pid, strings.TrimSpace(string(comm))})
				break
			}
		}
	}
	return ps
}

// processState is the state letter of /proc/PID/stat (after the
// parenthesised comm, which may itself contain spaces and parentheses).
func processState(pid int) byte {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return 0
	}
	return data[i+2]
}

func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// mounts lists mount points below the images root and the run dir (the
// loopback filesystem itself is the test fixture's).
func (r *Runner) mounts() []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var ms []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if within(mp, r.Root) || within(mp, r.RunDir) || within(mp, r.CacheDir) {
			ms = append(ms, mp)
		}
	}
	return ms
}

// unescapeMount undoes the octal escapes of /proc/self/mountinfo.
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// forceClean kills what is left and detaches mounts, so the fixture's own
// teardown (unmount, loop detach) can work after a failed test.
func (r *Runner) forceClean() {
	for i := 0; i < 3; i++ {
		ps := r.processes()
		if len(ps) == 0 {
			break
		}
		for _, p := range ps {
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, root := range cgroupRoots() {
		parent := filepath.Join(root, r.CgroupParent)
		ents, _ := os.ReadDir(parent)
		for _, e := range ents {
			if e.IsDir() {
				// cgroup.kill exists since Linux 5.14.
				os.WriteFile(filepath.Join(parent, e.Name(), "cgroup.kill"), []byte("1"), 0)
				time.Sleep(200 * time.Millisecond)
				os.Remove(filepath.Join(parent, e.Name()))
			}
		}
	}
	ms := r.mounts()
	for i := len(ms) - 1; i >= 0; i-- {
		syscall.Unmount(ms[i], syscall.MNT_DETACH)
	}
}

// Job is one CI job as GitLab hands it to the runner.
type Job struct {
	// ID is the job id in the payload; 0 picks a unique one.
	ID int64
	// FlagID is passed as --id to prepare, run and cleanup (a harness's
	// identity); "" drives the binary exactly as gitlab-runner does, with
	// the id from JOB_RESPONSE_FILE only.
	FlagID string
	// ProjectID and Instance identify the project (default 1 and
	// https://gitlab-a.example).
	ProjectID int64
	Instance  string
	// ProjectPath is group/project (default group/project).
	ProjectPath string
	// Image is `image:`; HasImage false means the job names none.
	Image    string
	HasImage bool
	// Vars are the job's variables, on top of the predefined ones.
	Vars []Var
	// Script and AfterScript are the .gitlab-ci.yml lines.
	Script      []string
	AfterScript []string
	// Stages overrides the commands of other stages (restore_cache,
	// archive_cache, upload_artifacts_on_success, ...).
	Stages map[string][]string
	// BeforePrepare runs before each prepare attempt (1, 2, 3).
	BeforePrepare func(attempt int)
	// CancelOn, when set, sends SIGTERM to build_script's process group
	// as soon as this text appears in its output, as gitlab-runner does
	// on cancel; the job then skips after_script and goes to cleanup.
	CancelOn string
	// Response, when set, is written as JOB_RESPONSE_FILE instead of the
	// payload built from the fields above.
	Response string
	// AfterStage, when set, is called after each run stage.
	AfterStage func(s StageResult)
	// ExtraStages run after build_script, like the step_* stages GitLab
	// may add; their commands come from Stages.
	ExtraStages []string
}

// StageResult is one executor call.
type StageResult struct {
	Name     string
	Exit     int
	CodeFile string // BUILD_EXIT_CODE_FILE contents, "" when not written
	Stdout   string
	Stderr   string
	Took     time.Duration
}

// Result is a whole job.
type Result struct {
	Config   map[string]any
	Prepares []StageResult
	Stages   []StageResult
	Cleanups []StageResult
	// Status is "success", "failed" (build failure) or "system" (a
	// system failure or unknown exit code), or "canceled".
	Status string
	// Log is everything the job printed, as the job log shows it.
	Log string
}

// Stage returns the named run stage's result, or nil.
func (res *Result) Stage(name string) *StageResult {
	for i := range res.Stages {
		if res.Stages[i].Name == name {
			return &res.Stages[i]
		}
	}
	return nil
}

// payload is the JOB_RESPONSE_FILE gitlab-runner writes: the job as the
// GitLab API returned it (common.JobResponse upstream), token included.
func (j *Job) payload(vars []Var) string {
	type variable struct {
		Key    string `json:"key"`
		Value  string `json:"value"`
		Public bool   `json:"public"`
		Masked bool   `json:"masked"`
	}
	var vs []variable
	for _, v := range vars {
		vs = append(vs, variable{Key: v.Key, Value: v.Value, Public: true})
	}
	host := strings.TrimPrefix(strings.TrimPrefix(j.Instance, "https://"), "http://")
	scheme := strings.TrimSuffix(j.Instance, "://"+host)
	p := map[string]any{
		"id":              j.ID,
		"token":           "job-token-" + strconv.FormatInt(j.ID, 10),
		"allow_git_fetch": true,
		"job_info": map[string]any{
			"name": "test", "stage": "test", "project_id": j.ProjectID,
			"project_name": filepath.Base(j.ProjectPath),
		},
		"git_info": map[string]any{
			"repo_url": fmt.Sprintf("%s://gitlab-ci-token:job-token-%d@%s/%s.git", scheme, j.ID, host, j.ProjectPath),
			"ref":      "main", "sha": "0123456789abcdef0123456789abcdef01234567", "ref_type": "branch", "depth": 20,
		},
		"runner_info": map[string]any{"timeout": 3600},
		"variables":   vs,
		"steps": []map[string]any{
			{"name": "script", "script": j.Script, "timeout": 3600, "when": "on_success", "allow_failure": false},
			{"name": "after_script", "script": j.AfterScript, "timeout": 3600, "when": "always", "allow_failure": true},
		},
	}
	if j.HasImage {
		p["image"] = map[string]any{"name": j.Image}
	}
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	return string(b)
}

var jobSeq struct {
	sync.Mutex
	n int64
}

func uniqueJobID() int64 {
	jobSeq.Lock()
	defer jobSeq.Unlock()
	jobSeq.n++
	return int64(os.Getpid())*1000 + jobSeq.n
}

// RunJob drives one job through the executor like gitlab-runner. It fails
// the test only for harness problems; the job's outcome is in the Result.
func (r *Runner) RunJob(t *testing.T, j Job) *Result {
	t.Helper()
	if j.ID == 0 {
		j.ID = uniqueJobID()
	}
	if j.ProjectID == 0 {
		j.ProjectID = 1
	}
	if j.Instance == "" {
		j.Instance = "https://gitlab-a.example"
	}
	if j.ProjectPath == "" {
		j.ProjectPath = "group/project"
	}
	res := &Result{}
	var log strings.Builder
	defer func() { res.Log = log.String() }()

	// gitlab-runner's per-job temporary directory: cwd and TMPDIR of every
	// call, and home of the payload and the scripts.
	tmp, err := os.MkdirTemp("", "nrt-gl-job-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	ciVars := []Var{
		{"CI", "true"}, {"GITLAB_CI", "true"},
		{"CI_JOB_ID", strconv.FormatInt(j.ID, 10)},
		{"CI_JOB_NAME", "test"}, {"CI_JOB_STAGE", "test"},
		{"CI_PROJECT_ID", strconv.FormatInt(j.ProjectID, 10)},
		{"CI_PROJECT_PATH", j.ProjectPath},
		{"CI_PROJECT_NAME", filepath.Base(j.ProjectPath)},
		{"CI_SERVER_URL", j.Instance},
		{"CI_COMMIT_SHA", "0123456789abcdef0123456789abcdef01234567"},
		{"CI_JOB_TOKEN", "job-token-" + strconv.FormatInt(j.ID, 10)},
	}
	if j.HasImage {
		ciVars = append(ciVars, Var{"CI_JOB_IMAGE", j.Image})
	}
	payloadVars := append(append([]Var{}, ciVars...), j.Vars...)
	resp := j.Response
	if resp == "" {
		resp = j.payload(payloadVars)
	}
	respFile := filepath.Join(tmp, "response.json")
	if err := os.WriteFile(respFile, []byte(resp), 0o600); err != nil {
		t.Fatal(err)
	}

	baseEnv := []string{}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "CUSTOM_ENV_") && !strings.HasPrefix(e, "TMPDIR=") {
			baseEnv = append(baseEnv, e)
		}
	}
	baseEnv = append(baseEnv,
		"BUILD_FAILURE_EXIT_CODE="+strconv.Itoa(buildFailure),
		"SYSTEM_FAILURE_EXIT_CODE="+strconv.Itoa(systemFailure),
		"JOB_RESPONSE_FILE="+respFile,
		"CONFIG_FILE="+r.TOMLPath,
		"TMPDIR="+tmp,
	)
	// Job variables reach every stage as CUSTOM_ENV_*; the project dirs
	// are empty for config_exec, which decides them.
	envWith := func(extra []Var, status string) []string {
		env := append([]string{}, baseEnv...)
		for _, v := range append(append([]Var{}, payloadVars...), extra...) {
			env = append(env, "CUSTOM_ENV_"+v.Key+"="+v.Value)
		}
		if status != "" {
			env = append(env, "CUSTOM_ENV_CI_JOB_STATUS="+status)
		}
		return env
	}
	idArgs := func(cmd string) []string {
		a := append(append([]string{}, r.StageArgs[cmd]...), r.MachineArgs...)
		if j.FlagID != "" {
			a = append(a, "--id", j.FlagID)
		}
		return a
	}
	record := func(list *[]StageResult, name string, out, errOut string, code int, took time.Duration, codeFile string) StageResult {
		s := StageResult{Name: name, Exit: code, Stdout: out, Stderr: errOut, Took: took, CodeFile: codeFile}
		*list = append(*list, s)
		fmt.Fprintf(&log, "--- %s (exit %d, %s)\n%s%s", name, code, took.Round(time.Millisecond), out, errOut)
		return s
	}

	// config_exec
	out, errOut, code := r.call(context.Background(), tmp, envWith([]Var{{"CI_BUILDS_DIR", ""}, {"CI_PROJECT_DIR", ""}}, ""), r.StageArgs["config"]...)
	fmt.Fprintf(&log, "--- config (exit %d)\n%s", code, errOut)
	if code != 0 {
		res.Status = "system"
		return res
	}
	if err := json.Unmarshal([]byte(out), &res.Config); err != nil {
		t.Fatalf("config stdout is not JSON: %v\n%q", err, out)
	}
	buildsDir, _ := res.Config["builds_dir"].(string)
	cacheDir, _ := res.Config["cache_dir"].(string)
	projectDir := filepath.Join(buildsDir, j.ProjectPath)
	if res.Config["builds_dir_is_shared"] == true {
		// gitlab-runner then separates concurrent jobs:
		// <builds_dir>/<runner short token>/<concurrent id>/<project path>.
		projectDir = filepath.Join(buildsDir, "t0ken123", "0", j.ProjectPath)
	}
	dirs := []Var{{"CI_BUILDS_DIR", buildsDir}, {"CI_PROJECT_DIR", projectDir}}
	jobVars := append(append(append([]Var{}, payloadVars...), dirs...), Var{"CI_CACHE_DIR", cacheDir})

	cleaned := true
	cleanup := func(status string) {
		cleaned = true
		start := time.Now()
		// cleanup has its own budget, after any cancel.
		out, errOut, code := r.call(context.Background(), tmp, envWith(dirs, status), idArgs("cleanup")...)
		record(&res.Cleanups, "cleanup", out, errOut, code, time.Since(start), "")
	}

	// Whatever stops this job early (a harness failure ends the goroutine
	// with t.Fatal), the machine is cleaned up as gitlab-runner would.
	defer func() {
		if !cleaned {
			cleanup("failed")
		}
	}()

	// prepare_exec: a system failure is retried, three attempts in all,
	// with cleanup after each failed one.
	prepared := false
	for attempt := 1; attempt <= 3 && !prepared; attempt++ {
		if j.BeforePrepare != nil {
			j.BeforePrepare(attempt)
		}
		cleaned = false
		start := time.Now()
		out, errOut, code := r.call(context.Background(), tmp, envWith(dirs, ""), idArgs("prepare")...)
		record(&res.Prepares, "prepare", out, errOut, code, time.Since(start), "")
		if code == 0 {
			prepared = true
			break
		}
		cleanup("failed")
		if code != systemFailure {
			break
		}
	}
	if !prepared {
		res.Status = "system"
		return res
	}

	stageCmds := func(name string) []string {
		if c, ok := j.Stages[name]; ok {
			return c
		}
		switch name {
		case "prepare_script":
			return []string{`echo "Running on $(hostname)..."`}
		case "get_sources":
			return []string{
				`mkdir -p "$CI_PROJECT_DIR"`, `cd "$CI_PROJECT_DIR"`,
				`if [ -e .checkout ]; then echo "Fetching changes..."; else echo "Cloning repository..."; echo "$CI_COMMIT_SHA" > .checkout; fi`,
			}
		case "build_script":
			return userCommands(j.Script)
		case "after_script":
			return userCommands(j.AfterScript)
		}
		return []string{`:`}
	}
	runStage := func(name, status string) StageResult {
		path := filepath.Join(tmp, "script-"+name)
		vars := jobVars
		if status != "" {
			vars = append(append([]Var{}, jobVars...), Var{"CI_JOB_STATUS", status})
		}
		if err := os.WriteFile(path, []byte(stageScript(vars, stageCmds(name))), 0o700); err != nil {
			t.Fatal(err)
		}
		codeFile := filepath.Join(tmp, "exit-code-"+name)
		os.Remove(codeFile)
		env := append(envWith(dirs, status), "BUILD_EXIT_CODE_FILE="+codeFile)
		args := append(idArgs("run"), path, name)
		start := time.Now()
		var out, errOut string
		var code int
		if name == "build_script" && j.CancelOn != "" {
			out, errOut, code = r.callCancel(tmp, env, j.CancelOn, args...)
		} else {
			out, errOut, code = r.callExe(context.Background(), r.RunExec, tmp, env, args...)
		}
		cf, _ := os.ReadFile(codeFile)
		s := record(&res.Stages, name, out, errOut, code, time.Since(start), strings.TrimSpace(string(cf)))
		if j.AfterStage != nil {
			j.AfterStage(s)
		}
		return s
	}

	// run_exec, stage by stage, as gitlab-runner orders them.
	status := "success"
	for _, name := range []string{"prepare_script", "get_sources", "restore_cache", "download_artifacts"} {
		if s := runStage(name, ""); s.Exit != 0 {
			status = outcome(s.Exit)
			break
		}
	}
	if status == "success" {
		s := runStage("build_script", "")
		switch {
		case j.CancelOn != "":
			status = "canceled"
		case s.Exit != 0:
			status = outcome(s.Exit)
		}
		for _, name := range j.ExtraStages {
			if status != "success" {
				break
			}
			if s := runStage(name, ""); s.Exit != 0 {
				status = outcome(s.Exit)
			}
		}
	}
	if status != "canceled" {
		ciStatus := "success"
		if status != "success" {
			ciStatus = "failed"
		}
		runStage("after_script", ciStatus)
		if status == "success" {
			for _, name := range []string{"archive_cache", "upload_artifacts_on_success"} {
				if s := runStage(name, "success"); s.Exit != 0 {
					status = outcome(s.Exit)
					break
				}
			}
		} else {
			runStage("archive_cache_on_failure", "failed")
			runStage("upload_artifacts_on_failure", "failed")
		}
		runStage("cleanup_file_variables", ciStatus)
	}
	res.Status = status
	ciStatus := status
	if status == "system" {
		ciStatus = "failed"
	}
	cleanup(ciStatus)
	return res
}

func outcome(code int) string {
	if code == buildFailure {
		return "failed"
	}
	return "system"
}

// callCancel runs a stage and, once marker appears on its output, sends
// SIGTERM to its process group as gitlab-runner does on cancel or timeout,
// then SIGKILL after the graceful timeout of the runner section.
func (r *Runner) callCancel(dir string, env []string, marker string, args ...string) (string, string, int) {
	cmd := exec.Command(r.RunExec, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	var out, errOut bytes.Buffer
	cmd.Stdout = io.MultiWriter(&out, pw)
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		return "", err.Error(), -1
	}
	seen := make(chan struct{})
	go func() {
		var acc []byte
		buf := make([]byte, 4096)
		for {
			n, err := pr.Read(buf)
			acc = append(acc, buf[:n]...)
			if bytes.Contains(acc, []byte(marker)) {
				close(seen)
				io.Copy(io.Discard, pr)
				return
			}
			if err != nil {
				return
			}
		}
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	var err error
	select {
	case <-seen:
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case err = <-done:
		case <-time.After(30 * time.Second): // graceful_kill_timeout
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			err = <-done
			errOut.WriteString("\n[harness] run ignored SIGTERM for 30s: SIGKILLed")
		}
	case err = <-done:
		errOut.WriteString("\n[harness] stage ended before the cancel marker appeared")
	case <-time.After(stageTimeout):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = <-done
		errOut.WriteString("\n[harness] cancel marker never appeared")
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errOut.String(), 0
	case errors.As(err, &ee):
		return out.String(), errOut.String(), ee.ExitCode()
	}
	return out.String(), errOut.String(), -1
}

// mustPass fails the test unless the job succeeded, with its log.
func mustPass(t *testing.T, res *Result) {
	t.Helper()
	if res.Status != "success" {
		t.Fatalf("job status %s, want success; job log:\n%s", res.Status, res.Log)
	}
}

// AssertClean checks that no machine of this runner is left now.
func (r *Runner) AssertClean(t *testing.T) {
	t.Helper()
	if left := r.leftovers(); len(left) > 0 {
		t.Errorf("left behind:\n  %s", strings.Join(left, "\n  "))
	}
}
