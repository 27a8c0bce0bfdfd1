package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/sys/atomicfile"
	"github.com/nspawn-runner/nspawn-runner/sys/flock"
)

// Retired returns the paths of the retired trees (replaced or removed
// images), oldest first, for gc to delete once no machine uses them.
func (s *Store) Retired() ([]string, error) {
	return s.hidden(retiredPrefix)
}

// hidden lists the entries of the root beginning with prefix.
func (s *Store) hidden(prefix string) ([]string, error) {
	ents, err := s.rootEntries()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) && e.IsDir() {
			out = append(out, s.path(e.Name()))
		}
	}
	slices.Sort(out)
	return out, nil
}

// RemoveTree deletes a tree inside the root: an image, a workspace or a
// retired tree. Anything mounted below it is unmounted first (a killed
// debootstrap leaves proc and sys mounted), nested btrfs subvolumes are
// deleted, and a subvolume is deleted as one. Paths outside the root, and
// the root itself, are refused.
func (s *Store) RemoveTree(path string) error {
	root := filepath.Clean(s.Root)
	path = filepath.Clean(path)
	if rel, err := filepath.Rel(root, path); err != nil || rel == "." || strings.HasPrefix(rel, "..") || strings.Contains(rel, string(filepath.Separator)) {
		return fmt.Errorf("remove %s: not an entry of the image root %s", path, root)
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if !fi.IsDir() {
		// A symlink is removed itself, never followed (nor are the mounts
		// below its target undone).
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		return nil
	}
	if err := unmountBelow(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return removeTree(path)
}

// CleanWorkspaces clears what a killed or failed create, maintenance or
// Replace left, for images whose lock nobody holds: it removes workspaces
// (ROOT/.tmp-NAME-*), killing first the processes still running inside
// (children of a killed debootstrap), and retires swap trees
// (ROOT/.swap-NAME-*, renamed to .retired-): those may hold an image that
// was live, so only a gc that knows the machines deletes them; and it
// kills and removes the cgroups of a killed chroot-login or playbook run
// (OwnCgroup). held names
// an image whose lock the caller holds itself; its leftovers are debris
// too (the caller has made nothing yet) and are cleared.
func (s *Store) CleanWorkspaces(ctx context.Context, held string) error {
	var errs []error
	// First the cgroups of a killed chroot-login or playbook run
	// (OwnCgroup): an ansible-playbook that outlived a SIGKILLed
	// maintenance runs there, and would go on starting machines in the
	// workspace while it is being removed.
	groups, err := s.staleCgroups()
	if err != nil {
		errs = append(errs, err)
	}
	for name, rels := range groups {
		unlock := func() {}
		if name != held {
			unlock, err = s.TryLock(name)
			if errors.Is(err, flock.ErrBusy) {
				continue // in use by a login or maintenance right now
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := removeStaleCgroups(ctx, s.log(), rels); err != nil {
			errs = append(errs, err)
		}
		unlock()
	}
	ws, err := s.hidden(tmpPrefix)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	swaps, err := s.hidden(swapPrefix)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, p := range slices.Concat(ws, swaps) {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		name := workspaceImage(filepath.Base(p))
		if config.CheckImageName(name) != nil {
			continue
		}
		clear := s.removeDebris
		if strings.HasPrefix(filepath.Base(p), swapPrefix) {
			clear = s.retireSwap
		}
		if name == held {
			if err := clear(name, p); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		unlock, err := s.TryLock(name)
		if errors.Is(err, flock.ErrBusy) {
			continue // someone is building it right now
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// Listed before we took the lock: whoever held it last is gone.
		err = clear(name, p)
		unlock()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Store) removeDebris(_, p string) error {
	s.log().Info("removing a workspace left by an interrupted create or maintenance", "path", p)
	killInside(p)
	return s.RemoveTree(p)
}

// retireSwap renames a swap tree that a failed Replace left to a retired
// one: nothing is killed or deleted, since it may be an image in use.
func (s *Store) retireSwap(name, p string) error {
	to := s.path(retiredPrefix + strings.TrimPrefix(filepath.Base(p), swapPrefix))
	err := atomicfile.Rename(p, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		to = s.retiredPath(name)
		err = atomicfile.Rename(p, to, unix.RENAME_NOREPLACE)
	}
	if err != nil {
		return fmt.Errorf("retire %s: rename to %s: %w", p, to, err)
	}
	s.log().Info("retired a tree left by an interrupted image swap", "path", to)
	return nil
}

// workspaceImage returns NAME of ".tmp-NAME-RANDOM" or ".swap-NAME-TIME".
func workspaceImage(base string) string {
	rest := strings.TrimPrefix(strings.TrimPrefix(base, tmpPrefix), swapPrefix)
	if i := strings.LastIndexByte(rest, '-'); i > 0 {
		return rest[:i]
	}
	return ""
}
