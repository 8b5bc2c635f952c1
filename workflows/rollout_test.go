package workflows_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

const rolloutName = "fw-2.0"

// fleetSim plays the device workflows of a rollout: each device takes its duration (default
// 10 s), then succeeds, or fails when listed in fail. It records every start.
type fleetSim struct {
	mu       sync.Mutex
	duration map[string]time.Duration
	fail     map[string]int // device → how many attempts fail
	onVer    map[string]bool
	starts   []simStart
	inputs   []workflows.FirmwareInput
	reboots  []workflows.RebootInput
	running  int
	peak     int
	attempts map[string]int
}

type simStart struct {
	device string
	at     time.Time
}

func newFleetSim() *fleetSim {
	return &fleetSim{duration: map[string]time.Duration{}, fail: map[string]int{}, onVer: map[string]bool{}, attempts: map[string]int{}}
}

func (s *fleetSim) begin(ctx workflow.Context, id string) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starts = append(s.starts, simStart{id, workflow.Now(ctx)})
	s.running++
	s.peak = max(s.peak, s.running)
	s.attempts[id]++
	d := s.duration[id]
	if d == 0 {
		d = 10 * time.Second
	}
	return d, s.attempts[id] <= s.fail[id]
}

func (s *fleetSim) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
}

// firmware is the mocked FirmwareUpdate.
func (s *fleetSim) firmware(ctx workflow.Context, in workflows.FirmwareInput) (workflows.FirmwareResult, error) {
	s.mu.Lock()
	s.inputs = append(s.inputs, in)
	skip := s.onVer[in.DeviceID]
	s.mu.Unlock()
	d, fail := s.begin(ctx, in.DeviceID)
	defer s.end()
	if skip {
		return workflows.FirmwareResult{DeviceID: in.DeviceID, Status: workflows.FirmwareSkipped, Version: in.Version, HubCalls: 1}, nil
	}
	if err := workflow.Sleep(ctx, d); err != nil {
		return workflows.FirmwareResult{}, err
	}
	if fail {
		return workflows.FirmwareResult{}, temporal.NewNonRetryableApplicationError(
			"device "+in.DeviceID+" reported firmwareStatus error in applying: flash write failed", activities.ErrDeviceError,
			nil, activities.FollowStagesProgress{Stages: []activities.StageSeen{{Status: "downloading"}, {Status: "applying"}}})
	}
	return workflows.FirmwareResult{
		DeviceID: in.DeviceID, UpdateID: in.UpdateID, Status: workflows.FirmwareUpdated, Version: in.Version, FromVersion: "1.0.0",
		Stages:   []activities.StageSeen{{Status: "downloading"}, {Status: "applying"}, {Status: "completed"}},
		Attempts: 1, HubCalls: 8,
	}, nil
}

// reboot is the mocked Reboot.
func (s *fleetSim) reboot(ctx workflow.Context, in workflows.RebootInput) (workflows.RebootResult, error) {
	s.mu.Lock()
	s.reboots = append(s.reboots, in)
	s.mu.Unlock()
	d, fail := s.begin(ctx, in.DeviceID)
	defer s.end()
	if err := workflow.Sleep(ctx, d); err != nil {
		return workflows.RebootResult{}, err
	}
	if fail {
		return workflows.RebootResult{}, temporal.NewNonRetryableApplicationError("device "+in.DeviceID+" is not registered", activities.ErrDeviceNotFound, nil)
	}
	return workflows.RebootResult{DeviceID: in.DeviceID, Attempts: 1, Polls: 2}, nil
}

// startedDevices lists the devices started, sorted: device workflows started in the same
// workflow task run in no particular order.
func (s *fleetSim) startedDevices() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for _, st := range s.starts {
		ids = append(ids, st.device)
	}
	slices.Sort(ids)
	return ids
}

