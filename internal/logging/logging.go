// Package logging builds the slog loggers of dmflow's commands: text for
// people, JSON for machines.
package logging

import (
	"fmt"
	"io"
	"log/slog"
)

// Formats lists the accepted --log-format values.
const Formats = "text|json"

// New returns a logger writing format ("text" or "json") to w at level.
func New(format string, w io.Writer, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q is not known: use %s", format, Formats)
	}
}
