// Command starter is dmflow's operator CLI: it starts device-management
// workflows on Temporal, prints where to watch them, and with --wait their
// outcome. It needs no IoT Hub credentials: only the worker holds them.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	// The time zone database, for maintenance windows in a time zone (the rollout's input is
	// validated here too) and for TZ=<zone> on a machine without one.
	_ "time/tzdata"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/internal/temporalconn"
	"github.com/spf13/cobra"
)

// Exit codes (cli's): 0 done, 1 the operation failed or could not be started, 2 the command line
// or configuration is wrong.

// noArgs refuses positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return cli.UsageError{Err: fmt.Errorf("%s takes no arguments, got %q: flags start with --", cmd.CommandPath(), args[0])}
	}
	return nil
}

// commandGroup runs a command that only groups subcommands (rollout, schedule): alone it prints
// its help; a word that names none of them (listed in subcommands) is a usage error.
func commandGroup(group, subcommands string) func(cmd *cobra.Command, args []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return cli.UsageError{Err: fmt.Errorf("unknown %s command %q: use %s", group, args[0], subcommands)}
		}
		return cmd.Help()
	}
}

func main() {
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

func execute(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	g := &globals{getenv: getenv}
	return runRoot(newRoot(stdout, g, backends{}), g, args, stderr)
}

// runRoot runs the command line args on root, whose flags fill g, prints the error if any and
// returns the exit code it maps to.
func runRoot(root *cobra.Command, g *globals, args []string, stderr io.Writer) int {
	return cli.Execute(context.Background(), root, args, stderr, func() bool { return g.ran })
}

// globals are the flags every subcommand shares.
type globals struct {
	temporal temporalconn.Config
	output   string
	getenv   func(string) string
	// clock tells the time and zone times are shown in; the zero value is the machine's.
	clock clock
	// ran is set once the command line parsed and a command began to run.
	ran bool
}

// clock is the wall clock and time zone of the starter's output: time.Now and time.Local unless
// a test sets them.
type clock struct {
	now func() time.Time
	loc *time.Location
}

// Now is the time now.
func (c clock) Now() time.Time {
	if c.now == nil {
		return time.Now()
	}
	return c.now()
}

// Loc is the time zone to show times in.
func (c clock) Loc() *time.Location {
	if c.loc == nil {
		return time.Local
	}
	return c.loc
}

// backends are what the rollout and schedule commands talk to; the zero value dials Temporal
// (tests set fakes).
type backends struct {
	rollouts  connector[rolloutAPI]
	schedules connector[scheduleAPI]
	// fleet: the compliance view (fleet versions).
	fleet connector[fleetAPI]
	// triggerWait and triggerPoll bound how long schedule trigger looks for its run (zero: the
	// defaults).
	triggerWait, triggerPoll time.Duration
}

func newRoot(stdout io.Writer, g *globals, b backends) *cobra.Command {
	getenv := g.getenv
	root := &cobra.Command{
		Use:   "starter",
		Short: "Start and watch dmflow device-management workflows",
		Long: `starter starts dmflow workflows on Temporal and prints the workflow ID and
the Temporal UI link; with --wait it follows the workflow and prints the result.

Temporal is configured the standard way (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE); DMFLOW_TEMPORAL_UI sets the
Web UI base URL used in links (default ` + temporalconn.DefaultUIURL + `).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			g.ran = true
			if g.output != "text" && g.output != "json" {
				return cli.UsageError{Err: fmt.Errorf("--output %q is not known: use text or json", g.output)}
			}
			if g.temporal.UIURL == "" {
				g.temporal.UIURL = getenv(settings.TemporalUI)
			}
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return cli.UsageError{Err: fmt.Errorf("%w: see %s --help", err, cmd.CommandPath())}
	})
	pf := root.PersistentFlags()
	pf.StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	pf.StringVar(&g.temporal.Address, "temporal-address", "", "Temporal frontend host:port (overrides TEMPORAL_ADDRESS)")
	pf.StringVar(&g.temporal.Namespace, "temporal-namespace", "", "Temporal namespace (overrides TEMPORAL_NAMESPACE)")
	pf.StringVar(&g.temporal.UIURL, "ui-url", "", "Temporal Web UI base URL for links (env DMFLOW_TEMPORAL_UI)")
	root.AddCommand(newRebootCommand(g), newFirmwareCommand(g), newRolloutCommand(g, b.rollouts), newScheduleCommand(g, b.schedules, b.triggerWait, b.triggerPoll))
	root.AddCommand(newFleetCommand(g, b.fleet)) // compliance: fleet versions
	return root
}
