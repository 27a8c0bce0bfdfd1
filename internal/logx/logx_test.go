package logx

import (
	"bytes"
	"log/slog"
	"testing"
)

func TestOrDiscard(t *testing.T) {
	OrDiscard(nil).Error("dropped") // must not panic
	var b bytes.Buffer
	l := slog.New(slog.NewTextHandler(&b, nil))
	if got := OrDiscard(l); got != l {
		t.Errorf("OrDiscard(l) = %p, want l (%p)", got, l)
	}
}
