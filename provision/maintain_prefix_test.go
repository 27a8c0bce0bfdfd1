package provision

import (
	"bytes"
	"testing"
)

func TestLinePrefix(t *testing.T) {
	var b bytes.Buffer
	p := &linePrefix{w: &b, prefix: "> "}
	for _, s := range []string{"a\nb", "c\n", "\n", "d"} {
		if n, err := p.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got, want := b.String(), "> a\n> bc\n> \n"; got != want {
		t.Errorf("linePrefix wrote %q, want %q", got, want)
	}
}
