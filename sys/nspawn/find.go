package nspawn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNotFound is returned (wrapped) when there is no systemd-nspawn
// program: on Debian it comes with the systemd-container package.
var ErrNotFound = errors.New("systemd-nspawn not found")

// standardPath is where programs are looked for after $PATH (gitlab-runner
// may run us with a short one), and the PATH systemd-nspawn runs with.
const standardPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// LookPath returns the absolute path of the systemd-nspawn program:
// binary itself when it holds a '/', else the first executable regular
// file of that name in $PATH (absolute entries only), then in the
// standard directories. Empty binary means "systemd-nspawn". Not found is
// ErrNotFound.
func LookPath(binary string) (string, error) {
	if binary == "" {
		binary = "systemd-nspawn"
	}
	if strings.Contains(binary, "/") {
		p, err := filepath.Abs(binary)
		if err == nil && isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("%s: %w (not an executable file)", binary, ErrNotFound)
	}
	for _, dir := range filepath.SplitList(os.Getenv("PATH") + ":" + standardPath) {
		if !filepath.IsAbs(dir) {
			continue
		}
		if p := filepath.Join(dir, binary); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w on PATH", binary, ErrNotFound)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Program is a systemd-nspawn found by Find.
type Program struct {
	// Path is absolute: start this one, its version is Version.
	Path string
	// Version is the major version (252), 0 when --version did not say.
	Version int
}

// Find looks binary up (LookPath) and asks that very program for its
// version, so that what is started is what was probed.
func Find(ctx context.Context, binary string) (Program, error) {
	path, err := LookPath(binary)
	if err != nil {
		return Program{}, err
	}
	v, err := Version(ctx, path)
	if err != nil {
		return Program{}, err
	}
	return Program{Path: path, Version: v}, nil
}

// Version runs path --version and returns its major version, 0 when the
// output cannot be read. path is a program LookPath returned.
func Version(ctx context.Context, path string) (int, error) {
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return 0, fmt.Errorf("%s --version: %w", path, err)
	}
	return ParseVersion(string(out)), nil
}

// ParseVersion returns systemd-nspawn's major version from its --version output
// ("systemd 252 (252.38-1~deb12u1)"), or 0 when it cannot be read.
func ParseVersion(out string) int {
	const prefix = "systemd "
	if len(out) < len(prefix) || out[:len(prefix)] != prefix {
		return 0
	}
	rest := out[len(prefix):]
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	n, err := strconv.Atoi(rest[:end])
	if err != nil {
		return 0
	}
	return n
}
