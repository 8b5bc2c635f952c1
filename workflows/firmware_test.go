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
	"go.temporal.io/sdk/workflow"
)

const (
	fwWorkflowID = "firmware/dev1/u1"
	fwURI        = "https://fw.example/v2.bin"
	fwVersion    = "2.0.0"
)

func fwInput() workflows.FirmwareInput {
	return workflows.FirmwareInput{DeviceID: device, PackageURI: fwURI, Version: fwVersion, UpdateID: "u1"}
}

func newFirmwareEnv(t *testing.T) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterActivity(&activities.Activities{})
	env.SetStartTime(start)
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: fwWorkflowID, TaskQueue: workflows.TaskQueue})
	return env
}

// fwCalls records what the mocked activities received. Mocks run on their own goroutines.
type fwCalls struct {
	mu      sync.Mutex
	twin    []activity.Info
	twinIn  []activities.GetTwinInput
	invoke  []activity.Info
	inv     []activities.InvokeMethodInput
	follow  []activity.Info
	follIn  []activities.FollowStagesInput
	confirm []activities.WaitForReportedInput
}

func (c *fwCalls) lock() func() { c.mu.Lock(); return c.mu.Unlock }

// twinReports is the twin before the update: version 1.0.0, status standBy.
func twinReports(c *fwCalls, version string) func(context.Context, activities.GetTwinInput) (activities.GetTwinResult, error) {
	return func(ctx context.Context, in activities.GetTwinInput) (activities.GetTwinResult, error) {
		defer c.lock()()
		c.twin = append(c.twin, activity.GetInfo(ctx))
		c.twinIn = append(c.twinIn, in)
		return activities.GetTwinResult{
			Reported:    map[string]any{"firmwareVersion": version, "firmwareStatus": "standBy"},
			LastUpdated: map[string]string{"firmwareVersion": statusBefore, "firmwareStatus": statusBefore},
			Version:     3,
			Attempt:     int(activity.GetInfo(ctx).Attempt),
		}, nil
	}
}

// statusBefore is the hub's time of the firmwareStatus read before the call.
const statusBefore = "2026-05-01T11:59:00.500Z"

// fwAccepts is the tutorial device's answer to firmwareUpdate.
func fwAccepts(c *fwCalls) func(context.Context, activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
	return func(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
		defer c.lock()()
		c.invoke = append(c.invoke, activity.GetInfo(ctx))
		c.inv = append(c.inv, in)
		return activities.InvokeMethodResult{
			Status:  200,
			Payload: json.RawMessage(`{"Response":"Firmware update started"}`),
			Attempt: int(activity.GetInfo(ctx).Attempt),
		}, nil
	}
}

// stagesAt are the tutorial's stages as FollowStages sees them, when it starts at begin: seen
// at 29, 44 and 59 s, reported by the device at 15, 30 and 45 s.
func stagesAt(begin time.Time) []workflows.StageSeen {
	return []workflows.StageSeen{
		{Status: "downloading", SeenAt: begin.Add(29 * time.Second), ReportedAt: begin.Add(15 * time.Second)},
		{Status: "applying", SeenAt: begin.Add(44 * time.Second), ReportedAt: begin.Add(30 * time.Second)},
		{Status: "completed", SeenAt: begin.Add(59 * time.Second), ReportedAt: begin.Add(45 * time.Second)},
	}
}

// fwFollows completes the stages in six polls.
func fwFollows(c *fwCalls) func(context.Context, activities.FollowStagesInput) (activities.FollowStagesResult, error) {
	return func(ctx context.Context, in activities.FollowStagesInput) (activities.FollowStagesResult, error) {
		c.recordFollow(ctx, in)
		return activities.FollowStagesResult{Stages: stagesAt(in.Since), Polls: 6}, nil
	}
}

func (c *fwCalls) recordFollow(ctx context.Context, in activities.FollowStagesInput) {
	defer c.lock()()
	c.follow = append(c.follow, activity.GetInfo(ctx))
	c.follIn = append(c.follIn, in)
}

