package workflows_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// Outcomes of a device attempt in retrySim's scripts.
const (
	attemptOK      = "ok"      // the update completes (10 s of stages)
	attemptOffline = "offline" // the hub answers DeviceNotOnline: at once with FailOffline, else at the deadline
	attemptTimeout = "timeout" // the update stalls: FollowStages fails with ErrStageTimeout after 10 s
	attemptFail    = "fail"    // the device reports an error: ErrDeviceError after 10 s
	attemptLate    = "late"    // as timeout, but the update goes on and completes: the next attempt finds it
)

// retrySim plays a sharded rollout's devices from a script per device: the outcome of each
// attempt, by the attempt number in the update ID; a device without a script succeeds.
type retrySim struct {
	mu      sync.Mutex
	script  map[string][]string
	calls   []retryCall
	starts  map[string][]time.Time
	follows map[string]int
}

// retryCall is an InvokeMethod as the sim saw it.
type retryCall struct {
	device, updateID string
	attempt          int
	failOffline      bool
	earlier          *activities.Earlier
	delivered        bool
}

func newRetrySim(script map[string][]string) *retrySim {
	return &retrySim{script: script, starts: map[string][]time.Time{}, follows: map[string]int{}}
}

func attemptOf(updateID string) int {
	if _, n, ok := strings.Cut(strings.TrimPrefix(updateID, "rollout:"), ":"); ok {
		k, _ := strconv.Atoi(n)
		return k
	}
	return 1
}

func (s *retrySim) outcome(device string, attempt int) string {
	if sc := s.script[device]; attempt <= len(sc) {
		return sc[attempt-1]
	}
	return attemptOK
}

func (s *retrySim) newEnv(t *testing.T) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterActivity(&activities.Activities{})
	env.RegisterWorkflow(workflows.RolloutShard)
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(s.invoke)
	env.OnActivity(a.FollowStages, mock.Anything, mock.Anything).After(10 * time.Second).Return(s.follow)
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).After(10*time.Second).Return(
		activities.WaitForReportedResult{Value: "2026-05-01T12:00:00Z", Polls: 2}, nil)
	env.OnActivity(a.EndedWorkflows, mock.Anything, mock.Anything).Return([]activities.WorkflowEnded(nil), nil)
	env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, _ converter.EncodedValues) {
		if info.ActivityType.Name != "InvokeMethod" {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		dev := info.ActivityID[:strings.Index(info.ActivityID, "/")]
		s.starts[dev] = append(s.starts[dev], env.Now().UTC())
	})
	env.SetStartTime(start)
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: workflows.RolloutWorkflowID(rolloutName), TaskQueue: workflows.TaskQueue})
	return env
}

func (s *retrySim) invoke(_ context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, _ := in.Payload[protocol.FieldUpdateID].(string)
	if id == "" {
		id, _ = in.Payload[protocol.FieldRequestID].(string)
	}
	attempt := attemptOf(id)
	c := retryCall{device: in.DeviceID, updateID: id, attempt: attempt, failOffline: in.FailOffline, earlier: in.ReadFirst.Earlier}
	read := &activities.GetTwinResult{Reported: map[string]any{protocol.PropFirmwareVersion: "1.0.0"}}
	defer func() { s.calls = append(s.calls, c) }()
	if e := in.ReadFirst.Earlier; e != nil && attempt > 1 && s.outcome(in.DeviceID, attempt-1) == attemptLate {
		// The earlier attempt's update is still at it: no call.
		prev := workflows.RolloutUpdateID(rolloutName, attempt-1)
		return activities.InvokeMethodResult{Attempt: 1, TwinReads: 1, Read: read, EvidenceBefore: e.Before,
			Earlier: &activities.EarlierTaken{ID: prev, By: "id", Value: "applying", Before: e.Before}}, nil
	}
	switch s.outcome(in.DeviceID, attempt) {
	case attemptOffline:
		if in.FailOffline {
			return activities.InvokeMethodResult{}, temporal.NewNonRetryableApplicationError(
				"invoke firmwareUpdate on "+in.DeviceID+": IoT Hub answered HTTP 404, code 404103: ErrorCode:DeviceNotOnline", activities.ErrDeviceNotOnline, nil)
		}
		return activities.InvokeMethodResult{}, temporal.NewNonRetryableApplicationError(
			"gave up at the deadline (15m0s) after retrying: invoke firmwareUpdate on "+in.DeviceID+": IoT Hub answered HTTP 404, code 404103: ErrorCode:DeviceNotOnline",
			activities.ErrDeadlineExceeded, nil)
	}
	c.delivered = true
	return activities.InvokeMethodResult{Status: 200, Calls: 1, TwinReads: 1, Attempt: 1, Read: read, EvidenceBefore: "2026-01-01T00:00:00Z"}, nil
}

