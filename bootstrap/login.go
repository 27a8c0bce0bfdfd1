package bootstrap

import (
	"context"
	"fmt"
)

// ExitError is the non-zero exit status of a command run with Login.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("command exited with status %d", e.Code) }

// ExitCode is the status the caller should exit with.
func (e *ExitError) ExitCode() int { return e.Code }

// Login runs systemd-nspawn on the image itself (not a snapshot: changes
// stay), with stdio passed through: argv when given, and its non-zero exit
// status as *ExitError, else an interactive shell.
func (s *Store) Login(ctx context.Context, name string, argv []string) error {
	return s.login(ctx, name, argv)
}

// Remove deletes an image and its metadata at once (Retire, then delete
// the tree). It takes the image lock, so it waits for a create or
// maintenance of the same image to finish. Where machines may be running
// from the image, use Retire and let the machine manager delete the tree.
func (s *Store) Remove(ctx context.Context, name string) error {
	return s.remove(ctx, name)
}
