package machine

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestGCAfterReboot: after a reboot the run directory (a tmpfs) is empty
// or gone while ROOT/.machines still holds a machine's storage. gc must
// remove that leftover, not fail to take its lock (issue 13, bug 3).
func TestGCAfterReboot(t *testing.T) {
	root := t.TempDir()
	runDir := filepath.Join(t.TempDir(), "run") // never created: as after a reboot
	m := &Manager{Root: root, RunDir: runDir, CgroupParent: "nrt-r-machine-gc-" + filepath.Base(root)}
	name := "nrt-rm-gc-0123456789ab"
	l := m.layout(name)
	if err := os.MkdirAll(filepath.Join(l.Tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	res, err := m.GC(context.Background(), 0)
	if err != nil {
		t.Fatalf("GC after a reboot: %v", err)
	}
	if len(res.Machines) != 1 || res.Machines[0] != name {
		t.Errorf("GC removed %q, want [%s]", res.Machines, name)
	}
	if _, err := os.Lstat(l.MachineDir); !os.IsNotExist(err) {
		t.Errorf("GC left %s (%v)", l.MachineDir, err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(l.Lock)); len(ents) != 0 {
		t.Errorf("GC left %d entries in %s", len(ents), filepath.Dir(l.Lock))
	}
}
