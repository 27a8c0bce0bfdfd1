package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/nspawn-runner/nspawn-runner/gitlab"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// jobMachine returns what a job's machine gets besides its image: bind
// mounts (caches, builds dir, the gitlab-runner binary) and PATH entries
// inside the machine (the runner binary's directory, where the runner's
// cache and artifact scripts look for gitlab-runner). It creates the
// per-project host directories and prints, once per prepare, what the job
// log must know (no gitlab-runner on the host, no project to keep a cache
// for).
func jobMachine(g *globals) (binds []nspawn.Bind, path []string, err error) {
	plan, err := jobMounts(g)
	if err != nil {
		return nil, nil, err
	}
	for _, n := range plan.Notices {
		fmt.Fprintln(os.Stderr, n)
	}
	for _, m := range plan.Mounts {
		if m.Dir {
			if err := projectDir(m.Host); err != nil {
				return nil, nil, err
			}
		}
		if m.Machine == gitlab.MachineRunnerBinary {
			path = append(path, gitlab.MachineRunnerDir)
		}
		binds = append(binds, nspawn.Bind{Host: m.Host, Machine: m.Machine, ReadOnly: m.ReadOnly})
	}
	return binds, path, nil
}

// jobMounts plans the job's mounts from the configuration and the project
// named by the runner's job payload (JOB_RESPONSE_FILE), never from
// CUSTOM_ENV_* variables, which the job controls.
func jobMounts(g *globals) (gitlab.MountPlan, error) {
	bin, err := runnerBinary(g)
	if err != nil {
		return gitlab.MountPlan{}, err
	}
	proj, perr := gitlab.ReadProject(os.Getenv("JOB_RESPONSE_FILE"))
	if perr != nil && !errors.Is(perr, gitlab.ErrNoProject) {
		// An unreadable payload is the runner's problem, not the job's:
		// fail rather than silently drop the cache.
		return gitlab.MountPlan{}, perr
	}
	return gitlab.PlanMounts(gitlab.MountInput{
		CacheRoot:    g.cfg.GitLab.CacheDir,
		BuildsRoot:   g.cfg.GitLab.BuildsDir,
		RunnerBinary: bin,
		Project:      proj,
		ProjectErr:   perr,
	}), nil
}

// runnerBinary finds the host's gitlab-runner: gitlab.runner_binary when
// configured (it must then exist), else gitlab-runner on PATH, else "".
// Symlinks are resolved so the machine gets the file itself.
func runnerBinary(g *globals) (string, error) {
	p := g.cfg.GitLab.RunnerBinary
	if p == "" {
		found, err := exec.LookPath("gitlab-runner")
		if err != nil {
			return "", nil
		}
		p = found
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("gitlab.runner_binary %s: %w", p, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("gitlab.runner_binary %s: %w", p, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("gitlab.runner_binary %s: not an executable file", p)
	}
	if !filepath.IsAbs(real) {
		if real, err = filepath.Abs(real); err != nil {
			return "", fmt.Errorf("gitlab.runner_binary %s: %w", p, err)
		}
	}
	return real, nil
}

// projectDir creates a per-project directory and makes sure it is a real
// directory: a symlink planted there would bind another tree into the
// job's machine. The root (gitlab.cache_dir or builds_dir) is created 0700,
// since caches can hold secrets and other host users have no business
// there; the project's own directory is 0755 so that non-root users in the
// machine can use it where it is mounted.
func projectDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("check %s: %w", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("check %s: not a directory (%s)", dir, st.Mode().Type())
	}
	return nil
}
