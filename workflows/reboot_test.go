package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
)

// a names the activities for mocking, as the workflow does.
var a *activities.Activities

var start = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

const (
	device     = "dev1"
	workflowID = "reboot/dev1/r1"
	// rebootTime is what the mocked device reports: 21 s after the start, after its reboot.
	rebootTime = "2026-05-01T12:00:21Z"
)

// calls records what the mocked activities received, per attempt. Mocks run on their own goroutines.
type calls struct {
	mu     sync.Mutex
	invoke []activity.Info
	wait   []activity.Info
	inv    []activities.InvokeMethodInput
	waitIn []activities.WaitForReportedInput
}

func (c *calls) recordInvoke(ctx context.Context, in activities.InvokeMethodInput) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	info := activity.GetInfo(ctx)
	c.invoke = append(c.invoke, info)
	c.inv = append(c.inv, in)
	return int(info.Attempt)
}

func (c *calls) recordWait(ctx context.Context, in activities.WaitForReportedInput) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wait = append(c.wait, activity.GetInfo(ctx))
	c.waitIn = append(c.waitIn, in)
}

// newEnv is a test environment for a Reboot whose read before the call finds an earlier
// reboot's rebootTime (rebootTwin).
func newEnv(t *testing.T) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	env := bareEnv(t)
	rebootTwin(env)
	return env
}

// bareEnv is a test environment for a Reboot with no activity mocked.
func bareEnv(t *testing.T) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterActivity(&activities.Activities{})
	env.SetStartTime(start)
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: workflowID, TaskQueue: workflows.TaskQueue})
	return env
}

// rebootTwin mocks the read before the call: an earlier reboot's rebootTime, stamped by the hub
// an hour before the start.
func rebootTwin(env *testsuite.TestWorkflowEnvironment) {
	env.OnActivity(a.GetTwin, mock.Anything, mock.Anything).Return(activities.GetTwinResult{
		Reported:    map[string]any{"rebootTime": "2026-05-01T11:00:00Z"},
		LastUpdated: map[string]string{"rebootTime": rebootBefore},
		Version:     4, Attempt: 1,
	}, nil)
}

// rebootBefore is the hub's time of the rebootTime read before the call.
const rebootBefore = "2026-05-01T11:00:00.123Z"

// deviceAnswers is the tutorial device's answer to rebootDevice.
func deviceAnswers(c *calls) func(context.Context, activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
	return func(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
		attempt := c.recordInvoke(ctx, in)
		return activities.InvokeMethodResult{
			Status:  200,
			Payload: json.RawMessage(`{"Response":"This is the response from the device"}`),
			Attempt: attempt,
		}, nil
	}
}

// deviceReports is the twin showing the new rebootTime after two polls.
func deviceReports(c *calls) func(context.Context, activities.WaitForReportedInput) (activities.WaitForReportedResult, error) {
	return func(ctx context.Context, in activities.WaitForReportedInput) (activities.WaitForReportedResult, error) {
		c.recordWait(ctx, in)
		return activities.WaitForReportedResult{Value: rebootTime, Version: 5, Polls: 2, SeenAt: start.Add(22 * time.Second)}, nil
	}
}

func workflowError(t *testing.T, env *testsuite.TestWorkflowEnvironment) *temporal.ApplicationError {
	t.Helper()
	require.True(t, env.IsWorkflowCompleted())
	err := env.GetWorkflowError()
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr), "want an ApplicationError in %v", err)
	return appErr
}

func queryStatus(t *testing.T, env *testsuite.TestWorkflowEnvironment) workflows.RebootStatus {
	t.Helper()
	v, err := env.QueryWorkflow(workflows.QueryStep)
	require.NoError(t, err)
	var st workflows.RebootStatus
	require.NoError(t, v.Get(&st))
	return st
}