// fwConfirms is the twin reporting the new version after the reboot, at the second poll.
func fwConfirms(c *fwCalls) func(context.Context, activities.WaitForReportedInput) (activities.WaitForReportedResult, error) {
	return func(ctx context.Context, in activities.WaitForReportedInput) (activities.WaitForReportedResult, error) {
		defer c.lock()()
		c.confirm = append(c.confirm, in)
		return activities.WaitForReportedResult{Value: fwVersion, Version: 9, Polls: 2}, nil
	}
}

// fwMocks are the mocked activities' answers (what OnActivity(...).Return takes) and delays.
type fwMocks struct {
	twin, invoke, follow, confirm                     []any
	twinAfter, invokeAfter, followAfter, confirmAfter time.Duration
}

// happyPath is the tutorial device: version 1.0.0 before, accepts after 1 s, stages in 60 s.
func happyPath(c *fwCalls) fwMocks {
	return fwMocks{
		twin:        []any{twinReports(c, "1.0.0")},
		invoke:      []any{fwAccepts(c)},
		invokeAfter: time.Second,
		follow:      []any{fwFollows(c)},
		followAfter: 60 * time.Second,
		confirm:     []any{fwConfirms(c)},
	}
}

func (m fwMocks) on(env *testsuite.TestWorkflowEnvironment) {
	env.OnActivity(a.GetTwin, mock.Anything, mock.Anything).Return(m.twin...).After(m.twinAfter)
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(m.invoke...).After(m.invokeAfter)
	env.OnActivity(a.FollowStages, mock.Anything, mock.Anything).Return(m.follow...).After(m.followAfter)
	if m.confirm != nil { // only with Reboot; left out where AssertExpectations counts the mocks
		env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(m.confirm...).After(m.confirmAfter)
	}
}

func fwResult(t *testing.T, env *testsuite.TestWorkflowEnvironment) workflows.FirmwareResult {
	t.Helper()
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res workflows.FirmwareResult
	require.NoError(t, env.GetWorkflowResult(&res))
	return res
}

func fwStatus(t *testing.T, env *testsuite.TestWorkflowEnvironment) workflows.FirmwareStatus {
	t.Helper()
	v, err := env.QueryWorkflow(workflows.QueryStep)
	require.NoError(t, err)
	var st workflows.FirmwareStatus
	require.NoError(t, v.Get(&st))
	return st
}

func TestFirmwareWorkflowID(t *testing.T) {
	assert.Equal(t, "firmware/dev1/u1", workflows.FirmwareWorkflowID("dev1", "u1"))
}

