package machine

import (
	"context"

	"github.com/nspawn-runner/nspawn-runner/stage"
)

// ErrDead is returned when a job's machine is no longer running.
var ErrDead = stage.ErrDead

// RunRequest is one stage to run in a job's machine.
type RunRequest = stage.Request

// Run runs a stage script in the job's machine: stage.Run, with the
// configuration's shell and memory limit for records of earlier binaries
// and the services' logs for CI_DEBUG_SERVICES.
func (m *Manager) Run(ctx context.Context, req RunRequest) error {
	return stage.Run(ctx, m.stageMachine(), req)
}

// stageMachine is what stage.Run needs of the manager.
func (m *Manager) stageMachine() stage.Machine {
	return stage.Machine{
		RunDir:      m.RunDir,
		NamePrefix:  m.NamePrefix,
		Shell:       m.Config.Shell,
		MemoryMax:   m.limits().MemoryMax,
		ServiceLogs: m.streamServiceLogs,
		Warn:        m.log().Warn,
	}
}
