package gitlab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// MountConfig is the runner's configuration behind a job's mounts.
type MountConfig struct {
	// CacheRoot and BuildsRoot are gitlab.cache_dir and gitlab.builds_dir
	// (see MountInput).
	CacheRoot  string
	BuildsRoot string
	// RunnerBinary is gitlab.runner_binary; empty: gitlab-runner on PATH,
	// if there is one.
	RunnerBinary string
}

// JobMounts plans the job's mounts (PlanMounts) from the configuration,
// the host's gitlab-runner and the project named by the runner's job
// payload (JOB_RESPONSE_FILE), never by CUSTOM_ENV_* variables, which the
// job controls; then it creates the per-project host directories. getenv
// is the stage's environment.
func JobMounts(getenv func(string) string, c MountConfig) (MountPlan, error) {
	bin, err := runnerBinary(c.RunnerBinary, getenv("PATH"))
	if err != nil {
		return MountPlan{}, err
	}
	proj, perr := ReadProject(getenv("JOB_RESPONSE_FILE"))
	if perr != nil && !errors.Is(perr, ErrNoProject) {
		// An unreadable payload is the runner's problem, not the job's:
		// fail rather than silently drop the cache.
		return MountPlan{}, perr
	}
	plan := PlanMounts(MountInput{
		CacheRoot:    c.CacheRoot,
		BuildsRoot:   c.BuildsRoot,
		RunnerBinary: bin,
		Project:      proj,
		ProjectErr:   perr,
	})
	for _, m := range plan.Mounts {
		if m.Dir {
			if err := projectDir(m.Host); err != nil {
				return MountPlan{}, err
			}
		}
	}
	return plan, nil
}

// runnerBinary finds the host's gitlab-runner: the configured one (it
// must then exist), else the first gitlab-runner in the absolute
// directories of pathEnv, else "". Relative PATH entries are skipped: they
// would resolve against the stage's working directory, a per-job temporary
// directory. Symlinks are resolved so the machine gets the file itself.
func runnerBinary(configured, pathEnv string) (string, error) {
	if configured != "" {
		p, err := executable(configured)
		if err != nil {
			return "", fmt.Errorf("gitlab.runner_binary %s: %w", configured, err)
		}
		return p, nil
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if !filepath.IsAbs(dir) {
			continue
		}
		if p, err := executable(filepath.Join(dir, "gitlab-runner")); err == nil {
			return p, nil
		}
	}
	return "", nil
}

// executable resolves p to the absolute path of the regular file it names
// and checks that it has an execute bit.
func executable(p string) (string, error) {
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", err
	}
	if real, err = filepath.Abs(real); err != nil {
		return "", err
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return "", errors.New("not an executable file")
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