// startedAt is when device id was (last) started.
func (s *fleetSim) startedAt(id string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var at time.Time
	for _, st := range s.starts {
		if st.device == id {
			at = st.at
		}
	}
	return at
}

func devices(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%03d", i)
	}
	return ids
}

func rolloutInput(n int) workflows.RolloutInput {
	return workflows.RolloutInput{
		Name:      rolloutName,
		Operation: workflows.OperationFirmware,
		Devices:   devices(n),
		Firmware:  &workflows.RolloutFirmware{PackageURI: fwURI, Version: fwVersion},
	}
}

// newRolloutEnv runs rollouts as they ran before shards (a child workflow per device, the rows in
// the rollout), the shape that rollouts started before shardsChange keep until they end; the
// sharded shape has its own harness (shardSim).
func newRolloutEnv(t *testing.T, sim *fleetSim) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterActivity(&activities.Activities{})
	// The simulated device workflows are registered under the real ones' names (rather than mocked)
	// so that they receive cancellation as real child workflows do.
	env.RegisterWorkflowWithOptions(sim.firmware, workflow.RegisterOptions{Name: "FirmwareUpdate"})
	env.RegisterWorkflowWithOptions(sim.reboot, workflow.RegisterOptions{Name: "Reboot"})
	env.OnGetVersion(workflows.ShardsChange, workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	env.SetStartTime(start)
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: workflows.RolloutWorkflowID(rolloutName), TaskQueue: workflows.TaskQueue})
	return env
}

// completed is the result of a rollout that completed, failing the test at once otherwise.
func completed(t *testing.T, env *testsuite.TestWorkflowEnvironment) workflows.RolloutProgress {
	t.Helper()
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	return p
}

func rolloutProgress(t *testing.T, env *testsuite.TestWorkflowEnvironment) workflows.RolloutProgress {
	t.Helper()
	v, err := env.QueryWorkflow(workflows.QueryProgress)
	require.NoError(t, err)
	var p workflows.RolloutProgress
	require.NoError(t, v.Get(&p))
	return p
}

func rolloutReport(t *testing.T, env *testsuite.TestWorkflowEnvironment) []workflows.DeviceRow {
	t.Helper()
	var rows []workflows.DeviceRow
	for offset := 0; ; {
		v, err := env.QueryWorkflow(workflows.QueryReport, workflows.ReportRequest{Offset: offset, Limit: 7})
		require.NoError(t, err)
		var page workflows.ReportPage
		require.NoError(t, v.Get(&page))
		rows = append(rows, page.Rows...)
		if page.Next == 0 {
			return rows
		}
		offset = page.Next
	}
}

// abortedProgress extracts the RolloutProgress an aborted rollout fails with.
func abortedProgress(t *testing.T, err error) workflows.RolloutProgress {
	t.Helper()
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	require.Equal(t, workflows.ErrRolloutAborted, appErr.Type(), "error: %v", err)
	var p workflows.RolloutProgress
	require.NoError(t, appErr.Details(&p))
	return p
}

// updateSeq numbers the updates: an update ID seen before gets the earlier update's outcome.
var updateSeq int

// update sends an update from inside a delayed callback and records its outcome.
type updateOutcome struct {
	rejected error
	result   workflows.RolloutProgress
	err      error
	done     bool
}

func sendUpdate(t *testing.T, env *testsuite.TestWorkflowEnvironment, name, reason string) *updateOutcome {
	out := &updateOutcome{}
	updateSeq++
	env.UpdateWorkflow(name, fmt.Sprintf("%s-%d", name, updateSeq), &testsuite.TestUpdateCallback{
		OnReject: func(err error) { out.rejected, out.done = err, true },
		OnAccept: func() {},
		OnComplete: func(v any, err error) {
			out.done, out.err = true, err
			if p, ok := v.(workflows.RolloutProgress); ok {
				out.result = p
			}
		},
	}, workflows.ControlRequest{Reason: reason})
	return out
}

