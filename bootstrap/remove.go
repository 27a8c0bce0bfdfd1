package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/atomicfile"
)

// Retire takes the image's name away in one rename: prepare cannot pick it
// any more, and machines already running from it keep their tree. It
// returns the retired tree (ROOT/.retired-NAME-TIME), which a caller that
// knows what machines run deletes once none uses it (machine.Manager's
// GCImages); a removal that fails halfway also leaves a retired tree for
// gc, never a half-deleted image.
func (s *Store) Retire(ctx context.Context, name string) (string, error) {
	if _, err := s.Path(name); err != nil {
		return "", err
	}
	unlock, err := s.Lock(ctx, name)
	if err != nil {
		return "", err
	}
	defer unlock()
	if err := s.CleanWorkspaces(ctx, name); err != nil {
		s.log().Warn("cleaning stale workspaces", "err", err)
	}
	p, err := s.Path(name) // again: it may have gone while we waited
	if err != nil {
		return "", err
	}
	aside := s.retiredPath(name)
	if err := atomicfile.Rename(p, aside, unix.RENAME_NOREPLACE); err != nil {
		return "", fmt.Errorf("remove image %s: rename %s -> %s: %w", name, p, aside, err)
	}
	if err := os.Remove(s.metaPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log().Warn("removing image metadata", "image", name, "err", err)
	}
	s.log().Info("retired image", "image", name, "path", aside)
	return aside, nil
}