func TestFirmwareUpdated(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	happyPath(c).on(env)

	env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
	res := fwResult(t, env)

	followStart := start.Add(time.Second)
	assert.Equal(t, workflows.FirmwareResult{
		DeviceID:      device,
		UpdateID:      "u1",
		Status:        workflows.FirmwareUpdated,
		Version:       fwVersion,
		FromVersion:   "1.0.0",
		MethodPayload: json.RawMessage(`{"Response":"Firmware update started"}`),
		Stages:        stagesAt(followStart),
		Attempts:      1,
		// One twin read, one method call, six polls.
		HubCalls: 8,
		Started:  start,
		Duration: 61 * time.Second,
	}, normalise(res))

	// What the activities were asked.
	require.Len(t, c.twinIn, 1)
	assert.Equal(t, activities.GetTwinInput{DeviceID: device, Properties: []string{"firmwareVersion", "firmwareStatus", "firmwareUpdateId"}}, c.twinIn[0])
	require.Len(t, c.inv, 1)
	assert.Equal(t, activities.InvokeMethodInput{
		DeviceID:        device,
		Method:          "firmwareUpdate",
		Payload:         map[string]any{"fwPackageUri": fwURI, "version": fwVersion, "updateId": "u1"},
		ResponseTimeout: 30 * time.Second,
		Evidence: &activities.Evidence{
			Property: "firmwareStatus", Before: statusBefore,
			OneOf:      []string{"downloading", "applying", "completed", "error"},
			IDProperty: "firmwareUpdateId", ID: "u1",
			Window: 2 * time.Minute, // the stage timeout
		},
	}, c.inv[0])
	require.Len(t, c.follIn, 1)
	f := c.follIn[0]
	assert.Equal(t, device, f.DeviceID)
	assert.Equal(t, "u1", f.UpdateID)
	assert.True(t, f.ByMetadata)
	assert.Equal(t, statusBefore, f.StatusBefore)
	assert.True(t, f.Since.Equal(followStart), "since %s", f.Since)
	assert.Equal(t, 2*time.Minute, f.StageTimeout)
	assert.True(t, f.Deadline.Equal(start.Add(15*time.Minute)), "deadline %s", f.Deadline)
	assert.Equal(t, 2*time.Second, f.InitialInterval)
	assert.Equal(t, 15*time.Second, f.MaxInterval)
	env.AssertActivityNumberOfCalls(t, "WaitForReported", 0)

	// And under which options.
	twin := c.twin[0]
	assert.Equal(t, 15*time.Second, twin.StartToCloseTimeout)
	assert.Equal(t, time.Duration(0), twin.HeartbeatTimeout)
	inv := c.invoke[0]
	assert.Equal(t, 2*time.Minute+45*time.Second, inv.StartToCloseTimeout, "a look for evidence, the method timeout and a margin")
	assert.Equal(t, 10*time.Second, inv.HeartbeatTimeout)
	assert.Equal(t, 15*time.Minute, inv.ScheduleToCloseTimeout)
	fo := c.follow[0]
	assert.Equal(t, 15*time.Minute-time.Second+30*time.Second, fo.StartToCloseTimeout)
	assert.Equal(t, 30*time.Second, fo.HeartbeatTimeout)

	st := fwStatus(t, env)
	assert.Equal(t, workflows.StepDone, st.Step)
	assert.Equal(t, "completed", st.Stage)
	assert.Len(t, st.Stages, 3)
	assert.Empty(t, st.Error)
}

// normalise makes times comparable with assert.Equal (the test environment's carry a location).
func normalise(r workflows.FirmwareResult) workflows.FirmwareResult {
	r.Started = r.Started.UTC()
	for i := range r.Stages {
		r.Stages[i].SeenAt = r.Stages[i].SeenAt.UTC()
		r.Stages[i].ReportedAt = r.Stages[i].ReportedAt.UTC()
	}
	return r
}

func TestFirmwareSkippedWhenCompliant(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	m := happyPath(c)
	m.twin = []any{twinReports(c, fwVersion)}
	m.on(env)

	env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
	res := fwResult(t, env)
	assert.Equal(t, workflows.FirmwareSkipped, res.Status)
	assert.Equal(t, fwVersion, res.Version)
	assert.Equal(t, fwVersion, res.FromVersion)
	assert.Empty(t, res.Stages)
	assert.Equal(t, 0, res.Attempts)
	assert.Equal(t, 1, res.HubCalls)
	env.AssertActivityNumberOfCalls(t, "GetTwin", 1)
	env.AssertActivityNumberOfCalls(t, "InvokeMethod", 0)
	env.AssertActivityNumberOfCalls(t, "FollowStages", 0)
	assert.Equal(t, workflows.StepSkipped, fwStatus(t, env).Step)
}

