package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/temporal"
)

// starter rollout skip|retry NAME DEVICE...: per-device control of a running rollout. The rollout
// keeps no row per device (its shards do), so the command first finds each device in the report
// (its shard and its state), refuses the devices whose state does not allow the action, naming it,
// and sends the rollout the update with (device, shard) pairs; the rollout forwards them to the
// shards, which answer device by device (workflows/rollout_device.go).

// deviceControlAPI is what skip and retry ask of Temporal besides rolloutAPI.
type deviceControlAPI interface {
	// FindDevices finds the devices in the rollout's report: each one's shard and row. Devices
	// not found are absent from the map.
	FindDevices(ctx context.Context, name string, ids []string) (map[string]foundDevice, error)
	// ControlDevices sends UpdateSkip or UpdateRetry and waits for its result. A refusal by the
	// validator, or by the server for a rollout that ended, is a refusedError.
	ControlDevices(ctx context.Context, name, update string, req workflows.DeviceControlRequest) (workflows.DeviceControlResult, error)
}

// foundDevice is a device's shard (its index) and row.
type foundDevice struct {
	Shard int
	Row   workflows.DeviceRow
}

func (r *rolloutCmd) skipCommand() *cobra.Command {
	var note string
	cmd := &cobra.Command{
		Use:   "skip NAME DEVICE... [--note TEXT]",
		Short: "Leave devices that have not started out of a running rollout",
		Long: `Leaves the named devices out of the running rollout NAME: those not started
yet end as skipped, with the note (default "` + workflows.DefaultSkipNote + `"), and
are never called. A device already running or finished is refused, naming its
state; a device that is no target of the rollout too. The waves keep their
sizes: the devices after a skipped one move up.

Prints each device's outcome and the rollout's progress after it (--output
json: both as JSON). Exits 1 when any device was refused, 2 on a bad command
line.`,
		Args: deviceArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(note) > 500 {
				return cli.UsageError{Err: fmt.Errorf("--note has %d characters: keep it under 500", len(note))}
			}
			return withAPI(cmd, r.g, r.connect, func(ctx context.Context, api rolloutAPI) error {
				return runDeviceControl(ctx, api, args[0], workflows.UpdateSkip, args[1:], note, r.g.output, cmd.OutOrStdout(), r.g.clock)
			})
		},
	}
	cmd.Flags().StringVar(&note, "note", "", "why, the skipped devices' note in the report (default \""+workflows.DefaultSkipNote+"\")")
	return cmd
}

func (r *rolloutCmd) retryCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "retry NAME DEVICE...",
		Short: "Run failed devices of a running rollout again",
		Long: `Runs the named failed devices of the running rollout NAME again, each as its
next attempt: a new update ID (rollout:NAME:2 for the second), so a device
takes it as a new request. The device joins the current wave, within its
concurrency and the start rate, and a pause or a maintenance window holds it
like any start. A device running, updated, skipped or not started yet is
refused, naming its state.

Never twice: before calling, the device's twin is read for the earlier
attempt's update (by its ID, or by the hub's time of firmwareStatus or
rebootTime). A device that took it after all (it completed late, or still
runs) is followed to its end instead of being called again.

A rollout that has ended cannot run devices again: start a rollout of them
under a new name with the same firmware (devices already on the version are
skipped).

Prints each device's outcome and the rollout's progress after it (--output
json: both as JSON). Exits 1 when any device was refused, 2 on a bad command
line.`,
		Args: deviceArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAPI(cmd, r.g, r.connect, func(ctx context.Context, api rolloutAPI) error {
				return runDeviceControl(ctx, api, args[0], workflows.UpdateRetry, args[1:], "", r.g.output, cmd.OutOrStdout(), r.g.clock)
			})
		},
	}
}

