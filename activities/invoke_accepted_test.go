package activities

import (
	"context"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/hubconn"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// invokeWithRetries runs InvokeMethod the way the workflows do: retried by Temporal.
func invokeWithRetries(ctx workflow.Context, in InvokeMethodInput) (InvokeMethodResult, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumAttempts: 3},
	})
	var out InvokeMethodResult
	err := workflow.ExecuteActivity(ctx, (&Activities{}).InvokeMethod, in).Get(ctx, &out)
	return out, err
}

// TestInvokeMethodRetryFindsTheCallAccepted: the hub delivered the first call, but its answer was
// lost (a gateway timeout here; a killed worker does the same). The retry sees the device report
// the update ID and does not call again; a device that does not report it is called again.
func TestInvokeMethodRetryFindsTheCallAccepted(t *testing.T) {
	tests := []struct {
		name      string
		reported  map[string]any
		wantCalls int
		accepted  bool
	}{
		{name: "device reports the update", reported: map[string]any{"firmwareUpdateId": "u1", "firmwareStatus": "downloading"}, wantCalls: 1, accepted: true},
		{name: "device reports another update", reported: map[string]any{"firmwareUpdateId": "u0"}, wantCalls: 2},
		{name: "device reports nothing", reported: map[string]any{}, wantCalls: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{
				call: func(_ context.Context, n int, _ hubconn.MethodCall) (hubconn.MethodAnswer, error) {
					if n == 1 {
						return hubconn.MethodAnswer{}, hubErr(504, 504101, "GatewayTimeout")
					}
					return hubconn.MethodAnswer{Status: 200}, nil
				},
				twin: func(context.Context, int) (*iotservice.Twin, error) {
					return &iotservice.Twin{Properties: &iotservice.Properties{Reported: tc.reported}}, nil
				},
			}
			var s testsuite.WorkflowTestSuite
			env := s.NewTestWorkflowEnvironment()
			env.RegisterActivity(&Activities{Hub: hub})
			env.RegisterWorkflow(invokeWithRetries)
			env.ExecuteWorkflow(invokeWithRetries, InvokeMethodInput{
				DeviceID: "dev1", Method: "firmwareUpdate", Payload: map[string]any{"updateId": "u1"},
				AcceptedWhen: &ReportedValue{Property: "firmwareUpdateId", Value: "u1"},
			})
			require.True(t, env.IsWorkflowCompleted())
			require.NoError(t, env.GetWorkflowError())
			var out InvokeMethodResult
			require.NoError(t, env.GetWorkflowResult(&out))
			assert.Len(t, hub.calls, tc.wantCalls)
			assert.Equal(t, 1, hub.reads, "only the retry reads the twin")
			assert.Equal(t, tc.accepted, out.AlreadyAccepted)
			assert.Equal(t, 2, out.Attempt)
			assert.Equal(t, 200, out.Status)
		})
	}
}
