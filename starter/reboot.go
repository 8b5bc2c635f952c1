package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
)

type rebootFlags struct {
	device        string
	requestID     string
	methodTimeout time.Duration
	deadline      time.Duration
	wait          bool
	taskQueue     string
}

func newRebootCommand(g *globals) *cobra.Command {
	var f rebootFlags
	cmd := &cobra.Command{
		Use:   "reboot --device ID [--wait]",
		Short: "Reboot a device (direct method rebootDevice, confirmed by the reported rebootTime)",
		Long: `Starts the Reboot workflow for one device. The workflow ID is
reboot/<device>/<request-id>: starting the same request again attaches to the
running workflow, and a request that already completed is not run twice.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.device == "" {
				return cli.UsageError{Err: fmt.Errorf("--device is required: name the device to reboot, e.g. --device dev-001")}
			}
			in := workflows.RebootInput{
				DeviceID:      f.device,
				RequestID:     f.requestID,
				MethodTimeout: f.methodTimeout,
				Deadline:      f.deadline,
			}
			if in.RequestID == "" {
				// Second resolution: a start repeated within the same
				// second (a double-click) is recognised as the same one.
				in.RequestID = time.Now().UTC().Format("20060102T150405Z")
			}
			if err := in.Validate(); err != nil {
				return cli.UsageError{Err: err}
			}
			f.taskQueue = settings.Pick(g.getenv, f.taskQueue, settings.TaskQueue, workflows.TaskQueue)
			return withAPI(cmd, g, dialTemporal, func(ctx context.Context, t *temporalClient) error {
				return runReboot(ctx, t, g.output, f, in, cmd.OutOrStdout())
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.device, "device", "d", "", "device ID (required)")
	fl.StringVar(&f.requestID, "request-id", "", "request ID that makes the workflow ID; default: the current UTC second")
	fl.DurationVar(&f.methodTimeout, "method-timeout", 0, "how long the hub waits for the device to answer rebootDevice (5s–300s; default 60s)")
	fl.DurationVar(&f.deadline, "deadline", 0, "time budget for a confirmed reboot (default 5m)")
	fl.BoolVarP(&f.wait, "wait", "w", false, "follow the workflow and print its result")
	fl.StringVar(&f.taskQueue, "task-queue", "", "task queue of the worker (env DMFLOW_TASK_QUEUE, default "+workflows.TaskQueue+")")
	return cmd
}

func runReboot(ctx context.Context, t *temporalClient, output string, f rebootFlags, in workflows.RebootInput, out io.Writer) error {
	return launch[workflows.RebootResult]{
		subject:    "reboot of " + in.DeviceID,
		workflowID: workflows.RebootWorkflowID(in.DeviceID, in.RequestID),
		workflow:   workflows.Reboot,
		input:      in,
		taskQueue:  f.taskQueue,
		wait:       f.wait,
		progress:   rebootProgress,
		summary: func(out io.Writer, result workflows.RebootResult) {
			fmt.Fprintf(out, "rebooted %s in %s: rebootTime %s, %s, attempts %d\n",
				result.DeviceID, result.Duration.Round(100*time.Millisecond), rebootTimeText(result), methodStatusText(result.MethodStatus), result.Attempts)
			if len(result.MethodPayload) > 0 {
				fmt.Fprintf(out, "  device said: %s\n", activities.PayloadString(result.MethodPayload))
			}
		},
	}.run(ctx, t, output, out)
}

// rebootProgress shows the Reboot's step, by query.
func rebootProgress(ctx context.Context, t *temporalClient, id, runID string) ([]progressLine, error) {
	var st workflows.RebootStatus
	if err := t.query(ctx, id, runID, workflows.QueryStep, &st); err != nil {
		return nil, err
	}
	return []progressLine{{key: "step " + st.Step, at: st.Since.Sub(st.Started), text: st.Step}}, nil
}

// rebootTimeText shows the reported rebootTime: as a time when it is one on a known clock, as the
// device wrote it otherwise (the tutorial's local time without a zone), with the hub's time of it.
func rebootTimeText(r workflows.RebootResult) string {
	t := r.RebootTimeReported
	switch {
	case !r.RebootTime.IsZero():
		t = r.RebootTime.Format(time.RFC3339Nano)
	case t != "":
		t = fmt.Sprintf("%q (device time, no zone)", t)
	default:
		t = "-"
	}
	if r.ConfirmedAt != "" {
		t += ", reported at " + r.ConfirmedAt + " by the hub's clock"
	}
	return t
}

// methodStatusText shows the device's status, or why there is none: the twin showed that the
// device took an earlier attempt's call, whose answer was lost.
func methodStatusText(status int) string {
	if status == 0 {
		return "no answer read (the twin showed the device took the call)"
	}
	return fmt.Sprintf("method status %d", status)
}