func (s *retrySim) follow(_ context.Context, in activities.FollowStagesInput) (activities.FollowStagesResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	stages := []activities.StageSeen{{Status: "downloading"}, {Status: "applying"}, {Status: "completed"}}
	switch s.outcome(in.DeviceID, attemptOf(in.UpdateID)) {
	case attemptLate:
		if s.follows[in.DeviceID]++; s.follows[in.DeviceID] > 1 {
			return activities.FollowStagesResult{Stages: stages, Polls: 3}, nil
		}
		fallthrough
	case attemptTimeout:
		return activities.FollowStagesResult{}, temporal.NewNonRetryableApplicationError(
			"firmware update "+in.UpdateID+" on "+in.DeviceID+" stuck in downloading: no applying within 2m0s", activities.ErrStageTimeout, nil,
			activities.FollowStagesProgress{Polls: 4, Stages: stages[:1]})
	case attemptFail:
		return activities.FollowStagesResult{}, temporal.NewNonRetryableApplicationError(
			"firmware update "+in.UpdateID+" on "+in.DeviceID+" failed in stage applying: the device reports: flash write failed", activities.ErrDeviceError, nil,
			activities.FollowStagesProgress{Polls: 4, Stages: stages[:2]})
	}
	return activities.FollowStagesResult{Stages: stages, Polls: 6}, nil
}

func (s *retrySim) startsOf(device string) []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []time.Duration
	for _, at := range s.starts[device] {
		out = append(out, at.Sub(start))
	}
	return out
}

func (s *retrySim) callsOf(device string) []retryCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []retryCall
	for _, c := range s.calls {
		if c.device == device {
			out = append(out, c)
		}
	}
	return out
}

func retryInput(n int, p *workflows.RetryPolicy) workflows.RolloutInput {
	in := rolloutInput(n)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = n, 1, n, "100%"
	in.Retries = p
	return in
}

func rowOf(t *testing.T, rows []workflows.DeviceRow, id string) workflows.DeviceRow {
	t.Helper()
	i := slices.IndexFunc(rows, func(r workflows.DeviceRow) bool { return r.DeviceID == id })
	require.GreaterOrEqual(t, i, 0, id)
	return rows[i]
}

// The backoff doubles from the policy's base, timed by workflow time from each failure; the
// device waits without a slot, counted pending and awaiting retry; each retry is a new request
// that carries the guard against a second delivery; the last attempt waits for an offline device
// as an attempt without retries does.
func TestRolloutRetriesWithBackoff(t *testing.T) {
	sim := newRetrySim(map[string][]string{
		"dev-000": {attemptOffline, attemptOffline, attemptOK},
		"dev-001": {attemptTimeout, attemptOK},
	})
	env := sim.newEnv(t)
	in := retryInput(3, &workflows.RetryPolicy{Count: 2, Backoff: time.Minute})
	var mid workflows.RolloutProgress
	var midRows []workflows.DeviceRow
	env.RegisterDelayedCallback(func() { mid, midRows = rolloutProgress(t, env), shardedReport(t, env) }, 30*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 3, p.Succeeded)
	assert.Zero(t, p.Failed)
	assert.Equal(t, 3, p.RetriesStarted)
	require.NotNil(t, p.RetryPolicy)
	assert.Equal(t, workflows.DefaultRetryOn, p.RetryPolicy.On, "the default: timed-out and offline")

	assert.Equal(t, []time.Duration{0, time.Minute, 3 * time.Minute}, sim.startsOf("dev-000"), "1m after the first failure, 2m after the second")
	assert.Equal(t, []time.Duration{0, 70 * time.Second}, sim.startsOf("dev-001"), "1m after the stage timeout at 10s")
	assert.Equal(t, start.Add(3*time.Minute+10*time.Second), p.Finished)

	calls := sim.callsOf("dev-000")
	require.Len(t, calls, 3)
	for i, c := range calls {
		assert.Equal(t, workflows.RolloutUpdateID(rolloutName, i+1), c.updateID, "attempt %d is a new request", i+1)
	}
	assert.Equal(t, []bool{true, true, false}, []bool{calls[0].failOffline, calls[1].failOffline, calls[2].failOffline},
		"offline ends an attempt at once while a retry remains")
	assert.Nil(t, calls[0].earlier)
	require.NotNil(t, calls[2].earlier)
	assert.Equal(t, []string{workflows.RolloutUpdateID(rolloutName, 1), workflows.RolloutUpdateID(rolloutName, 2)}, calls[2].earlier.IDs)
	assert.Equal(t, start, calls[2].earlier.Since, "the first attempt's read never came back: reports since it started count")
	d1 := sim.callsOf("dev-001")
	require.Len(t, d1, 2)
	require.NotNil(t, d1[1].earlier)
	assert.Equal(t, "2026-01-01T00:00:00Z", d1[1].earlier.Before, "the first attempt's read is the baseline")
	assert.Equal(t, protocol.FirmwareStages, d1[1].earlier.Taken)

	assert.Equal(t, 2, mid.AwaitingRetry)
	assert.Equal(t, 2, mid.Pending, "waiting devices are pending")
	assert.Zero(t, mid.Running+mid.Failed)
	assert.Equal(t, 1, mid.Succeeded)
	r0 := rowOf(t, midRows, "dev-000")
	assert.Equal(t, workflows.DeviceRetrying, r0.Result)
	assert.Equal(t, workflows.FailureOffline, r0.FailureType)
	assert.Equal(t, []string{workflows.FailureOffline}, r0.RetriedOn)
	assert.Equal(t, start.Add(time.Minute), r0.RetryAt)
	assert.Equal(t, activities.ErrDeviceNotOnline, r0.ErrorType, "the last attempt's error stays while waiting")
	assert.Equal(t, workflows.FailureTimedOut, rowOf(t, midRows, "dev-001").FailureType)

	rows := shardedReport(t, env)
	r0 = rowOf(t, rows, "dev-000")
	assert.Equal(t, workflows.DeviceUpdated, r0.Result)
	assert.Equal(t, 3, r0.Attempts)
	assert.Equal(t, []string{workflows.FailureOffline, workflows.FailureOffline}, r0.RetriedOn)
	assert.Empty(t, r0.FailureType)
	assert.True(t, r0.RetryAt.IsZero())
	r1 := rowOf(t, rows, "dev-001")
	assert.Equal(t, []string{workflows.FailureTimedOut}, r1.RetriedOn)
	assert.Equal(t, (2+4)+(2+6), r1.HubCalls, "the calls of both attempts: the read, the call and the polls of each")
	assert.Equal(t, (1+1+(2+6))+((2+4)+(2+6))+(2+6), p.HubCalls, "no call is lost to a retry: dev-000 offline twice (a call each), dev-001, dev-002")
}

