// Package doctor checks a runner host: for each thing a job needs (kernel
// features, cgroups, systemd-nspawn, the image root, gitlab-runner and its
// configuration, images, timers, kernel limits, machines), a finding that
// says what is wrong and what to do.
//
// Checks are pure functions of Facts, which Gather reads from the host;
// tests give Facts of their own.
package doctor