func TestRolloutCompletesInGrowingWaves(t *testing.T) {
	sim := newFleetSim()
	env := newRolloutEnv(t, sim)
	in := rolloutInput(12)
	in.Canary, in.Growth, in.MaxConcurrent, in.Rate = 2, 2, 3, 50
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 12, p.Total)
	assert.Equal(t, 12, p.Succeeded)
	assert.Zero(t, p.Failed+p.Pending+p.Running+p.NotStarted)
	assert.Equal(t, 3, p.Waves, "waves of 2, 4, 6")
	assert.Equal(t, 12*8, p.HubCalls)
	assert.Equal(t, 3, sim.peak, "at most max-concurrent devices in flight")

	// Devices run in ID order, and a wave starts only after the previous one finished: the
	// canary (dev-000, dev-001) both end at 10 s, so wave 2 starts there.
	assert.Equal(t, devices(12), sim.startedDevices())
	assert.Equal(t, start, sim.startedAt("dev-001"))
	assert.Equal(t, start.Add(10*time.Second), sim.startedAt("dev-002"), "wave 2 waits for the canary")
	assert.Equal(t, start.Add(10*time.Second), sim.startedAt("dev-004"))
	assert.Equal(t, start.Add(20*time.Second), sim.startedAt("dev-005"), "at most 3 in flight")
	// Wave 2 (dev-002..005) ends at 30 s; wave 3 starts then, though dev-005 left room at 20 s.
	assert.Equal(t, start.Add(30*time.Second), sim.startedAt("dev-006"))

	for _, in := range sim.inputs {
		assert.Equal(t, workflows.RolloutUpdateID(rolloutName, 1), in.UpdateID)
		require.NotNil(t, in.Rate)
		assert.Equal(t, activities.HubRate{Key: workflows.RolloutWorkflowID(rolloutName), PerSecond: 50}, *in.Rate, "one bucket for the whole rollout")
	}
	rows := rolloutReport(t, env)
	require.Len(t, rows, 12)
	assert.Equal(t, "dev-000", rows[0].DeviceID)
	assert.Equal(t, workflows.DeviceUpdated, rows[11].Result)
	assert.Equal(t, []string{"downloading", "applying", "completed"}, rows[11].Stages)
	assert.Equal(t, 10*time.Second, rows[11].Duration)
	assert.Equal(t, 2, rows[11].Wave)
}

func TestRolloutCanaryFailureAbortsBeforeWave2(t *testing.T) {
	sim := newFleetSim()
	sim.fail["dev-000"] = 1
	env := newRolloutEnv(t, sim)
	in := rolloutInput(20)
	in.Canary, in.MaxFailures = 1, "5%"
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, workflows.RolloutAborted, p.State)
	assert.Contains(t, p.Reason, "wave 1")
	assert.Equal(t, 1, p.Failed)
	assert.Equal(t, 19, p.NotStarted)
	assert.Equal(t, []string{"dev-000"}, sim.startedDevices(), "nothing after the canary")

	rows := rolloutReport(t, env)
	assert.Equal(t, workflows.DeviceFailed, rows[0].Result)
	assert.Equal(t, activities.ErrDeviceError, rows[0].ErrorType)
	assert.Contains(t, rows[0].Error, "flash write failed")
	assert.Equal(t, []string{"downloading", "applying"}, rows[0].Stages)
	assert.Equal(t, workflows.DeviceNotStarted, rows[1].Result)
}

// thresholdCase is a failure threshold and the devices that fail under it, for both rollout
// shapes' threshold tests.
type thresholdCase struct {
	name        string
	maxFailures string
	minDevices  int
	fail        []string
	fast        bool // failing devices fail after 1 s, the others take 10 s
	aborted     bool
	reason      string
}

