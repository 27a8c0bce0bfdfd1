// Package stagetrace marks the phases of one nspawn-runner process (the
// run stage's start-up, config, record, cgroup, entry into the machine,
// the script, the exit) for the breakdown benchmark
// (integration.BenchmarkStageBreakdown). In a normal build Mark and Flush
// are empty and inlined away: the product carries none of it. Built with
// -tags stagetrace, Mark records the wall clock and the process's minor
// page faults so far (getrusage(2) ru_minflt: on a paravirtualised host
// every fault costs several microseconds, and they are most of a short
// process's time), and Flush appends them as "NAME UNIXNANO MINFLT" lines
// to the file $NSPAWN_RUNNER_STAGETRACE names.
package stagetrace
