package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/workflows"
	"github.com/google/uuid"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
)

// rolloutAPI is what the rollout commands ask of Temporal, by rollout name. Every call addresses
// the latest run of rollout/<name>: a rollout keeps its workflow ID across continue-as-new. The
// commands' logic (watch loop, summaries, report paging) runs against this interface, so that tests
// drive it with a fake.
type rolloutAPI interface {
	// Start starts the rollout, or finds the one already started under its name (see
	// startOrAttach), or the failed run that rolled devices back (a name whose devices were rolled
	// back runs once); existing is the status of the run found, "" when this call started it.
	Start(ctx context.Context, in workflows.RolloutInput, taskQueue string) (runID, existing string, err error)
	// Progress asks the progress query.
	Progress(ctx context.Context, name string) (workflows.RolloutProgress, error)
	// Outcome waits until the rollout's workflow has closed and returns its final progress: the
	// workflow's result, or the details of its RolloutAborted or RolloutNoWindow failure. Any
	// other end (a failed resolution, a termination, a timeout) is an error.
	Outcome(ctx context.Context, name string) (workflows.RolloutProgress, error)
	// Report asks the report query for one page.
	Report(ctx context.Context, name string, req workflows.ReportRequest) (workflows.ReportPage, error)
	// Control sends the pause, resume or cancel update and waits for its result. A refusal by the
	// update's validator is a refusedError.
	Control(ctx context.Context, name, update, reason string) (workflows.RolloutProgress, error)
	// RolloutURL links the rollout in the Temporal Web UI.
	RolloutURL(name string) string
	Close()
}

// notFoundError says no rollout of that name exists, and how to list those that do.
type notFoundError struct{ name, namespace string }

func (e notFoundError) Error() string {
	return fmt.Sprintf(`rollout %q not found (no workflow %s in namespace %s): list rollouts with temporal workflow list --query "WorkflowType = 'Rollout'"`,
		e.name, workflows.RolloutWorkflowID(e.name), e.namespace)
}

// refusedError is a pause, resume or cancel the rollout refused; its message is the validator's
// reason.
type refusedError struct{ reason string }

func (e refusedError) Error() string { return e.reason }

// endedError is the end of a rollout's workflow without a final progress: a failed resolution of
// the targets, a termination, a timeout. Any other error of Outcome (the server unreachable for a
// moment) says nothing about the rollout.
type endedError struct{ err error }

func (e endedError) Error() string { return e.err.Error() }
func (e endedError) Unwrap() error { return e.err }

func (t *temporalClient) RolloutURL(name string) string {
	return t.workflowURL(workflows.RolloutWorkflowID(name), "")
}

func (t *temporalClient) Start(ctx context.Context, in workflows.RolloutInput, taskQueue string) (string, string, error) {
	if runID, ok, err := t.rolledBack(ctx, in.Name); err != nil || ok {
		return runID, enumspb.WORKFLOW_EXECUTION_STATUS_FAILED.String(), err
	}
	run, existing, err := t.startOrAttach(ctx, workflows.RolloutWorkflowID(in.Name), taskQueue, workflows.Rollout, in)
	if err != nil {
		return "", "", err
	}
	return run.GetRunID(), existing, nil
}

// rolledBack finds whether the latest run under the rollout's name failed after rolling devices
// back, and its run ID if so. A failed rollout may otherwise start again under its name (its
// updated devices are then found done), but a rolled-back device holds the rollback and remembers
// this name's update IDs: a new run would count it as updated. Such a name, like a completed one,
// runs once.
func (t *temporalClient) rolledBack(ctx context.Context, name string) (string, bool, error) {
	id := workflows.RolloutWorkflowID(name)
	desc, err := t.tc.DescribeWorkflowExecution(ctx, id, "")
	var nf *serviceerror.NotFound
	switch {
	case errors.As(err, &nf):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("describe workflow %s: %w", id, err)
	}
	info := desc.GetWorkflowExecutionInfo()
	if info.GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_FAILED {
		return "", false, nil
	}
	runID := info.GetExecution().GetRunId()
	p, ok := abortedProgress(t.tc.GetWorkflow(ctx, id, runID).Get(ctx, nil))
	return runID, ok && rollbackBegan(p), nil
}