// Only the failure types the policy names are retried; a device whose retries are spent fails
// with its last attempt's type, which the progress counts.
func TestRolloutRetryOnAndExhaustion(t *testing.T) {
	t.Run("failed is not retried by default", func(t *testing.T) {
		sim := newRetrySim(map[string][]string{"dev-000": {attemptFail, attemptOK}, "dev-001": {attemptTimeout, attemptOK}})
		env := sim.newEnv(t)
		env.ExecuteWorkflow(workflows.Rollout, retryInput(2, &workflows.RetryPolicy{Count: 3}))
		p := completed(t, env)
		assert.Equal(t, 1, p.Failed)
		assert.Equal(t, 1, p.Succeeded)
		assert.Zero(t, p.TimedOut+p.Offline, "the failure is of type failed")
		assert.Len(t, sim.callsOf("dev-000"), 1)
		assert.Equal(t, []time.Duration{0, 70 * time.Second}, sim.startsOf("dev-001"), "default backoff 1m")
		r := rowOf(t, shardedReport(t, env), "dev-000")
		assert.Equal(t, workflows.DeviceFailed, r.Result)
		assert.Equal(t, workflows.FailureFailed, r.FailureType)
		assert.Empty(t, r.RetriedOn)
	})
	t.Run("retry on failed", func(t *testing.T) {
		sim := newRetrySim(map[string][]string{"dev-000": {attemptFail, attemptOK}, "dev-001": {attemptOffline, attemptOffline}})
		env := sim.newEnv(t)
		env.ExecuteWorkflow(workflows.Rollout, retryInput(2, &workflows.RetryPolicy{Count: 1, On: []string{workflows.FailureFailed}, Backoff: 5 * time.Second}))
		p := completed(t, env)
		assert.Equal(t, 1, p.Succeeded)
		assert.Equal(t, 1, p.Failed)
		assert.Equal(t, 1, p.Offline, "offline is not retried when on names failed alone")
		assert.Equal(t, []time.Duration{0, 15 * time.Second}, sim.startsOf("dev-000"))
		require.Len(t, sim.callsOf("dev-001"), 1)
		assert.False(t, sim.callsOf("dev-001")[0].failOffline, "offline not retried: the attempt waits for the device")
	})
	t.Run("exhausted", func(t *testing.T) {
		sim := newRetrySim(map[string][]string{"dev-000": {attemptOffline, attemptOffline, attemptOffline}, "dev-001": {attemptTimeout, attemptTimeout, attemptTimeout}})
		env := sim.newEnv(t)
		env.ExecuteWorkflow(workflows.Rollout, retryInput(2, &workflows.RetryPolicy{Count: 2, Backoff: 10 * time.Second}))
		p := completed(t, env)
		assert.Equal(t, 2, p.Failed)
		assert.Equal(t, 1, p.Offline)
		assert.Equal(t, 1, p.TimedOut)
		assert.Equal(t, 4, p.RetriesStarted)
		assert.Equal(t, []time.Duration{0, 10 * time.Second, 30 * time.Second}, sim.startsOf("dev-000"))
		assert.Equal(t, []time.Duration{0, 20 * time.Second, 50 * time.Second}, sim.startsOf("dev-001"))
		rows := shardedReport(t, env)
		r := rowOf(t, rows, "dev-000")
		assert.Equal(t, 3, r.Attempts)
		assert.Equal(t, workflows.FailureOffline, r.FailureType)
		assert.Equal(t, activities.ErrDeadlineExceeded, r.ErrorType, "the last attempt waited for the device until its deadline")
		assert.Equal(t, []string{workflows.FailureTimedOut, workflows.FailureTimedOut}, rowOf(t, rows, "dev-001").RetriedOn)
	})
}