var thresholdCases = []thresholdCase{
	// 40 devices, waves 4, 8, 16, 12. Wave 3 (dev-012..027) allows 10% of 16 = 1 failure.
	{name: "percent of a wave exceeded", maxFailures: "10%", fail: []string{"dev-012", "dev-013"}, aborted: true, reason: "wave 3"},
	{name: "percent within every wave", maxFailures: "10%", fail: []string{"dev-012", "dev-030"}},
	// A count of 2: the third failure overall aborts, even spread over waves.
	{name: "count exceeded overall", maxFailures: "2", fail: []string{"dev-005", "dev-006", "dev-015"}, aborted: true, reason: "3 devices failed, more than the 2 allowed"},
	{name: "count reached, not exceeded", maxFailures: "2", fail: []string{"dev-005", "dev-030"}},
	// 25% allows 2 of wave 2 and 4 of wave 3. dev-012 and dev-013 fail fast: 4 failed of the
	// 14 finished then would be more than 25%, but the share of all devices is judged when
	// wave 3 has finished (4 of 28).
	{name: "percent overall judged at the end of a wave", maxFailures: "25%", minDevices: 10, fail: []string{"dev-004", "dev-005", "dev-012", "dev-013"}, fast: true},
	// With a count, the failures abort as soon as they exceed it, whatever the order.
	{name: "count exceeded by fast failures", maxFailures: "3", fail: []string{"dev-004", "dev-005", "dev-012", "dev-013"}, fast: true, aborted: true, reason: "4 devices failed"},
}

// checkThresholdOutcome holds a rollout of 40 devices to what tc expects.
func checkThresholdOutcome(t *testing.T, env *testsuite.TestWorkflowEnvironment, tc thresholdCase) {
	t.Helper()
	require.True(t, env.IsWorkflowCompleted())
	if !tc.aborted {
		require.NoError(t, env.GetWorkflowError())
		var p workflows.RolloutProgress
		require.NoError(t, env.GetWorkflowResult(&p))
		assert.Equal(t, workflows.RolloutCompleted, p.State)
		assert.Equal(t, len(tc.fail), p.Failed)
		assert.Equal(t, 40-len(tc.fail), p.Succeeded)
		return
	}
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Contains(t, p.Reason, tc.reason)
	assert.Positive(t, p.NotStarted)
	assert.Zero(t, p.Running+p.Pending)
	assert.Equal(t, p.Total, p.Succeeded+p.Failed+p.NotStarted)
}

func TestRolloutThresholds(t *testing.T) {
	for _, tc := range thresholdCases {
		t.Run(tc.name, func(t *testing.T) {
			sim := newFleetSim()
			for _, id := range tc.fail {
				sim.fail[id] = 1
				if tc.fast {
					sim.duration[id] = time.Second
				}
			}
			env := newRolloutEnv(t, sim)
			in := rolloutInput(40)
			in.Canary, in.Growth, in.MaxConcurrent = 4, 2, 40
			in.MaxFailures, in.MinDevices = tc.maxFailures, tc.minDevices
			env.ExecuteWorkflow(workflows.Rollout, in)
			checkThresholdOutcome(t, env, tc)
		})
	}
}

