package activities

import (
	"context"
	"errors"
	"testing"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
)

// fakeDescriber answers DescribeWorkflowExecution from a table: a status and first run ID per
// workflow ID, or an error.
type fakeDescriber struct {
	status map[string]enumspb.WorkflowExecutionStatus
	first  map[string]string
	err    map[string]error
	asked  []string
}

func (f *fakeDescriber) DescribeWorkflowExecution(_ context.Context, id, runID string) (*workflowservice.DescribeWorkflowExecutionResponse, error) {
	f.asked = append(f.asked, id+"@"+runID)
	if err := f.err[id]; err != nil {
		return nil, err
	}
	return &workflowservice.DescribeWorkflowExecutionResponse{WorkflowExecutionInfo: &workflowpb.WorkflowExecutionInfo{
		Status: f.status[id], FirstRunId: f.first[id],
	}}, nil
}

func TestEndedWorkflows(t *testing.T) {
	f := &fakeDescriber{
		status: map[string]enumspb.WorkflowExecutionStatus{
			"running":    enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING,
			"terminated": enumspb.WORKFLOW_EXECUTION_STATUS_TERMINATED,
			"completed":  enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED,
			"later":      enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING,
			"same":       enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING,
		},
		first: map[string]string{"later": "run-2", "same": "run-1"},
		err:   map[string]error{"gone": serviceerror.NewNotFound("workflow not found")},
	}
	a := &Activities{Workflows: f}
	got, err := a.EndedWorkflows(context.Background(), []WorkflowRef{
		{ID: "running"}, {ID: "terminated"}, {ID: "completed"}, {ID: "gone"},
		{ID: "later", FirstRunID: "run-1"}, {ID: "same", FirstRunID: "run-1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []WorkflowEnded{
		{ID: "terminated", Status: "Terminated"}, {ID: "completed", Status: "Completed"},
		{ID: "gone", Status: "NotFound"}, {ID: "later", Status: "Superseded"},
	}
	if len(got) != len(want) {
		t.Fatalf("EndedWorkflows = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("EndedWorkflows[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, q := range f.asked {
		if q[len(q)-1] != '@' {
			t.Errorf("asked %s: want the latest run (no run ID)", q)
		}
	}
}

func TestEndedWorkflowsErrors(t *testing.T) {
	if _, err := (&Activities{}).EndedWorkflows(context.Background(), []WorkflowRef{{ID: "x"}}); !errors.Is(err, errNoDescriber) {
		t.Errorf("without a client: %v, want errNoDescriber", err)
	}
	f := &fakeDescriber{err: map[string]error{"x": serviceerror.NewUnavailable("server restarting")}}
	if _, err := (&Activities{Workflows: f}).EndedWorkflows(context.Background(), []WorkflowRef{{ID: "x"}}); err == nil {
		t.Error("an unavailable server: no error; want one, so that the activity is retried")
	}
}
