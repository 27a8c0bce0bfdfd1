// Package sysctl reads and writes kernel parameters through /proc/sys
// (proc(5), sysctl(8)) and parses sysctl.d(5) files, natively: no
// sysctl(8) process.
//
// A parameter is named as sysctl(8) names it, with dots
// ("fs.inotify.max_user_instances") or slashes; its file is
// /proc/sys/fs/inotify/max_user_instances.
package sysctl