func TestRebootSuccess(t *testing.T) {
	env := newEnv(t)
	c := &calls{}
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(deviceAnswers(c)).After(20 * time.Second)
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c)).After(2 * time.Second)

	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device, RequestID: "r1"})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())

	var res workflows.RebootResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Equal(t, device, res.DeviceID)
	assert.Equal(t, 200, res.MethodStatus)
	assert.JSONEq(t, `{"Response": "This is the response from the device"}`, string(res.MethodPayload))
	assert.True(t, res.RebootTime.Equal(time.Date(2026, 5, 1, 12, 0, 21, 0, time.UTC)), "reboot time %s", res.RebootTime)
	assert.Empty(t, res.RebootTimeReported, "an RFC 3339 time is shown as a time")
	assert.Equal(t, 1+1+2, res.HubCalls, "the read before the call, the call, two polls")
	assert.True(t, res.Started.Equal(start), "started %s", res.Started)
	assert.Equal(t, 22*time.Second, res.Duration)
	assert.Equal(t, 1, res.Attempts)
	assert.Equal(t, 2, res.Polls)

	// What the activities were asked to do.
	require.Len(t, c.inv, 1)
	assert.Equal(t, activities.InvokeMethodInput{
		DeviceID:        device,
		Method:          "rebootDevice",
		Payload:         map[string]any{"method_number": "42", "requestId": workflowID},
		ResponseTimeout: 60 * time.Second,
		Evidence: &activities.Evidence{
			Property: "rebootTime", Before: rebootBefore,
			IDProperty: "lastRebootRequestId", ID: workflowID,
			Window: 2 * time.Minute,
		},
	}, c.inv[0])
	require.Len(t, c.waitIn, 1)
	w := c.waitIn[0]
	assert.Equal(t, device, w.DeviceID)
	assert.Equal(t, "rebootTime", w.Property)
	assert.True(t, w.After.IsZero(), "the hub's times decide, not the workflow's clock: after %s", w.After)
	assert.Equal(t, &activities.Evidence{Property: "rebootTime", Before: rebootBefore, IDProperty: "lastRebootRequestId", ID: workflowID}, w.Changed)
	assert.True(t, w.Deadline.Equal(start.Add(5*time.Minute)), "deadline %s", w.Deadline)
	assert.Empty(t, w.OneOf)
	assert.Equal(t, time.Second, w.InitialInterval)
	assert.Equal(t, 10*time.Second, w.MaxInterval)

	// And under which options.
	inv := c.invoke[0]
	assert.Equal(t, 2*time.Minute+75*time.Second, inv.StartToCloseTimeout, "a look for evidence, the method timeout and a margin")
	assert.Equal(t, 10*time.Second, inv.HeartbeatTimeout)
	assert.Equal(t, 5*time.Minute, inv.ScheduleToCloseTimeout)
	wait := c.wait[0]
	assert.Equal(t, 5*time.Minute-20*time.Second+30*time.Second, wait.StartToCloseTimeout)
	assert.Equal(t, 20*time.Second, wait.HeartbeatTimeout)

	assert.Equal(t, workflows.StepDone, queryStatus(t, env).Step)
}

func TestRebootDeviceOfflineThenOnline(t *testing.T) {
	env := newEnv(t)
	c := &calls{}
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
			if attempt := c.recordInvoke(ctx, in); attempt < 3 {
				// What classify makes of 404103 DeviceNotOnline: a plain, retryable error.
				return activities.InvokeMethodResult{}, errors.New("invoke rebootDevice on dev1: code = 404, DeviceNotOnline")
			}
			return activities.InvokeMethodResult{Status: 200, Attempt: 3}, nil
		})
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c))

	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device, RequestID: "r1"})
	require.NoError(t, env.GetWorkflowError())

	var res workflows.RebootResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Equal(t, 3, res.Attempts)
	env.AssertActivityNumberOfCalls(t, "InvokeMethod", 3)
	env.AssertActivityNumberOfCalls(t, "WaitForReported", 1)
	// Retry backoff 2 s, then 4 s.
	assert.Equal(t, 6*time.Second, res.Duration)
	// Every attempt carries the same requestId, so that the device can tell repeats.
	for _, in := range c.inv {
		assert.Equal(t, workflowID, in.Payload["requestId"])
	}
}

