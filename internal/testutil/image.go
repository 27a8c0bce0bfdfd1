package testutil

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/config"
)

// ImageSuite is the Debian suite of the cached test image.
const ImageSuite = "bookworm"

// ImagePackages are the packages of the cached test image.
func ImagePackages() []string {
	p := slices.Clone(config.BasePackages)
	slices.Sort(p)
	return p
}

// imageKey names a cached image by suite and package list, so a change of
// either builds a new one instead of reusing a stale tree.
func imageKey(suite string, pkgs []string) string {
	h := sha256.Sum256([]byte(suite + "\n" + strings.Join(pkgs, ",")))
	return suite + "-" + hex.EncodeToString(h[:6])
}

// Image returns the root of a debootstrapped Debian tree, built once and
// kept in CacheDir() between runs. Tests must treat it as read-only: copy
// or snapshot it into their own filesystem before changing anything.
func Image(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	RequireBinary(t, "debootstrap")
	pkgs := ImagePackages()
	dir := filepath.Join(CacheDir(), "image-"+imageKey(ImageSuite, pkgs))
	rootfs := filepath.Join(dir, "rootfs")
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return rootfs
	}
	unlock := Lock(t, dir+".lock")
	defer unlock()
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return rootfs
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"--variant=minbase", "--include=" + strings.Join(pkgs, ","), ImageSuite, filepath.Join(tmp, "rootfs")}
	name := "debootstrap"
	if p, err := exec.LookPath("eatmydata"); err == nil {
		args = append([]string{"debootstrap"}, args...)
		name = p
	}
	t.Logf("building the cached test image in %s (about a minute, once)", dir)
	cmd := exec.Command(name, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debootstrap: %v\n%s", err, tail(out, 4000))
	}
	if err := os.WriteFile(filepath.Join(tmp, "complete"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	return rootfs
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
