// Package netns creates, pins, enters and removes Linux network
// namespaces (network_namespaces(7)): unshare(2) with CLONE_NEWNET on a
// locked OS thread, a bind mount of /proc/thread-self/ns/net onto a file
// to keep the namespace alive without a process (as ip-netns(8) does), and
// setns(2) to run a function inside it.
//
// A network namespace is per thread: every function here that changes the
// thread's namespace runs on a goroutine locked to its OS thread and
// either restores the thread's namespace or leaves the thread locked so
// the Go runtime discards it (runtime.LockOSThread).
package netns
