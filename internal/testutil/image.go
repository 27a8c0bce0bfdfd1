package testutil

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
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
//
// It is built the way chroot-create builds an image (bootstrap.Store.Create,
// with a store rooted in the cache entry and the image named "rootfs"), so
// the image every integration test starts from went through chroot-create.
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
	for _, d := range []string{dir, dir + ".tmp"} {
		if err := removeImageDir(d); err != nil {
			t.Fatal(err)
		}
	}
	tmp := dir + ".tmp"
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("building the cached test image in %s through chroot-create (about a minute, once)", dir)
	store := bootstrap.Store{Root: tmp}
	var progress strings.Builder
	o := bootstrap.CreateOptions{Suite: ImageSuite, Packages: pkgs, Progress: &progress}
	if err := store.Create(context.Background(), "rootfs", o); err != nil {
		t.Fatalf("create the cached test image: %v\n%s", err, progress.String())
	}
	if err := os.WriteFile(filepath.Join(tmp, "complete"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	return rootfs
}

// removeImageDir removes a half-built cache entry, through the store so
// that a subvolume or a mount a killed build left is handled.
func removeImageDir(d string) error {
	if _, err := os.Lstat(d); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	s := bootstrap.Store{Root: filepath.Dir(d)}
	return s.RemoveTree(d)
}
