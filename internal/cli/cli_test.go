package cli_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/spf13/cobra"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/cli/clitest"
)

func TestExecute(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		runErr   error
		wantCode int
		wantLine string
	}{
		{name: "done", wantCode: 0},
		{name: "usage error", runErr: cli.UsageError{Err: errors.New("--count is required")}, wantCode: cli.ExitUsage, wantLine: "tool: --count is required\n"},
		{name: "wrapped usage error", runErr: fmt.Errorf("flags: %w", cli.UsageError{Err: errors.New("bad")}), wantCode: cli.ExitUsage, wantLine: "tool: flags: bad\n"},
		{name: "failure", runErr: errors.New("hub unreachable"), wantCode: cli.ExitFailed, wantLine: "tool: hub unreachable\n"},
		{name: "cobra's error before the command ran", args: []string{"--bogus"}, wantCode: cli.ExitUsage, wantLine: "tool: unknown flag: --bogus: see tool --help\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			root := &cobra.Command{Use: "tool", SilenceUsage: true, SilenceErrors: true,
				RunE: func(*cobra.Command, []string) error { ran = true; return tc.runErr }}
			var stderr bytes.Buffer
			code := cli.Execute(context.Background(), root, tc.args, &stderr, func() bool { return ran })
			if code != tc.wantCode || stderr.String() != tc.wantLine {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, stderr.String(), tc.wantCode, tc.wantLine)
			}
			if code == cli.ExitUsage {
				clitest.CheckUsage(t, "tool", code, stderr.String())
			}
		})
	}
}
