package runstage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/nspawn-runner/nspawn-runner/gitlab"
	"github.com/nspawn-runner/nspawn-runner/internal/stagetrace"
	"github.com/nspawn-runner/nspawn-runner/stage"
)

// Job is the identity of the job a stage works on: --id (idFlag), else
// the runner's job payload, else, when the configuration opts in
// (gitlab.job_id_from_variables), job variables.
func Job(getenv func(string) string, idFlag string, fromVariables bool) (gitlab.Job, error) {
	job, err := gitlab.JobFromEnv(getenv, gitlab.JobSources{Flag: idFlag, Variables: fromVariables})
	if errors.Is(err, gitlab.ErrNoJobID) && !fromVariables {
		return job, fmt.Errorf("%w; with a gitlab-runner too old to set it, gitlab.job_id_from_variables: true in the config takes the id from CUSTOM_ENV_CI_JOB_ID (a job can then reach other jobs' machines: see the README)", err)
	}
	return job, err
}

// Stage is the run stage of command line c: the job (Job), the script
// and stage name from c.Args, then run, whose *stage.ExitError becomes
// the *gitlab.BuildFailure that gitlab.ExitCodes maps.
func Stage(ctx context.Context, getenv func(string) string, c Command, fromVariables bool, stdout, stderr io.Writer, run func(context.Context, stage.Request) error) error {
	job, err := Job(getenv, c.ID, fromVariables)
	if err != nil {
		return err
	}
	// The script's output goes straight from the processes in the
	// machine to our own stdout and stderr, unbuffered: files.
	out, ok1 := stdout.(*os.File)
	errOut, ok2 := stderr.(*os.File)
	if !ok1 || !ok2 {
		return errors.New("standard output and error must be files")
	}
	script, name, err := gitlab.RunArgs(c.Args)
	if err != nil {
		return err
	}
	stagetrace.Mark("job")
	err = run(ctx, stage.Request{JobID: job.ID, Key: job.Key, Script: script, Stage: name, Stdout: out, Stderr: errOut})
	stagetrace.Mark("teardown")
	var ee *stage.ExitError
	if errors.As(err, &ee) {
		return &gitlab.BuildFailure{Code: ee.Code}
	}
	return err
}
