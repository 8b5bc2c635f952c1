package testlog

import (
	"log/slog"
	"strings"
	"testing"
)

func TestSinkKeepsUntilTheTestEnds(t *testing.T) {
	var sink *Sink
	t.Run("inner", func(t *testing.T) {
		var l *slog.Logger
		sink, l = New(t, slog.LevelInfo)
		l.Debug("hidden")
		l.Info("kept", "device", "d1")
	})
	out := sink.String()
	if !strings.Contains(out, "kept") || strings.Contains(out, "hidden") {
		t.Errorf("sink = %q", out)
	}
	// After the test: writes are accepted and dropped, not a panic.
	if n, err := sink.Write([]byte("late")); n != 4 || err != nil {
		t.Errorf("late write = %d, %v", n, err)
	}
	if strings.Contains(sink.String(), "late") {
		t.Error("late write was kept")
	}
}

func TestBufferTakesConcurrentWrites(t *testing.T) {
	var b Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 100 {
			_, _ = b.Write([]byte("x"))
		}
	}()
	for range 100 {
		_ = b.String()
	}
	<-done
	if got := b.String(); got != strings.Repeat("x", 100) {
		t.Errorf("buffer = %q", got)
	}
}