func TestRolloutPauseHoldsStartsAndResumeContinues(t *testing.T) {
	sim := newFleetSim()
	env := newRolloutEnv(t, sim)
	in := rolloutInput(6)
	in.Canary, in.Growth, in.MaxConcurrent = 6, 1, 2

	var paused, afterPause workflows.RolloutProgress
	var early, pause, pauseAgain, resume *updateOutcome
	env.RegisterDelayedCallback(func() { early = sendUpdate(t, env, workflows.UpdateResume, "") }, 2*time.Second)
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "maintenance window") }, 5*time.Second)
	env.RegisterDelayedCallback(func() { pauseAgain = sendUpdate(t, env, workflows.UpdatePause, "again") }, 6*time.Second)
	env.RegisterDelayedCallback(func() { paused = rolloutProgress(t, env) }, 7*time.Second)
	env.RegisterDelayedCallback(func() { afterPause = rolloutProgress(t, env) }, 50*time.Second)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(t, env, workflows.UpdateResume, "") }, 60*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.Error(t, early.rejected, "a running rollout refuses resume")
	assert.Contains(t, early.rejected.Error(), "is not paused: it is running")
	require.True(t, pause.done)
	require.NoError(t, pause.rejected)
	assert.Equal(t, workflows.RolloutPaused, pause.result.State)
	require.Error(t, pauseAgain.rejected, "a paused rollout refuses another pause")
	assert.Contains(t, pauseAgain.rejected.Error(), "already paused")

	assert.Equal(t, workflows.RolloutPaused, paused.State)
	assert.Equal(t, "maintenance window", paused.Reason)
	assert.Equal(t, 2, paused.Running, "in-flight devices go on")
	assert.Equal(t, workflows.RolloutPaused, afterPause.State)
	assert.Equal(t, 2, afterPause.Succeeded, "the two in flight finished")
	assert.Zero(t, afterPause.Running, "no device started while paused")
	require.NoError(t, resume.rejected)
	assert.Equal(t, workflows.RolloutRunning, resume.result.State)

	// The third device starts at the resume, not when the first two finished (10 s).
	require.Len(t, sim.starts, 6)
	assert.Equal(t, start.Add(60*time.Second), sim.startedAt("dev-002"))
	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, 6, p.Succeeded)
	// 2 × 10 s, pause from 5 s to 60 s, then 2 × 10 s: active 25 s of 80 s.
	assert.Equal(t, start.Add(80*time.Second), p.Finished)
	assert.Equal(t, 25*time.Second, p.Active)
}

func TestRolloutCancelCancelsInFlightAndLeavesTheRestUntouched(t *testing.T) {
	sim := newFleetSim()
	env := newRolloutEnv(t, sim)
	in := rolloutInput(10)
	in.Canary, in.Growth, in.MaxConcurrent = 10, 1, 3

	var cancel, pauseAfter, resumeAfter *updateOutcome
	env.RegisterDelayedCallback(func() {
		cancel = sendUpdate(t, env, workflows.UpdateCancel, "wrong image")
		// Updates behind the cancel find the rollout being cancelled.
		pauseAfter = sendUpdate(t, env, workflows.UpdatePause, "")
		resumeAfter = sendUpdate(t, env, workflows.UpdateResume, "")
	}, 15*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.NoError(t, cancel.rejected)
	require.Error(t, pauseAfter.rejected)
	assert.Contains(t, pauseAfter.rejected.Error(), "being cancelled")
	require.Error(t, resumeAfter.rejected)

	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, "wrong image", p.Reason)
	assert.Equal(t, 3, p.Succeeded, "the first three finished at 10 s")
	assert.Equal(t, 3, p.Cancelled, "the next three were in flight")
	assert.Equal(t, 4, p.NotStarted)
	assert.Len(t, sim.starts, 6)
	rows := rolloutReport(t, env)
	assert.Equal(t, workflows.DeviceCancelled, rows[3].Result)
	assert.Equal(t, workflows.DeviceNotStarted, rows[9].Result)
}

func TestRolloutWorkflowCancellationEndsCancelled(t *testing.T) {
	sim := newFleetSim()
	env := newRolloutEnv(t, sim)
	in := rolloutInput(4)
	in.Canary, in.Growth, in.MaxConcurrent = 4, 1, 2
	env.RegisterDelayedCallback(env.CancelWorkflow, 5*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	var canceled *temporal.CanceledError
	require.ErrorAs(t, env.GetWorkflowError(), &canceled)
	var p workflows.RolloutProgress
	require.NoError(t, canceled.Details(&p))
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, 2, p.Cancelled)
	assert.Equal(t, 2, p.NotStarted)
}

