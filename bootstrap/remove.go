package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

func (s *Store) remove(ctx context.Context, name string) error {
	if _, err := s.Path(name); err != nil {
		return err
	}
	unlock, err := s.Lock(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.CleanWorkspaces(ctx, name); err != nil {
		s.log().Warn("cleaning stale workspaces", "err", err)
	}
	p, err := s.Path(name) // again: it may have gone while we waited
	if err != nil {
		return err
	}
	// Move it aside first, in one rename: the name is gone at once, and a
	// removal that fails halfway leaves a retired tree for gc, not a
	// half-deleted image that prepare could still pick.
	aside := s.path(retiredPrefix + name + "-" + strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := rename(p, aside, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("remove image %s: rename %s -> %s: %w", name, p, aside, err)
	}
	if err := os.Remove(s.metaPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log().Warn("removing image metadata", "image", name, "err", err)
	}
	s.log().Info("removing image", "image", name, "path", p)
	if err := s.RemoveTree(aside); err != nil {
		return fmt.Errorf("remove image %s: %w (the image is gone; gc removes the rest)", name, err)
	}
	return nil
}
