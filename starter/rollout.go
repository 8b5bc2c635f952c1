package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
)

// Timeouts of the single calls the rollout commands make. A query or update waits for a worker to
// answer it, for a finished rollout too; without one it would wait forever.
const (
	queryTimeout   = 15 * time.Second
	controlTimeout = time.Minute
	// defaultPoll is how often watch asks the progress query.
	defaultPoll = time.Second
)

// listRolloutsHint tells where the names of the existing rollouts are.
const listRolloutsHint = `temporal workflow list --query "WorkflowType = 'Rollout'"`

// rolloutCmd holds what the rollout subcommands share.
type rolloutCmd struct {
	g       *globals
	connect connector[rolloutAPI]
}

func newRolloutCommand(g *globals, connect connector[rolloutAPI]) *cobra.Command {
	if connect == nil {
		connect = dialAs[rolloutAPI]
	}
	r := &rolloutCmd{g: g, connect: connect}
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Run a firmware update or reboot on many devices in waves; follow, pause, resume, cancel and report it",
		Long: `A rollout runs a firmware update or a reboot on many devices: a canary wave
first, then waves growing by --growth, with at most --max-concurrent devices in
flight and at most --rate IoT Hub calls per second. When more devices fail than
--max-failures allows, the rollout aborts and leaves the devices not started
untouched, or, with --rollback-firmware, rolls the devices it updated back.
A running rollout can be paused, resumed and cancelled, its devices not
started skipped and its failed devices retried (skip, retry), and its device
starts paced (--max-per-minute, --ramp).

A rollout is the workflow rollout/<name>; its devices run in shard workflows
rollout/<name>/shard/<n> of up to 250 devices each, every device's calls as
activities named after it (<device>/firmwareUpdate, <device>/stages), and a
rollout never runs a device twice, across restarts too. List rollouts with
  ` + listRolloutsHint + `
and see one with its shards in the Temporal UI with the query
  DmflowRollout = "<name>"

status, watch and report ask the rollout's queries, which a running dmflow
worker answers, for a finished rollout too.

Exit codes:
  0  the command did what it was asked: a rollout started (or was found),
     a status or report printed, a pause, resume, cancel or approve
     accepted; for watch and start --wait: the rollout completed with no
     failed device (or ended at its end time with every device done)
  1  watch and start --wait: the rollout aborted (rolled back or not), failed, was cancelled,
     ended at its end time with devices not started (or cancelled, or
     failed), or completed with failed devices (within --max-failures);
     any command: a pause, resume, cancel or approve refused (the reason is
     printed), the rollout not found, Temporal unreachable
  2  the command line is wrong`,
		Args: cobra.ArbitraryArgs,
		RunE: commandGroup("rollout", "start, status, watch, pause, resume, cancel, approve, skip, retry or report"),
	}
	cmd.AddCommand(r.startCommand(), r.statusCommand(), r.watchCommand(),
		r.controlCommand(workflows.UpdatePause, "Stop starting devices; those in flight finish",
			`Pauses a running rollout: no further device starts until resume; the devices
in flight finish. The reason shows in the rollout's progress. Refused unless the
rollout is running (or rolling back).`),
		r.controlCommand(workflows.UpdateResume, "Start devices again after a pause",
			`Resumes a paused rollout where it stopped. Refused unless the rollout is paused.`),
		r.controlCommand(workflows.UpdateCancel, "Stop the rollout: no device starts any more, those in flight are cancelled",
			`Cancels a rollout: no device starts any more, the devices in flight are
cancelled, and the rollout ends as cancelled. Devices already updated stay
updated. Refused once the rollout has ended.`),
		r.reportCommand(), r.approveCommand(), r.skipCommand(), r.retryCommand())
	return cmd
}

// nameArg takes the rollout's name, the one positional argument of the commands after start,
// checked as rollout start checks it so that a name no rollout can have fails before Temporal is
// asked.
func nameArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 || args[0] == "" {
		return cli.UsageError{Err: fmt.Errorf("name the rollout: %s NAME (list rollouts with %s)", cmd.CommandPath(), listRolloutsHint)}
	}
	if workflows.CheckRolloutName(args[0]) != nil {
		return cli.UsageError{Err: fmt.Errorf("rollout name %s: a rollout is named with up to %d letters, digits and -._: starting with a letter or digit (list rollouts with %s)",
			quoteShort(args[0]), workflows.MaxNameLength, listRolloutsHint)}
	}
	return nil
}