// FollowStages' own errors, as the activity builds them, end the workflow at once.
func TestFirmwareFollowFailures(t *testing.T) {
	downloading := []workflows.StageSeen{{Status: "downloading", SeenAt: start.Add(30 * time.Second)}}
	tests := []struct {
		name     string
		errType  string
		msg      string
		stages   []workflows.StageSeen
		wantStep string
	}{
		{
			name:    "stuck in downloading",
			errType: activities.ErrStageTimeout,
			msg:     `firmware update u1 on dev1 stuck in downloading: no applying within 2m0s of downloading being seen (last read: firmwareStatus "downloading" for update "u1", 12 polls)`,
			stages:  downloading,
		},
		{
			name:    "device error",
			errType: activities.ErrDeviceError,
			msg:     "firmware update u1 on dev1 failed in stage downloading: the device reports: checksum mismatch",
			stages:  downloading,
		},
		{
			name:    "deadline",
			errType: activities.ErrDeadlineExceeded,
			msg:     "firmware update u1 on dev1: deadline passed in stage (none seen)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newFirmwareEnv(t)
			c := &fwCalls{}
			m := happyPath(c)
			m.follow = []any{func(ctx context.Context, in activities.FollowStagesInput) (activities.FollowStagesResult, error) {
				c.recordFollow(ctx, in)
				return activities.FollowStagesResult{}, temporal.NewNonRetryableApplicationError(tc.msg, tc.errType, nil,
					activities.FollowStagesProgress{Polls: 12, Stages: tc.stages, LastStatus: "downloading", LastUpdateID: "u1"})
			}}
			m.followAfter = 2*time.Minute + 30*time.Second
			m.on(env)

			env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
			appErr := workflowError(t, env)
			assert.Equal(t, tc.errType, appErr.Type())
			assert.True(t, appErr.NonRetryable())
			assert.Contains(t, appErr.Error(), tc.msg)
			env.AssertActivityNumberOfCalls(t, "FollowStages", 1)

			st := fwStatus(t, env)
			assert.Equal(t, workflows.StepFailed, st.Step)
			assert.Contains(t, st.Error, tc.msg)
			assert.Len(t, st.Stages, len(tc.stages), "the stages seen before the failure")
			if len(tc.stages) > 0 {
				assert.Equal(t, "downloading", st.Stage)
			} else {
				assert.Equal(t, "standBy", st.Stage, "still the status before the update")
			}
		})
	}
}

// The retry policies stop on these types even when an error of the type arrives marked retryable.
func TestFirmwareRetryPolicyNonRetryableTypes(t *testing.T) {
	for _, errType := range []string{activities.ErrStageTimeout, activities.ErrDeviceError, activities.ErrDeadlineExceeded, activities.ErrDeviceNotFound} {
		t.Run("FollowStages "+errType, func(t *testing.T) {
			env := newFirmwareEnv(t)
			c := &fwCalls{}
			m := happyPath(c)
			m.follow = []any{func(ctx context.Context, in activities.FollowStagesInput) (activities.FollowStagesResult, error) {
				c.recordFollow(ctx, in)
				return activities.FollowStagesResult{}, temporal.NewApplicationError("refused", errType)
			}}
			m.on(env)
			env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
			assert.Equal(t, errType, workflowError(t, env).Type())
			env.AssertActivityNumberOfCalls(t, "FollowStages", 1)
		})
	}
	for _, errType := range []string{activities.ErrDeviceNotFound, activities.ErrUnauthorized, activities.ErrBadRequest} {
		t.Run("GetTwin "+errType, func(t *testing.T) {
			env := newFirmwareEnv(t)
			c := &fwCalls{}
			m := happyPath(c)
			m.twin = []any{activities.GetTwinResult{}, temporal.NewApplicationError("refused", errType)}
			m.on(env)
			env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
			assert.Equal(t, errType, workflowError(t, env).Type())
			env.AssertActivityNumberOfCalls(t, "GetTwin", 1)
			env.AssertActivityNumberOfCalls(t, "InvokeMethod", 0)
		})
	}
}

