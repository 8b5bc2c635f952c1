package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/internal/temporalconn"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
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
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.device == "" {
				return usageError{fmt.Errorf("--device is required: name the device to reboot, e.g. --device dev-001")}
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
				return usageError{err}
			}
			f.taskQueue = settings.Pick(g.getenv, f.taskQueue, settings.TaskQueue, workflows.TaskQueue)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runReboot(ctx, g, f, in, cmd.OutOrStdout())
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

// rebootOutput is what --output json prints.
type rebootOutput struct {
	WorkflowID string                  `json:"workflowId"`
	RunID      string                  `json:"runId"`
	URL        string                  `json:"url"`
	Existing   string                  `json:"existing,omitempty"` // status of the run found, when the request had been started before
	Result     *workflows.RebootResult `json:"result,omitempty"`
	Error      string                  `json:"error,omitempty"`
}

func runReboot(ctx context.Context, g *globals, f rebootFlags, in workflows.RebootInput, out io.Writer) error {
	tc, err := g.temporal.Dial(ctx, nil)
	if err != nil {
		return err
	}
	defer tc.Close()
	opts, err := g.temporal.ClientOptions(nil)
	if err != nil {
		return err
	}

	id := workflows.RebootWorkflowID(in.DeviceID, in.RequestID)
	res := rebootOutput{WorkflowID: id}
	run, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:        id,
		TaskQueue: f.taskQueue,
		// The same request again never reboots twice: while it runs the
		// start is refused and we follow the running workflow; once it has
		// completed the start is refused too and we report that run. Only a
		// failed request may be started again under the same ID.
		WorkflowIDConflictPolicy:                 enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		WorkflowIDReusePolicy:                    enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE_FAILED_ONLY,
		WorkflowExecutionErrorWhenAlreadyStarted: true,
	}, workflows.Reboot, in)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	switch {
	case errors.As(err, &started):
		desc, derr := tc.DescribeWorkflowExecution(ctx, id, "")
		if derr != nil {
			return fmt.Errorf("reboot %s exists but cannot be described: %w", id, derr)
		}
		res.Existing = desc.GetWorkflowExecutionInfo().GetStatus().String()
		run = tc.GetWorkflow(ctx, id, desc.GetWorkflowExecutionInfo().GetExecution().GetRunId())
	case err != nil:
		return fmt.Errorf("start reboot of %s: %w", in.DeviceID, err)
	}
	res.RunID = run.GetRunID()
	res.URL = temporalconn.WorkflowURL(g.temporal.UIURL, opts.Namespace, id, res.RunID)
	if g.output == "text" {
		verb := "started"
		switch res.Existing {
		case "":
		case enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING.String():
			verb = "already running:"
		default:
			verb = "already ran (" + strings.ToLower(res.Existing) + "):"
		}
		fmt.Fprintf(out, "%s reboot of %s\n  workflow: %s\n  ui:       %s\n", verb, in.DeviceID, id, res.URL)
	}
	if !f.wait {
		if g.output == "json" {
			return writeJSON(out, res)
		}
		return nil
	}

	if g.output == "text" {
		stopWatch := watchSteps(ctx, tc, id, res.RunID, out)
		defer stopWatch()
	}
	var result workflows.RebootResult
	werr := run.Get(ctx, &result)
	if werr == nil {
		res.Result = &result
	} else {
		res.Error = werr.Error()
	}
	if g.output == "json" {
		if err := writeJSON(out, res); err != nil {
			return err
		}
	} else if werr == nil {
		fmt.Fprintf(out, "rebooted %s in %s: rebootTime %s, method status %d, attempts %d\n",
			result.DeviceID, result.Duration.Round(100*time.Millisecond), result.RebootTime.Format(time.RFC3339), result.MethodStatus, result.Attempts)
		if len(result.MethodPayload) > 0 {
			b, _ := json.Marshal(result.MethodPayload)
			fmt.Fprintf(out, "  device said: %s\n", b)
		}
	}
	if werr != nil {
		return fmt.Errorf("reboot of %s failed: %w", in.DeviceID, werr)
	}
	return nil
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// watchSteps prints the workflow's step each time it changes, by query, until
// stopped. A failed query (workflow not yet picked up by a worker) is retried
// quietly: the result, or its error, is what the user waits for.
func watchSteps(ctx context.Context, tc client.Client, id, runID string, out io.Writer) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := ""
		start := time.Now()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if st, err := queryStep(ctx, tc, id, runID); err == nil && st != last {
				last = st
				fmt.Fprintf(out, "  %6.1fs  %s\n", time.Since(start).Seconds(), st)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

func queryStep(ctx context.Context, tc client.Client, id, runID string) (string, error) {
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	v, err := tc.QueryWorkflow(qctx, id, runID, workflows.QueryStep)
	if err != nil {
		return "", err
	}
	var st workflows.RebootStatus
	if err := v.Get(&st); err != nil {
		return "", err
	}
	return st.Step, nil
}
