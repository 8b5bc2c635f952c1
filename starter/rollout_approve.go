package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/internal/temporalconn"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/temporal"
)

// rollout approve, and how the approval gates, the success condition and the end time show in
// status, watch and report.

// rolloutApprover is the part of the rollout API that approves; the Temporal client is one.
type rolloutApprover interface {
	// Approve sends UpdateApprove and waits for its result; a refusal by its validator is a
	// refusedError.
	Approve(ctx context.Context, name string, req workflows.ApproveRequest) (workflows.RolloutProgress, error)
}

var _ rolloutApprover = (*temporalClient)(nil)

// maxNoteLength bounds --note as the workflow does.
const maxNoteLength = 500

func (r *rolloutCmd) approveCommand() *cobra.Command {
	var note, identity string
	cmd := &cobra.Command{
		Use:   "approve NAME [--note TEXT] [--identity ID]",
		Short: "Let a rollout awaiting approval start its next wave",
		Long: `Approves a rollout that is awaiting-approval: started with
--approve-after-wave N (or each), it waits after that wave until approved. The
approval is recorded with the wave, the time, the note and the approver: the
Temporal client identity this command connects with (--identity, env
` + settings.Identity + `, default pid@host), which the workflow's history records with
the request too. status, watch and report show the approvals.

Refused, naming the rollout's state, unless it is awaiting approval (a paused
rollout: resume it first; it then awaits approval again).

Prints the rollout's progress after the approval (--output json: as JSON). A
refusal prints the rollout's reason and exits 1.`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(note) > maxNoteLength {
				return cli.UsageError{Err: fmt.Errorf("--note has %d characters: keep it under %d", len(note), maxNoteLength)}
			}
			id := settings.Pick(r.g.getenv, strings.TrimSpace(identity), settings.Identity, temporalconn.DefaultIdentity())
			r.g.temporal.Identity = id
			return withAPI(cmd, r.g, r.connect, func(ctx context.Context, api rolloutAPI) error {
				return runApprove(ctx, api, args[0], workflows.ApproveRequest{Note: note, Identity: id}, r.g.output, cmd.OutOrStdout(), r.g.clock)
			})
		},
	}
	cmd.Flags().StringVar(&note, "note", "", "why, recorded with the approval")
	cmd.Flags().StringVar(&identity, "identity", "", "the approver's Temporal client identity (env "+settings.Identity+", default pid@host)")
	return cmd
}

// runApprove sends the approval and prints the progress after it.
func runApprove(ctx context.Context, api rolloutAPI, name string, req workflows.ApproveRequest, output string, out io.Writer, clk clock) error {
	ap, ok := api.(rolloutApprover)
	if !ok {
		return fmt.Errorf("approve rollout %s: this connection cannot send updates", name)
	}
	cctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	p, err := ap.Approve(cctx, name, req)
	var refused refusedError
	switch {
	case errors.As(err, &refused):
		return fmt.Errorf("cannot approve rollout %s: %s", name, refused.reason)
	case err != nil && cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil:
		return fmt.Errorf("approve rollout %s: no answer within %s: is a dmflow worker running? it applies the approval", name, controlTimeout)
	case err != nil:
		return fmt.Errorf("approve rollout %s: %w", name, err)
	}
	if output == "json" {
		return writeJSON(out, p)
	}
	printStatus(out, p, api.RolloutURL(name), clk.Now(), clk.Loc())
	return nil
}

// Approve sends UpdateApprove, mapping its errors as Control does.
func (t *temporalClient) Approve(ctx context.Context, name string, req workflows.ApproveRequest) (workflows.RolloutProgress, error) {
	var p workflows.RolloutProgress
	err := t.updateRollout(ctx, name, workflows.UpdateApprove, req, &p)
	var app *temporal.ApplicationError
	var nf *serviceerror.NotFound
	switch {
	case err == nil:
		return p, nil
	case errors.As(err, &app):
		return p, refusedError{reason: app.Message()}
	case errors.As(err, &nf):
		// An update to a closed workflow is refused as not found too.
		desc, derr := t.tc.DescribeWorkflowExecution(ctx, workflows.RolloutWorkflowID(name), "")
		if derr == nil && desc.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			ended := "workflow " + strings.ToLower(desc.GetWorkflowExecutionInfo().GetStatus().String())
			if final, oerr := t.Outcome(ctx, name); oerr == nil && final.State != "" {
				ended = final.State
			}
			return p, refusedError{reason: fmt.Sprintf("rollout %s has ended (%s): there is nothing to approve", name, ended)}
		}
	}
	return p, t.rolloutErr(name, err)
}

