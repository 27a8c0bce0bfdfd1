package bootstrap

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/atomicfile"
)

// newTree makes a workspace of s for name holding the file gen.
func newTree(t *testing.T, s *Store, name, gen string) string {
	t.Helper()
	ws, err := s.Workspace(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ws, "gen"), []byte(gen), 0o644); err != nil {
		t.Fatal(err)
	}
	return ws
}

// Issue 13, bug 6: when moving the old tree aside fails after the
// exchange, that tree (maybe an overlay machine's lower layer, or a
// chroot-login's root) must never end up where debris cleaning kills what
// runs in it and deletes it: it stays a tree that only an in-use-checking
// gc deletes.
func TestReplaceRetireFails(t *testing.T) {
	for _, step := range []string{"stage", "exchange", "retire"} {
		t.Run(step, func(t *testing.T) {
			s := &Store{Root: filepath.Join(t.TempDir(), "images")}
			ctx := context.Background()
			unlock, err := s.Lock(ctx, "img")
			if err != nil {
				t.Fatal(err)
			}
			defer unlock()
			if err := s.Install("img", newTree(t, s, "img", "old")); err != nil {
				t.Fatal(err)
			}
			// A process working in the live image, as a chroot-login or
			// an overlay machine's nspawn would.
			user := exec.Command("sleep", "600")
			user.Dir = s.path("img")
			if err := user.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() {
				_ = user.Wait()
				close(exited)
			}()
			t.Cleanup(func() {
				_ = user.Process.Kill()
				<-exited
			})

			ws := newTree(t, s, "img", "new")
			eio := errors.New("injected EIO")
			s.renameHook = func(from, to string, flags uint) error {
				var this string
				switch {
				case flags == unix.RENAME_EXCHANGE:
					this = "exchange"
				case strings.HasPrefix(filepath.Base(to), retiredPrefix):
					this = "retire"
				default:
					this = "stage"
				}
				if this == step {
					return eio
				}
				return atomicfile.Rename(from, to, flags)
			}
			old, err := s.Replace("img", ws)
			s.renameHook = nil
			if !errors.Is(err, eio) {
				t.Fatalf("Replace with a failing %s = %q, %v, want the injected error", step, old, err)
			}
			gen, _ := os.ReadFile(filepath.Join(s.path("img"), "gen"))
			t.Logf("%s failed: image holds %q, old tree at %q, root holds %q", step, gen, old, dirNames(t, s.Root))

			// The debris cleaning of every command that does it, first
			// by the holder of the lock (the next create or maintenance),
			// then by anyone (gc).
			if err := s.CleanWorkspaces(ctx, "img"); err != nil {
				t.Fatal(err)
			}
			unlock()
			if err := s.CleanWorkspaces(ctx, ""); err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited:
				t.Fatalf("cleaning after a failed %s killed a process working in the old image", step)
			case <-time.After(500 * time.Millisecond):
			}
			// Wherever the old tree is, it still exists, under the image's
			// name or as a retired tree (which gc deletes once unused).
			trees := []string{s.path("img")}
			retired, err := s.Retired()
			if err != nil {
				t.Fatal(err)
			}
			trees = append(trees, retired...)
			found := false
			for _, tr := range trees {
				if g, err := os.ReadFile(filepath.Join(tr, "gen")); err == nil && string(g) == "old" {
					found = true
				}
			}
			if !found {
				t.Errorf("after a failed %s and cleaning, the old tree is gone: root holds %q", step, dirNames(t, s.Root))
			}
			for _, e := range dirNames(t, s.Root) {
				if strings.HasPrefix(e, tmpPrefix) {
					t.Errorf("cleaning left the workspace %s", e)
				}
			}
			if g, err := os.ReadFile(filepath.Join(s.path("img"), "gen")); err != nil || (string(g) != "old" && string(g) != "new") {
				t.Errorf("image holds %q, %v, want a whole tree", g, err)
			}
		})
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
