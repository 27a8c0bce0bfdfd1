package gitlab

import (
	"errors"
	"fmt"
	"os"
	"strconv"
)

// Defaults gitlab-runner uses for the two exit codes.
const (
	DefaultBuildFailureExitCode  = 1
	DefaultSystemFailureExitCode = 2
)

// BuildFailure is the job script's own non-zero exit: the only error that
// is a build failure. Everything else is a system failure.
type BuildFailure struct {
	Code int
}

func (e *BuildFailure) Error() string {
	return fmt.Sprintf("job script exited with code %d", e.Code)
}

// ExitCodes are the exit codes and code file of one stage.
type ExitCodes struct {
	BuildFailure  int
	SystemFailure int
	// CodeFile receives the script's own exit code on a build failure.
	CodeFile string
}

// ExitCodesFromEnv reads BUILD_FAILURE_EXIT_CODE, SYSTEM_FAILURE_EXIT_CODE
// and BUILD_EXIT_CODE_FILE, with gitlab-runner's defaults where unset.
func ExitCodesFromEnv(getenv func(string) string) ExitCodes {
	code := func(key string, def int) int {
		if n, err := strconv.Atoi(getenv(key)); err == nil && n > 0 && n < 256 {
			return n
		}
		return def
	}
	return ExitCodes{
		BuildFailure:  code("BUILD_FAILURE_EXIT_CODE", DefaultBuildFailureExitCode),
		SystemFailure: code("SYSTEM_FAILURE_EXIT_CODE", DefaultSystemFailureExitCode),
		CodeFile:      getenv("BUILD_EXIT_CODE_FILE"),
	}
}

// Exit maps the outcome of a stage to the process exit code: 0 for
// success, BuildFailure (after writing the code file) for the script's own
// failure, SystemFailure for anything else, including a code file that
// cannot be written.
func (x ExitCodes) Exit(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var bf *BuildFailure
	if !errors.As(err, &bf) {
		return x.SystemFailure, err
	}
	if x.CodeFile != "" {
		if werr := os.WriteFile(x.CodeFile, []byte(strconv.Itoa(bf.Code)+"\n"), 0o644); werr != nil {
			return x.SystemFailure, fmt.Errorf("write BUILD_EXIT_CODE_FILE: %w", werr)
		}
	}
	return x.BuildFailure, nil
}