func TestRolloutSkipsCompliantDevices(t *testing.T) {
	sim := newFleetSim()
	env := newRolloutEnv(t, sim)
	const query = "SELECT * FROM devices WHERE tags.ring = 'beta'"
	var got activities.QueryDevicesInput
	env.OnActivity(a.QueryDevices, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.QueryDevicesInput) (activities.QueryDevicesResult, error) {
			got = in
			return activities.QueryDevicesResult{Pages: 1, Devices: []activities.QueriedDevice{
				{DeviceID: "b", Reported: map[string]any{"firmwareVersion": "1.0.0"}},
				{DeviceID: "a", Reported: map[string]any{"firmwareVersion": fwVersion}},
				{DeviceID: "c"},
				{DeviceID: "b", Reported: map[string]any{"firmwareVersion": "1.0.0"}},
			}}, nil
		})
	sim.onVer["c"] = true // updated between resolution and its turn
	in := rolloutInput(0)
	in.Devices, in.Query, in.Rate = nil, query, 10
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	assert.Equal(t, query, got.Query)
	assert.Equal(t, []string{"firmwareVersion"}, got.Properties)
	assert.Equal(t, workflows.MaxRolloutDevices, got.MaxDevices)
	require.NotNil(t, got.Rate)
	assert.Equal(t, 10.0, got.Rate.PerSecond)

	assert.Equal(t, []string{"b", "c"}, sim.startedDevices(), "a, already on the version, is never started")
	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, 3, p.Total, "duplicates removed")
	assert.Equal(t, 1, p.Succeeded)
	assert.Equal(t, 2, p.Skipped)
	rows := rolloutReport(t, env)
	assert.Equal(t, workflows.DeviceSkipped, rows[0].Result)
	assert.Equal(t, -1, rows[0].Wave)
	assert.Contains(t, rows[0].Note, "already on "+fwVersion)
	assert.Equal(t, "1.0.0", rows[1].FromVersion)
	assert.Equal(t, workflows.DeviceSkipped, rows[2].Result)
}

func TestRolloutQueryFailureFailsTheRollout(t *testing.T) {
	sim := newFleetSim()
	env := newRolloutEnv(t, sim)
	env.OnActivity(a.QueryDevices, mock.Anything, mock.Anything).Return(activities.QueryDevicesResult{},
		temporal.NewNonRetryableApplicationError("query devices: line 1, column 38: expected a value", activities.ErrBadRequest, nil))
	in := rolloutInput(0)
	in.Devices, in.Query = nil, "SELECT * FROM devices WHERE tags.ring ="
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	err := env.GetWorkflowError()
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	assert.Equal(t, activities.ErrBadRequest, appErr.Type())
	assert.Contains(t, err.Error(), "column 38")
	assert.Empty(t, sim.starts)
}

func TestRolloutRetriesFailedDevicesOnce(t *testing.T) {
	sim := newFleetSim()
	sim.fail["dev-001"] = 1 // fails once, then succeeds
	sim.fail["dev-003"] = 2 // fails both times
	env := newRolloutEnv(t, sim)
	in := rolloutInput(5)
	in.Canary, in.Growth, in.MaxFailures, in.RetryFailed = 5, 1, "50%", true
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, 4, p.Succeeded)
	assert.Equal(t, 1, p.Failed)
	assert.Equal(t, 2, p.Waves, "the retry is one more wave")
	assert.Equal(t, 2, sim.attempts["dev-001"])
	assert.Equal(t, 2, sim.attempts["dev-003"])
	assert.Equal(t, 1, sim.attempts["dev-000"])
	last := sim.inputs[len(sim.inputs)-1]
	assert.Equal(t, workflows.RolloutUpdateID(rolloutName, 2), last.UpdateID, "a retry is a new update for the device")
	rows := rolloutReport(t, env)
	assert.Equal(t, 2, rows[1].Attempts)
	assert.Equal(t, workflows.DeviceUpdated, rows[1].Result)
	assert.Equal(t, workflows.DeviceFailed, rows[3].Result)
}

