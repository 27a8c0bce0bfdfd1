package sysctl

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

func TestPath(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		ok         bool
	}{
		{"fs.inotify.max_user_instances", "/proc/sys/fs/inotify/max_user_instances", true},
		{"fs/inotify/max_user_watches", "/proc/sys/fs/inotify/max_user_watches", true},
		{" kernel.keys.maxkeys ", "/proc/sys/kernel/keys/maxkeys", true},
		{"", "", false},
		{"/etc/passwd", "", false},
		{"fs..x", "", false},
		{"fs/../../etc", "", false}, // ".." becomes empty components
	} {
		got, err := Dir("").Path(tc.name)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("Path(%q) = %q, %v; want %q, ok %v", tc.name, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseFormat(t *testing.T) {
	in := "# comment\n; other\n\nfs.inotify.max_user_instances = 8192\n-kernel.keys.maxkeys=20000\n  a.b =  c d  \n"
	got, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Setting{{"fs.inotify.max_user_instances", "8192", false}, {"kernel.keys.maxkeys", "20000", true}, {"a.b", "c d", false}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse = %+v, want %+v", got, want)
	}
	var b bytes.Buffer
	if err := Format(&b, got); err != nil {
		t.Fatal(err)
	}
	again, err := Parse(&b)
	if err != nil || !reflect.DeepEqual(again, want) {
		t.Fatalf("Parse(Format(x)) = %+v, %v; want %+v", again, err, want)
	}
	for _, bad := range []string{"novalue\n", " = 3\n", "- = 3\n"} {
		if s, err := Parse(strings.NewReader(bad)); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", bad, s)
		}
	}
}

func TestDirGetSet(t *testing.T) {
	d := Dir(t.TempDir())
	p := filepath.Join(string(d), "fs", "inotify")
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "max_user_instances"), []byte("128\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := d.GetInt("fs.inotify.max_user_instances"); err != nil || n != 128 {
		t.Fatalf("GetInt = %d, %v; want 128", n, err)
	}
	if err := d.Set("fs.inotify.max_user_instances", "8192"); err != nil {
		t.Fatal(err)
	}
	if v, err := d.Get("fs.inotify.max_user_instances"); err != nil || v != "8192" {
		t.Fatalf("Get after Set = %q, %v; want 8192", v, err)
	}
	if _, err := d.Get("fs.inotify.missing"); err == nil {
		t.Fatal("Get of a missing parameter succeeded")
	}
}

// The real /proc/sys: reads, and a write of the value a parameter already
// has (other tests on this host are never affected).
func TestProcSys(t *testing.T) {
	testutil.RequireRoot(t)
	var d Dir
	if v, err := d.Get("kernel.ostype"); err != nil || v != "Linux" {
		t.Fatalf("Get(kernel.ostype) = %q, %v", v, err)
	}
	n, err := d.GetInt("fs.inotify.max_user_watches")
	if err != nil || n <= 0 {
		t.Fatalf("GetInt(fs.inotify.max_user_watches) = %d, %v", n, err)
	}
	v, _ := d.Get("fs.inotify.max_user_watches")
	if err := d.Set("fs.inotify.max_user_watches", v); err != nil {
		t.Fatal(err)
	}
	if _, err := d.GetInt("kernel.ostype"); err == nil {
		t.Fatal("GetInt(kernel.ostype) succeeded")
	}
}
