// Package nspawn runs systemd-nspawn(1): a pure argv builder, and starting
// it as a detached child (its own session, optionally its own cgroup via
// clone3 CLONE_INTO_CGROUP) with a notification socket of our own
// (sd_notify(3): X_NSPAWN_LEADER_PID=, STATUS=, READY=1) to wait until the
// machine is ready. Stopping a machine is a signal to the systemd-nspawn
// process (SIGTERM: orderly shutdown), sent through a pidfd by the caller.
package nspawn
