package provision

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// RemoteTemp is ansible's remote_tmp inside the image: a directory of the
// run bind-mounted on a mount point in the tmpfs systemd-nspawn puts on
// /run, so it outlives each command (the module files ansible copies in
// are used by the next command) but nothing of ansible's is ever written
// into the image (a default remote_tmp would leave /root/.ansible; /tmp
// will not do, nspawn mounts a fresh tmpfs there for every command).
const RemoteTemp = "/run/nspawn-runner-ansible"

type runFiles struct{ inventory, config, wrapper string }

// writeRunFiles writes the inventory, ansible.cfg and the chroot wrapper
// of one run into dir.
func writeRunFiles(dir, name string, w Wrapper) (runFiles, error) {
	f := runFiles{
		inventory: filepath.Join(dir, "inventory"),
		config:    filepath.Join(dir, "ansible.cfg"),
		wrapper:   filepath.Join(dir, "nspawn-exec"),
	}
	for _, d := range []string{"home", "local", "remote"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return f, err
		}
	}
	if err := os.WriteFile(f.inventory, []byte(Inventory(name, w.Tree, f.wrapper)), 0o600); err != nil {
		return f, err
	}
	if err := os.WriteFile(f.config, []byte(AnsibleConfig(filepath.Join(dir, "local"))), 0o600); err != nil {
		return f, err
	}
	if err := os.WriteFile(f.wrapper, []byte(w.Script()), 0o700); err != nil {
		return f, err
	}
	return f, nil
}

// Inventory is the one-host inventory of a run: the chroot connection
// with the wrapper as its chroot program, and python3 of the image.
func Inventory(name, tree, wrapper string) string {
	return fmt.Sprintf("%s ansible_connection=chroot ansible_host=%s ansible_chroot_exe=%s ansible_python_interpreter=/usr/bin/python3\n",
		name, iniQuote(tree), iniQuote(wrapper))
}

// iniQuote quotes an inventory value: ansible's INI inventory parses
// values with shlex and then as Python literals.
func iniQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// AnsibleConfig is the ansible.cfg of a run: nothing read from or written
// to the admin's home, no retry files, no host keys (no ssh is involved).
func AnsibleConfig(localTemp string) string {
	return `[defaults]
retry_files_enabled = False
host_key_checking = False
stdout_callback = default
interpreter_python = /usr/bin/python3
local_tmp = ` + localTemp + `
remote_tmp = ` + RemoteTemp + `
nocows = True
deprecation_warnings = False

[connection]
pipelining = True
`
}

// Wrapper is the ansible_chroot_exe of one run: a script running each of
// ansible's commands in the tree with systemd-nspawn.
type Wrapper struct {
	// Nspawn is the systemd-nspawn binary.
	Nspawn string
	// Tree is the image tree the commands run in.
	Tree string
	// Machine is the machine name.
	Machine string
	// Remote is the host directory bound on RemoteTemp.
	Remote string
	// NspawnVersion is systemd-nspawn's major version (0: unknown).
	NspawnVersion int
}

// Args is the systemd-nspawn argv (without the command): not ephemeral
// (the changes are the point), not booted, stdio passed through as pipes.
func (w Wrapper) Args() []string {
	return nspawn.Args(nspawn.Spec{
		Directory: w.Tree,
		Machine:   w.Machine,
		// No machine registration or scope of its own: a command lives
		// a few seconds, machined (when it exists) need not know it, and
		// the commands stay in the cgroup of chroot-maintenance, so
		// stopping its service stops them.
		NoRegister: true,
		Quiet:      true,
		// A stub init as PID 1 reaps what apt's maintainer scripts leave.
		AsPID2:      true,
		Console:     "pipe",
		ResolvConf:  "copy-host",
		LinkJournal: "no",
		// fsync is suppressed while a playbook runs on a workspace; the
		// workspace is synced once (syncfs) before it is swapped in. The
		// option exists since systemd 250.
		SuppressSync: w.NspawnVersion >= 250,
		Env:          []string{"DEBIAN_FRONTEND=noninteractive"},
		Binds:        []nspawn.Bind{{Host: w.Remote, Machine: RemoteTemp}},
	})
}

// Script is the wrapper script. ansible's chroot connection runs
// "WRAPPER TREE /bin/sh -c CMD"; the script checks TREE and runs the rest
// in the tree with systemd-nspawn.
func (w Wrapper) Script() string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# Written by nspawn-runner for one ansible-playbook run.\n")
	fmt.Fprintf(&b, "if [ \"$1\" != %s ]; then echo \"nspawn-exec: unexpected tree $1\" >&2; exit 125; fi\nshift\n", shQuote(w.Tree))
	b.WriteString("exec " + shQuote(w.Nspawn))
	for _, a := range w.Args() {
		b.WriteString(" " + shQuote(a))
	}
	b.WriteString(" -- \"$@\"\n")
	return b.String()
}

func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ansibleEnv is the environment of ansible-playbook: the caller's without
// any ANSIBLE_* (an admin's shell settings must not change how images are
// built), plus settings that keep every file ansible reads or writes
// inside the run's directory. The locale is C.UTF-8 whatever the caller's:
// ansible-core refuses to start without a UTF-8 locale, and timers, cron
// and scripts with LC_ALL=C run without one.
func ansibleEnv(environ []string, dir, cfg string) []string {
	var env []string
	for _, e := range environ {
		if strings.HasPrefix(e, "ANSIBLE_") || strings.HasPrefix(e, "PYTHONUNBUFFERED=") ||
			strings.HasPrefix(e, "LC_ALL=") || strings.HasPrefix(e, "LANG=") || strings.HasPrefix(e, "LANGUAGE=") {
			continue
		}
		env = append(env, e)
	}
	return append(env,
		"ANSIBLE_CONFIG="+cfg,
		"ANSIBLE_HOME="+filepath.Join(dir, "home"),
		"ANSIBLE_LOCAL_TEMP="+filepath.Join(dir, "local"),
		"ANSIBLE_REMOTE_TEMP="+RemoteTemp,
		"ANSIBLE_PERSISTENT_CONTROL_PATH_DIR="+filepath.Join(dir, "home", "pc"),
		"ANSIBLE_SSH_CONTROL_PATH_DIR="+filepath.Join(dir, "home", "cp"),
		"ANSIBLE_GALAXY_CACHE_DIR="+filepath.Join(dir, "home", "galaxy_cache"),
		"ANSIBLE_RETRY_FILES_ENABLED=False",
		"ANSIBLE_HOST_KEY_CHECKING=False",
		"ANSIBLE_NOCOLOR=1",
		"LANG=C.UTF-8",
		"LC_ALL=C.UTF-8",
		// Lines as they happen, not when python's buffer fills.
		"PYTHONUNBUFFERED=1",
	)
}
