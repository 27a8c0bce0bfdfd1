// Package nspawn runs systemd-nspawn(1): finding the program and its
// version (Find: the program probed is the one started), machine names
// (the one sanitizer: host name labels of at most 63 characters), a pure
// argv builder, and starting
// it as a detached child (its own session, optionally its own cgroup via
// clone3 CLONE_INTO_CGROUP) with a notification socket of our own
// (sd_notify(3): X_NSPAWN_LEADER_PID=, STATUS=, READY=1) to wait until the
// machine is ready. The socket is a path socket in a private 0700
// directory with SO_PASSCRED: only datagrams whose sender the kernel
// reports as that systemd-nspawn (or a process below it) are read, and an
// announced leader must be a process below it. Stopping a machine is a signal to the systemd-nspawn
// process (SIGTERM: orderly shutdown), sent through a pidfd by the caller.
package nspawn
