package config

import (
	"fmt"
	"strings"
)

// CheckSuite refuses what debootstrap would not read as a suite name (a
// path, an option, an empty word): one word of letters, digits, '-', '.'
// and '_', starting with a letter or digit.
func CheckSuite(s string) error {
	ok := s != "" && len(s) <= 64 && isAlnum(s[0])
	for i := 0; ok && i < len(s); i++ {
		ok = isAlnum(s[i]) || s[i] == '-' || s[i] == '.' || s[i] == '_'
	}
	if !ok {
		return fmt.Errorf("invalid suite %q: want a Debian suite name like bookworm", s)
	}
	return nil
}

// CheckMirror refuses what debootstrap would not take as a mirror: an
// http(s), ftp or file URL without spaces or control characters. Empty
// means debootstrap's own default and is fine.
func CheckMirror(s string) error {
	if s == "" {
		return nil
	}
	if !strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		for _, scheme := range []string{"http://", "https://", "ftp://", "file:///"} {
			if strings.HasPrefix(s, scheme) && len(s) > len(scheme) {
				return nil
			}
		}
	}
	return fmt.Errorf("invalid mirror %q: want an http://, https://, ftp:// or file:/// URL", s)
}

// CheckPackage follows Debian policy 5.6.1 for package names: at least two
// characters, lower-case letters, digits, '+', '-' and '.', starting with
// a letter or digit.
func CheckPackage(p string) error {
	ok := len(p) >= 2
	for i := 0; ok && i < len(p); i++ {
		c := p[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '+' || c == '-' || c == '.')
	}
	if !ok {
		return fmt.Errorf("invalid Debian package name %q (Debian policy 5.6.1: lower-case letters, digits, '+', '-', '.')", p)
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
