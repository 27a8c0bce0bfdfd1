package sysctl

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultDir is where the kernel exposes its parameters.
const DefaultDir = "/proc/sys"

// Dir is a tree of kernel parameters: DefaultDir, or a directory laid out
// like it (tests).
type Dir string

// dir is d, or DefaultDir when d is empty.
func (d Dir) dir() string {
	if d == "" {
		return DefaultDir
	}
	return string(d)
}

// Path is the file of the parameter name. Names with "..", empty
// components or a leading "/" are refused: they would leave the tree.
func (d Dir) Path(name string) (string, error) {
	rel := strings.ReplaceAll(strings.TrimSpace(name), ".", "/")
	if rel == "" || strings.HasPrefix(rel, "/") {
		return "", fmt.Errorf("sysctl %q: not a parameter name", name)
	}
	for _, c := range strings.Split(rel, "/") {
		if c == "" {
			return "", fmt.Errorf("sysctl %q: not a parameter name", name)
		}
	}
	return filepath.Join(d.dir(), rel), nil
}

// Get returns the value of the parameter name, trimmed of its trailing
// newline.
func (d Dir) Get(name string) (string, error) {
	p, err := d.Path(name)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", name, err)
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// GetInt returns the value of an integer parameter.
func (d Dir) GetInt(name string) (int64, error) {
	v, err := d.Get(name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("sysctl %s: value %q is not an integer", name, v)
	}
	return n, nil
}

// Set writes value to the parameter name in one write(2), as the kernel
// wants it (a partial write is an error).
func (d Dir) Set(name, value string) error {
	p, err := d.Path(name)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", name, err)
	}
	_, werr := f.Write([]byte(value + "\n"))
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// Setting is one "name = value" line of a sysctl.d(5) file.
type Setting struct {
	Name, Value string
	// IgnoreErrors is the "-" prefix: failing to set it is not an error.
	IgnoreErrors bool
}

// Parse reads a sysctl.d(5) file: "name = value" lines; "#" and ";" start
// comments; blank lines are skipped. A line without "=" is an error naming
// its number.
func Parse(r io.Reader) ([]Setting, error) {
	var out []Setting
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: %q is not name = value", n, line)
		}
		s := Setting{Name: strings.TrimSpace(k), Value: strings.TrimSpace(v)}
		if rest, ok := strings.CutPrefix(s.Name, "-"); ok {
			s.Name, s.IgnoreErrors = strings.TrimSpace(rest), true
		}
		if s.Name == "" {
			return nil, fmt.Errorf("line %d: no parameter name", n)
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// Format writes settings as a sysctl.d(5) file body.
func Format(w io.Writer, settings []Setting) error {
	for _, s := range settings {
		prefix := ""
		if s.IgnoreErrors {
			prefix = "-"
		}
		if _, err := fmt.Fprintf(w, "%s%s = %s\n", prefix, s.Name, s.Value); err != nil {
			return err
		}
	}
	return nil
}
