package nspawn

import (
	"fmt"
	"strings"
)

// MaxMachineName is the longest machine name nspawn-runner makes: a host
// name label (RFC 1035: at most 63 bytes). systemd-nspawn 252 itself takes
// 64 (HOST_NAME_MAX), but the machine name is also the machine's host
// name, and machine names are resolved as host names (nss-mymachines).
const MaxMachineName = 63

// MachineName joins prefix, name and suffix into a valid machine name:
// every byte of name that is not an ASCII letter, digit or '-' becomes
// '-', and name is cut so that the whole fits MaxMachineName. prefix and
// suffix are kept as they are (a fixed prefix, a unique suffix); a '-'
// that would start or end the result is dropped from name. The result is
// checked with CheckMachineName: an invalid prefix or suffix, or one too
// long to leave room, is an error.
func MachineName(prefix, name, suffix string) (string, error) {
	b := []byte(name)
	for i, c := range b {
		if !isNameByte(c) {
			b[i] = '-'
		}
	}
	if room := MaxMachineName - len(prefix) - len(suffix); len(b) > room {
		b = b[:max(room, 0)]
	}
	s := string(b)
	if prefix == "" {
		s = strings.TrimLeft(s, "-")
	}
	if suffix == "" {
		s = strings.TrimRight(s, "-")
	}
	full := prefix + s + suffix
	if err := CheckMachineName(full); err != nil {
		return "", fmt.Errorf("machine name from prefix %q and suffix %q: %w", prefix, suffix, err)
	}
	return full, nil
}

// CheckMachineName accepts 1 to MaxMachineName ASCII letters, digits and
// '-', neither first nor last: a host name label, which names no other
// directory, file or cgroup than its own when used in a path.
func CheckMachineName(name string) error {
	if name == "" || len(name) > MaxMachineName {
		return fmt.Errorf("invalid machine name %q: 1 to %d characters", name, MaxMachineName)
	}
	for i := 0; i < len(name); i++ {
		if !isNameByte(name[i]) {
			return fmt.Errorf("invalid machine name %q: letters, digits and '-' only", name)
		}
	}
	if name[0] == '-' || name[len(name)-1] == '-' {
		return fmt.Errorf("invalid machine name %q: starts or ends with '-'", name)
	}
	return nil
}

func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-'
}
