package gitlab

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Timeouts written into the [runners.custom] section, in seconds. prepare
// covers a machine's boot (about half a second, bounded by the config's
// ready_timeout) with a wide margin for a loaded host; cleanup covers the
// graceful stop plus the kill of the machine's cgroup. The kill timeouts
// give run the time to forward SIGTERM into the machine and reap the job.
const (
	ConfigExecTimeout   = 60
	PrepareExecTimeout  = 300
	CleanupExecTimeout  = 300
	GracefulKillTimeout = 30
	ForceKillTimeout    = 10
)

// RunnerSection describes the [[runners]] section printed by `toml`.
type RunnerSection struct {
	// Name is the runner's name as GitLab shows it.
	Name string
	// Executable is the absolute path of nspawn-runner.
	Executable string
	// GlobalArgs come before every command (e.g. --config FILE), so the
	// stages use the same configuration as the command that printed them.
	GlobalArgs []string
	// DefaultImage, when set, is passed to prepare as --default-image.
	DefaultImage string
	// StageExecutable, when set, is the absolute path of
	// nspawn-runner-stage, the run stage's own executable: run_exec then
	// names it (with the same arguments as Executable's run).
	StageExecutable string
}

// TOML renders the section. Every string is a TOML basic string with
// escapes, so paths and names with quotes or backslashes stay valid.
func (r RunnerSection) TOML() (string, error) {
	if !filepath.IsAbs(r.Executable) {
		return "", fmt.Errorf("runner section: executable must be an absolute path, got %q", r.Executable)
	}
	runExe := r.Executable
	if r.StageExecutable != "" {
		if !filepath.IsAbs(r.StageExecutable) {
			return "", fmt.Errorf("runner section: stage executable must be an absolute path, got %q", r.StageExecutable)
		}
		runExe = r.StageExecutable
	}
	strs := append([]string{r.Name, r.Executable, r.StageExecutable, r.DefaultImage}, r.GlobalArgs...)
	for _, s := range strs {
		if !utf8.ValidString(s) {
			return "", fmt.Errorf("runner section: %q is not valid UTF-8, which TOML requires", s)
		}
	}
	args := func(cmd ...string) string {
		all := append(append([]string{}, r.GlobalArgs...), cmd...)
		q := make([]string, len(all))
		for i, a := range all {
			q[i] = tomlString(a)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	prepare := []string{"prepare"}
	if r.DefaultImage != "" {
		prepare = append(prepare, "--default-image", r.DefaultImage)
	}
	exe := tomlString(r.Executable)
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# GitLab Runner section for nspawn-runner: each job runs in a throwaway")
	w("# systemd-nspawn machine. Add it to /etc/gitlab-runner/config.toml.")
	w("#")
	w("# To register: create a runner in GitLab (Settings > CI/CD > Runners >")
	w("# New project runner, or Admin > Runners for an instance runner), then")
	w("# either put its URL and authentication token (glrt-...) below and run")
	w("# `gitlab-runner verify`, or save this section to a file and run")
	w("#   gitlab-runner register --non-interactive --template-config FILE \\")
	w("#     --url https://gitlab.example.com --token glrt-... --executor custom")
	w("# The global `concurrent` setting of config.toml limits parallel jobs.")
	w("[[runners]]")
	w("  name = %s", tomlString(r.Name))
	w("  url = %s", tomlString("https://gitlab.example.com/"))
	w("  token = %s", tomlString("REPLACE-WITH-THE-RUNNER-AUTHENTICATION-TOKEN"))
	w("  executor = %s", tomlString("custom"))
	w("  shell = %s", tomlString("bash"))
	w("  # Paths inside the job's machine; the host directories behind them")
	w("  # are gitlab.cache_dir and gitlab.builds_dir in nspawn-runner's config.")
	w("  builds_dir = %s", tomlString(MachineBuildsDir))
	w("  cache_dir = %s", tomlString(MachineCacheDir))
	w("  [runners.custom]")
	w("    config_exec = %s", exe)
	w("    config_args = %s", args("gitlab-config"))
	w("    config_exec_timeout = %d", ConfigExecTimeout)
	w("    prepare_exec = %s", exe)
	w("    prepare_args = %s", args(prepare...))
	w("    prepare_exec_timeout = %d", PrepareExecTimeout)
	w("    run_exec = %s", tomlString(runExe))
	w("    run_args = %s", args("run"))
	w("    cleanup_exec = %s", exe)
	w("    cleanup_args = %s", args("cleanup"))
	w("    cleanup_exec_timeout = %d", CleanupExecTimeout)
	w("    graceful_kill_timeout = %d", GracefulKillTimeout)
	w("    force_kill_timeout = %d", ForceKillTimeout)
	return b.String(), nil
}

// tomlString quotes s as a TOML basic string: backslash, quote and every
// control character (including DEL, which TOML 1.0 forbids unescaped) are
// escaped.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				b.WriteString(`\u` + leftPad(strconv.FormatInt(int64(r), 16), 4))
				continue
			}
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func leftPad(s string, n int) string {
	for len(s) < n {
		s = "0" + s
	}
	return s
}