// A timed-out device whose update goes on is not called again: the retry finds the earlier update
// in the twin and follows it to the end.
func TestRolloutRetryFollowsTheEarlierUpdate(t *testing.T) {
	sim := newRetrySim(map[string][]string{"dev-000": {attemptLate}})
	env := sim.newEnv(t)
	env.ExecuteWorkflow(workflows.Rollout, retryInput(1, &workflows.RetryPolicy{Count: 1}))
	p := completed(t, env)
	assert.Equal(t, 1, p.Succeeded)
	calls := sim.callsOf("dev-000")
	require.Len(t, calls, 2)
	assert.True(t, calls[0].delivered)
	assert.False(t, calls[1].delivered, "no second firmwareUpdate")
	r := rowOf(t, shardedReport(t, env), "dev-000")
	assert.Equal(t, workflows.DeviceUpdated, r.Result)
	assert.Equal(t, 2, r.Attempts)
	assert.Equal(t, "1.0.0", r.FromVersion, "from the first attempt's read")
	assert.Contains(t, r.Note, "no second call: the device was at the update "+workflows.RolloutUpdateID(rolloutName, 1))
}

// Thresholds by type judge the devices whose last attempt failed with their type, per wave and
// overall, and name the type; a device waiting to retry counts against none.
func TestRolloutThresholdsByType(t *testing.T) {
	t.Run("max offline per wave", func(t *testing.T) {
		sim := newRetrySim(map[string][]string{"dev-000": {attemptOffline}, "dev-002": {attemptOffline}})
		env := sim.newEnv(t)
		in := retryInput(4, nil)
		in.MaxOffline = "1"
		env.ExecuteWorkflow(workflows.Rollout, in)
		require.True(t, env.IsWorkflowCompleted())
		p := abortedProgress(t, env.GetWorkflowError())
		assert.Equal(t, "2 of the 4 devices of wave 1 were offline, more than the 1 allowed by max-offline (1)", p.Reason)
		assert.Equal(t, "1", p.MaxOffline)
		assert.Equal(t, 2, p.Offline)
	})
	t.Run("max timeouts as a share of a wave", func(t *testing.T) {
		sim := newRetrySim(map[string][]string{"dev-000": {attemptTimeout}, "dev-001": {attemptTimeout}, "dev-002": {attemptTimeout}})
		env := sim.newEnv(t)
		in := retryInput(8, nil)
		in.MaxTimeouts = "25%"
		env.ExecuteWorkflow(workflows.Rollout, in)
		require.True(t, env.IsWorkflowCompleted())
		p := abortedProgress(t, env.GetWorkflowError())
		assert.Contains(t, p.Reason, "3 of the 8 devices of wave 1 timed out, more than the 25% allowed by max-timeouts (2)")
		assert.Equal(t, 3, p.TimedOut)
	})
	t.Run("max timeouts overall", func(t *testing.T) {
		// Waves of 2, 2, 2: one timeout in each of the first two waves is within the count for a
		// wave, two in all are not.
		sim := newRetrySim(map[string][]string{"dev-000": {attemptTimeout}, "dev-002": {attemptTimeout}})
		env := sim.newEnv(t)
		in := retryInput(6, nil)
		in.Canary, in.MaxConcurrent, in.MaxTimeouts = 2, 2, "1"
		env.ExecuteWorkflow(workflows.Rollout, in)
		require.True(t, env.IsWorkflowCompleted())
		p := abortedProgress(t, env.GetWorkflowError())
		assert.Equal(t, "2 devices timed out, more than the 1 allowed by max-timeouts", p.Reason)
		assert.Equal(t, 2, p.NotStarted)
	})
	t.Run("other types do not count", func(t *testing.T) {
		sim := newRetrySim(map[string][]string{"dev-000": {attemptFail}, "dev-001": {attemptFail}, "dev-002": {attemptOffline}})
		env := sim.newEnv(t)
		in := retryInput(4, nil)
		in.MaxTimeouts, in.MaxOffline = "0", "1"
		env.ExecuteWorkflow(workflows.Rollout, in)
		p := completed(t, env)
		assert.Equal(t, 3, p.Failed)
		assert.Equal(t, 1, p.Offline)
	})
	t.Run("a device counts once its last attempt failed", func(t *testing.T) {
		sim := newRetrySim(map[string][]string{"dev-000": {attemptOffline, attemptOK}, "dev-001": {attemptTimeout, attemptOK}})
		env := sim.newEnv(t)
		in := retryInput(3, &workflows.RetryPolicy{Count: 1})
		in.MaxFailures, in.MaxOffline, in.MaxTimeouts = "0", "0", "0"
		env.ExecuteWorkflow(workflows.Rollout, in)
		p := completed(t, env)
		assert.Equal(t, 3, p.Succeeded)
	})
	t.Run("the retry that fails too counts", func(t *testing.T) {
		sim := newRetrySim(map[string][]string{"dev-000": {attemptOffline, attemptOffline}})
		env := sim.newEnv(t)
		in := retryInput(3, &workflows.RetryPolicy{Count: 1})
		in.MaxOffline = "0"
		env.ExecuteWorkflow(workflows.Rollout, in)
		require.True(t, env.IsWorkflowCompleted())
		p := abortedProgress(t, env.GetWorkflowError())
		assert.Contains(t, p.Reason, "were offline, more than the 0 allowed by max-offline")
		assert.Equal(t, start.Add(time.Minute), p.Finished, "when the retry failed, not at the first failure")
	})
}

