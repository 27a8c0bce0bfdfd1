// Package gitlab is the GitLab Runner custom-executor contract: the
// environment gitlab-runner passes to each stage, the exit codes it expects
// and the job identity it vouches for (JOB_RESPONSE_FILE), and the
// decisions built on it: the config stage's JSON, the [[runners]] section
// of config.toml, which image a job selects and whether it may, and the
// per-project cache and builds directories and runner binary a job's
// machine sees. Standard library only. Its only effects on the system are
// reading the job payload, looking for the host's gitlab-runner, and
// creating the per-project directories (JobMounts); the decisions are pure
// (PlanMounts, CheckImage, ParseProject).
//
// See https://docs.gitlab.com/runner/executors/custom.html
package gitlab
