package main

import (
	"context"
	"fmt"

	"github.com/dmflow/dmflow/workflows"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
)

// CountVersions starts FleetVersions and waits for its counts. The ID is new for every count
// (versionsRequest), so an ID already used is an error, never a count of another query.
func (t *temporalClient) CountVersions(ctx context.Context, id, taskQueue string, in workflows.FleetVersionsInput) (workflows.FleetVersionsResult, error) {
	run, err := t.tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:                       id,
		TaskQueue:                taskQueue,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		StaticSummary:            "firmware versions of the devices " + queryText(in.Query),
	}, workflows.FleetVersions, in)
	if err != nil {
		return workflows.FleetVersionsResult{}, fmt.Errorf("start workflow %s: %w", id, err)
	}
	var res workflows.FleetVersionsResult
	if err := run.Get(ctx, &res); err != nil {
		return workflows.FleetVersionsResult{}, err
	}
	return res, nil
}

// queryText names the devices a count is of, for the workflow's summary.
func queryText(q string) string {
	if q == "" {
		return "of the hub"
	}
	return "selected by " + quoteShort(q)
}

func (t *temporalClient) WorkflowLink(id string) string { return t.workflowURL(id, "") }
