// Package nspawn runs systemd-nspawn(1): a pure argv builder, starting it as
// a child with its own notify socket (sd_notify(3): READY=1,
// X_NSPAWN_LEADER_PID=), and stopping it.
package nspawn