// deviceArgs takes NAME DEVICE...: a rollout name and device IDs, checked before Temporal is asked.
func deviceArgs(cmd *cobra.Command, args []string) error {
	if len(args) < 2 {
		return cli.UsageError{Err: fmt.Errorf("name the rollout and its devices: %s NAME DEVICE... (see starter rollout report NAME)", strings.Fields(cmd.Use)[0])}
	}
	if err := nameArg(cmd, args[:1]); err != nil {
		return err
	}
	ids, err := checkDeviceIDs(args[1:])
	if err != nil {
		return cli.UsageError{Err: fmt.Errorf("devices: %w", err)}
	}
	if len(ids) > workflows.MaxControlDevices {
		return cli.UsageError{Err: fmt.Errorf("%d devices are more than %d at once: give them in parts", len(ids), workflows.MaxControlDevices)}
	}
	return nil
}

// runDeviceControl finds the devices, refuses those whose state does not allow update, sends the
// update and prints the outcome.
func runDeviceControl(ctx context.Context, api rolloutAPI, name, update string, ids []string, note, output string, out io.Writer, clk clock) error {
	dc, ok := api.(deviceControlAPI)
	if !ok {
		return fmt.Errorf("%s rollout %s: not supported by this connection", update, name)
	}
	p, err := currentProgress(ctx, api, name)
	if err != nil {
		return err
	}
	switch {
	case p.Done():
		return endedRefusal(name, update, p.State, ids)
	case p.State == workflows.RolloutResolving:
		return fmt.Errorf("cannot %s on rollout %s: it is resolving its targets: %s once it runs (starter rollout status %s)", update, name, update, name)
	}
	found, err := dc.FindDevices(ctx, name, ids)
	if err != nil {
		return fmt.Errorf("%s rollout %s: find the devices: %w", update, name, err)
	}
	var problems []string
	req := workflows.DeviceControlRequest{Note: note}
	for _, id := range ids {
		d, ok := found[id]
		if !ok {
			problems = append(problems, workflows.DeviceControlRefusal(update, name, id, workflows.ControlStateUnknown, ""))
			continue
		}
		if state, allowed := controlState(update, d.Row); !allowed {
			problems = append(problems, workflows.DeviceControlRefusal(update, name, id, state, d.Row.Note))
			continue
		}
		req.Devices = append(req.Devices, workflows.DeviceRef{ID: id, Shard: d.Shard})
	}
	if len(problems) > 0 {
		return fmt.Errorf("cannot %s on rollout %s: %s", update, name, strings.Join(problems, "; "))
	}
	cctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	res, err := dc.ControlDevices(cctx, name, update, req)
	var refused refusedError
	switch {
	case errors.As(err, &refused):
		return fmt.Errorf("cannot %s on rollout %s: %s", update, name, refused.reason)
	case err != nil && cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil:
		return fmt.Errorf("%s rollout %s: no answer within %s: is a dmflow worker running? it applies the change", update, name, controlTimeout)
	case err != nil:
		return fmt.Errorf("%s rollout %s: %w", update, name, err)
	}
	if output == "json" {
		if err := writeJSON(out, res); err != nil {
			return err
		}
	} else {
		writeDeviceOutcomes(out, name, update, res)
		printStatus(out, res.Progress, api.RolloutURL(name), clk.Now(), clk.Loc())
	}
	var failed []string
	for _, o := range res.Devices {
		if o.Result == workflows.ControlRefused || o.Result == workflows.ControlUnanswered {
			failed = append(failed, o.Reason)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d %s not done: %s", len(failed), len(res.Devices), plural(len(res.Devices), "device", "devices"), strings.Join(failed, "; "))
	}
	return nil
}

// controlState is the state of a report row for skip and retry, and whether it allows update.
func controlState(update string, row workflows.DeviceRow) (string, bool) {
	state := row.Result
	if row.Result == workflows.DevicePending && row.Attempts > 0 {
		state = workflows.ControlStateQueued
	}
	if update == workflows.UpdateSkip {
		return state, state == workflows.DevicePending
	}
	return state, state == workflows.DeviceFailed
}

// endedRefusal says that a rollout that ended takes no skip or retry, and what to do instead.
func endedRefusal(name, update, state string, ids []string) error {
	return fmt.Errorf("cannot %s on rollout %s: %s", update, name, endedReason(update, state, name, ids))
}

func endedReason(update, state, name string, ids []string) string {
	if update == workflows.UpdateSkip {
		return fmt.Sprintf("it has ended (%s), and starts no device any more", state)
	}
	return fmt.Sprintf("it has ended (%s), and a rollout runs devices again only while it runs: start a rollout of them under a new name with the same firmware, e.g. starter rollout start --name %s-retry --devices %s --firmware URI --version V (devices already on the version are skipped)",
		state, name, strings.Join(ids, ","))
}

// writeDeviceOutcomes prints what became of each device.
func writeDeviceOutcomes(out io.Writer, name, update string, res workflows.DeviceControlResult) {
	done := 0
	for _, o := range res.Devices {
		if o.Result == workflows.ControlSkipped || o.Result == workflows.ControlQueued {
			done++
		}
	}
	if update == workflows.UpdateSkip {
		fmt.Fprintf(out, "rollout %s: %d %s skipped\n", name, done, plural(done, "device", "devices"))
	} else {
		fmt.Fprintf(out, "rollout %s: %d %s queued to run again\n", name, done, plural(done, "device", "devices"))
	}
	for _, o := range res.Devices {
		switch o.Result {
		case workflows.ControlSkipped:
			fmt.Fprintf(out, "  %s  skipped\n", o.Device)
		case workflows.ControlQueued:
			fmt.Fprintf(out, "  %s  queued as attempt %d (update ID %s)\n", o.Device, o.Attempt, workflows.RolloutUpdateID(name, o.Attempt))
		default:
			fmt.Fprintf(out, "  %s  %s: %s\n", o.Device, o.Result, o.Reason)
		}
	}
}

// FindDevices reads the rollout's shards and their rows until it found every device.
func (t *temporalClient) FindDevices(ctx context.Context, name string, ids []string) (map[string]foundDevice, error) {
	shards, ok, err := t.readShards(ctx, name)
	if err != nil {
		return nil, t.rolloutErr(name, err)
	}
	if !ok {
		return nil, fmt.Errorf("rollout %s began before shards: skip and retry apply to rollouts begun by this version of dmflow", name)
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	found := map[string]foundDevice{}
	for i, ref := range shards.Shards {
		for offset := 0; ; {
			qctx, cancel := context.WithTimeout(ctx, queryTimeout)
			var page workflows.ReportPage
			err := t.query(qctx, ref.WorkflowID, "", workflows.QueryReport, &page, workflows.ReportRequest{Offset: offset, Limit: workflows.MaxReportPage})
			cancel()
			if err != nil {
				return nil, fmt.Errorf("shard %s: %w", ref.WorkflowID, err)
			}
			for _, row := range page.Rows {
				if want[row.DeviceID] {
					found[row.DeviceID] = foundDevice{Shard: i, Row: row}
				}
			}
			if page.Next == 0 || len(found) == len(want) {
				break
			}
			offset = page.Next
		}
		if len(found) == len(want) {
			break
		}
	}
	return found, nil
}

func (t *temporalClient) ControlDevices(ctx context.Context, name, update string, req workflows.DeviceControlRequest) (workflows.DeviceControlResult, error) {
	var res workflows.DeviceControlResult
	err := t.updateRollout(ctx, name, update, req, &res)
	var app *temporal.ApplicationError
	switch {
	case err == nil:
		return res, nil
	case errors.As(err, &app):
		return res, refusedError{reason: app.Message()}
	}
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		// An update to a closed workflow is refused as not found too.
		desc, derr := t.tc.DescribeWorkflowExecution(ctx, workflows.RolloutWorkflowID(name), "")
		if derr == nil && desc.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			state := "workflow " + strings.ToLower(desc.GetWorkflowExecutionInfo().GetStatus().String())
			if final, oerr := t.Outcome(ctx, name); oerr == nil && final.State != "" {
				state = final.State
			}
			var ids []string
			for _, d := range req.Devices {
				ids = append(ids, d.ID)
			}
			return res, refusedError{reason: endedReason(update, state, name, ids)}
		}
	}
	return res, t.rolloutErr(name, err)
}