// rollbackBegan says whether a rollout's rollback sent any device back, or might have.
func rollbackBegan(p workflows.RolloutProgress) bool {
	if p.Rollback == nil {
		return false
	}
	switch p.Rollback.Phase {
	case "", workflows.RollbackArmed, workflows.RollbackNotRun:
		return false
	}
	return true
}

func (t *temporalClient) Progress(ctx context.Context, name string) (workflows.RolloutProgress, error) {
	var p workflows.RolloutProgress
	err := t.query(ctx, workflows.RolloutWorkflowID(name), "", workflows.QueryProgress, &p)
	return p, t.rolloutErr(name, err)
}

// Report reads a page of the report: from the rollout's shards (QueryShards, then the shard's
// QueryReport) or, for a rollout begun before shards, from the rollout itself.
func (t *temporalClient) Report(ctx context.Context, name string, req workflows.ReportRequest) (workflows.ReportPage, error) {
	shards, ok := t.shards[name]
	if !ok || req.Offset == 0 {
		var err error
		shards, ok, err = t.readShards(ctx, name)
		if err != nil {
			return workflows.ReportPage{}, t.rolloutErr(name, err)
		}
	}
	if !ok {
		var page workflows.ReportPage
		err := t.query(ctx, workflows.RolloutWorkflowID(name), "", workflows.QueryReport, &page, req)
		return page, t.rolloutErr(name, err)
	}
	if t.shards == nil {
		t.shards = map[string]workflows.ShardsPage{}
	}
	t.shards[name] = shards
	return shardedReportPage(req, shards, func(id string, req workflows.ReportRequest) (workflows.ReportPage, error) {
		var page workflows.ReportPage
		err := t.query(ctx, id, "", workflows.QueryReport, &page, req)
		return page, err
	})
}

// readShards lists a sharded rollout's shards, all pages of them; ok is false for a rollout that
// keeps its rows itself (it began before shards, or its worker predates them).
func (t *temporalClient) readShards(ctx context.Context, name string) (workflows.ShardsPage, bool, error) {
	var all workflows.ShardsPage
	for offset := 0; ; {
		var page workflows.ShardsPage
		err := t.query(ctx, workflows.RolloutWorkflowID(name), "", workflows.QueryShards, &page, workflows.ShardsRequest{Offset: offset})
		var qf *serviceerror.QueryFailed
		switch {
		case errors.As(err, &qf):
			// "keeps its rows itself", or a worker that knows no such query.
			return all, false, nil
		case err != nil:
			return all, false, err
		}
		all.Shards, all.Total = append(all.Shards, page.Shards...), page.Total
		if page.Next == 0 {
			return all, true, nil
		}
		offset = page.Next
	}
}

// shardedReportPage answers a report page from the shard that holds row req.Offset: its rows from
// there to its last at most, with Next pointing past them (to the next shard's first row).
func shardedReportPage(req workflows.ReportRequest, shards workflows.ShardsPage, query func(id string, req workflows.ReportRequest) (workflows.ReportPage, error)) (workflows.ReportPage, error) {
	out := workflows.ReportPage{Rows: []workflows.DeviceRow{}, Total: shards.Total}
	i := slices.IndexFunc(shards.Shards, func(s workflows.ShardRef) bool { return req.Offset < s.Offset+s.Devices })
	if i < 0 {
		return out, nil
	}
	ref := shards.Shards[i]
	page, err := query(ref.WorkflowID, workflows.ReportRequest{Offset: req.Offset - ref.Offset, Limit: req.Limit})
	if err != nil {
		return out, fmt.Errorf("shard %s: %w", ref.WorkflowID, err)
	}
	out.Rows = page.Rows
	switch {
	case page.Next > 0:
		out.Next = ref.Offset + page.Next
	case i+1 < len(shards.Shards):
		out.Next = shards.Shards[i+1].Offset
	}
	return out, nil
}

