package bootstrap

import (
	"strings"
	"testing"
)

func TestWorkspaceImage(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{".tmp-bookworm-0123abcd", "bookworm"},
		{".tmp-my-image-0123abcd", "my-image"},
		{".tmp-a.b+c-ff", "a.b+c"},
		{".tmp-", ""},
		{".tmp-x", ""},
	} {
		if got := workspaceImage(tc.in); got != tc.want {
			t.Errorf("workspaceImage(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestProgress(t *testing.T) {
	lines := []string{
		"I: Retrieving InRelease ",
		"I: Checking Release signature",
		"I: Retrieving Packages ",
		"I: Validating Packages ",
		"I: Resolving dependencies of required packages...",
		"I: Retrieving adduser 3.134",
		"I: Validating adduser 3.134",
		"I: Retrieving apt 2.6.1",
		"I: Validating apt 2.6.1",
		"I: Extracting adduser...",
		"I: Extracting apt...",
		"I: Installing core packages...",
		"I: Unpacking required packages...",
		"I: Unpacking adduser...",
		"W: Failure trying to run: chroot x",
		"dpkg: warning: something",
		"I: Configuring required packages...",
		"I: Configuring apt...",
		"I: Base system installed successfully.",
	}
	var plain, live strings.Builder
	pp := &progress{w: &plain}
	pl := &progress{w: &live, interactive: true}
	for _, l := range lines {
		if ev, ok := ParseLine(l); ok {
			pp.event(ev)
			pl.event(ev)
		}
	}
	pp.clear()
	pl.clear()
	want := `debootstrap: reading the package lists
debootstrap: retrieving packages
debootstrap: retrieved 2 packages
debootstrap: extracting packages
debootstrap: installing core packages
debootstrap: unpacking required packages
debootstrap: W: Failure trying to run: chroot x
debootstrap: configuring required packages
debootstrap: base system installed
`
	if plain.String() != want {
		t.Errorf("progress =\n%s\nwant\n%s", plain.String(), want)
	}
	for _, s := range []string{"\r\x1b[K  retrieving packages 2 apt", "\r\x1b[K  extracting packages 2/2 apt", "\r\x1b[Kdebootstrap: installing core packages\n"} {
		if !strings.Contains(live.String(), s) {
			t.Errorf("live progress lacks %q:\n%q", s, live.String())
		}
	}
	if strings.Contains(plain.String(), "\r") {
		t.Errorf("non-interactive progress redraws lines: %q", plain.String())
	}
}