func TestRolloutRebootsDevices(t *testing.T) {
	sim := newFleetSim()
	env := newRolloutEnv(t, sim)
	in := workflows.RolloutInput{
		Name: rolloutName, Operation: workflows.OperationReboot, Devices: devices(3),
		Reboot: &workflows.RolloutReboot{Deadline: 10 * time.Minute}, Canary: 3,
	}
	env.ExecuteWorkflow(workflows.Rollout, in)
	p := completed(t, env)
	assert.Equal(t, 3, p.Succeeded)
	assert.Equal(t, 9, p.HubCalls)
	require.Len(t, sim.reboots, 3)
	assert.Equal(t, workflows.RolloutUpdateID(rolloutName, 1), sim.reboots[0].RequestID)
	assert.Equal(t, 10*time.Minute, sim.reboots[0].Deadline)
	assert.Nil(t, sim.reboots[0].Rate, "no rate, no bucket")
	assert.Equal(t, workflows.DeviceRebooted, rolloutReport(t, env)[2].Result)
}

func TestRolloutContinuesAsNewKeepingProgress(t *testing.T) {
	sim := newFleetSim()
	in := rolloutInput(10)
	in.Canary, in.Growth, in.MaxConcurrent, in.DevicesPerRun, in.MaxFailures = 2, 2, 3, 4, "3"
	sim.fail["dev-005"] = 1

	runs := 0
	var final workflows.RolloutProgress
	for {
		runs++
		require.LessOrEqual(t, runs, 5, "too many runs")
		env := newRolloutEnv(t, sim)
		env.ExecuteWorkflow(workflows.Rollout, in)
		require.True(t, env.IsWorkflowCompleted())
		err := env.GetWorkflowError()
		var can *workflow.ContinueAsNewError
		if errors.As(err, &can) {
			var next workflows.RolloutInput
			require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
			require.NotNil(t, next.State)
			assert.Empty(t, next.Devices, "targets travel as rows")
			require.Empty(t, next.State.Rows, "rows travel packed")
			require.NotEmpty(t, next.State.PackedRows)
			rows, err := workflows.UnpackRows(next.State.PackedRows)
			require.NoError(t, err)
			require.Len(t, rows, 10)
			for _, row := range rows {
				assert.NotEqual(t, workflows.DeviceRunning, row.Result, "a run drains before continuing")
			}
			in = next
			continue
		}
		require.NoError(t, err)
		require.NoError(t, env.GetWorkflowResult(&final))
		break
	}
	assert.Equal(t, 3, runs, "4 + 4 + 2 devices")
	assert.Equal(t, 3, final.Runs)
	assert.Equal(t, 9, final.Succeeded)
	assert.Equal(t, 1, final.Failed)
	assert.Equal(t, 10, final.Total)
	assert.Equal(t, 3, final.Waves, "waves 2, 4, 4 across runs")
	assert.Equal(t, devices(10), sim.startedDevices(), "every device started exactly once")
	assert.Equal(t, start, final.Started, "the first run's start carries over")
}

func TestRolloutRejectsInvalidInput(t *testing.T) {
	sim := newFleetSim()
	env := newRolloutEnv(t, sim)
	in := rolloutInput(3)
	in.Firmware.PackageURI = "https://fw.example/v2.bin?sig=secret"
	in.MaxFailures = "lots"
	env.ExecuteWorkflow(workflows.Rollout, in)
	require.True(t, env.IsWorkflowCompleted())
	err := env.GetWorkflowError()
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	assert.Equal(t, workflows.ErrInvalidInput, appErr.Type())
	assert.Contains(t, err.Error(), "SAS signature")
	assert.Contains(t, err.Error(), "failure threshold")
	assert.NotContains(t, err.Error(), "secret")
	assert.Empty(t, sim.starts)
}
