// Package stage runs one stage script of a job in the job's machine: the
// run stage of gitlab-runner's custom executor, which starts once per
// stage of every job (ten or more times a job), so its process start is
// on every job's critical path.
//
// It needs nothing of the configuration but the run directory: the
// machine's record (machine/state, written by prepare) says the rest. Its
// dependency graph is the standard library, golang.org/x/sys and sys/*
// (layout_test.go holds it so), which lets cmd/nspawn-runner-stage link
// only what a stage needs; cmd/nspawn-runner's run calls the same Run
// through machine.Manager.Run.
package stage