func TestFirmwareRefusedByDevice(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		payload string
		want    string
	}{
		{"another update in progress", 409, `{"error": "update u0 in progress"}`, "device dev1 refused firmwareUpdate with status 409: update u0 in progress"},
		{"bad URI", 400, `{"Response": "fwPackageUri is not a URL"}`, "device dev1 refused firmwareUpdate with status 400: fwPackageUri is not a URL"},
		{"no reason", 400, `{"code":7}`, `device dev1 refused firmwareUpdate with status 400: {"code":7}`},
		{"a plain string", 409, `"busy flashing"`, "device dev1 refused firmwareUpdate with status 409: busy flashing"},
		{"an object written as a string", 409, `"{ \"Response\": \"Update already running\" }"`, "device dev1 refused firmwareUpdate with status 409: Update already running"},
		{"an array", 500, `[1,2]`, "device dev1 refused firmwareUpdate with status 500: [1,2]"},
		{"no body", 500, ``, "device dev1 refused firmwareUpdate with status 500: no reason given"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newFirmwareEnv(t)
			c := &fwCalls{}
			m := happyPath(c)
			// What InvokeMethod makes of a device's failure status.
			m.invoke = []any{activities.InvokeMethodResult{},
				temporal.NewNonRetryableApplicationError("invoke firmwareUpdate on dev1: device answered status ...", activities.ErrMethodFailed, nil,
					activities.InvokeMethodResult{Status: tc.status, Payload: json.RawMessage(tc.payload), Attempt: 1})}
			m.on(env)

			env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
			appErr := workflowError(t, env)
			assert.Equal(t, activities.ErrMethodFailed, appErr.Type())
			assert.True(t, appErr.NonRetryable())
			assert.Equal(t, tc.want, appErr.Error()[:len(tc.want)])
			var answer activities.InvokeMethodResult
			require.NoError(t, appErr.Details(&answer))
			assert.Equal(t, tc.status, answer.Status)
			env.AssertActivityNumberOfCalls(t, "InvokeMethod", 1)
			env.AssertActivityNumberOfCalls(t, "FollowStages", 0)
		})
	}
}

// A hub that throttles (or cannot be reached) until the deadline: GetTwin is retried until then,
// and the workflow fails with ErrDeadlineExceeded carrying the last failure, without a method call.
func TestFirmwareHubThrottledUntilDeadline(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	m := happyPath(c)
	m.twin = []any{activities.GetTwinResult{}, errors.New("read twin of dev1: IoT Hub answered HTTP 429, code 429001: ThrottlingException")}
	m.on(env)
	in := fwInput()
	in.Deadline = 2 * time.Minute
	env.ExecuteWorkflow(workflows.FirmwareUpdate, in)
	appErr := workflowError(t, env)
	assert.Equal(t, activities.ErrDeadlineExceeded, appErr.Type())
	assert.Equal(t, "gave up at the deadline (2m0s) after retrying: read twin of dev1: IoT Hub answered HTTP 429, code 429001: ThrottlingException", appErr.Message())
	env.AssertActivityNumberOfCalls(t, "InvokeMethod", 0)
}

func TestFirmwareMethodNeverAnswered(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	m := happyPath(c)
	// Connected but not answering: the hub times the call out after the 30 s response timeout
	// with 504101, which classify leaves retryable.
	m.invoke = []any{func(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
		defer c.lock()()
		c.invoke = append(c.invoke, activity.GetInfo(ctx))
		return activities.InvokeMethodResult{}, errors.New("invoke firmwareUpdate on dev1: IoT Hub answered HTTP 504, code 504101: GatewayTimeout")
	}}
	m.invokeAfter = 30 * time.Second
	m.on(env)

	in := fwInput()
	in.Deadline = 3 * time.Minute
	env.ExecuteWorkflow(workflows.FirmwareUpdate, in)
	appErr := workflowError(t, env)
	assert.Contains(t, appErr.Error(), "GatewayTimeout", "the last failure is reported")
	assert.Equal(t, activities.ErrDeadlineExceeded, appErr.Type(), "the deadline ended the retries")
	assert.Contains(t, appErr.Message(), "gave up at the deadline (3m0s) after retrying: invoke firmwareUpdate on dev1")
	// Calls of 30 s with 2, 4, 8, 16, 30 s between them until the 3 min budget is spent.
	c.mu.Lock()
	tries := len(c.invoke)
	c.mu.Unlock()
	assert.GreaterOrEqual(t, tries, 3)
	assert.LessOrEqual(t, tries, 5)
	assert.LessOrEqual(t, env.Now().Sub(start), 3*time.Minute+30*time.Second, "gave up at the deadline")
	env.AssertActivityNumberOfCalls(t, "FollowStages", 0)
	assert.Equal(t, workflows.StepFailed, fwStatus(t, env).Step)
}

