package network

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkAttachDetach: the network part of a private machine's prepare
// and cleanup, in a test-made host namespace.
func BenchmarkAttachDetach(b *testing.B) {
	w := newWorld(b)
	n := w.network(b)
	// The bridge and tables exist after the first attach, as on a runner.
	for i := 0; i <= b.N; i++ {
		if i == 1 {
			b.ResetTimer()
		}
		dir := filepath.Join(w.dir, fmt.Sprintf("b%d", i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			b.Fatal(err)
		}
		if _, err := n.Attach("b", dir); err != nil {
			b.Fatal(err)
		}
		if err := n.Detach("b", dir); err != nil {
			b.Fatal(err)
		}
	}
}
