// Package ns enters a running machine: it pins the machine's leader with
// pidfd_open(2) (checked against its start time, /proc/PID/stat field 22,
// so a reused pid is never taken for it) and starts a command inside the
// leader's mount, pid, network, uts, ipc and cgroup namespaces with
// setns(2) from a locked OS thread that first calls unshare(CLONE_FS), as
// setns(2) requires for CLONE_NEWNS in a multithreaded process. Do runs Go
// code (a mount, a sethostname) on such a thread, which is then discarded.
//
// A machine with its own user namespace (systemd-nspawn --private-users)
// is entered as that namespace's root: setns(2) refuses CLONE_NEWUSER to a
// multithreaded process, so the binary re-executes itself and a C
// constructor (userns_linux.c, cgo) joins the namespaces before the Go
// runtime starts, then execs the command.
package ns