func TestFirmwareDeviceOfflineThenOnline(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	m := happyPath(c)
	m.invoke = []any{func(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
		if attempt := activity.GetInfo(ctx).Attempt; attempt < 4 {
			return activities.InvokeMethodResult{}, errors.New("invoke firmwareUpdate on dev1: IoT Hub answered HTTP 404, code 404103: DeviceNotOnline")
		}
		return fwAccepts(c)(ctx, in)
	}}
	m.invokeAfter = 0
	m.on(env)

	env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
	res := fwResult(t, env)
	assert.Equal(t, workflows.FirmwareUpdated, res.Status)
	assert.Equal(t, 4, res.Attempts)
	assert.Equal(t, 1+4+6, res.HubCalls)
	env.AssertActivityNumberOfCalls(t, "InvokeMethod", 4)
	// Retries after 2, 4 and 8 s, then the 60 s of stages.
	assert.Equal(t, 14*time.Second+60*time.Second, res.Duration)
	for _, in := range c.inv {
		assert.Equal(t, "u1", in.Payload["updateId"], "every attempt names the same update")
	}
	require.Len(t, c.follIn, 1)
	assert.True(t, c.follIn[0].Since.Equal(start.Add(14*time.Second)), "stages count from the accepted call")
}

func TestFirmwareUpdateIDDefaultsToWorkflowID(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	happyPath(c).on(env)
	in := fwInput()
	in.UpdateID = ""

	env.ExecuteWorkflow(workflows.FirmwareUpdate, in)
	res := fwResult(t, env)
	assert.Equal(t, fwWorkflowID, res.UpdateID)
	require.Len(t, c.inv, 1)
	assert.Equal(t, fwWorkflowID, c.inv[0].Payload["updateId"])
	require.Len(t, c.follIn, 1)
	assert.Equal(t, fwWorkflowID, c.follIn[0].UpdateID, "only statuses of this update count")
}

func TestFirmwareRebootAfterwards(t *testing.T) {
	for _, tc := range []struct {
		name        string
		updateID    string
		wantChildID string
	}{
		{"explicit update ID", "u1", "reboot/dev1/u1"},
		{"update ID from the workflow ID", "", "reboot/dev1/firmware:dev1:u1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newFirmwareEnv(t)
			c := &fwCalls{}
			happyPath(c).on(env)
			var childID string
			var childIn workflows.RebootInput
			env.OnWorkflow(workflows.Reboot, mock.Anything, mock.Anything).Return(
				func(ctx workflow.Context, in workflows.RebootInput) (workflows.RebootResult, error) {
					childID = workflow.GetInfo(ctx).WorkflowExecution.ID
					childIn = in
					return workflows.RebootResult{DeviceID: device, MethodStatus: 200, Attempts: 1, Polls: 3,
						RebootTime: start.Add(90 * time.Second)}, nil
				}).After(25 * time.Second)

			in := fwInput()
			in.UpdateID = tc.updateID
			in.Reboot = true
			env.ExecuteWorkflow(workflows.FirmwareUpdate, in)
			res := fwResult(t, env)

			assert.Equal(t, workflows.FirmwareUpdated, res.Status)
			require.NotNil(t, res.Reboot)
			assert.Equal(t, 1, res.Reboot.Attempts)
			// 8 for the update, 1+3 for the reboot, 2 to confirm the version.
			assert.Equal(t, 8+4+2, res.HubCalls)
			assert.Equal(t, tc.wantChildID, childID)
			assert.Equal(t, device, childIn.DeviceID)
			assert.Equal(t, tc.wantChildID[len("reboot/dev1/"):], childIn.RequestID)
			assert.Equal(t, 15*time.Minute-61*time.Second, childIn.Deadline, "the rest of the update's budget")

			require.Len(t, c.confirm, 1)
			w := c.confirm[0]
			assert.Equal(t, "firmwareVersion", w.Property)
			assert.Equal(t, []string{fwVersion}, w.OneOf)
			assert.True(t, w.Deadline.Equal(start.Add(86*time.Second+2*time.Minute)), "confirm within a stage timeout: %s", w.Deadline)
			assert.Equal(t, workflows.StepDone, fwStatus(t, env).Step)
		})
	}
}