// A device that comes due while the rollout is paused starts at the resume, not before.
func TestRolloutRetryWaitsForResume(t *testing.T) {
	sim := newRetrySim(map[string][]string{"dev-000": {attemptOffline, attemptOK}})
	env := sim.newEnv(t)
	in := retryInput(2, &workflows.RetryPolicy{Count: 1, Backoff: time.Minute})
	var paused workflows.RolloutProgress
	var pause, resume *updateOutcome
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "") }, 30*time.Second)
	env.RegisterDelayedCallback(func() { paused = rolloutProgress(t, env) }, 2*time.Minute)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(t, env, workflows.UpdateResume, "") }, 5*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	require.NoError(t, pause.rejected)
	require.NoError(t, resume.rejected)
	assert.Equal(t, workflows.RolloutPaused, paused.State)
	assert.Equal(t, 1, paused.AwaitingRetry, "due, but held by the pause")
	assert.Equal(t, []time.Duration{0, 5 * time.Minute}, sim.startsOf("dev-000"))
	assert.Equal(t, 2, p.Succeeded)
}

// A cancel while a device waits out its backoff leaves it cancelled, never started again; an
// abort leaves it failed with its last attempt's type.
func TestRolloutRetryCancelAndAbortWhileWaiting(t *testing.T) {
	t.Run("cancel", func(t *testing.T) {
		sim := newRetrySim(map[string][]string{"dev-000": {attemptOffline, attemptOK}})
		env := sim.newEnv(t)
		var cancel *updateOutcome
		env.RegisterDelayedCallback(func() { cancel = sendUpdate(t, env, workflows.UpdateCancel, "stop") }, 30*time.Second)
		env.ExecuteWorkflow(workflows.Rollout, retryInput(2, &workflows.RetryPolicy{Count: 3}))
		p := completed(t, env)
		require.NoError(t, cancel.rejected)
		assert.Equal(t, workflows.RolloutCancelled, p.State)
		assert.Equal(t, 1, p.Cancelled)
		assert.Equal(t, 1, p.Succeeded)
		assert.Zero(t, p.AwaitingRetry+p.Pending)
		assert.Equal(t, start.Add(30*time.Second), p.Finished, "not held up by the backoff")
		assert.Len(t, sim.callsOf("dev-000"), 1, "not started again")
		r := rowOf(t, shardedReport(t, env), "dev-000")
		assert.Equal(t, workflows.DeviceCancelled, r.Result)
		assert.Contains(t, r.Note, "while waiting to retry: attempt 2 not started")
		assert.Empty(t, r.RetriedOn)
	})
	t.Run("abort", func(t *testing.T) {
		sim := newRetrySim(map[string][]string{"dev-000": {attemptOffline, attemptOK}, "dev-001": {attemptFail}})
		env := sim.newEnv(t)
		in := retryInput(2, &workflows.RetryPolicy{Count: 3})
		in.MaxFailures = "0"
		env.ExecuteWorkflow(workflows.Rollout, in)
		require.True(t, env.IsWorkflowCompleted())
		p := abortedProgress(t, env.GetWorkflowError())
		assert.Equal(t, start.Add(10*time.Second), p.Finished, "at the failure of dev-001, not after the backoff")
		assert.Equal(t, 2, p.Failed)
		assert.Equal(t, 1, p.Offline)
		assert.Len(t, sim.callsOf("dev-000"), 1)
		r := rowOf(t, shardedReport(t, env), "dev-000")
		assert.Equal(t, workflows.DeviceFailed, r.Result)
		assert.Equal(t, workflows.FailureOffline, r.FailureType)
		assert.Contains(t, r.Note, "the rollout stopped while the device waited to retry")
	})
}

