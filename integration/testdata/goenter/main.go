// Command goenter is the least a run stage written in Go can do, for
// BenchmarkStageBreakdown: start the Go runtime, open the machine
// leader's pidfd, enter its namespaces from a locked thread and run
// bash -c true there, then exit with its status. No record, script,
// cgroup, signals or configuration: the floor of any Go stage executable.
//
//	goenter LEADER_PID
package main

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

func main() {
	pid, err := strconv.Atoi(os.Args[1])
	if err != nil {
		os.Exit(2)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		os.Exit(2)
	}
	done := make(chan int)
	go func() {
		runtime.LockOSThread()
		if unix.Unshare(unix.CLONE_FS) != nil ||
			unix.Setns(fd, unix.CLONE_NEWNS|unix.CLONE_NEWPID|unix.CLONE_NEWNET|unix.CLONE_NEWUTS|unix.CLONE_NEWIPC|unix.CLONE_NEWCGROUP) != nil {
			done <- 2
			return
		}
		cmd := exec.Command("/bin/bash", "-c", "true")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if cmd.Run() != nil {
			done <- 1
			return
		}
		done <- 0
	}()
	os.Exit(<-done)
}
