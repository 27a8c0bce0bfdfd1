// Package cgroup manages cgroup v2 directories (Documentation/admin-guide/
// cgroup-v2.rst): finding the unified hierarchy (/sys/fs/cgroup, or
// /sys/fs/cgroup/unified on a hybrid host), creating a group, setting
// memory.high, memory.max, cpu.weight and pids.max where those controllers
// exist, listing and killing its processes (cgroup.kill, Linux 5.14, else
// SIGKILL to every pid until it is empty), and removing it.
package cgroup
