package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

func TestImage(t *testing.T) {
	root := Image(t)
	for _, p := range []string{"usr/bin/bash", "usr/lib/systemd/systemd", "usr/bin/git", "usr/bin/python3"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("cached image lacks %s: %v", p, err)
		}
	}
}

func TestImageKey(t *testing.T) {
	a := imageKey("bookworm", []string{"a", "b"})
	if a == imageKey("trixie", []string{"a", "b"}) || a == imageKey("bookworm", []string{"a"}) {
		t.Errorf("imageKey does not depend on suite and packages: %s", a)
	}
}
