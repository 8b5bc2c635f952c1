// Package testlog gives tests a slog logger whose output is shown only when
// the test fails. The sink stays safe to write after the test has ended:
// MQTT client and hub goroutines outlive the test functions that started
// them, and writing to a finished test's t.Log panics.
package testlog

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
)

// Sink collects log output until its test ends.
type Sink struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	done bool
}

// Write keeps p while the test runs and drops it afterwards.
func (s *Sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done {
		s.buf.Write(p)
	}
	return len(p), nil
}

// String is everything written so far.
func (s *Sink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// New returns a sink and a text logger at level writing to it; the output
// is logged through t when t has failed.
func New(t testing.TB, level slog.Level) (*Sink, *slog.Logger) {
	s := &Sink{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", s.String())
		}
		s.mu.Lock()
		s.done = true
		s.mu.Unlock()
	})
	return s, slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: level}))
}

// Logger is New at debug level, for tests that only need the logger.
func Logger(t testing.TB) *slog.Logger {
	_, l := New(t, slog.LevelDebug)
	return l
}

// Buffer is a bytes.Buffer safe for a writer on another goroutine (a server, a
// watch loop) and the test that reads it; unlike Sink it keeps what is written
// after the test has ended.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
