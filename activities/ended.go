package activities

import (
	"context"
	"errors"
	"fmt"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
)

// WorkflowDescriber describes a workflow execution (its latest run when runID is empty):
// client.Client does.
type WorkflowDescriber interface {
	DescribeWorkflowExecution(ctx context.Context, workflowID, runID string) (*workflowservice.DescribeWorkflowExecutionResponse, error)
}

// WorkflowRef names a chain of workflow runs: its workflow ID and, when known, the ID of the run
// that began it (a chain continued as new keeps it, so a later chain under the same workflow ID is
// told apart).
type WorkflowRef struct {
	ID         string `json:"id"`
	FirstRunID string `json:"firstRunId,omitempty"`
}

// WorkflowEnded is a chain that is no longer running and how it ended: a status of Temporal's
// ("Terminated", "Completed", …), "NotFound" (no such workflow, or its history is gone), or
// "Superseded" (the workflow ID now names a later chain).
type WorkflowEnded struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// errNoDescriber is returned when the worker registered Activities without a Temporal client to
// describe workflows with. Retryable: a worker deployed with one picks the activity up again.
var errNoDescriber = errors.New("activities: Workflows is not set: the worker must build Activities with its Temporal client")

// EndedWorkflows returns those of refs whose chain has ended. A rollout and its shards talk by
// signals, and neither hears of the other's end when someone terminates it outside the rollout
// (the UI's Terminate): this is how each finds out, instead of waiting for ever.
func (a *Activities) EndedWorkflows(ctx context.Context, refs []WorkflowRef) ([]WorkflowEnded, error) {
	if a.Workflows == nil {
		return nil, errNoDescriber
	}
	var ended []WorkflowEnded
	for i, ref := range refs {
		if i > 0 && activity.IsActivity(ctx) {
			activity.RecordHeartbeat(ctx, i)
		}
		resp, err := a.Workflows.DescribeWorkflowExecution(ctx, ref.ID, "")
		var notFound *serviceerror.NotFound
		switch {
		case errors.As(err, &notFound):
			ended = append(ended, WorkflowEnded{ID: ref.ID, Status: "NotFound"})
			continue
		case err != nil:
			return nil, temporal.NewApplicationErrorWithCause(fmt.Sprintf("describing workflow %s: %v", ref.ID, err), "DescribeFailed", err)
		}
		info := resp.GetWorkflowExecutionInfo()
		switch {
		case ref.FirstRunID != "" && info.GetFirstRunId() != "" && info.GetFirstRunId() != ref.FirstRunID:
			ended = append(ended, WorkflowEnded{ID: ref.ID, Status: "Superseded"})
		case info.GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING:
			// "Terminated", "TimedOut", …: the names the Temporal UI shows.
			ended = append(ended, WorkflowEnded{ID: ref.ID, Status: info.GetStatus().String()})
		}
	}
	return ended, nil
}