// A retry that comes due outside the maintenance windows starts when the next one opens.
func TestRolloutRetryWaitsForTheWindow(t *testing.T) {
	sim := newRetrySim(map[string][]string{"dev-000": {attemptOffline, attemptOK}})
	env := sim.newEnv(t)
	in := retryInput(2, &workflows.RetryPolicy{Count: 1, Backoff: 3 * time.Minute})
	in.Windows = []workflows.Window{
		{Start: start, End: start.Add(2 * time.Minute)},
		{Start: start.Add(10 * time.Minute), End: start.Add(20 * time.Minute)},
	}
	env.ExecuteWorkflow(workflows.Rollout, in)
	p := completed(t, env)
	assert.Equal(t, 2, p.Succeeded)
	assert.Equal(t, []time.Duration{0, 10 * time.Minute}, sim.startsOf("dev-000"))
}

// newTalliedEnv runs a rollout whose shards are mocked: the test plays their tallies with signals
// and records the commands. The SDK's test environment cannot run a workflow that continues as
// new alongside the children that signal it (a root's continue-as-new ends the test, a child's
// next run does not get its children's signals), so the runs are stitched by hand; shards do not
// continue as new, and their side of retries is tested above.
func newTalliedEnv(t *testing.T, commands *[]workflows.ShardCommand) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterActivity(&activities.Activities{})
	env.RegisterWorkflow(workflows.RolloutShard)
	env.OnWorkflow(workflows.RolloutShard, mock.Anything, mock.Anything).After(48*time.Hour).Return(workflows.ShardTally{}, nil)
	env.OnSignalExternalWorkflow(mock.Anything, mock.Anything, "", workflows.SignalShardCommand, mock.Anything).Return(
		func(_, _, _, _ string, arg any) error {
			*commands = append(*commands, arg.(workflows.ShardCommand))
			return nil
		})
	env.OnActivity(a.EndedWorkflows, mock.Anything, mock.Anything).Return([]activities.WorkflowEnded(nil), nil)
	env.SetDetachedChildWait(false)
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: workflows.RolloutWorkflowID(rolloutName), TaskQueue: workflows.TaskQueue})
	return env
}