func (t *temporalClient) Outcome(ctx context.Context, name string) (workflows.RolloutProgress, error) {
	var p workflows.RolloutProgress
	err := t.tc.GetWorkflow(ctx, workflows.RolloutWorkflowID(name), "").Get(ctx, &p)
	if err == nil {
		return p, nil
	}
	if ap, ok := abortedProgress(err); ok {
		return ap, nil
	}
	var we *temporal.WorkflowExecutionError
	if errors.As(err, &we) {
		return p, endedError{err}
	}
	return p, t.rolloutErr(name, err)
}

// abortedProgress takes the final progress out of a rollout's RolloutAborted or RolloutNoWindow
// failure: both end the rollout as aborted.
func abortedProgress(err error) (workflows.RolloutProgress, bool) {
	var p workflows.RolloutProgress
	ok := activities.ErrorDetails(err, &p, workflows.ErrRolloutAborted, workflows.ErrRolloutNoWindow)
	return p, ok
}

func (t *temporalClient) Control(ctx context.Context, name, update, reason string) (workflows.RolloutProgress, error) {
	var p workflows.RolloutProgress
	err := t.updateRollout(ctx, name, update, workflows.ControlRequest{Reason: reason}, &p)
	var app *temporal.ApplicationError
	switch {
	case err == nil:
		return p, nil
	case errors.As(err, &app):
		// The validator's (or handler's) error: its message is the reason for the user.
		return p, refusedError{reason: app.Message()}
	}
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		// An update to a closed workflow is refused as not found too: tell the two apart.
		desc, derr := t.tc.DescribeWorkflowExecution(ctx, workflows.RolloutWorkflowID(name), "")
		if derr == nil {
			status := desc.GetWorkflowExecutionInfo().GetStatus()
			if status != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
				// The rollout's own state says more than the workflow's status: a cancelled
				// rollout's workflow completed.
				ended := "workflow " + strings.ToLower(status.String())
				if final, oerr := t.Outcome(ctx, name); oerr == nil && final.State != "" {
					ended = final.State
				}
				return p, refusedError{reason: fmt.Sprintf("rollout %s has ended (%s): see starter rollout status %s",
					name, ended, name)}
			}
		}
	}
	return p, t.rolloutErr(name, err)
}

// rolloutErr turns a missing workflow into notFoundError.
func (t *temporalClient) rolloutErr(name string, err error) error {
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return notFoundError{name: name, namespace: t.namespace}
	}
	return err
}

// notReadyTries bounds how often updateRollout sends an update again when the server answers that
// the workflow task it was delivered in failed (WorkflowNotReady): a busy rollout's task can fail
// when a shard's tally arrives as it continues as new, and the update is then dropped, not refused.
const notReadyTries = 5

// updateRollout sends the update to the rollout named name and waits for its result. A resend keeps
// the update ID, so that an update the server did take is not applied twice.
func (t *temporalClient) updateRollout(ctx context.Context, name, update string, arg, result any) error {
	opts := client.UpdateWorkflowOptions{
		UpdateID:     update + "-" + uuid.NewString(),
		WorkflowID:   workflows.RolloutWorkflowID(name),
		UpdateName:   update,
		Args:         []any{arg},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	}
	for try := 1; ; try++ {
		h, err := t.tc.UpdateWorkflow(ctx, opts)
		if err == nil {
			err = h.Get(ctx, result)
		}
		var notReady *serviceerror.WorkflowNotReady
		if !errors.As(err, &notReady) || try == notReadyTries {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(try) * 500 * time.Millisecond):
		}
	}
}