func TestFirmwareRebootWrongVersion(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	m := happyPath(c)
	m.confirm = []any{activities.WaitForReportedResult{},
		temporal.NewNonRetryableApplicationError("wait for firmwareVersion on dev1: deadline passed", activities.ErrDeadlineExceeded, nil,
			activities.WaitForReportedProgress{Polls: 9, LastValue: "1.0.0"})}
	m.confirmAfter = 2 * time.Minute
	m.on(env)
	env.OnWorkflow(workflows.Reboot, mock.Anything, mock.Anything).Return(workflows.RebootResult{Attempts: 1, Polls: 1}, nil)

	in := fwInput()
	in.Reboot = true
	env.ExecuteWorkflow(workflows.FirmwareUpdate, in)
	appErr := workflowError(t, env)
	assert.Equal(t, workflows.ErrVersionMismatch, appErr.Type())
	assert.Contains(t, appErr.Error(), "after the reboot dev1 reports firmwareVersion 1.0.0, not 2.0.0")
	st := fwStatus(t, env)
	assert.Equal(t, workflows.StepFailed, st.Step)
	assert.Len(t, st.Stages, 3, "the update itself completed")
}

func TestFirmwareRebootNeedsTime(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	m := happyPath(c)
	m.followAfter = 2 * time.Minute
	m.on(env)
	env.OnWorkflow(workflows.Reboot, mock.Anything, mock.Anything).Return(workflows.RebootResult{}, nil)

	in := fwInput()
	in.Reboot = true
	in.Deadline = 2*time.Minute + 30*time.Second
	env.ExecuteWorkflow(workflows.FirmwareUpdate, in)
	appErr := workflowError(t, env)
	assert.Equal(t, activities.ErrDeadlineExceeded, appErr.Type())
	assert.Contains(t, appErr.Error(), "reboot the device separately")
	env.AssertWorkflowNumberOfCalls(t, "Reboot", 0)
}

func TestFirmwareStepQuery(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	m := happyPath(c)
	m.twinAfter = time.Second
	m.on(env)

	var during []workflows.FirmwareStatus
	for _, at := range []time.Duration{500 * time.Millisecond, 1500 * time.Millisecond, 30 * time.Second} {
		env.RegisterDelayedCallback(func() { during = append(during, fwStatus(t, env)) }, at)
	}
	env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
	fwResult(t, env)

	require.Len(t, during, 3)
	checking, invoking, following := during[0], during[1], during[2]
	assert.Equal(t, workflows.StepCheckingVersion, checking.Step)
	assert.Equal(t, "reading firmwareVersion", checking.Step)
	assert.Equal(t, device, checking.DeviceID)
	assert.Equal(t, "u1", checking.UpdateID)
	assert.Equal(t, fwVersion, checking.Version)
	assert.Empty(t, checking.Stage)
	assert.True(t, checking.Started.Equal(start))
	assert.True(t, checking.Deadline.Equal(start.Add(15*time.Minute)))

	assert.Equal(t, "invoking firmwareUpdate", invoking.Step)
	assert.Equal(t, "standBy", invoking.Stage, "the status before the update")
	assert.True(t, invoking.Since.Equal(start.Add(time.Second)), "since %s", invoking.Since)

	assert.Equal(t, workflows.StepFollowingStages, following.Step)
	assert.True(t, following.Since.Equal(start.Add(2*time.Second)), "since %s", following.Since)
	assert.Empty(t, following.Stages, "the stages being followed are in the activity's heartbeat, not here")

	done := fwStatus(t, env)
	assert.Equal(t, workflows.StepDone, done.Step)
	assert.Equal(t, "completed", done.Stage)
	require.Len(t, done.Stages, 3)
	assert.Equal(t, "downloading", done.Stages[0].Status)
	assert.True(t, done.Stages[0].SeenAt.Equal(start.Add(31*time.Second)), "downloading seen at %s", done.Stages[0].SeenAt)
}