// startFlags are the flags of rollout start: the rollout spec and how to follow it.
type startFlags struct {
	specFlags

	wait      bool
	poll      time.Duration
	taskQueue string
}

func (r *rolloutCmd) startCommand() *cobra.Command {
	var f startFlags
	cmd := &cobra.Command{
		Use:   "start --name NAME (--query Q | --devices IDS | --devices-file FILE) (--firmware URI --version V [--reboot] [--reconcile] | --reboot) [--window W]... [--spec FILE] [--wait]",
		Short: "Start a rollout (or find the one already started under its name)",
		Long: `Starts the Rollout workflow rollout/<name>.

` + specHelp + `

The name is the rollout's identity: starting a name that is running attaches
to it (its own settings stay; these flags are not applied), and a name that
completed or was cancelled is not run again. A rollout that aborted or failed
may be started again under its name: the devices it already updated or
rebooted are skipped.

With --wait, starter follows the rollout like watch and exits as watch does.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.clock = r.g.clock
			in, err := f.input(cmd.InOrStdin(), cmd.Flags().Changed, "")
			if err != nil {
				return err
			}
			f.taskQueue = settings.Pick(r.g.getenv, f.taskQueue, settings.TaskQueue, workflows.TaskQueue)
			return withAPI(cmd, r.g, r.connect, func(ctx context.Context, api rolloutAPI) error {
				return runStart(ctx, api, in, f, r.g.output, r.watchOptions(cmd, f.poll))
			})
		},
	}
	fl := cmd.Flags()
	addSpecFlags(fl, &f.specFlags, true)
	fl.BoolVarP(&f.wait, "wait", "w", false, "follow the rollout until it ends, like watch, and exit as watch does")
	fl.DurationVar(&f.poll, "poll-interval", defaultPoll, "how often --wait asks the progress")
	fl.StringVar(&f.taskQueue, "task-queue", "", "task queue of the worker (env DMFLOW_TASK_QUEUE, default "+workflows.TaskQueue+")")
	_ = fl.MarkHidden("poll-interval")
	return cmd
}

// describeInput says in a few words what a rollout does: "firmware 2.0.0 (then reboot) on 3
// devices".
func describeInput(in workflows.RolloutInput) string {
	var b strings.Builder
	switch {
	case in.Firmware != nil:
		b.WriteString("firmware " + in.Firmware.Version)
		if in.Firmware.Reboot {
			b.WriteString(" then reboot")
		}
	default:
		b.WriteString(in.Operation)
	}
	switch {
	case len(in.Devices) > 0:
		fmt.Fprintf(&b, " on %d %s", len(in.Devices), plural(len(in.Devices), "device", "devices"))
	case in.Reconcile && in.Firmware != nil && in.Query == "":
		b.WriteString(" on every device not on " + in.Firmware.Version)
	case in.Reconcile && in.Firmware != nil:
		b.WriteString(" on the devices not on " + in.Firmware.Version + " of " + in.Query)
	default:
		b.WriteString(" on the devices of " + in.Query)
	}
	if n := len(in.Windows); n > 0 {
		fmt.Fprintf(&b, ", in %d maintenance %s", n, plural(n, "window", "windows"))
	}
	b.WriteString(rollbackDescription(in)) // rollback (policy 1)
	b.WriteString(continuousDescription(in))
	return b.String()
}

// windowsText lists maintenance windows as ParseWindow reads them: "0 2 * * SUN for 4h in
// Europe/Warsaw; 2026-11-29T02:00:00Z/2026-11-29T06:00:00Z".
func windowsText(ws []workflows.Window) string {
	parts := make([]string, len(ws))
	for i, w := range ws {
		parts[i] = w.String()
	}
	return strings.Join(parts, "; ")
}

// runStart starts the rollout or attaches to the one of that name, prints where to follow it and,
// with --wait, follows it.
func runStart(ctx context.Context, api rolloutAPI, in workflows.RolloutInput, f startFlags, output string, wo watchOptions) error {
	out := wo.out
	runID, existing, err := api.Start(ctx, in, f.taskQueue)
	if err != nil {
		return fmt.Errorf("start rollout %s: %w", in.Name, err)
	}
	res := launchOutput[workflows.RolloutProgress]{
		WorkflowID: workflows.RolloutWorkflowID(in.Name), RunID: runID, URL: api.RolloutURL(in.Name), Existing: existing,
	}
	if output == "text" {
		fmt.Fprintf(out, "%s rollout %s: %s\n  workflow: %s\n  ui:       %s\n", startVerb(existing), in.Name, describeInput(in), res.WorkflowID, res.URL)
		if existing == "" && len(in.Windows) > 0 {
			// Outside its windows a rollout starts no device: say when it may.
			fmt.Fprintf(out, "  windows:  %s\n", windowsText(in.Windows))
		}
		if g := gatesText(workflows.FormatApproveAfterWave(in.ApproveAfterWave, in.ApproveEachWave), in.PauseBelow, in.EndAt, in.EndAfter, in.EndBehavior, wo.loc); existing == "" && g != "" {
			fmt.Fprintf(out, "  gates:    %s\n", g)
		}
		running := existing == "" || existing == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING.String()
		switch {
		case existing == "":
		case running:
			fmt.Fprintf(out, "  note:     a rollout by this name was started before; it keeps its own settings, these flags were not applied\n")
		case existing == enumspb.WORKFLOW_EXECUTION_STATUS_FAILED.String():
			// Start attaches to a failed run only once it rolled devices back.
			fmt.Fprintf(out, "  note:     a rollout by this name aborted and rolled devices back, which remember its update IDs: choose a new --name to roll out again\n")
		default:
			fmt.Fprintf(out, "  note:     a rollout by this name already ran, and a name runs once: choose a new --name to roll out again\n")
		}
		if !f.wait && running {
			fmt.Fprintf(out, "  follow:   starter rollout watch %s\n", in.Name)
		} else if !f.wait {
			fmt.Fprintf(out, "  status:   starter rollout status %s\n", in.Name)
		}
	}
	if !f.wait {
		if output == "json" {
			return writeJSON(out, res)
		}
		return nil
	}
	p, werr := watchRollout(ctx, api, in.Name, wo)
	if output == "json" {
		if werr == nil {
			res.Result = &p
		} else {
			res.Error = werr.Error()
		}
		if err := writeJSON(out, res); err != nil {
			return err
		}
	} else if werr == nil {
		printSummary(ctx, out, api, p)
	}
	if werr != nil {
		return werr
	}
	return outcomeError(p)
}

func (r *rolloutCmd) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status NAME",
		Short: "Print a rollout's progress once",
		Long: `Prints the rollout's state (and the reason of a pause, abort, cancellation or
failure), its device counts, the current wave, its speed in devices per minute
(time paused not counted), the estimated time left, and the Temporal UI link.
A rollout with maintenance windows shows when the next window opens while it
waits ("waiting for window, opens at …"), or when the open one closes; time
spent waiting counts neither in the speed nor in the estimate. A rollout with
approval gates or an end time shows them, its approvals, and while it is
awaiting-approval the command that approves. With --output json, the progress
as the workflow reports it.

Exits 0 whenever the progress could be read, whatever the rollout's state; use
watch (or --output json) to act on the outcome.`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAPI(cmd, r.g, r.connect, func(ctx context.Context, api rolloutAPI) error {
				p, err := currentProgress(ctx, api, args[0])
				if err != nil {
					return err
				}
				if r.g.output == "json" {
					return writeJSON(cmd.OutOrStdout(), p)
				}
				printStatus(cmd.OutOrStdout(), p, api.RolloutURL(args[0]), r.g.clock.Now(), r.g.clock.Loc())
				return nil
			})
		},
	}
}

// currentProgress asks the progress query once. A rollout that has ended answers from its result
// when the query cannot be answered (no worker runs), as long as it completed or aborted.
func currentProgress(ctx context.Context, api rolloutAPI, name string) (workflows.RolloutProgress, error) {
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	p, err := api.Progress(qctx, name)
	cancel()
	var nf notFoundError
	if err == nil || errors.As(err, &nf) || ctx.Err() != nil {
		return p, err
	}
	octx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if op, oerr := api.Outcome(octx, name); oerr == nil {
		return op, nil
	}
	return p, fmt.Errorf("query the progress of rollout %s: %w: is a dmflow worker running? it answers queries, for finished rollouts too", name, err)
}

func (r *rolloutCmd) watchCommand() *cobra.Command {
	var poll time.Duration
	cmd := &cobra.Command{
		Use:   "watch NAME",
		Short: "Follow a rollout's progress until it ends",
		Long: `Follows the rollout until it ends. On a terminal: a progress bar of the devices
done (succeeded, skipped, failed, cancelled or not started) of all targets, with
the counts failed, skipped, running and pending, the current wave, devices per
minute and the estimated time left, redrawn in place. Elsewhere (a pipe, CI) a
plain line whenever the counts change, at most about once a second. With
--output json the lines go to standard error and standard output gets the
final progress as JSON.

At the end: the summary (state, counts, reason, duration, hub calls) and the
first failed devices with their errors; starter rollout report NAME lists all.

Exits 0 when the rollout completed with no failed device, 1 when it aborted,
failed, was cancelled or completed with failed devices. Ctrl-C stops watching,
not the rollout.`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAPI(cmd, r.g, r.connect, func(ctx context.Context, api rolloutAPI) error {
				return runWatch(ctx, api, args[0], r.g.output, r.watchOptions(cmd, poll))
			})
		},
	}
	cmd.Flags().DurationVar(&poll, "poll-interval", defaultPoll, "how often to ask the progress")
	_ = cmd.Flags().MarkHidden("poll-interval")
	return cmd
}

// watchOptions configures the live view for the command's output and --output.
func (r *rolloutCmd) watchOptions(cmd *cobra.Command, poll time.Duration) watchOptions {
	o := watchOptions{out: cmd.OutOrStdout(), lines: cmd.OutOrStdout(), poll: max(poll, 10*time.Millisecond), minGap: time.Second, pollTimeout: 5 * time.Second,
		now: r.g.clock.Now, loc: r.g.clock.Loc()}
	if r.g.output == "json" {
		// Standard output holds the JSON document alone.
		o.lines = cmd.ErrOrStderr()
	} else {
		o.bar = isTerminal(o.out) && r.g.getenv("TERM") != "dumb"
	}
	return o
}

// runWatch follows the rollout, prints the outcome and returns the error that sets the exit code.
func runWatch(ctx context.Context, api rolloutAPI, name, output string, wo watchOptions) error {
	p, err := watchRollout(ctx, api, name, wo)
	if err != nil {
		return err
	}
	if output == "json" {
		if err := writeJSON(wo.out, p); err != nil {
			return err
		}
	} else {
		printSummary(ctx, wo.out, api, p)
	}
	return outcomeError(p)
}

// controlCommand builds pause, resume or cancel.
func (r *rolloutCmd) controlCommand(update, short, long string) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   update + " NAME [--reason TEXT]",
		Short: short,
		Long: long + `

Prints the rollout's progress after the change (--output json: as JSON). A
refusal prints the rollout's reason and exits 1.`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAPI(cmd, r.g, r.connect, func(ctx context.Context, api rolloutAPI) error {
				return runControl(ctx, api, args[0], update, reason, r.g.output, cmd.OutOrStdout(), r.g.clock)
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, shown in the rollout's progress and report")
	return cmd
}

// runControl sends pause, resume or cancel and prints the progress after it.
func runControl(ctx context.Context, api rolloutAPI, name, update, reason, output string, out io.Writer, clk clock) error {
	cctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	p, err := api.Control(cctx, name, update, reason)
	var refused refusedError
	switch {
	case errors.As(err, &refused):
		return fmt.Errorf("cannot %s rollout %s: %s", update, name, refused.reason)
	case err != nil && cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil:
		return fmt.Errorf("%s rollout %s: no answer within %s: is a dmflow worker running? it applies the change", update, name, controlTimeout)
	case err != nil:
		return fmt.Errorf("%s rollout %s: %w", update, name, err)
	}
	if output == "json" {
		return writeJSON(out, p)
	}
	printStatus(out, p, api.RolloutURL(name), clk.Now(), clk.Loc())
	switch {
	case p.State == workflows.RolloutPaused:
		fmt.Fprintf(out, "  resume:    starter rollout resume %s\n", name)
	case update == workflows.UpdateCancel && !p.Done():
		fmt.Fprintf(out, "  the devices in flight are being cancelled: starter rollout watch %s\n", name)
	}
	return nil
}
