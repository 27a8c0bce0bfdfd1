// Package gitlab is the GitLab Runner custom-executor contract: the
// environment gitlab-runner passes to each stage, the exit codes it expects
// and the job identity it vouches for. Standard library only.
//
// See https://docs.gitlab.com/runner/executors/custom.html
package gitlab