func TestFirmwareSearchAttributes(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	m := happyPath(c)
	m.confirm = nil
	m.on(env)
	env.OnUpsertTypedSearchAttributes(mock.MatchedBy(func(sa temporal.SearchAttributes) bool {
		dev, _ := sa.GetKeyword(workflows.SearchAttrDevice)
		op, _ := sa.GetKeyword(workflows.SearchAttrOperation)
		v, _ := sa.GetKeyword(workflows.SearchAttrTargetVersion)
		return dev == device && op == workflows.OperationFirmware && v == fwVersion && sa.Size() == 3
	})).Return(nil).Once()

	env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
	fwResult(t, env)
	env.AssertExpectations(t)
}

func TestFirmwareInvalidInput(t *testing.T) {
	tests := []struct {
		name   string
		in     workflows.FirmwareInput
		want   string
		secret string // must not appear in the error
	}{
		{name: "no device", in: workflows.FirmwareInput{PackageURI: fwURI, Version: fwVersion}, want: "device ID is required"},
		{name: "SAS URI", in: workflows.FirmwareInput{DeviceID: device, Version: fwVersion,
			PackageURI: "https://acct.blob.core.windows.net/fw/v2.bin?sv=2024-01-01&sp=r&sig=c2VjcmV0c2lnbmF0dXJl"},
			want: "use a URI without credentials", secret: "c2VjcmV0c2lnbmF0dXJl"},
		{name: "no version", in: workflows.FirmwareInput{DeviceID: device, PackageURI: fwURI}, want: "version is required"},
		{name: "stage timeout above the deadline", in: workflows.FirmwareInput{DeviceID: device, PackageURI: fwURI, Version: fwVersion,
			StageTimeout: 20 * time.Minute}, want: "stage timeout 20m0s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newFirmwareEnv(t)
			c := &fwCalls{}
			happyPath(c).on(env)
			env.ExecuteWorkflow(workflows.FirmwareUpdate, tc.in)
			appErr := workflowError(t, env)
			assert.Equal(t, workflows.ErrInvalidInput, appErr.Type())
			assert.True(t, appErr.NonRetryable())
			assert.Contains(t, appErr.Error(), "invalid firmware input")
			assert.Contains(t, appErr.Error(), tc.want)
			if tc.secret != "" {
				assert.NotContains(t, appErr.Error(), tc.secret)
			}
			env.AssertActivityNumberOfCalls(t, "GetTwin", 0)
			env.AssertActivityNumberOfCalls(t, "InvokeMethod", 0)
		})
	}
}

func TestFirmwareRebootNeedsALegalRequestID(t *testing.T) {
	env := newFirmwareEnv(t)
	c := &fwCalls{}
	happyPath(c).on(env)
	long := make([]byte, 120)
	for i := range long {
		long[i] = 'x'
	}
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: "firmware/dev1/" + string(long), TaskQueue: workflows.TaskQueue})
	in := fwInput()
	in.UpdateID = ""
	in.Reboot = true
	env.ExecuteWorkflow(workflows.FirmwareUpdate, in)
	appErr := workflowError(t, env)
	assert.Equal(t, workflows.ErrInvalidInput, appErr.Type())
	assert.Contains(t, appErr.Error(), "cannot name the reboot request")
	env.AssertActivityNumberOfCalls(t, "GetTwin", 0)
}