// Across continue-as-new (two devices a run) the policy and the thresholds by type travel in the
// input and the counts by type in the shards' carried tallies: the second offline device, told
// to the third run, crosses max-offline 1 counted with the first, told to the second.
func TestRolloutRetriesAcrossContinueAsNew(t *testing.T) {
	in := retryInput(6, &workflows.RetryPolicy{Count: 1, Backoff: 30 * time.Second})
	in.Canary, in.MaxConcurrent, in.DevicesPerRun, in.MaxOffline = 2, 2, 2, "1"
	tally := func(seq int, t workflows.Tally, waves ...workflows.WaveTally) workflows.ShardTally {
		return workflows.ShardTally{Index: 0, Seq: seq, Tally: t, Started: 2 * len(waves), Runs: 2*len(waves) + t.Retries, Waves: waves}
	}
	// What the shard tells each run: run 2 the first wave (one device offline for good, one
	// updated after a retry) and a device of the second wave waiting to retry; run 3 the second
	// wave's end, with a second device offline.
	told := map[int][]workflows.ShardTally{
		2: {
			tally(1, workflows.Tally{Succeeded: 1, Failed: 1, Offline: 1, Retries: 1, Pending: 4},
				workflows.WaveTally{Wave: 0, Done: 2, Failed: 1, Offline: 1}),
		},
		3: {
			tally(2, workflows.Tally{Succeeded: 1, Failed: 1, Offline: 1, Retries: 1, Running: 1, Pending: 3, AwaitingRetry: 1},
				workflows.WaveTally{Wave: 0, Done: 2, Failed: 1, Offline: 1}),
			tally(3, workflows.Tally{Succeeded: 2, Failed: 2, Offline: 2, Retries: 2, Pending: 2},
				workflows.WaveTally{Wave: 0, Done: 2, Failed: 1, Offline: 1}, workflows.WaveTally{Wave: 1, Done: 2, Failed: 1, Offline: 1}),
		},
	}
	var commands []workflows.ShardCommand
	var progress []workflows.RolloutProgress
	for run := 1; ; run++ {
		require.LessOrEqual(t, run, 3, "too many runs")
		env := newTalliedEnv(t, &commands)
		env.SetStartTime(start.Add(time.Duration(run-1) * time.Minute))
		for k, tl := range told[run] {
			env.RegisterDelayedCallback(func() { env.SignalWorkflow(workflows.SignalShardTally, tl) }, time.Duration(k+1)*time.Second)
		}
		if run == 3 {
			// The shard's last tally, once told to stop.
			env.RegisterDelayedCallback(func() {
				last := tally(4, workflows.Tally{Succeeded: 2, Failed: 2, Offline: 2, Retries: 2, NotStarted: 2},
					workflows.WaveTally{Wave: 0, Done: 2, Failed: 1, Offline: 1}, workflows.WaveTally{Wave: 1, Done: 2, Failed: 1, Offline: 1})
				last.Closed = true
				env.SignalWorkflow(workflows.SignalShardTally, last)
			}, 5*time.Second)
		}
		env.ExecuteWorkflow(workflows.Rollout, in)
		require.True(t, env.IsWorkflowCompleted())
		err := env.GetWorkflowError()
		var can *workflow.ContinueAsNewError
		if errors.As(err, &can) {
			progress = append(progress, rolloutProgress(t, env))
			in = decodeContinued(t, can)
			require.NotNil(t, in.Retries, "the policy travels")
			assert.Equal(t, "1", in.MaxOffline)
			continue
		}
		p := abortedProgress(t, err)
		assert.Equal(t, 3, run)
		assert.Equal(t, "2 devices were offline, more than the 1 allowed by max-offline", p.Reason)
		assert.Equal(t, 2, p.Offline)
		assert.Equal(t, 2, p.RetriesStarted)
		break
	}
	require.Len(t, progress, 2, "runs 1 and 2 continued as new")
	assert.Equal(t, 1, progress[1].Offline, "run 2 counts the first wave's")
	assert.Equal(t, 1, progress[1].RetriesStarted)
	require.NotNil(t, progress[1].RetryPolicy)
	assert.Equal(t, 30*time.Second, progress[1].RetryPolicy.Backoff)
	require.NotEmpty(t, commands)
	assert.True(t, commands[len(commands)-1].Stop, "aborted: the shard is told to stop")
}

// A reboot rollout's retry carries the guard with the reboot request IDs.
func TestRolloutRetriesReboots(t *testing.T) {
	sim := newRetrySim(map[string][]string{"dev-000": {attemptOffline, attemptOK}})
	env := sim.newEnv(t)
	in := workflows.RolloutInput{Name: rolloutName, Operation: workflows.OperationReboot, Devices: devices(1),
		Retries: &workflows.RetryPolicy{Count: 1, On: []string{workflows.FailureOffline}}}
	env.ExecuteWorkflow(workflows.Rollout, in)
	p := completed(t, env)
	assert.Equal(t, 1, p.Succeeded)
	calls := sim.callsOf("dev-000")
	require.Len(t, calls, 2)
	assert.True(t, calls[0].failOffline)
	require.NotNil(t, calls[1].earlier)
	assert.Equal(t, []string{workflows.RolloutUpdateID(rolloutName, 1)}, calls[1].earlier.IDs)
	assert.Empty(t, calls[1].earlier.Taken, "any rebootTime counts")
}

func TestRetriesValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   func(in *workflows.RolloutInput)
		want string
	}{
		{"no retries", func(in *workflows.RolloutInput) { in.Retries = &workflows.RetryPolicy{} }, "retries 0 must lie between 1 and 10"},
		{"too many", func(in *workflows.RolloutInput) { in.Retries = &workflows.RetryPolicy{Count: 11} }, "retries 11 must lie between 1 and 10"},
		{"unknown type", func(in *workflows.RolloutInput) {
			in.Retries = &workflows.RetryPolicy{Count: 1, On: []string{"timeout"}}
		},
			`retry on "timeout": the failure types are failed, timed-out, offline`},
		{"short backoff", func(in *workflows.RolloutInput) {
			in.Retries = &workflows.RetryPolicy{Count: 1, Backoff: time.Millisecond}
		}, "retry backoff 1ms must lie between 1s and 1h0m0s"},
		{"with retry-failed", func(in *workflows.RolloutInput) {
			in.Retries, in.RetryFailed = &workflows.RetryPolicy{Count: 1}, true
		}, "retries and retry-failed both run failed devices again"},
		{"max timeouts", func(in *workflows.RolloutInput) { in.MaxTimeouts = "ten" }, `max timeouts: failure threshold "ten"`},
		{"max offline", func(in *workflows.RolloutInput) { in.MaxOffline = "120%" }, `max offline: failure threshold "120%"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := rolloutInput(2)
			tc.in(&in)
			err := in.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	in := rolloutInput(2)
	in.Retries = &workflows.RetryPolicy{Count: 10, On: []string{workflows.FailureFailed, workflows.FailureOffline}, Backoff: time.Hour}
	in.MaxTimeouts, in.MaxOffline = "5", "5%"
	require.NoError(t, in.Validate())
}

func TestRetryPolicyDelay(t *testing.T) {
	p := workflows.RetryPolicy{Count: 10, Backoff: 10 * time.Minute}
	var got []time.Duration
	for n := 1; n <= 5; n++ {
		got = append(got, p.Delay(n))
	}
	assert.Equal(t, []time.Duration{10 * time.Minute, 20 * time.Minute, 40 * time.Minute, time.Hour, time.Hour}, got, "doubling, capped at an hour")
	assert.Equal(t, time.Minute, workflows.RetryPolicy{Count: 1}.Delay(1), "default backoff")
	assert.Equal(t, "3 on timed-out,offline, backoff 1m", workflows.RetryPolicy{Count: 3}.String())
}

func TestFailureType(t *testing.T) {
	for _, tc := range []struct {
		errType, msg, want string
	}{
		{activities.ErrDeviceNotOnline, "invoke firmwareUpdate on d: IoT Hub answered HTTP 404, code 404103", workflows.FailureOffline},
		{activities.ErrDeadlineExceeded, "gave up at the deadline (15m0s) after retrying: invoke firmwareUpdate on d: IoT Hub answered HTTP 404, code 404103: ErrorCode:DeviceNotOnline", workflows.FailureOffline},
		{activities.ErrDeadlineExceeded, "gave up at the deadline (5m0s) after retrying: invoke rebootDevice on d: IoT Hub answered HTTP 404, code 404104: ErrorCode:DeviceConnectionClosedRemotely", workflows.FailureOffline},
		{activities.ErrDeadlineExceeded, "gave up at the deadline (15m0s) after retrying: invoke firmwareUpdate on d: IoT Hub answered HTTP 504, code 504101: GatewayTimeout", workflows.FailureTimedOut},
		{activities.ErrDeadlineExceeded, "firmware update u on d: deadline 2026-05-01T12:15:00Z passed in stage applying", workflows.FailureTimedOut},
		{activities.ErrStageTimeout, "firmware update u on d stuck in downloading: no applying within 2m0s", workflows.FailureTimedOut},
		{"Timeout", "activity StartToClose timeout", workflows.FailureTimedOut},
		{activities.ErrMethodFailed, "device d refused firmwareUpdate with status 409: firmware update x in progress", workflows.FailureFailed},
		{activities.ErrDeviceError, "firmware update u on d failed in stage applying: the device reports: flash write failed", workflows.FailureFailed},
		{workflows.ErrVersionMismatch, "after the reboot d reports firmwareVersion 1.0.0, not 2.0.0", workflows.FailureFailed},
		{activities.ErrDeviceNotFound, `read twin on d: device "d" is not registered in the IoT hub`, workflows.FailureFailed},
		{workflows.ErrDeviceCancelled, "cancelled outside the rollout", workflows.FailureFailed},
		{"Terminated", "the device workflow was terminated", workflows.FailureFailed},
	} {
		t.Run(tc.errType+" "+tc.want, func(t *testing.T) {
			assert.Equal(t, tc.want, workflows.FailureType(tc.errType, tc.msg))
		})
	}
}

// The guard against a second delivery covers --retry-failed's second attempt too, which is a new
// request as well.
func TestRetryFailedCarriesTheGuard(t *testing.T) {
	sim := newRetrySim(map[string][]string{"dev-000": {attemptLate}})
	env := sim.newEnv(t)
	in := retryInput(2, nil)
	in.RetryFailed = true
	env.ExecuteWorkflow(workflows.Rollout, in)
	p := completed(t, env)
	assert.Equal(t, 2, p.Succeeded)
	calls := sim.callsOf("dev-000")
	require.Len(t, calls, 2)
	require.NotNil(t, calls[1].earlier)
	assert.Equal(t, []string{workflows.RolloutUpdateID(rolloutName, 1)}, calls[1].earlier.IDs)
	assert.Equal(t, "2026-01-01T00:00:00Z", calls[1].earlier.Before)
	assert.False(t, calls[1].delivered, "the first update went on: no second call")
	assert.False(t, calls[0].failOffline, "no retries by failure type: an offline device is waited for")
	assert.Contains(t, rowOf(t, shardedReport(t, env), "dev-000").Note, "no second call")
}
