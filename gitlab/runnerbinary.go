package gitlab

// RunnerBinary is the gitlab-runner that jobs get: the configured one
// (an error when it is missing or not executable), else gitlab-runner on
// pathEnv, else "" (caches and artifacts are disabled). Doctor reports it.
func RunnerBinary(configured, pathEnv string) (string, error) {
	return runnerBinary(configured, pathEnv)
}
