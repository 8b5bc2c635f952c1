package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/dmflow/dmflow/internal/temporalconn"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
)

// temporalClient is the starter's one connection to Temporal: every command dials it
// (dialTemporal) and asks through it. reboot and firmware start and follow their workflow with it
// (launch); the rollout commands see it as rolloutAPI (rollout_temporal.go) and the schedule
// commands as scheduleAPI (schedule_temporal.go), interfaces that tests drive with fakes.
type temporalClient struct {
	tc        client.Client
	sc        client.ScheduleClient
	namespace string
	uiURL     string
	// shards caches, by rollout name, where a sharded rollout's rows are: read again by every
	// report that starts from the first row.
	shards map[string]workflows.ShardsPage
}

// dialTemporal connects with the globals' Temporal configuration; an unreachable server fails with
// temporalconn's message, which names the fix.
func dialTemporal(ctx context.Context, g *globals) (*temporalClient, error) {
	opts, err := g.temporal.ClientOptions(nil)
	if err != nil {
		return nil, err
	}
	tc, err := g.temporal.Dial(ctx, nil)
	if err != nil {
		return nil, err
	}
	return &temporalClient{tc: tc, sc: tc.ScheduleClient(), namespace: opts.Namespace, uiURL: g.temporal.UIURL}, nil
}

// The commands' views of the client; dialAs relies on them.
var (
	_ rolloutAPI  = (*temporalClient)(nil)
	_ scheduleAPI = (*temporalClient)(nil)
)

func (t *temporalClient) Close() { t.tc.Close() }

// workflowURL links a workflow in the Temporal Web UI: a run's history, or with no runID the
// latest run.
func (t *temporalClient) workflowURL(id, runID string) string {
	return temporalconn.WorkflowURL(t.uiURL, t.namespace, id, runID)
}

// startOrAttach starts the workflow under id. The same ID again never runs the operation twice:
// while it runs the start is refused and the running workflow is returned; once it has completed
// the start is refused too and that run is returned. Only a failed workflow may be started again
// under the same ID. existing is the status of the run found, "" when this call started it.
func (t *temporalClient) startOrAttach(ctx context.Context, id, taskQueue string, workflow, input any) (client.WorkflowRun, string, error) {
	run, err := t.tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:                                       id,
		TaskQueue:                                taskQueue,
		WorkflowIDConflictPolicy:                 enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		WorkflowIDReusePolicy:                    enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE_FAILED_ONLY,
		WorkflowExecutionErrorWhenAlreadyStarted: true,
	}, workflow, input)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	switch {
	case errors.As(err, &started):
		desc, derr := t.tc.DescribeWorkflowExecution(ctx, id, "")
		if derr != nil {
			return nil, "", fmt.Errorf("workflow %s exists but cannot be described: %w", id, derr)
		}
		info := desc.GetWorkflowExecutionInfo()
		return t.tc.GetWorkflow(ctx, id, info.GetExecution().GetRunId()), info.GetStatus().String(), nil
	case err != nil:
		return nil, "", err
	}
	return run, "", nil
}

// query asks a workflow's query handler and decodes the answer into v.
func (t *temporalClient) query(ctx context.Context, id, runID, name string, v any, args ...any) error {
	val, err := t.tc.QueryWorkflow(ctx, id, runID, name, args...)
	if err != nil {
		return err
	}
	return val.Get(v)
}

// connector connects a command to Temporal as the API it uses: dialAs outside tests, which set
// fakes (backends).
type connector[API any] func(ctx context.Context, g *globals) (API, error)

// dialAs dials Temporal for the commands that see it as API.
func dialAs[API any](ctx context.Context, g *globals) (API, error) {
	t, err := dialTemporal(ctx, g)
	if err != nil {
		var none API
		return none, err
	}
	return any(t).(API), nil
}

// withAPI connects through connect and runs fn; Ctrl-C or SIGTERM cancels its context, and so
// stops what fn waits for (a workflow's result, a watch), not the workflow.
func withAPI[API interface{ Close() }](cmd *cobra.Command, g *globals, connect connector[API], fn func(ctx context.Context, api API) error) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	api, err := connect(ctx, g)
	if err != nil {
		return err
	}
	defer api.Close()
	return fn(ctx, api)
}