func TestRebootDeviceOfflineUntilDeadline(t *testing.T) {
	env := newEnv(t)
	c := &calls{}
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
			c.recordInvoke(ctx, in)
			return activities.InvokeMethodResult{}, errors.New("invoke rebootDevice on dev1: DeviceNotOnline")
		})
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c))

	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device, Deadline: 2 * time.Minute})
	require.True(t, env.IsWorkflowCompleted())
	err := env.GetWorkflowError()
	require.Error(t, err)
	var actErr *temporal.ActivityError
	require.True(t, errors.As(err, &actErr), "%v", err)
	assert.Contains(t, err.Error(), "DeviceNotOnline", "the last failure is reported")
	// The error says that the deadline ended the retries, in a type of its own rather than the
	// last failure's.
	appErr := workflowError(t, env)
	assert.Equal(t, activities.ErrDeadlineExceeded, appErr.Type())
	assert.True(t, appErr.NonRetryable())
	assert.Contains(t, appErr.Message(), "gave up at the deadline (2m0s) after retrying: invoke rebootDevice on dev1: DeviceNotOnline")
	// Tries at 0, 2, 6, 14, 30, 60, 90 s (backoff 2 s doubling to the 30 s cap); whether one more starts
	// right at the 120 s budget depends on how inclusive the bound is (the test environment's is).
	c.mu.Lock()
	tries := len(c.invoke)
	c.mu.Unlock()
	assert.GreaterOrEqual(t, tries, 7)
	assert.LessOrEqual(t, tries, 8)
	assert.LessOrEqual(t, env.Now().Sub(start), 2*time.Minute, "gave up within the budget")
	env.AssertActivityNumberOfCalls(t, "WaitForReported", 0)
}

func TestRebootMethodFailed(t *testing.T) {
	env := newEnv(t)
	c := &calls{}
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
			c.recordInvoke(ctx, in)
			return activities.InvokeMethodResult{}, temporal.NewNonRetryableApplicationError(
				"invoke rebootDevice on dev1: device answered status 500", activities.ErrMethodFailed, nil,
				activities.InvokeMethodResult{Status: 500})
		})
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c))

	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device})
	appErr := workflowError(t, env)
	assert.Equal(t, activities.ErrMethodFailed, appErr.Type())
	var answer activities.InvokeMethodResult
	require.NoError(t, appErr.Details(&answer))
	assert.Equal(t, 500, answer.Status)
	env.AssertActivityNumberOfCalls(t, "InvokeMethod", 1)
	env.AssertActivityNumberOfCalls(t, "WaitForReported", 0)

	st := queryStatus(t, env)
	assert.Equal(t, workflows.StepFailed, st.Step)
	assert.Contains(t, st.Error, "status 500")
}

func TestRebootUnknownDevice(t *testing.T) {
	env := newEnv(t)
	c := &calls{}
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
			c.recordInvoke(ctx, in)
			return activities.InvokeMethodResult{}, temporal.NewNonRetryableApplicationError(
				`invoke rebootDevice on ghost: device "ghost" is not registered in the IoT hub`, activities.ErrDeviceNotFound, nil)
		})
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c))

	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: "ghost"})
	appErr := workflowError(t, env)
	assert.Equal(t, activities.ErrDeviceNotFound, appErr.Type())
	assert.Contains(t, appErr.Error(), "ghost")
	env.AssertActivityNumberOfCalls(t, "InvokeMethod", 1)
	env.AssertActivityNumberOfCalls(t, "WaitForReported", 0)
}

// The retry policy itself stops on these types, even when an error of the type arrives marked retryable
// (by an older worker, or another activity implementation).
func TestRebootRetryPolicyNonRetryableTypes(t *testing.T) {
	for _, errType := range []string{activities.ErrDeviceNotFound, activities.ErrUnauthorized, activities.ErrBadRequest, activities.ErrMethodFailed} {
		t.Run(errType, func(t *testing.T) {
			env := newEnv(t)
			c := &calls{}
			env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(
				func(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
					c.recordInvoke(ctx, in)
					return activities.InvokeMethodResult{}, temporal.NewApplicationError("refused", errType)
				})
			env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c))

			env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device})
			assert.Equal(t, errType, workflowError(t, env).Type())
			env.AssertActivityNumberOfCalls(t, "InvokeMethod", 1)
		})
	}
}

func TestRebootNeverReports(t *testing.T) {
	env := newEnv(t)
	c := &calls{}
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(deviceAnswers(c)).After(20 * time.Second)
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.WaitForReportedInput) (activities.WaitForReportedResult, error) {
			c.recordWait(ctx, in)
			return activities.WaitForReportedResult{}, temporal.NewNonRetryableApplicationError(
				"wait for rebootTime on dev1: deadline passed after 30 polls; last value seen: none (property not reported)",
				activities.ErrDeadlineExceeded, nil, activities.WaitForReportedProgress{Polls: 30})
		}).After(4*time.Minute + 40*time.Second)

	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device})
	appErr := workflowError(t, env)
	assert.Equal(t, activities.ErrDeadlineExceeded, appErr.Type())
	assert.Contains(t, appErr.Error(), "last value seen")
	env.AssertActivityNumberOfCalls(t, "InvokeMethod", 1)
	env.AssertActivityNumberOfCalls(t, "WaitForReported", 1)

	st := queryStatus(t, env)
	assert.Equal(t, workflows.StepFailed, st.Step)
	assert.True(t, st.Since.Equal(start.Add(5*time.Minute)), "failed at %s", st.Since)
}

