package config

import (
	"strings"
	"testing"
)

func TestCheckImageName(t *testing.T) {
	good := []string{"bookworm", "sid", "a", "Debian-12", "ubuntu_22.04", "img+extra", "a..b", strings.Repeat("x", 64)}
	for _, n := range good {
		if err := CheckImageName(n); err != nil {
			t.Errorf("CheckImageName(%q) = %v, want nil", n, err)
		}
	}
	bad := []string{"", ".", "..", "../../etc", "/etc", "a/b", ".hidden", "-flag", "_x", "a b", "a\nb", "a\x00b",
		"tab\there", "ümlaut", strings.Repeat("x", 65), "a:b", "a*", "~root"}
	for _, n := range bad {
		err := CheckImageName(n)
		if err == nil {
			t.Errorf("CheckImageName(%q) = nil, want an error", n)
			continue
		}
		if !strings.Contains(err.Error(), ImageNameRule) {
			t.Errorf("CheckImageName(%q) = %q, want it to name the rule", n, err)
		}
		if strings.ContainsAny(err.Error(), "\n\x00") {
			t.Errorf("CheckImageName(%q) error is not one printable line: %q", n, err)
		}
	}
}

func FuzzCheckImageName(f *testing.F) {
	for _, s := range []string{"bookworm", "../x", ".a", "a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if CheckImageName(name) != nil {
			return
		}
		if strings.ContainsAny(name, "/\x00 \n") || strings.HasPrefix(name, ".") || name == "" || len(name) > 64 {
			t.Errorf("CheckImageName(%q) accepted a name that could be a path", name)
		}
	})
}
