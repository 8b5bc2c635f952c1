package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/temporalconn"
	"github.com/dmflow/dmflow/workflows"
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
	// startOrAttach); existing is the status of the run found, "" when this call started it.
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
	// URL links the rollout in the Temporal Web UI.
	URL(name string) string
	Close()
}

// connectFunc connects the rollout commands to Temporal.
type connectFunc func(ctx context.Context, g *globals) (rolloutAPI, error)

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

// temporalRollouts is rolloutAPI on a Temporal client.
type temporalRollouts struct {
	tc        client.Client
	namespace string
	uiURL     string
}

// dialRollouts connects with the globals' Temporal configuration; an unreachable server fails with
// temporalconn's message, which names the fix.
func dialRollouts(ctx context.Context, g *globals) (rolloutAPI, error) {
	tc, namespace, err := dialTemporal(ctx, g)
	if err != nil {
		return nil, err
	}
	return &temporalRollouts{tc: tc, namespace: namespace, uiURL: g.temporal.UIURL}, nil
}

// dialTemporal connects with the globals' Temporal configuration and tells the namespace it uses.
func dialTemporal(ctx context.Context, g *globals) (client.Client, string, error) {
	opts, err := g.temporal.ClientOptions(nil)
	if err != nil {
		return nil, "", err
	}
	tc, err := g.temporal.Dial(ctx, nil)
	if err != nil {
		return nil, "", err
	}
	return tc, opts.Namespace, nil
}

func (t *temporalRollouts) Close() { t.tc.Close() }

func (t *temporalRollouts) URL(name string) string {
	return temporalconn.WorkflowURL(t.uiURL, t.namespace, workflows.RolloutWorkflowID(name), "")
}

func (t *temporalRollouts) Start(ctx context.Context, in workflows.RolloutInput, taskQueue string) (string, string, error) {
	run, existing, err := startOrAttach(ctx, t.tc, workflows.RolloutWorkflowID(in.Name), taskQueue, workflows.Rollout, in)
	if err != nil {
		return "", "", err
	}
	return run.GetRunID(), existing, nil
}

func (t *temporalRollouts) Progress(ctx context.Context, name string) (workflows.RolloutProgress, error) {
	var p workflows.RolloutProgress
	err := query(ctx, t.tc, workflows.RolloutWorkflowID(name), "", workflows.QueryProgress, &p)
	return p, t.mapErr(name, err)
}

func (t *temporalRollouts) Report(ctx context.Context, name string, req workflows.ReportRequest) (workflows.ReportPage, error) {
	var page workflows.ReportPage
	val, err := t.tc.QueryWorkflow(ctx, workflows.RolloutWorkflowID(name), "", workflows.QueryReport, req)
	if err == nil {
		err = val.Get(&page)
	}
	return page, t.mapErr(name, err)
}

func (t *temporalRollouts) Outcome(ctx context.Context, name string) (workflows.RolloutProgress, error) {
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
	return p, t.mapErr(name, err)
}

// abortedProgress takes the final progress out of a rollout's RolloutAborted or RolloutNoWindow
// failure: both end the rollout as aborted.
func abortedProgress(err error) (workflows.RolloutProgress, bool) {
	var p workflows.RolloutProgress
	ok := activities.ErrorDetails(err, &p, workflows.ErrRolloutAborted, workflows.ErrRolloutNoWindow)
	return p, ok
}

func (t *temporalRollouts) Control(ctx context.Context, name, update, reason string) (workflows.RolloutProgress, error) {
	var p workflows.RolloutProgress
	h, err := t.tc.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID:   workflows.RolloutWorkflowID(name),
		UpdateName:   update,
		Args:         []any{workflows.ControlRequest{Reason: reason}},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	if err == nil {
		err = h.Get(ctx, &p)
	}
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
	return p, t.mapErr(name, err)
}

// mapErr turns a missing workflow into notFoundError.
func (t *temporalRollouts) mapErr(name string, err error) error {
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return notFoundError{name: name, namespace: t.namespace}
	}
	return err
}
