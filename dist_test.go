package nspawnrunner_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/config"
)

// dist/nspawn-runner.yaml, the commented default configuration the Debian
// package installs, loads as it is (all comments: the defaults) and, with
// every setting uncommented, gives exactly the defaults: a changed default
// fails here until the file says so.
func TestDistConfig(t *testing.T) {
	b, err := os.ReadFile("dist/nspawn-runner.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	asIs := filepath.Join(dir, "as-is.yaml")
	if err := os.WriteFile(asIs, b, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := config.Load(asIs, true)
	if err != nil {
		t.Fatalf("as shipped: %v", err)
	}
	if !reflect.DeepEqual(got, config.Default()) {
		t.Errorf("as shipped = %+v, want the defaults", got)
	}
	// Uncomment the settings.
	var lines []string
	settings := 0
	for _, l := range strings.Split(string(b), "\n") {
		// "#key: value" at the top, "#  key: value" in a section; comments
		// are "# text" or indented "  # text".
		nested := strings.HasPrefix(l, "#  ") && len(l) > 3 && l[3] != ' '
		if nested || strings.HasPrefix(l, "#") && len(l) > 1 && l[1] != ' ' && l[1] != '#' {
			l = l[1:]
			settings++
		}
		lines = append(lines, l)
	}
	if settings < 20 {
		t.Fatalf("only %d settings found commented out in the file", settings)
	}
	uncommented := filepath.Join(dir, "uncommented.yaml")
	if err := os.WriteFile(uncommented, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err = config.Load(uncommented, true)
	if err != nil {
		t.Fatalf("uncommented: %v", err)
	}
	want := config.Default()
	// Empty lists load as empty, not nil.
	if len(got.PlaybookDirs) == 0 && len(got.AllowedImages) == 0 && len(got.Bootstrap.Packages) == 0 {
		got.PlaybookDirs, got.AllowedImages, got.Bootstrap.Packages = want.PlaybookDirs, want.AllowedImages, want.Bootstrap.Packages
	}
	m := &got.Machine
	if len(m.AllowNetworks) == 0 && len(m.DenyNetworks) == 0 && len(m.DNS) == 0 {
		m.AllowNetworks, m.DenyNetworks, m.DNS = want.Machine.AllowNetworks, want.Machine.DenyNetworks, want.Machine.DNS
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("uncommented (%d settings) =\n%+v\nwant the defaults\n%+v", settings, got, want)
	}
}
