// Package clitest checks what dmflow's commands answer to bad input, the same way in every
// command's tests.
package clitest

import (
	"strings"
	"testing"

	"github.com/dmflow/dmflow/internal/cli"
)

// CheckUsage checks the answer of command name to bad input: exit cli.ExitUsage and one line on
// stderr, "name: …", that holds each of want.
func CheckUsage(t testing.TB, name string, code int, stderr string, want ...string) {
	t.Helper()
	if code != cli.ExitUsage {
		t.Errorf("exit %d, want %d (stderr %q)", code, cli.ExitUsage, stderr)
	}
	if !strings.HasPrefix(stderr, name+": ") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("want one line starting with %s:, got %q", name, stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr %q lacks %q", stderr, w)
		}
	}
}
