// Package limits holds the kernel limits that many nspawn machines at once
// need (inotify instances and watches, kernel keyrings): the sysctl.d(5)
// drop-in setup installs and applies, and the check doctor makes.
package limits
