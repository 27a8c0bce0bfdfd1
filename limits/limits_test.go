package limits

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/sys/sysctl"
)

// fakeProc lays out a /proc/sys-like tree with the given values.
func fakeProc(t *testing.T, values map[string]string) sysctl.Dir {
	t.Helper()
	d := sysctl.Dir(t.TempDir())
	for name, v := range values {
		p, err := d.Path(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func TestInstall(t *testing.T) {
	// Debian's defaults, except watches already higher than we want.
	d := fakeProc(t, map[string]string{
		"fs.inotify.max_user_instances": "128",
		"fs.inotify.max_user_watches":   "4000000",
		"kernel.keys.maxkeys":           "200",
		// kernel.keys.maxbytes missing: reported, not fatal.
	})
	path := filepath.Join(t.TempDir(), "sysctl.d", "60-nspawn-runner.conf")
	got, err := Install(path, d)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, DropInText()) {
		t.Fatalf("drop-in = %q, want %q", b, DropInText())
	}
	settings, err := sysctl.Parse(bytes.NewReader(b))
	if err != nil || len(settings) != len(Wanted) {
		t.Fatalf("drop-in parses to %+v, %v; want the %d limits", settings, err, len(Wanted))
	}
	for i, s := range settings {
		if s.Name != Wanted[i].Name || s.Value != itoa(Wanted[i].Want) {
			t.Errorf("drop-in line %d = %s = %s, want %s = %d", i, s.Name, s.Value, Wanted[i].Name, Wanted[i].Want)
		}
	}
	want := map[string]struct {
		before, after int64
		raised, err   bool
	}{
		"fs.inotify.max_user_instances": {128, 8192, true, false},
		"fs.inotify.max_user_watches":   {4000000, 4000000, false, false},
		"kernel.keys.maxkeys":           {200, 20000, true, false},
		"kernel.keys.maxbytes":          {0, 0, false, true},
	}
	for _, a := range got {
		w := want[a.Name]
		if a.Before != w.before || a.After != w.after || a.Raised() != w.raised || (a.Err != nil) != w.err {
			t.Errorf("%s: before %d after %d raised %v err %v; want %d %d %v err %v", a.Name, a.Before, a.After, a.Raised(), a.Err, w.before, w.after, w.raised, w.err)
		}
	}
	if v, _ := d.Get("fs.inotify.max_user_watches"); v != "4000000" {
		t.Errorf("a higher limit was changed to %s", v)
	}
	// Again: nothing to raise, the file is rewritten the same.
	again, err := Install(path, d)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range again {
		if a.Raised() {
			t.Errorf("second install raised %s", a.Name)
		}
	}
	if short := Check(d); len(short) != 1 || short[0].Name != "kernel.keys.maxbytes" || short[0].Err == nil {
		t.Errorf("Check = %+v, want only the missing kernel.keys.maxbytes", short)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("drop-in directory holds %d entries, want 1 (no temporary files left)", len(entries))
	}
}

func TestCheckLow(t *testing.T) {
	d := fakeProc(t, map[string]string{
		"fs.inotify.max_user_instances": "128",
		"fs.inotify.max_user_watches":   "1048576",
		"kernel.keys.maxkeys":           "20000",
		"kernel.keys.maxbytes":          "2000000",
	})
	short := Check(d)
	if len(short) != 1 || short[0].Name != "fs.inotify.max_user_instances" || short[0].Have != 128 {
		t.Fatalf("Check = %+v, want max_user_instances at 128", short)
	}
}

func TestDropInText(t *testing.T) {
	s := string(DropInText())
	for _, l := range Wanted {
		if !strings.Contains(s, l.Name+" = ") {
			t.Errorf("drop-in lacks %s", l.Name)
		}
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
