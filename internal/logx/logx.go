// Package logx holds the one logging helper the orchestration packages
// share (sys/* never log).
package logx

import "log/slog"

// OrDiscard returns l, or a logger that drops everything when l is nil:
// a zero-valued struct with a Log field logs nothing.
func OrDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
