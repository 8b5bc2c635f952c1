// Package cli is what dmflow's four commands (worker, localhub, simdevice, starter) share on the
// command line: their exit codes, the error that marks input the user must fix, and running a
// cobra command into one line of error and an exit code.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// Exit codes of every command: 0 done (or stopped by SIGINT or SIGTERM), ExitFailed when the work
// failed or could not start, ExitUsage when the command line, environment or a file given is wrong,
// found before anything started.
const (
	ExitFailed = 1
	ExitUsage  = 2
)

// UsageError marks an error the user fixes by changing the command line, the environment or a file
// the command reads: the command exits with ExitUsage.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Execute runs root on args with ctx, prints its error, if any, as one line "NAME: error" on stderr
// and returns the exit code. ran tells whether a command's own code began to run: an error before
// that is cobra's (an unknown command, flag or argument), so a usage error, and the line points to
// NAME --help.
func Execute(ctx context.Context, root *cobra.Command, args []string, stderr io.Writer, ran func() bool) int {
	root.SetArgs(args)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ue UsageError
	usage := errors.As(err, &ue)
	if !usage && !ran() {
		err, usage = fmt.Errorf("%w: see %s --help", err, root.Name()), true
	}
	fmt.Fprintln(stderr, root.Name()+":", err)
	if usage {
		return ExitUsage
	}
	return ExitFailed
}
