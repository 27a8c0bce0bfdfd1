package bootstrap

import "fmt"

// ExitError is the non-zero exit status of a command run with Login.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("command exited with status %d", e.Code) }

// ExitCode is the status the caller should exit with.
func (e *ExitError) ExitCode() int { return e.Code }
