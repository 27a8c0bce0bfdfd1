package gitlab

import (
	"encoding/json"
	"fmt"
	"path"
)

// Paths inside every job's machine. They are fixed, not configurable: the
// host side of each (the per-project cache and builds directories, the
// runner binary) is configuration, the machine side is part of the contract
// with gitlab-runner, which is told about them by the config stage.
const (
	// MachineBuildsDir is where gitlab-runner clones projects.
	MachineBuildsDir = "/builds"
	// MachineCacheDir is where gitlab-runner keeps the local cache.
	MachineCacheDir = "/cache"
	// MachineRunnerDir holds the bind-mounted gitlab-runner binary; it is
	// on PATH inside the machine so the cache and artifact stages find it.
	MachineRunnerDir = "/usr/local/lib/nspawn-runner/bin"
	// MachineRunnerBinary is the runner binary's path inside the machine.
	MachineRunnerBinary = MachineRunnerDir + "/gitlab-runner"
)

// DriverName is the driver name gitlab-runner prints in the job log
// ("Using Custom executor with driver nspawn-runner VERSION...").
const DriverName = "nspawn-runner"

// Driver names this executor to gitlab-runner.
type Driver struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// ExecutorConfig is what config_exec prints: the keys gitlab-runner reads
// from its standard output (docs/executors/custom.md, "Config").
type ExecutorConfig struct {
	BuildsDir         string `json:"builds_dir"`
	CacheDir          string `json:"cache_dir"`
	BuildsDirIsShared bool   `json:"builds_dir_is_shared"`
	Hostname          string `json:"hostname"`
	Driver            Driver `json:"driver"`
	Shell             string `json:"shell"`
}

// NewExecutorConfig returns the config stage's answer for a runner host
// called hostname running this build (version). Every job has a machine
// of its own, so an ephemeral builds dir is never shared between
// concurrent jobs. A persistent one (gitlab.builds_dir) is: two jobs of one
// project may run at once on the same host directory, so gitlab-runner is
// told it is shared and then gives each concurrent job its own
// subdirectory (builds/<runner>/<concurrent id>/<project path>).
func NewExecutorConfig(hostname, version string, persistentBuilds bool) ExecutorConfig {
	return ExecutorConfig{
		BuildsDir:         MachineBuildsDir,
		CacheDir:          MachineCacheDir,
		BuildsDirIsShared: persistentBuilds,
		Hostname:          hostname,
		Driver:            Driver{Name: DriverName, Version: version},
		Shell:             "bash",
	}
}

// JSON encodes the config as the single line gitlab-runner parses. The
// paths must be absolute and clean: gitlab-runner joins them with project
// paths and a relative one would resolve against the machine's cwd.
func (c ExecutorConfig) JSON() ([]byte, error) {
	for _, p := range []struct{ key, v string }{{"builds_dir", c.BuildsDir}, {"cache_dir", c.CacheDir}} {
		if !path.IsAbs(p.v) || path.Clean(p.v) != p.v {
			return nil, fmt.Errorf("executor config %s: want a clean absolute path, got %q", p.key, p.v)
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("executor config: %w", err)
	}
	return append(b, '\n'), nil
}

// RunArgs picks the stage script and the stage name from run_exec's
// arguments: gitlab-runner appends them to the configured run_args
// ("<run_args...> <script-path> <stage>"), so they are the last two,
// whatever comes before. A single argument is the script of an unnamed
// stage (a harness calling run by hand).
func RunArgs(args []string) (script, stage string, err error) {
	switch len(args) {
	case 0:
		return "", "", fmt.Errorf("run: no script path given")
	case 1:
		return args[0], "", nil
	}
	return args[len(args)-2], args[len(args)-1], nil
}