// approvalText is an approval for people: "wave 1, 2026-11-29 14:03 CET, by 4242@ops-laptop:
// canary looks good".
func approvalText(a workflows.Approval, loc *time.Location) string {
	s := fmt.Sprintf("wave %d, %s, by %s", a.Wave, timeText(a.At, loc, false), dash(a.Identity))
	if a.Note != "" {
		s += ": " + oneLine(a.Note)
	}
	return s
}

// printGates prints a progress's gates, approvals and end time for status (and pause, resume,
// cancel, approve): lines only for what the rollout has.
func printGates(out io.Writer, p workflows.RolloutProgress, now time.Time, loc *time.Location) {
	if g := gatesText(p.ApproveAfterWave, p.PauseBelow, time.Time{}, 0, "", loc); g != "" {
		fmt.Fprintf(out, "  gates:     %s\n", g)
	}
	for _, a := range p.Approvals {
		fmt.Fprintf(out, "  approved:  %s\n", approvalText(a, loc))
	}
	if !p.EndAt.IsZero() && !p.Done() {
		fmt.Fprintf(out, "  ends:      %s, %s\n", whenText(p.EndAt, now, loc), endBehaviorText(p.EndBehavior))
	}
	if p.State == workflows.RolloutAwaitingApproval {
		fmt.Fprintf(out, "  approve:   starter rollout approve %s --note TEXT\n", p.Name)
	}
}

// endBehaviorText says what the end time does.
func endBehaviorText(behavior string) string {
	if behavior == workflows.EndCancel {
		return "the devices in flight then cancelled"
	}
	return "the devices in flight then finish"
}

// summaryGates prints the approvals at the end of a watch.
func summaryGates(out io.Writer, p workflows.RolloutProgress, loc *time.Location) {
	for _, a := range p.Approvals {
		fmt.Fprintf(out, "  approved:  %s\n", approvalText(a, loc))
	}
}

// idleGates is the part of a rollout's time spent awaiting approval, for the summary.
func idleGates(p workflows.RolloutProgress) []string {
	if d := p.Awaited.Round(time.Second); d > 0 {
		return []string{durationText(d, false) + " awaiting approval"}
	}
	return nil
}

// holdsStarts reports whether the rollout starts no device for now (paused, waiting for a window,
// awaiting approval): no ETA then.
func holdsStarts(p workflows.RolloutProgress) bool {
	return p.State == workflows.RolloutPaused || p.State == workflows.RolloutWaiting || p.State == workflows.RolloutAwaitingApproval
}

// reportApproval is the approval a device's wave started on, in the report's JSON.
type reportApproval struct {
	Wave     int       `json:"wave"`
	At       time.Time `json:"at"`
	Identity string    `json:"identity,omitempty"`
	Note     string    `json:"note,omitempty"`
}

// approvalOf is the approval under which a device of wave (0-based) started: the latest given after
// a wave before it; nil for none.
func approvalOf(wave int, approvals []workflows.Approval) *reportApproval {
	var found *reportApproval
	for _, a := range approvals {
		if a.Wave <= wave {
			found = &reportApproval{Wave: a.Wave, At: a.At.UTC(), Identity: a.Identity, Note: a.Note}
		}
	}
	return found
}

// rolloutApprovals reads a rollout's approvals for its report; none when the progress cannot be
// read (the report's rows say what they can).
func rolloutApprovals(ctx context.Context, api rolloutAPI, name string) []workflows.Approval {
	p, err := currentProgress(ctx, api, name)
	if err != nil {
		return nil
	}
	return p.Approvals
}

// writeReportGated writes the report with the approvals: in each JSON row, the approval its wave
// started on; below the table, one line each. CSV keeps its columns.
func writeReportGated(w io.Writer, format string, rows []workflows.DeviceRow, approvals []workflows.Approval) error {
	if len(approvals) == 0 {
		return writeReport(w, format, rows)
	}
	switch format {
	case formatJSON:
		out := make([]reportRow, len(rows))
		for i, r := range rows {
			out[i] = toReportRow(r)
			if r.Started.IsZero() || r.Wave < 0 {
				continue
			}
			out[i].Approval = approvalOf(r.Wave, approvals)
		}
		return writeJSON(w, out)
	case formatTable:
		if err := writeReportTable(w, rows); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, a := range approvals {
			fmt.Fprintf(tw, "approved after wave %d\t%s\tby %s\t%s\n", a.Wave, a.At.UTC().Format(time.RFC3339), dash(a.Identity), dash(oneLine(a.Note)))
		}
		return tw.Flush()
	}
	return writeReport(w, format, rows)
}
