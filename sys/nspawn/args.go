package nspawn

import "os"

// Bind is a --bind or --bind-ro of a host path into the machine.
type Bind struct {
	Host     string
	Machine  string
	ReadOnly bool
	// IDMap adds the idmap option: with --private-users, the machine's
	// uid z reads and writes the host's uid z under this mount (not
	// shift+z), so its files keep their host owners.
	IDMap bool
}

// Spec describes one systemd-nspawn invocation. Args turns it into argv.
type Spec struct {
	// Directory is the machine's root tree (-D).
	Directory string
	// Machine is the machine name (--machine).
	Machine string
	// Boot runs the image's init as PID 1 (--boot).
	Boot bool
	// Ephemeral runs on a throwaway snapshot of Directory (--ephemeral).
	Ephemeral bool
	// Volatile is --volatile= ("overlay", "yes", "state"); empty for none.
	Volatile string
	// ReadOnly mounts the root read-only (--read-only).
	ReadOnly bool
	// Overlay is --overlay=lower:upper:/ for a root overlay; empty for none.
	Overlay string
	// NoRegister adds --register=no --keep-unit: needed without a system
	// bus (systemd-nspawn otherwise fails to open it).
	NoRegister bool
	// KeepUnit adds --keep-unit alone (the caller made the cgroup).
	KeepUnit bool
	// NotifyReady adds --notify-ready=yes.
	NotifyReady bool
	// AsPID2 runs the command as PID 2 under a stub init (--as-pid2).
	AsPID2 bool
	// Quiet adds --quiet.
	Quiet bool
	// SuppressSync adds --suppress-sync=yes (systemd 250 and later).
	SuppressSync bool
	// Console is --console= ("interactive", "read-only", "passive", "pipe").
	Console string
	// ResolvConf is --resolv-conf= (e.g. "copy-host"); empty leaves the default.
	ResolvConf string
	// LinkJournal is --link-journal= (e.g. "no"); empty leaves the default.
	LinkJournal string
	// NetworkNamespacePath runs the machine in that network namespace
	// (--network-namespace-path=, a pinned namespace).
	NetworkNamespacePath string
	// PrivateNetwork gives the machine a network namespace with only a
	// loopback device (--private-network).
	PrivateNetwork bool
	// PrivateUsers is --private-users= ("pick", "yes", "SHIFT:RANGE");
	// empty for none.
	PrivateUsers string
	// PrivateUsersOwnership is --private-users-ownership= ("map":
	// an idmapped mount of the root, so the tree needs no chown).
	PrivateUsersOwnership string
	// Binds are bind mounts into the machine.
	Binds []Bind
	// Env is --setenv=KEY=VALUE for the machine's init or command.
	Env []string
	// Properties are --property= values for the machine's scope.
	Properties []string
	// Slice is --slice= for the machine's scope.
	Slice string
	// Command is the command to run (or init arguments with Boot).
	Command []string
}

// Args returns the systemd-nspawn argv (without the program name).
func Args(s Spec) []string {
	var a []string
	add := func(v ...string) { a = append(a, v...) }
	if s.Quiet {
		add("--quiet")
	}
	if s.Directory != "" {
		add("--directory=" + s.Directory)
	}
	if s.Machine != "" {
		add("--machine=" + s.Machine)
	}
	if s.Boot {
		add("--boot")
	}
	if s.AsPID2 {
		add("--as-pid2")
	}
	if s.Ephemeral {
		add("--ephemeral")
	}
	if s.Volatile != "" {
		add("--volatile=" + s.Volatile)
	}
	if s.ReadOnly {
		add("--read-only")
	}
	if s.Overlay != "" {
		add("--overlay=" + s.Overlay)
	}
	if s.NoRegister {
		add("--register=no", "--keep-unit")
	} else if s.KeepUnit {
		add("--keep-unit")
	}
	if s.NotifyReady {
		add("--notify-ready=yes")
	}
	if s.SuppressSync {
		add("--suppress-sync=yes")
	}
	if s.Console != "" {
		add("--console=" + s.Console)
	}
	if s.ResolvConf != "" {
		add("--resolv-conf=" + s.ResolvConf)
	}
	if s.LinkJournal != "" {
		add("--link-journal=" + s.LinkJournal)
	}
	if s.NetworkNamespacePath != "" {
		add("--network-namespace-path=" + s.NetworkNamespacePath)
	}
	if s.PrivateNetwork {
		add("--private-network")
	}
	if s.PrivateUsers != "" {
		add("--private-users=" + s.PrivateUsers)
	}
	if s.PrivateUsersOwnership != "" {
		add("--private-users-ownership=" + s.PrivateUsersOwnership)
	}
	if s.Slice != "" {
		add("--slice=" + s.Slice)
	}
	for _, p := range s.Properties {
		add("--property=" + p)
	}
	for _, b := range s.Binds {
		flag := "--bind="
		if b.ReadOnly {
			flag = "--bind-ro="
		}
		opts := ""
		if b.IDMap {
			opts = ":idmap"
		}
		add(flag + escapeColon(b.Host) + ":" + escapeColon(b.Machine) + opts)
	}
	for _, e := range s.Env {
		add("--setenv=" + e)
	}
	if len(s.Command) > 0 {
		add("--")
		add(s.Command...)
	}
	return a
}

// escapeColon escapes ':' and '\' in a bind path, as systemd-nspawn(1)
// documents for --bind ("Backslash escapes are interpreted").
func escapeColon(p string) string {
	out := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == ':' || p[i] == '\\' {
			out = append(out, '\\')
		}
		out = append(out, p[i])
	}
	return string(out)
}

// HasSystemd reports whether the host runs systemd as its init, the test
// sd_booted(3) documents: /run/systemd/system exists. Without it (or
// without a system bus) systemd-nspawn needs --register=no --keep-unit.
func HasSystemd() bool {
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// HasSystemBus reports whether the system D-Bus socket exists.
func HasSystemBus() bool {
	_, err := os.Stat("/run/dbus/system_bus_socket")
	return err == nil
}
