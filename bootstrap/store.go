package bootstrap

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/nspawn-runner/nspawn-runner/internal/logx"
)

// ErrNotFound is returned when an image does not exist.
var ErrNotFound = errors.New("image not found")

// NotFoundError is a missing image, with the images that do exist. It is
// ErrNotFound for errors.Is.
type NotFoundError struct {
	Name, Root string
	// Available are the images of Root, sorted; none when empty.
	Available []string
}

func (e *NotFoundError) Error() string {
	if len(e.Available) == 0 {
		return fmt.Sprintf("image %q not found in %s, which holds no image yet", e.Name, e.Root)
	}
	return fmt.Sprintf("image %q not found in %s; available: %s", e.Name, e.Root, strings.Join(e.Available, ", "))
}

// Is makes errors.Is(err, ErrNotFound) true.
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// ErrExists is returned when creating or installing an image that exists.
var ErrExists = errors.New("image already exists")

// Kinds of image.
const (
	KindSubvolume = "subvolume"
	KindDirectory = "directory"
)

// Internal names inside the root.
const (
	lockDir       = ".lock"
	metaDir       = ".meta"
	tmpPrefix     = ".tmp-"
	swapPrefix    = ".swap-"
	retiredPrefix = ".retired-"
)

// Store is the directory of base images.
type Store struct {
	// Root is the directory holding the images, one per name.
	Root string
	// Log receives what the store does; nil discards it.
	Log *slog.Logger
	// LoginPrefix starts the machine names of Login; empty means
	// DefaultLoginPrefix.
	LoginPrefix string
	// CgroupParent is where Login's systemd-nspawn gets a cgroup of its
	// own on hosts without systemd; empty means config.DefaultCgroupParent.
	CgroupParent string

	// renameHook, when set (by tests), runs instead of renameat2(2) in
	// Replace, to inject the failures of a real filesystem (EIO, ENOSPC,
	// EROFS) at each of its steps.
	renameHook func(from, to string, flags uint) error
}

func (s *Store) log() *slog.Logger {
	return logx.OrDiscard(s.Log)
}

// path joins an internal name to the root.
func (s *Store) path(name string) string { return filepath.Join(s.Root, name) }
