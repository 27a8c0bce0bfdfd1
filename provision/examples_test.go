package provision

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

// The example playbooks shipped in examples/ read without warnings and
// say what their comments promise.
func TestExamplePlaybooks(t *testing.T) {
	d, err := Discover([]string{"../examples"})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Warnings) > 0 {
		t.Errorf("Discover(examples) warnings: %q", d.Warnings)
	}
	want := map[string]Vars{
		"bookworm": {Suite: "bookworm"},
		"sid":      {Suite: "sid", Recreate: true},
		"postgres": {Suite: "bookworm", ServicePorts: []int{5432}},
		"redis":    {Suite: "bookworm", ServicePorts: []int{6379}},
	}
	for name, w := range want {
		p := d.Playbooks[name]
		if p == "" {
			t.Errorf("examples lack %s.yaml", name)
			continue
		}
		v, warns, err := ReadVars(p)
		if err != nil || len(warns) > 0 {
			t.Errorf("ReadVars(%s) = %v, %q", p, err, warns)
		}
		if v.Suite != w.Suite || v.Recreate != w.Recreate || !slices.Equal(v.ServicePorts, w.ServicePorts) {
			t.Errorf("ReadVars(%s) = %+v, want %+v", p, v, w)
		}
	}
}

// TestExampleBookwormRuns runs examples/bookworm.yaml through a
// maintenance of a copy of the cached bookworm image.
func TestExampleBookwormRuns(t *testing.T) {
	requireAnsible(t)
	root := testutil.NewBtrfs(t, 6<<30)
	live := seedImage(t, root, "nrt-pv-bookworm")
	dir := t.TempDir()
	data, err := os.ReadFile("../examples/bookworm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writePlaybook(t, dir, "nrt-pv-bookworm.yaml", string(data))
	var out syncBuffer
	m := newMaintainer(t, root, dir, &out)
	m.Store = &bootstrap.Store{Root: root}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if err := m.Maintain(ctx, "nrt-pv-bookworm"); err != nil {
		t.Fatalf("Maintain: %v\n%s", err, out.String())
	}
	for _, p := range []string{"usr/bin/gcc", "usr/bin/make", "usr/bin/git", "usr/bin/curl"} {
		if _, err := os.Stat(filepath.Join(live, p)); err != nil {
			t.Errorf("image lacks %s: %v", p, err)
		}
	}
	if debs, _ := filepath.Glob(filepath.Join(live, "var/cache/apt/archives/*.deb")); len(debs) > 0 {
		t.Errorf("the package cache was not emptied: %s", strings.Join(debs[:1], " "))
	}
}
