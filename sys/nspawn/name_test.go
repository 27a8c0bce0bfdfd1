package nspawn

import (
	"strings"
	"testing"
)

func TestMachineName(t *testing.T) {
	x64 := strings.Repeat("x", 64)
	for _, tc := range []struct{ prefix, name, suffix, want string }{
		{"nspawn-runner-maint-", "bookworm", "", "nspawn-runner-maint-bookworm"},
		{"nspawn-runner-maint-", "a.b_c+d", "", "nspawn-runner-maint-a-b-c-d"},
		{"nspawn-runner-maint-", "x+", "", "nspawn-runner-maint-x"},
		// 63, not 64: the limit the old maintenance name had wrong.
		{"nspawn-runner-maint-", x64, "", "nspawn-runner-maint-" + strings.Repeat("x", 43)},
		{"nrlogin-", x64, "-0123abcd", "nrlogin-" + strings.Repeat("x", 46) + "-0123abcd"},
		{"nr-", "123", "-0123456789ab", "nr-123-0123456789ab"},
		{"", "_a_", "", "a"},
		{"img-", "café", "", "img-caf"},
	} {
		got, err := MachineName(tc.prefix, tc.name, tc.suffix)
		if err != nil || got != tc.want {
			t.Errorf("MachineName(%q, %q, %q) = %q, %v; want %q", tc.prefix, tc.name, tc.suffix, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ prefix, name, suffix string }{
		{"a/", "b", ""},
		{"", "", ""},
		{"", "-", ""},
		{strings.Repeat("p", 60), "x", "-suffix"},
		{"nr-", "x", "-"},
		{"", strings.Repeat("é", 40), "-1"},
	} {
		if got, err := MachineName(tc.prefix, tc.name, tc.suffix); err == nil {
			t.Errorf("MachineName(%q, %q, %q) = %q, want an error", tc.prefix, tc.name, tc.suffix, got)
		}
	}
}

func TestCheckMachineName(t *testing.T) {
	for _, n := range []string{"", "-a", "a-", "a/b", "..", "a.b", "a b", "a_b", strings.Repeat("a", 64), "é"} {
		if CheckMachineName(n) == nil {
			t.Errorf("CheckMachineName(%q) accepted", n)
		}
	}
	for _, n := range []string{"a", "nr-1-0123456789ab", "Nr--X", strings.Repeat("a", 63)} {
		if err := CheckMachineName(n); err != nil {
			t.Errorf("CheckMachineName(%q) = %v", n, err)
		}
	}
}

func FuzzMachineName(f *testing.F) {
	f.Add("nr-", "a.b_c", "-1")
	f.Fuzz(func(t *testing.T, prefix, name, suffix string) {
		n, err := MachineName(prefix, name, suffix)
		if err != nil {
			return
		}
		if CheckMachineName(n) != nil || len(n) > MaxMachineName || !strings.HasPrefix(n, prefix) || !strings.HasSuffix(n, suffix) {
			t.Fatalf("MachineName(%q, %q, %q) = %q", prefix, name, suffix, n)
		}
	})
}
