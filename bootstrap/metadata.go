package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
)

// Meta is what the store remembers about an image, in ROOT/.meta/NAME.json.
type Meta struct {
	Created    time.Time `json:"created,omitzero"`
	Suite      string    `json:"suite,omitempty"`
	Mirror     string    `json:"mirror,omitempty"`
	Packages   []string  `json:"packages,omitempty"`
	Maintained time.Time `json:"maintained,omitzero"`
	// ServicePorts are the TCP ports the image serves on when a job
	// uses it as a service (the playbook's nspawn_runner_service_ports,
	// recorded whenever the playbook ran).
	ServicePorts []int `json:"service_ports,omitempty"`
}

// ReadMeta reads an image's metadata; a missing file is an empty Meta.
func (s *Store) ReadMeta(name string) (Meta, error) {
	if err := config.CheckImageName(name); err != nil {
		return Meta{}, err
	}
	var m Meta
	data, err := os.ReadFile(s.metaPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("read metadata of %s: %w", name, err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return Meta{}, fmt.Errorf("read metadata of %s: %s: %w", name, s.metaPath(name), err)
	}
	return m, nil
}

// WriteMeta replaces an image's metadata atomically (a temporary file
// renamed over the old one, so a reader never sees half a file).
func (s *Store) WriteMeta(name string, m Meta) error {
	if err := config.CheckImageName(name); err != nil {
		return err
	}
	dir := s.path(metaDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write metadata of %s: %w", name, err)
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("write metadata of %s: %w", name, err)
	}
	f, err := os.CreateTemp(dir, "."+name+".json-*")
	if err != nil {
		return fmt.Errorf("write metadata of %s: %w", name, err)
	}
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), s.metaPath(name))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write metadata of %s: %w", name, err)
	}
	return nil
}

func (s *Store) metaPath(name string) string {
	return filepath.Join(s.path(metaDir), name+".json")
}
