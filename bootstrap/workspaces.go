package bootstrap

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/sys/atomicfile"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
)

// Workspace makes a hidden, empty ROOT/.tmp-NAME-RANDOM to build an image
// aside: a btrfs subvolume when the root is on btrfs, a directory elsewhere.
// The caller holds Lock(name) while the workspace exists: a workspace whose
// image lock is free is debris of a killed process, and CleanWorkspaces
// removes it.
func (s *Store) Workspace(name string) (string, error) {
	if err := config.CheckImageName(name); err != nil {
		return "", err
	}
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		return "", fmt.Errorf("workspace for %s: %w", name, err)
	}
	p := s.path(tmpPrefix + name + "-" + randomSuffix())
	onBtrfs, err := btrfs.IsBtrfs(s.Root)
	if err != nil {
		return "", fmt.Errorf("workspace for %s: %w", name, err)
	}
	if onBtrfs {
		if err := btrfs.Create(p); err != nil {
			return "", fmt.Errorf("workspace for %s: %w", name, err)
		}
		// debootstrap and nspawn want the root of a tree to be 0755.
		if err := os.Chmod(p, 0o755); err != nil {
			return "", fmt.Errorf("workspace for %s: %w", name, err)
		}
		return p, nil
	}
	if err := os.Mkdir(p, 0o755); err != nil {
		return "", fmt.Errorf("workspace for %s: %w", name, err)
	}
	return p, nil
}

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// checkWorkspace makes sure ws is a workspace of this store, so that a
// caller's mistake can never rename some other tree into the root.
func (s *Store) checkWorkspace(ws string) error {
	if filepath.Dir(filepath.Clean(ws)) != filepath.Clean(s.Root) || !strings.HasPrefix(filepath.Base(ws), tmpPrefix) {
		return fmt.Errorf("%s is not a workspace of %s", ws, s.Root)
	}
	return nil
}

// Install renames a finished workspace into place as image name. It fails
// with ErrExists when the image exists (renameat2 RENAME_NOREPLACE makes
// that check and the rename one atomic step). The caller holds Lock(name).
func (s *Store) Install(name, workspace string) error {
	if err := config.CheckImageName(name); err != nil {
		return err
	}
	if err := s.checkWorkspace(workspace); err != nil {
		return fmt.Errorf("install image %s: %w", name, err)
	}
	dst := s.path(name)
	if err := atomicfile.Rename(workspace, dst, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("install image %s: %s exists: %w", name, dst, ErrExists)
		}
		return fmt.Errorf("install image %s: rename %s -> %s: %w", name, workspace, dst, err)
	}
	return nil
}

// Replace swaps a finished workspace with image name in one atomic step
// (renameat2 RENAME_EXCHANGE: at every instant ROOT/NAME is either the whole
// old image or the whole new one), and moves the old tree aside to
// ROOT/.retired-NAME-UNIXNANO, whose path it returns. Machines started from
// the old image keep it; a gc that knows the machines deletes it once none
// uses it. When the image does not exist, Replace installs the workspace
// and returns "". The caller holds Lock(name).
//
// The new tree is first renamed to ROOT/.swap-NAME-UNIXNANO, and the
// exchange leaves the old tree there: so no failure of any step can leave
// the old image, which machines and logins may be using, under a workspace
// name, where debris cleaning would kill what runs in it and delete it.
// A .swap- tree is only ever retired (renamed to .retired-) by cleaning.
// When only that last move fails, the error comes with the .swap- path.
func (s *Store) Replace(name, workspace string) (retired string, err error) {
	if err := config.CheckImageName(name); err != nil {
		return "", err
	}
	if err := s.checkWorkspace(workspace); err != nil {
		return "", fmt.Errorf("replace image %s: %w", name, err)
	}
	dst := s.path(name)
	if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
		return "", s.Install(name, workspace)
	}
	suffix := strconv.FormatInt(time.Now().UnixNano(), 10)
	swap := s.path(swapPrefix + name + "-" + suffix)
	if err := s.rename(workspace, swap, unix.RENAME_NOREPLACE); err != nil {
		return "", fmt.Errorf("replace image %s: rename %s -> %s: %w", name, workspace, swap, err)
	}
	if err := s.rename(swap, dst, unix.RENAME_EXCHANGE); err != nil {
		// Nothing was swapped: the workspace gets its name back for the
		// caller to remove. Should that fail too, the unused new tree is
		// retired by the next cleaning and deleted by gc.
		if berr := s.rename(swap, workspace, unix.RENAME_NOREPLACE); berr != nil {
			s.log().Warn("the new tree stays aside until cleaning retires it", "image", name, "path", swap, "err", berr)
		}
		return "", fmt.Errorf("replace image %s: exchange %s <-> %s: %w", name, swap, dst, err)
	}
	retired = s.path(retiredPrefix + name + "-" + suffix)
	if err := s.rename(swap, retired, unix.RENAME_NOREPLACE); err != nil {
		return swap, fmt.Errorf("replace image %s: move the old tree %s aside: %w (the next create, remove, maintenance or gc of images retires it)", name, swap, err)
	}
	return retired, nil
}

// retiredPath is a new name for a retired tree of image name.
func (s *Store) retiredPath(name string) string {
	return s.path(retiredPrefix + name + "-" + strconv.FormatInt(time.Now().UnixNano(), 10))
}

// rename is renameat2(2), or the test hook.
func (s *Store) rename(from, to string, flags uint) error {
	if s.renameHook != nil {
		return s.renameHook(from, to, flags)
	}
	return atomicfile.Rename(from, to, flags)
}
