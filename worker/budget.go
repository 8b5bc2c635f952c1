package main

import (
	"context"
	"fmt"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/dmflow/dmflow/internal/budget"
	"github.com/dmflow/dmflow/workflows"
)

// hubBudget leases the worker's shares from its hub's HubBudget workflow, starting the workflow on
// the first request (update-with-start): every worker of the hub, and every rollout on it, draws
// on the one budget, whichever worker comes first.
type hubBudget struct {
	tc  client.Client
	hub string
}

// Lease asks the hub's budget workflow for a lease and waits for the grant.
func (h hubBudget) Lease(ctx context.Context, req budget.Request) (budget.Grant, error) {
	start := h.tc.NewWithStartWorkflowOperation(client.StartWorkflowOptions{
		ID:                       workflows.HubBudgetWorkflowID(h.hub),
		TaskQueue:                workflows.BudgetTaskQueue,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
	}, workflows.HubBudget, workflows.HubBudgetInput{Hub: h.hub})
	handle, err := h.tc.UpdateWithStartWorkflow(ctx, client.UpdateWithStartWorkflowOptions{
		StartWorkflowOperation: start,
		UpdateOptions: client.UpdateWorkflowOptions{
			UpdateName:   workflows.UpdateLease,
			Args:         []any{req},
			WaitForStage: client.WorkflowUpdateStageCompleted,
		},
	})
	if err != nil {
		return budget.Grant{}, fmt.Errorf("lease from %s: %w", workflows.HubBudgetWorkflowID(h.hub), err)
	}
	var g budget.Grant
	if err := handle.Get(ctx, &g); err != nil {
		return budget.Grant{}, fmt.Errorf("lease from %s: %w", workflows.HubBudgetWorkflowID(h.hub), err)
	}
	return g, nil
}
