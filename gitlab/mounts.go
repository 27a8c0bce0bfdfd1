package gitlab

import (
	"fmt"
	"path/filepath"
)

// Mount is a host path a job's machine sees at Machine.
type Mount struct {
	Host     string
	Machine  string
	ReadOnly bool
	// Dir is true for directories the caller creates on the host (the
	// per-project cache and builds dirs); false for a file that must exist.
	Dir bool
}

// MountInput is what the per-job mounts depend on: runner configuration
// and the project from the job payload, never job variables.
type MountInput struct {
	// CacheRoot is gitlab.cache_dir: one directory per project below it.
	// Empty: the cache lives and dies with the machine.
	CacheRoot string
	// BuildsRoot is gitlab.builds_dir: one directory per project below it.
	// Empty: builds are ephemeral inside the machine.
	BuildsRoot string
	// RunnerBinary is the host's gitlab-runner; empty when it has none.
	RunnerBinary string
	// Project is the job's project; ProjectErr says why it is unknown,
	// in which case nothing persists beyond the job.
	Project    Project
	ProjectErr error
}

// MountPlan is the mounts of one job and what to tell its log about them.
type MountPlan struct {
	Mounts []Mount
	// Path are directories inside the machine to put on every stage's
	// PATH: where the runner binary is, so that the runner's cache and
	// artifact scripts find gitlab-runner.
	Path []string
	// Notices are printed once in the job log (prepare's stderr).
	Notices []string
}

// NoRunnerNotice is the job-log line when the host has no gitlab-runner:
// the runner's own scripts then skip caches and artifacts with a message
// that is easy to miss, the most common complaint about custom executors.
const NoRunnerNotice = "nspawn-runner: no gitlab-runner binary on this host (set gitlab.runner_binary or put gitlab-runner on PATH): caches and artifacts are disabled for this job"

// PlanMounts decides the job's mounts: the project's cache dir at
// MachineCacheDir, its builds dir at MachineBuildsDir when persistent, and
// the runner binary read-only at MachineRunnerBinary. A job only ever gets
// its own project's directories: the key comes from the trusted payload.
func PlanMounts(in MountInput) MountPlan {
	var p MountPlan
	persistent := in.CacheRoot != "" || in.BuildsRoot != ""
	if persistent && in.ProjectErr != nil {
		p.Notices = append(p.Notices, fmt.Sprintf("nspawn-runner: cannot tell this job's project (%v): its cache and builds are not kept after the job", in.ProjectErr))
	}
	if persistent && in.ProjectErr == nil {
		key := in.Project.Key()
		if in.CacheRoot != "" {
			p.Mounts = append(p.Mounts, Mount{Host: filepath.Join(in.CacheRoot, key), Machine: MachineCacheDir, Dir: true})
		}
		if in.BuildsRoot != "" {
			p.Mounts = append(p.Mounts, Mount{Host: filepath.Join(in.BuildsRoot, key), Machine: MachineBuildsDir, Dir: true})
		}
	}
	if in.RunnerBinary == "" {
		p.Notices = append(p.Notices, NoRunnerNotice)
	} else {
		p.Mounts = append(p.Mounts, Mount{Host: in.RunnerBinary, Machine: MachineRunnerBinary, ReadOnly: true})
		p.Path = append(p.Path, MachineRunnerDir)
	}
	return p
}
