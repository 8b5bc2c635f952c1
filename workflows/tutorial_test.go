package workflows_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/workflow"
)

// Devices built from Microsoft's tutorials report only what the tutorials report: no request or
// update ID, no firmwareVersion, timestamps as Python prints local time. These tests drive the
// workflows through such devices with mocked activities; test/ runs the real ones.

// pythonNow is a rebootTime as the tutorial's device writes it: str(datetime.datetime.now()).
const pythonNow = "2026-05-01 14:00:21.808000"

func TestRebootTutorialDevice(t *testing.T) {
	env := bareEnv(t)
	// An earlier reboot's rebootTime in the device's format, no lastRebootRequestId.
	env.OnActivity(a.GetTwin, mock.Anything, mock.Anything).Return(activities.GetTwinResult{
		Reported:    map[string]any{"rebootTime": "2026-05-01 13:00:00.000001"},
		LastUpdated: map[string]string{"rebootTime": rebootBefore},
		Attempt:     1,
	}, nil)
	c := &calls{}
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(deviceAnswers(c)).After(20 * time.Second)
	var waitIn activities.WaitForReportedInput
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.WaitForReportedInput) (activities.WaitForReportedResult, error) {
			waitIn = in
			return activities.WaitForReportedResult{Value: pythonNow, Polls: 1, LastUpdated: "2026-05-01T12:00:20.812Z"}, nil
		})

	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device, RequestID: "r1"})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res workflows.RebootResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.True(t, res.RebootTime.IsZero(), "a local time without a zone is on no known clock")
	assert.Equal(t, pythonNow, res.RebootTimeReported, "shown as the device wrote it")
	assert.Equal(t, "2026-05-01T12:00:20.812Z", res.ConfirmedAt)
	require.NotNil(t, waitIn.Changed)
	assert.Equal(t, rebootBefore, waitIn.Changed.Before, "confirmed by the hub's time, not the value")
	require.Len(t, c.inv, 1)
}

// TestRebootNotCalledAgainForItsRequest: an earlier run of the same request (which failed
// afterwards) reached the device, which reports the request's ID: the reboot is confirmed
// without a second call.
func TestRebootNotCalledAgainForItsRequest(t *testing.T) {
	env := bareEnv(t)
	env.OnActivity(a.GetTwin, mock.Anything, mock.Anything).Return(activities.GetTwinResult{
		Reported:    map[string]any{"rebootTime": rebootTime, "lastRebootRequestId": workflowID},
		LastUpdated: map[string]string{"rebootTime": rebootBefore, "lastRebootRequestId": rebootBefore},
		Attempt:     1,
	}, nil)
	c := &calls{}
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c))

	env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{DeviceID: device, RequestID: "r1"})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	env.AssertActivityNumberOfCalls(t, "InvokeMethod", 0)
	var res workflows.RebootResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Equal(t, 0, res.Attempts)
}

// tutorialTwin is the firmware tutorial's device before an update: standBy, no version, no ID.
func tutorialTwin(context.Context, activities.GetTwinInput) (activities.GetTwinResult, error) {
	return activities.GetTwinResult{
		Reported:    map[string]any{"firmwareStatus": "standBy"},
		LastUpdated: map[string]string{"firmwareStatus": statusBefore},
		Attempt:     1,
	}, nil
}

func TestFirmwareTutorialDevice(t *testing.T) {
	for _, answer := range []string{`{"Response":"Firmware update started"}`, `"{ \"Response\": \"Firmware update started\" }"`} {
		for _, reboot := range []bool{false, true} {
			t.Run(answer+map[bool]string{true: " reboot"}[reboot], func(t *testing.T) {
				env := newFirmwareEnv(t)
				c := &fwCalls{}
				m := happyPath(c)
				m.twin = []any{tutorialTwin}
				m.invoke = []any{activities.InvokeMethodResult{Status: 200, Payload: json.RawMessage(answer), Attempt: 1, Calls: 1}, nil}
				m.confirm = nil
				m.on(env)
				env.OnWorkflow(workflows.Reboot, mock.Anything, mock.Anything).Return(
					func(workflow.Context, workflows.RebootInput) (workflows.RebootResult, error) {
						return workflows.RebootResult{DeviceID: device, Attempts: 1, RebootTimeReported: pythonNow, HubCalls: 3}, nil
					})
				in := fwInput()
				in.Reboot = reboot
				env.ExecuteWorkflow(workflows.FirmwareUpdate, in)
				res := fwResult(t, env)

				assert.Equal(t, workflows.FirmwareUpdated, res.Status, "never skipped as compliant: its version is unknown")
				assert.True(t, res.VersionUnknown)
				assert.Empty(t, res.FromVersion)
				assert.Equal(t, answer, string(res.MethodPayload), "the answer as the device sent it")
				require.Len(t, c.follIn, 1)
				assert.True(t, c.follIn[0].ByMetadata)
				assert.Equal(t, statusBefore, c.follIn[0].StatusBefore)
				env.AssertActivityNumberOfCalls(t, "WaitForReported", 0) // no version to confirm
				env.AssertActivityNumberOfCalls(t, "InvokeMethod", 1)
				if reboot {
					require.NotNil(t, res.Reboot)
					assert.Equal(t, 1+1+6+3, res.HubCalls)
				}
			})
		}
	}
}

// TestFirmwareVersionsCompared: a device that reports its version is skipped when it runs the
// target; one that reports none is updated whatever the target, and one whose version is an empty
// string is not taken as compliant with anything but an empty target, which Validate refuses.
func TestFirmwareVersionsCompared(t *testing.T) {
	for _, tc := range []struct {
		name     string
		reported map[string]any
		want     string
	}{
		{"on the target", map[string]any{"firmwareVersion": fwVersion}, workflows.FirmwareSkipped},
		{"on another version", map[string]any{"firmwareVersion": "1.0.0"}, workflows.FirmwareUpdated},
		{"no version reported", map[string]any{}, workflows.FirmwareUpdated},
		{"a version that is not a string", map[string]any{"firmwareVersion": 2.0}, workflows.FirmwareUpdated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newFirmwareEnv(t)
			c := &fwCalls{}
			m := happyPath(c)
			m.twin = []any{activities.GetTwinResult{Reported: tc.reported, Attempt: 1}, nil}
			m.confirm = nil
			m.on(env)
			env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
			assert.Equal(t, tc.want, fwResult(t, env).Status)
		})
	}
}
