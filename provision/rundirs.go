package provision

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nspawn-runner/nspawn-runner/sys/flock"
)

// A playbook run works in a directory of its own (inventory, ansible.cfg,
// the connection wrapper, ansible's local temporary files) under the
// runner's TempDir, named runDirPrefix*. The run holds the flock on its
// runDirLock file while it lasts: a run that was killed leaves its
// directory with the lock free, and CleanRunDirs (at the next playbook
// run, and in gc) removes it.
const (
	runDirPrefix = "nspawn-runner-ansible-"
	runDirLock   = ".lock"
)

// unlockedAge: directories without a lock file (an earlier version's,
// or a run killed before it had one) are removed when older than this.
const unlockedAge = time.Hour

// newRunDir makes a run directory in dir and takes its lock. The lock
// file is locked under another name and then renamed: runDirLock is
// never seen unlocked while its run lives.
func newRunDir(dir string) (string, *flock.Lock, error) {
	p, err := os.MkdirTemp(dir, runDirPrefix)
	if err != nil {
		return "", nil, err
	}
	tmp := filepath.Join(p, runDirLock+"-new")
	lk, err := flock.Try(tmp, flock.Exclusive)
	if err != nil {
		os.RemoveAll(p)
		return "", nil, err
	}
	if err := os.Rename(tmp, filepath.Join(p, runDirLock)); err != nil {
		os.RemoveAll(p)
		lk.Unlock()
		return "", nil, err
	}
	return p, lk, nil
}

// CleanRunDirs removes the run directories in dir (os.TempDir() when
// empty) that playbook runs left when they were killed, and returns their
// paths. Those of runs still going are left alone.
func CleanRunDirs(dir string, log *slog.Logger) ([]string, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("playbook run directories: %w", err)
	}
	var removed []string
	var errs []error
	now := time.Now()
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), runDirPrefix) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		lp := filepath.Join(p, runDirLock)
		var lk *flock.Lock
		if fi, err := os.Lstat(lp); err == nil {
			if !fi.Mode().IsRegular() {
				continue
			}
			if lk, err = flock.Try(lp, flock.Exclusive); err != nil {
				continue // busy: a run is going on
			}
		} else if fi, err := os.Lstat(p); err != nil || now.Sub(fi.ModTime()) < unlockedAge {
			continue
		}
		err := os.RemoveAll(p)
		if lk != nil {
			lk.Unlock()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove playbook run directory %s: %w", p, err))
			continue
		}
		if log != nil {
			log.Info("removed the directory of an interrupted playbook run", "path", p)
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}
