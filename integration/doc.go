// Package integration drives whole CI jobs through the nspawn-runner
// binary the way gitlab-runner's custom executor does: config_exec, then
// prepare_exec (retried on system failure), run_exec once per stage with a
// bash script in the runner's style, and cleanup_exec, each in a per-job
// temporary directory with the runner's environment (BUILD_FAILURE_EXIT_CODE,
// SYSTEM_FAILURE_EXIT_CODE, BUILD_EXIT_CODE_FILE, JOB_RESPONSE_FILE,
// CONFIG_FILE, CUSTOM_ENV_*). The package has only tests; the tests need
// root, systemd-nspawn and btrfs, and skip without them outside CI.
package integration
