package config

import "testing"

func TestCheckDebian(t *testing.T) {
	for _, tc := range []struct {
		check func(string) error
		in    string
		ok    bool
	}{
		{CheckSuite, "bookworm", true},
		{CheckSuite, "bookworm-backports", true},
		{CheckSuite, "Debian_12.1", true},
		{CheckSuite, "", false},
		{CheckSuite, "-x", false},
		{CheckSuite, "../etc", false},
		{CheckSuite, "a b", false},
		{CheckSuite, ".", false},
		{CheckMirror, "", true},
		{CheckMirror, "http://deb.example/debian", true},
		{CheckMirror, "file:///srv/mirror", true},
		{CheckMirror, "http://", false},
		{CheckMirror, "--no-check-gpg", false},
		{CheckMirror, "http://a b", false},
		{CheckMirror, "/srv/mirror", false},
		{CheckPackage, "git", true},
		{CheckPackage, "g++", true},
		{CheckPackage, "libc6.1-dev", true},
		{CheckPackage, "a", false},
		{CheckPackage, "-x", false},
		{CheckPackage, "Git", false},
		{CheckPackage, "rm -rf", false},
		{CheckPackage, "a,b", false},
	} {
		if err := tc.check(tc.in); (err == nil) != tc.ok {
			t.Errorf("check(%q) = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}