func TestRebootWaitRetriedAfterWorkerLoss(t *testing.T) {
	env := newEnv(t)
	c := &calls{}
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(deviceAnswers(c))
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.WaitForReportedInput) (activities.WaitForReportedResult, error) {
			c.recordWait(ctx, in)
			if activity.GetInfo(ctx).Attempt == 1 {
				// What the workflow sees when the worker running the wait dies.
				return activities.WaitForReportedResult{}, errors.New("activity heartbeat timeout")
			}
			return activities.WaitForReportedResult{Value: rebootTime, Polls: 9}, nil
		})

	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device})
	require.NoError(t, env.GetWorkflowError())
	var res workflows.RebootResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Equal(t, 9, res.Polls)
	env.AssertActivityNumberOfCalls(t, "WaitForReported", 2)
	env.AssertActivityNumberOfCalls(t, "InvokeMethod", 1)
}

func TestRebootInvalidInput(t *testing.T) {
	tests := []struct {
		name string
		in   workflows.RebootInput
	}{
		{name: "no device", in: workflows.RebootInput{}},
		{name: "illegal device ID", in: workflows.RebootInput{DeviceID: "dev/1"}},
		{name: "method timeout above IoT Hub's limit", in: workflows.RebootInput{DeviceID: device, MethodTimeout: 10 * time.Minute}},
		{name: "deadline shorter than the method timeout", in: workflows.RebootInput{DeviceID: device, MethodTimeout: time.Minute, Deadline: 30 * time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			c := &calls{}
			env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(deviceAnswers(c))
			env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c))

			env.ExecuteWorkflow(workflows.Reboot, tc.in)
			appErr := workflowError(t, env)
			assert.Equal(t, workflows.ErrInvalidInput, appErr.Type())
			assert.True(t, appErr.NonRetryable())
			assert.Contains(t, appErr.Error(), "invalid reboot input")
			env.AssertActivityNumberOfCalls(t, "InvokeMethod", 0)
			env.AssertActivityNumberOfCalls(t, "WaitForReported", 0)
		})
	}
}

func TestRebootStepQuery(t *testing.T) {
	env := newEnv(t)
	c := &calls{}
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(deviceAnswers(c)).After(20 * time.Second)
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c)).After(30 * time.Second)

	var during []workflows.RebootStatus
	for _, at := range []time.Duration{10 * time.Second, 35 * time.Second} {
		env.RegisterDelayedCallback(func() { during = append(during, queryStatus(t, env)) }, at)
	}
	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device, RequestID: "r1"})
	require.NoError(t, env.GetWorkflowError())

	require.Len(t, during, 2)
	invoking, waiting := during[0], during[1]
	assert.Equal(t, workflows.StepInvoking, invoking.Step)
	assert.Equal(t, "invoking rebootDevice", invoking.Step)
	assert.Equal(t, device, invoking.DeviceID)
	assert.True(t, invoking.Since.Equal(start), "since %s", invoking.Since)
	assert.True(t, invoking.Started.Equal(start))
	assert.True(t, invoking.Deadline.Equal(start.Add(5*time.Minute)))

	assert.Equal(t, workflows.StepWaiting, waiting.Step)
	assert.True(t, waiting.Since.Equal(start.Add(20*time.Second)), "since %s", waiting.Since)

	done := queryStatus(t, env)
	assert.Equal(t, workflows.StepDone, done.Step)
	assert.True(t, done.Since.Equal(start.Add(50*time.Second)), "since %s", done.Since)
	assert.Empty(t, done.Error)
}

func TestRebootSearchAttributes(t *testing.T) {
	env := newEnv(t)
	c := &calls{}
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(deviceAnswers(c))
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c))
	env.OnUpsertTypedSearchAttributes(mock.MatchedBy(func(sa temporal.SearchAttributes) bool {
		dev, okDev := sa.GetKeyword(workflows.SearchAttrDevice)
		op, okOp := sa.GetKeyword(workflows.SearchAttrOperation)
		return okDev && okOp && dev == device && op == workflows.OperationReboot && sa.Size() == 2
	})).Return(nil).Once()

	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device})
	require.NoError(t, env.GetWorkflowError())
	env.AssertExpectations(t)
}
