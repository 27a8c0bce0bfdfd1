// Package machine is the lifecycle of one CI job's systemd-nspawn machine:
// it names the machine after the job, plans its storage, cgroup and
// systemd-nspawn command line (pure functions), starts it, enters it once
// per stage, stops it, and removes everything it left, including after a
// crash or SIGKILL at any point (Cleanup and GC work from names and
// discover what exists).
//
// On disk, per machine NAME:
//
//	RUN_DIR/machines/NAME.json   state record (written atomically, first)
//	RUN_DIR/machines/NAME.lock   flock held by prepare, cleanup and gc
//	RUN_DIR/machines/NAME/       nspawn.log, scripts/ (bound read-only
//	                             into the machine at /run/nspawn-runner)
//	ROOT/.machines/NAME/         root/ (btrfs snapshot, or overlay mount
//	                             over upper/ and work/)
//	CGROUP2/PARENT/NAME          the machine's cgroup (limits, kill)
//
// The files: manager.go (the Manager, machine names on disk, locks),
// plan.go (the pure decisions: name, layout, storage, systemd-nspawn
// command line, environment), prepare.go, run.go, destroy.go (cleanup
// and the destroy every remover shares), gc.go (gc and ps), host.go
// (what the host offers: cgroups, systemd-nspawn's version, memory for
// limits), network.go, limits.go (exhausted host limits), lock.go,
// record.go (the state record; testdata/record.json holds its format) and
// pool.go (the warm pool: claim, attach, fill, retire, detached refill).
//
// There is no per-machine supervisor process: prepare starts
// systemd-nspawn detached, waits on its notification socket until the
// machine is ready, and exits. systemd-nspawn keeps running on its own;
// the notifications it sends later (at shutdown) go nowhere, which it
// tolerates. A supervisor would cost an idle Go process per machine (about
// 8.7 MiB RSS, against 14 MiB for a whole fast machine and 40 MiB for a
// booted one) for what the state record, the lock and gc already give:
// finding and removing a machine whose systemd-nspawn died.
package machine
