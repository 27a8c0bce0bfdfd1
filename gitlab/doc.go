// Package gitlab is the GitLab Runner custom-executor contract: the
// environment gitlab-runner passes to each stage, the exit codes it expects
// and the job identity it vouches for (JOB_RESPONSE_FILE), and the pure
// decisions built on it: the config stage's JSON, the [[runners]] section
// of config.toml, the per-project cache and builds directories and the
// runner binary a job's machine sees, and which images jobs may select.
// Standard library only; nothing here touches the system beyond reading the
// job payload.
//
// See https://docs.gitlab.com/runner/executors/custom.html
package gitlab
