package workflows_test

import (
	"context"
	"slices"
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
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// The rollback's firmware in these tests.
const (
	rbURI     = "https://fw.example/v1.bin"
	rbVersion = "1.0.0"
)

// rbSim plays the devices' rollbacks: InvokeMethod with the rollback's update ID answers at once
// (or skips a device already on the rollback version), FollowStages takes the device's duration
// (default 10 s) and succeeds, or fails for the devices in fail. shardSim plays the forward run.
type rbSim struct {
	mu       sync.Mutex
	now      func() time.Time
	onVer    map[string]bool
	fail     map[string]bool
	duration map[string]time.Duration
	invokes  []activities.InvokeMethodInput
	starts   map[string]time.Time
}

func newRBSim() *rbSim {
	return &rbSim{onVer: map[string]bool{}, fail: map[string]bool{}, duration: map[string]time.Duration{}, starts: map[string]time.Time{}}
}

// isRollback tells the rollback's calls by their update ID.
func isRollback(id any) bool {
	s, _ := id.(string)
	return s == workflows.RolloutRollbackUpdateID(rolloutName)
}

// install registers the rollback's mocks ahead of shardSim's, which take the other calls.
func (rb *rbSim) install(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
	t.Helper()
	rb.now = env.Now
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.MatchedBy(func(in activities.InvokeMethodInput) bool {
		return isRollback(in.Payload[protocol.FieldUpdateID])
	})).Return(rb.invoke)
	for _, id := range slices.Sorted(mapKeys(rb.duration)) {
		env.OnActivity(a.FollowStages, mock.Anything, mock.MatchedBy(func(in activities.FollowStagesInput) bool {
			return isRollback(in.UpdateID) && in.DeviceID == id
		})).After(rb.duration[id]).Return(rb.follow)
	}
	env.OnActivity(a.FollowStages, mock.Anything, mock.MatchedBy(func(in activities.FollowStagesInput) bool {
		return isRollback(in.UpdateID)
	})).After(10 * time.Second).Return(rb.follow)
}

func (rb *rbSim) invoke(_ context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	rb.invokes = append(rb.invokes, in)
	rb.starts[in.DeviceID] = rb.now().UTC()
	read := &activities.GetTwinResult{Reported: map[string]any{protocol.PropFirmwareVersion: fwVersion}}
	if rb.onVer[in.DeviceID] {
		read.Reported[protocol.PropFirmwareVersion] = rbVersion
		return activities.InvokeMethodResult{Skipped: true, Read: read, TwinReads: 1, Attempt: 1}, nil
	}
	return activities.InvokeMethodResult{Status: 200, Calls: 1, TwinReads: 1, Attempt: 1, Read: read, EvidenceBefore: "2026-01-01T00:00:00Z"}, nil
}

func (rb *rbSim) follow(_ context.Context, in activities.FollowStagesInput) (activities.FollowStagesResult, error) {
	rb.mu.Lock()
	fail := rb.fail[in.DeviceID]
	rb.mu.Unlock()
	if fail {
		return activities.FollowStagesResult{}, temporal.NewNonRetryableApplicationError(
			"device "+in.DeviceID+" reported firmwareStatus error in downloading: image not found", activities.ErrDeviceError,
			nil, activities.FollowStagesProgress{Polls: 2, Stages: []activities.StageSeen{{Status: "downloading"}}})
	}
	return activities.FollowStagesResult{Polls: 6,
		Stages: []activities.StageSeen{{Status: "downloading"}, {Status: "applying"}, {Status: "completed"}}}, nil
}

// invoked lists the devices the rollback called, sorted, each as often as it was called.
func (rb *rbSim) invoked() []string {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	var ids []string
	for _, in := range rb.invokes {
		ids = append(ids, in.DeviceID)
	}
	slices.Sort(ids)
	return ids
}

func (rb *rbSim) startedAt(id string) time.Time {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.starts[id]
}

// forwardCalls counts the forward run's firmwareUpdate calls per device.
func forwardCalls(sim *shardSim) map[string]int {
	sim.mu.Lock()
	defer sim.mu.Unlock()
	out := map[string]int{}
	for _, c := range sim.calls {
		out[c.device]++
	}
	return out
}

func newRollbackEnv(t *testing.T, sim *shardSim, rb *rbSim) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	rb.install(t, env)
	sim.install(t, env)
	return env
}

func rollbackInput(n int) workflows.RolloutInput {
	in := rolloutInput(n)
	in.Rollback = &workflows.RolloutRollback{PackageURI: rbURI, Version: rbVersion}
	return in
}

// rowsByID indexes a report.
func rowsByID(rows []workflows.DeviceRow) map[string]workflows.DeviceRow {
	out := map[string]workflows.DeviceRow{}
	for _, r := range rows {
		out[r.DeviceID] = r
	}
	return out
}

// The rollout aborts in its second wave; the devices it updated are rolled back, in the rollout's
// waves (canary 2, growth 2) and through the same steps, and not the ones it skipped (already on
// the target), failed or never started. A device already on the rollback version is skipped.
func TestRolloutRollsBackTheUpdatedDevices(t *testing.T) {
	sim, rb := newShardSim(), newRBSim()
	sim.onVer["dev-001"] = true // runs the target already: skipped, not rolled back
	sim.fail["dev-003"], sim.fail["dev-004"] = 1, 1
	rb.onVer["dev-005"] = true // already back on the rollback version
	env := newRollbackEnv(t, sim, rb)
	in := rollbackInput(20)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures, in.Rate = 2, 2, 10, "1", 50
	var during workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { during = rolloutProgress(t, env) }, 25*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, workflows.RolloutRolledBack, p.State)
	// The abort's reason names the wave or all devices, by the order the failures were told in.
	assert.Contains(t, p.Reason, "failed, more than the 1 allowed")
	assert.True(t, strings.HasSuffix(p.Reason, "; rolled back 2 devices to 1.0.0 (1 skipped, already on it)"), p.Reason)
	assert.Equal(t, start.Add(30*time.Second), p.Finished, "abort at 20 s, rollback waves of 2 (10 s) and 1 (skipped)")
	assert.Equal(t, 3, p.Succeeded, "the forward outcome stays")
	assert.Equal(t, 2, p.Failed)
	assert.Equal(t, 1, p.Skipped)
	assert.Equal(t, 14, p.NotStarted)
	require.NotNil(t, p.Rollback)
	assert.Equal(t, workflows.RollbackProgress{Version: rbVersion, Include: workflows.RollbackIncludeUpdated, Phase: workflows.RollbackCompleted,
		Devices: 3, RolledBack: 2, Skipped: 1, Wave: 2, Waves: 2, WaveSize: 1, WaveDone: 1, HubCalls: 8 + 8 + 2, Started: start.Add(20 * time.Second)}, *p.Rollback)

	assert.Equal(t, workflows.RolloutRollingBack, during.State)
	require.NotNil(t, during.Rollback)
	assert.Equal(t, workflows.RollbackRunning, during.Rollback.Phase)
	assert.Equal(t, 2, during.Rollback.Running)
	assert.Equal(t, 1, during.Rollback.Pending)
	assert.Contains(t, during.Reason, "failed, more than the 1 allowed")

	assert.Equal(t, []string{"dev-000", "dev-002", "dev-005"}, rb.invoked(), "only the updated devices, once each")
	assert.Equal(t, start.Add(20*time.Second), rb.startedAt("dev-000"))
	assert.Equal(t, start.Add(20*time.Second), rb.startedAt("dev-002"))
	assert.Equal(t, start.Add(30*time.Second), rb.startedAt("dev-005"), "the second rollback wave waits for the first")
	for _, c := range rb.invokes {
		assert.Equal(t, protocol.MethodFirmwareUpdate, c.Method)
		assert.Equal(t, rbURI, c.Payload[protocol.FieldPackageURI])
		assert.Equal(t, rbVersion, c.Payload[protocol.FieldVersion])
		require.NotNil(t, c.ReadFirst)
		assert.Equal(t, &activities.ReportedValue{Property: protocol.PropFirmwareVersion, Value: rbVersion}, c.ReadFirst.SkipIf, "the twin is read first")
		require.NotNil(t, c.Evidence)
		assert.Equal(t, workflows.RolloutRollbackUpdateID(rolloutName), c.Evidence.ID)
		require.NotNil(t, c.Rate)
		assert.Equal(t, activities.HubRate{Key: workflows.RolloutWorkflowID(rolloutName), PerSecond: 50}, *c.Rate, "the rollout's own ceiling")
	}
	for id, n := range forwardCalls(sim) {
		assert.Equal(t, 1, n, "%s: one forward call", id)
	}
	assert.Contains(t, sim.ids, "dev-000/firmwareUpdate#rollback")
	assert.Contains(t, sim.ids, "dev-000/stages#rollback")

	rows := rowsByID(shardedReport(t, env))
	r := rows["dev-000"]
	assert.Equal(t, workflows.DeviceUpdated, r.Result)
	require.NotNil(t, r.Rollback)
	assert.Equal(t, workflows.RollbackRow{Result: workflows.DeviceRolledBack, Wave: 0, Attempts: 1,
		Stages: []string{"downloading", "applying", "completed"}, Started: start.Add(20 * time.Second), Duration: 10 * time.Second, HubCalls: 8}, *r.Rollback)
	assert.Equal(t, workflows.DeviceSkipped, rows["dev-005"].Rollback.Result)
	assert.Equal(t, 1, rows["dev-005"].Rollback.Wave)
	assert.Equal(t, "already on "+rbVersion, rows["dev-005"].Rollback.Note)
	for _, id := range []string{"dev-001", "dev-003", "dev-004", "dev-006", "dev-019"} {
		assert.Nil(t, rows[id].Rollback, "%s (%s) is not rolled back", id, rows[id].Result)
	}
	assert.Equal(t, workflows.DeviceFailed, rows["dev-003"].Result)
	assert.Equal(t, workflows.DeviceNotStarted, rows["dev-006"].Result)
}

// Include picks the devices rolled back: those updated, those that failed, or both.
func TestRolloutRollbackIncludes(t *testing.T) {
	for _, tc := range []struct {
		include string
		want    []string
	}{
		{"", []string{"dev-000", "dev-003", "dev-004", "dev-005"}},
		{workflows.RollbackIncludeFailed, []string{"dev-001", "dev-002"}},
		{workflows.RollbackIncludeBoth, devices(6)},
	} {
		t.Run("include "+tc.include, func(t *testing.T) {
			sim, rb := newShardSim(), newRBSim()
			sim.fail["dev-001"], sim.fail["dev-002"] = 1, 1
			env := newRollbackEnv(t, sim, rb)
			in := rollbackInput(6)
			in.Canary, in.MaxConcurrent, in.MaxFailures = 6, 6, "1"
			in.Rollback.Include = tc.include
			env.ExecuteWorkflow(workflows.Rollout, in)

			require.True(t, env.IsWorkflowCompleted())
			p := abortedProgress(t, env.GetWorkflowError())
			assert.Equal(t, workflows.RolloutRolledBack, p.State)
			assert.Equal(t, len(tc.want), p.Rollback.RolledBack)
			assert.Equal(t, tc.want, rb.invoked())
			for _, r := range shardedReport(t, env) {
				if slices.Contains(tc.want, r.DeviceID) {
					require.NotNil(t, r.Rollback, r.DeviceID)
					assert.Equal(t, workflows.DeviceRolledBack, r.Rollback.Result, r.DeviceID)
				} else {
					assert.Nil(t, r.Rollback, r.DeviceID)
				}
			}
		})
	}
}

// A rollback that crosses the threshold stops: its devices in flight finish, the rest are not
// rolled back, and the rollout ends aborted saying so; control is refused while it stops.
func TestRolloutRollbackStopsPastItsThreshold(t *testing.T) {
	sim, rb := newShardSim(), newRBSim()
	for _, id := range []string{"dev-004", "dev-005", "dev-006"} {
		sim.fail[id] = 1
	}
	for _, id := range []string{"dev-000", "dev-001", "dev-002"} {
		rb.fail[id], rb.duration[id] = true, 2*time.Second
	}
	env := newRollbackEnv(t, sim, rb)
	in := rollbackInput(10)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 4, 2, 10, "2"
	var pause *updateOutcome
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "") }, 25*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, workflows.RolloutAborted, p.State)
	assert.Equal(t, "3 of the 6 devices of wave 2 failed, more than the 2 allowed (2); the rollback to 1.0.0 stopped: 3 of the 4 devices of its wave 1 failed, more than the 2 allowed (2); 1 rolled back, 3 failed, 3 not rolled back", p.Reason)
	assert.Equal(t, start.Add(30*time.Second), p.Finished, "dev-003, in flight when the rollback stopped, finished")
	assert.Equal(t, workflows.RollbackStopped, p.Rollback.Phase)
	assert.Contains(t, p.Rollback.Reason, "3 of the 4 devices of its wave 1 failed")
	assert.Equal(t, 7, p.Rollback.Devices)
	assert.Equal(t, 1, p.Rollback.RolledBack)
	assert.Equal(t, 3, p.Rollback.Failed)
	assert.Equal(t, 3, p.Rollback.NotStarted)
	assert.Zero(t, p.Rollback.Running+p.Rollback.Pending)
	assert.Equal(t, devices(4), rb.invoked(), "the second rollback wave never started")
	require.NotNil(t, pause)
	require.Error(t, pause.rejected)
	assert.Contains(t, pause.rejected.Error(), "stopping its rollback")

	rows := rowsByID(shardedReport(t, env))
	assert.Equal(t, workflows.DeviceFailed, rows["dev-000"].Rollback.Result)
	assert.Contains(t, rows["dev-000"].Rollback.Error, "image not found")
	assert.Equal(t, activities.ErrDeviceError, rows["dev-000"].Rollback.ErrorType)
	assert.Equal(t, []string{"downloading"}, rows["dev-000"].Rollback.Stages)
	assert.Equal(t, workflows.DeviceRolledBack, rows["dev-003"].Rollback.Result)
	for _, id := range []string{"dev-007", "dev-008", "dev-009"} {
		assert.Equal(t, workflows.DeviceUpdated, rows[id].Result)
		require.NotNil(t, rows[id].Rollback, id)
		assert.Equal(t, workflows.DeviceNotStarted, rows[id].Rollback.Result, id)
		assert.Contains(t, rows[id].Rollback.Note, "the rollback stopped first")
	}
}

// pauseCancelSetup: 6 devices in waves of 2 and 4, dev-001 and dev-002 failing, at most one
// failure: the rollout aborts at 20 s with dev-000, 003, 004 and 005 updated, which the rollback
// takes in waves of 2 and 2.
func pauseCancelSetup(t *testing.T) (*shardSim, *rbSim, *testsuite.TestWorkflowEnvironment, workflows.RolloutInput) {
	sim, rb := newShardSim(), newRBSim()
	sim.fail["dev-001"], sim.fail["dev-002"] = 1, 1
	env := newRollbackEnv(t, sim, rb)
	in := rollbackInput(6)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 2, 2, 6, "1"
	return sim, rb, env, in
}

// A pause during the rollback holds its next wave (those in flight finish); resume continues it.
func TestRolloutRollbackPauseAndResume(t *testing.T) {
	_, rb, env, in := pauseCancelSetup(t)
	var pause, resume *updateOutcome
	var paused workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "look at the devices") }, 25*time.Second)
	env.RegisterDelayedCallback(func() { paused = rolloutProgress(t, env) }, 40*time.Second)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(t, env, workflows.UpdateResume, "") }, time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, pause.rejected, "a rolling-back rollout may be paused")
	assert.Equal(t, workflows.RolloutPaused, pause.result.State)
	assert.Equal(t, workflows.RolloutPaused, paused.State)
	assert.Equal(t, "look at the devices", paused.Reason)
	assert.Equal(t, workflows.RollbackRunning, paused.Rollback.Phase)
	assert.Equal(t, 2, paused.Rollback.RolledBack, "the wave in flight finished")
	assert.Zero(t, paused.Rollback.Running, "nothing started while paused")
	require.NoError(t, resume.rejected)
	assert.Equal(t, workflows.RolloutRollingBack, resume.result.State)

	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, workflows.RolloutRolledBack, p.State)
	assert.Equal(t, 4, p.Rollback.RolledBack)
	assert.Equal(t, start.Add(time.Minute), rb.startedAt("dev-004"), "the second wave starts at the resume")
	assert.Equal(t, start.Add(70*time.Second), p.Finished)
}

// A cancel during the rollback cancels its devices in flight and ends the rollout cancelled; a
// cancel of the workflow itself does too, failing it as cancelled.
func TestRolloutRollbackCancel(t *testing.T) {
	t.Run("update", func(t *testing.T) {
		_, rb, env, in := pauseCancelSetup(t)
		var cancel, pauseAfter *updateOutcome
		env.RegisterDelayedCallback(func() {
			cancel = sendUpdate(t, env, workflows.UpdateCancel, "wrong rollback image")
			pauseAfter = sendUpdate(t, env, workflows.UpdatePause, "")
		}, 35*time.Second)
		env.ExecuteWorkflow(workflows.Rollout, in)

		require.True(t, env.IsWorkflowCompleted())
		require.NoError(t, env.GetWorkflowError(), "a cancelled rollout completes")
		require.NoError(t, cancel.rejected, "a rolling-back rollout may be cancelled")
		require.Error(t, pauseAfter.rejected)
		assert.Contains(t, pauseAfter.rejected.Error(), "being cancelled")
		var p workflows.RolloutProgress
		require.NoError(t, env.GetWorkflowResult(&p))
		assert.Equal(t, workflows.RolloutCancelled, p.State)
		assert.Equal(t, "wrong rollback image; cancelled while rolling back to 1.0.0 (2 rolled back, 2 not rolled back) after the abort: 2 devices failed, more than the 1 allowed", p.Reason)
		assert.Equal(t, start.Add(35*time.Second), p.Finished, "the devices in flight are cancelled, not waited for")
		assert.Equal(t, workflows.RollbackCancelled, p.Rollback.Phase)
		assert.Equal(t, 2, p.Rollback.RolledBack)
		assert.Equal(t, 2, p.Rollback.Cancelled)
		assert.Equal(t, []string{"dev-000", "dev-003", "dev-004", "dev-005"}, rb.invoked())
		rows := rowsByID(shardedReport(t, env))
		assert.Equal(t, workflows.DeviceRolledBack, rows["dev-003"].Rollback.Result)
		assert.Equal(t, workflows.DeviceCancelled, rows["dev-004"].Rollback.Result)
		assert.Equal(t, workflows.DeviceCancelled, rows["dev-005"].Rollback.Result)
		assert.Equal(t, workflows.DeviceUpdated, rows["dev-005"].Result, "the forward outcome stays")
	})
	t.Run("workflow", func(t *testing.T) {
		_, _, env, in := pauseCancelSetup(t)
		env.RegisterDelayedCallback(env.CancelWorkflow, 35*time.Second)
		env.ExecuteWorkflow(workflows.Rollout, in)

		require.True(t, env.IsWorkflowCompleted())
		var canceled *temporal.CanceledError
		require.ErrorAs(t, env.GetWorkflowError(), &canceled)
		var p workflows.RolloutProgress
		require.NoError(t, canceled.Details(&p))
		assert.Equal(t, workflows.RolloutCancelled, p.State)
		assert.Equal(t, 2, p.Rollback.Cancelled)
		assert.Contains(t, p.Reason, "the workflow was cancelled in Temporal; cancelled while rolling back")
	})
}

// The rollback starts devices only inside the rollout's maintenance windows: aborted after a window
// closed, it waits for the next; a rollback left without windows stops.
func TestRolloutRollbackInWindows(t *testing.T) {
	setup := func(t *testing.T, windows []workflows.Window) (*rbSim, *testsuite.TestWorkflowEnvironment, workflows.RolloutInput) {
		sim, rb := newShardSim(), newRBSim()
		for _, id := range devices(6) {
			sim.duration[id], rb.duration[id] = 12*time.Minute, 12*time.Minute
		}
		sim.fail["dev-002"], sim.fail["dev-003"] = 1, 1
		env := newRollbackEnv(t, sim, rb)
		in := rollbackInput(6)
		in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 2, 2, 6, "1"
		in.Windows = windows
		return rb, env, in
	}
	t.Run("waits for the next window", func(t *testing.T) {
		rb, env, in := setup(t, []workflows.Window{{Cron: "0 13,16 * * *", Duration: 20 * time.Minute}})
		var waiting workflows.RolloutProgress
		env.RegisterDelayedCallback(func() { waiting = rolloutProgress(t, env) }, 2*time.Hour)
		env.ExecuteWorkflow(workflows.Rollout, in)

		require.True(t, env.IsWorkflowCompleted())
		p := abortedProgress(t, env.GetWorkflowError())
		assert.Equal(t, workflows.RolloutRolledBack, p.State)
		assert.Equal(t, 4, p.Rollback.RolledBack)
		// Forward: 13:00 and 13:12 (in flight across the close at 13:20), abort at 13:24. The
		// rollback: 16:00 and 16:12.
		assert.Equal(t, workflows.RolloutWaiting, waiting.State)
		assert.Equal(t, at(0, 16, 0), waiting.WindowOpens)
		assert.Equal(t, workflows.RollbackRunning, waiting.Rollback.Phase)
		assert.Equal(t, 4, waiting.Rollback.Pending)
		assert.Equal(t, at(0, 16, 0), rb.startedAt("dev-000"))
		assert.Equal(t, at(0, 16, 0), rb.startedAt("dev-001"))
		assert.Equal(t, at(0, 16, 12), rb.startedAt("dev-004"))
		for _, id := range rb.invoked() {
			open, _, _, _ := workflows.WindowAt(in.Windows, rb.startedAt(id))
			assert.True(t, open, "%s rolled back at %s, outside the windows", id, rb.startedAt(id))
		}
		assert.Equal(t, at(0, 16, 24), p.Finished)
	})
	t.Run("stops without windows", func(t *testing.T) {
		rb, env, in := setup(t, []workflows.Window{{Start: at(0, 13, 0), End: at(0, 13, 20)}})
		env.ExecuteWorkflow(workflows.Rollout, in)

		require.True(t, env.IsWorkflowCompleted())
		p := abortedProgress(t, env.GetWorkflowError())
		assert.Equal(t, workflows.RolloutAborted, p.State)
		assert.Contains(t, p.Reason, "; the rollback to 1.0.0 stopped: no maintenance window opens after 2026-05-01T13:24:00Z; 0 rolled back, 4 not rolled back")
		assert.Equal(t, workflows.RollbackStopped, p.Rollback.Phase)
		assert.Equal(t, 4, p.Rollback.NotStarted)
		assert.Empty(t, rb.invoked())
		for _, r := range shardedReport(t, env) {
			if r.Result == workflows.DeviceUpdated {
				require.NotNil(t, r.Rollback, r.DeviceID)
				assert.Equal(t, workflows.DeviceNotStarted, r.Rollback.Result)
			}
		}
	})
}

// The rollout continues as new during the rollback (DevicesPerRun counts the rollback's grants
// too). The first run, with a real shard, grants two of the four rollbacks and continues as new
// carrying the rollback's state; the continued run, its shard played by the test (the test
// environment does not run the children of a run that continued as new), grants the other two
// only, ends the rollback when the shard's tally says so, and ends rolled back.
func TestRolloutRollbackAcrossContinueAsNew(t *testing.T) {
	sim, rb := newShardSim(), newRBSim()
	sim.fail["dev-001"], sim.fail["dev-002"] = 1, 1
	env := newRollbackEnv(t, sim, rb)
	env.SetDetachedChildWait(false)
	in := rollbackInput(6)
	in.Canary, in.MaxConcurrent, in.MaxFailures, in.DevicesPerRun = 6, 6, "1", 8
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	var can *workflow.ContinueAsNewError
	require.ErrorAs(t, env.GetWorkflowError(), &can, "6 forward starts and 2 rollbacks fill the run")
	first := rolloutProgress(t, env)
	assert.Equal(t, workflows.RolloutRollingBack, first.State)
	assert.Equal(t, workflows.RollbackRunning, first.Rollback.Phase)
	next := decodeContinued(t, can)
	shards, err := workflows.CarriedShards(next.State)
	require.NoError(t, err)
	require.Len(t, shards, 1)
	assert.Equal(t, workflows.ShardRollbackCommand{Begun: true, Quota: 2}, shards[0].Sent.Rollback, "the rollbacks the first run granted")
	require.NotNil(t, shards[0].Last.Rollback)
	assert.Equal(t, 4, shards[0].Last.Rollback.Devices)
	st := next.State.Rollback
	require.NotNil(t, st)
	assert.True(t, st.Active)
	assert.True(t, st.Planned)
	assert.Equal(t, []int{4}, st.WaveSizes)
	assert.Equal(t, []int{2}, st.Granted)
	assert.Equal(t, "2 of the 6 devices of wave 1 failed, more than the 1 allowed (1)", st.Reason)
	require.NotNil(t, next.Rollback, "the rollback travels in the input")

	// The continued run, with the shard played here.
	var s2 testsuite.WorkflowTestSuite
	env2 := s2.NewTestWorkflowEnvironment()
	env2.RegisterActivity(&activities.Activities{})
	env2.OnActivity(a.EndedWorkflows, mock.Anything, mock.Anything).Return(nil, nil)
	begin := start.Add(10 * time.Second)
	env2.SetStartTime(begin)
	env2.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: workflows.RolloutWorkflowID(rolloutName), TaskQueue: workflows.TaskQueue})
	var mu sync.Mutex
	var commands []workflows.ShardCommand
	env2.OnSignalExternalWorkflow(mock.Anything, workflows.RolloutShardWorkflowID(rolloutName, 0), "", workflows.SignalShardCommand, mock.Anything).Return(
		func(_, _, _, _ string, arg any) error {
			mu.Lock()
			defer mu.Unlock()
			commands = append(commands, arg.(workflows.ShardCommand))
			return nil
		})
	tally := func(seq int, closed bool) workflows.ShardTally {
		return workflows.ShardTally{Index: 0, Seq: seq, Closed: closed, Started: 6, Runs: 6,
			Tally: workflows.Tally{Succeeded: 4, Failed: 2, HubCalls: 44},
			Waves: []workflows.WaveTally{{Wave: 0, Done: 6, Failed: 2}},
			Rollback: &workflows.RollbackTally{Devices: 4, RolledBack: 4, Started: 4, Runs: 4, HubCalls: 32, Ready: true,
				Waves: []workflows.WaveTally{{Wave: 0, Done: 4}}}}
	}
	var during workflows.RolloutProgress
	env2.RegisterDelayedCallback(func() { during = rolloutProgress(t, env2) }, 5*time.Second)
	env2.RegisterDelayedCallback(func() { env2.SignalWorkflow(workflows.SignalShardTally, tally(100, false)) }, 10*time.Second)
	env2.RegisterDelayedCallback(func() { env2.SignalWorkflow(workflows.SignalShardTally, tally(101, true)) }, 11*time.Second)
	env2.ExecuteWorkflow(workflows.Rollout, next)

	require.True(t, env2.IsWorkflowCompleted())
	p := abortedProgress(t, env2.GetWorkflowError())
	assert.Equal(t, workflows.RolloutRolledBack, p.State)
	assert.Equal(t, 2, p.Runs)
	assert.Equal(t, 4, p.Rollback.RolledBack)
	assert.Equal(t, begin.Add(11*time.Second), p.Finished)
	assert.Equal(t, workflows.RolloutRollingBack, during.State)
	assert.Equal(t, 2, during.Runs)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, commands, 2, "the rest of the grant, then the end")
	assert.Equal(t, workflows.ShardRollbackCommand{Begun: true, Quota: 4}, commands[0].Rollback, "the two left, the quota counting all")
	assert.True(t, commands[0].Stop, "the forward run stays stopped")
	assert.Equal(t, 6, commands[0].Quota, "no forward grant")
	assert.True(t, commands[1].Finish)
	assert.Equal(t, 4, commands[1].Rollback.Quota)
}

// No rollback follows a completion, a cancel, or an abort with nothing failed (the windows ran
// out); the shards, kept open for a rollback, close all the same.
func TestRolloutWithoutRollback(t *testing.T) {
	t.Run("completed", func(t *testing.T) {
		sim, rb := newShardSim(), newRBSim()
		sim.fail["dev-001"] = 1
		env := newRollbackEnv(t, sim, rb)
		in := rollbackInput(4)
		in.Canary, in.MaxFailures = 4, "50%"
		env.ExecuteWorkflow(workflows.Rollout, in)

		p := completed(t, env)
		assert.Equal(t, workflows.RolloutCompleted, p.State)
		assert.Equal(t, workflows.RollbackNotRun, p.Rollback.Phase)
		assert.Empty(t, rb.invoked())
		for _, r := range shardedReport(t, env) {
			assert.Nil(t, r.Rollback)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		sim, rb := newShardSim(), newRBSim()
		env := newRollbackEnv(t, sim, rb)
		in := rollbackInput(6)
		in.Canary, in.MaxConcurrent = 6, 3
		env.RegisterDelayedCallback(func() { sendUpdate(t, env, workflows.UpdateCancel, "") }, 15*time.Second)
		env.ExecuteWorkflow(workflows.Rollout, in)

		p := completed(t, env)
		assert.Equal(t, workflows.RolloutCancelled, p.State)
		assert.Equal(t, 3, p.Succeeded)
		assert.Equal(t, workflows.RollbackNotRun, p.Rollback.Phase)
		assert.Empty(t, rb.invoked())
	})
	t.Run("out of windows", func(t *testing.T) {
		sim, rb := newShardSim(), newRBSim()
		env := newRollbackEnv(t, sim, rb)
		in := rollbackInput(6)
		in.Canary, in.Growth, in.MaxConcurrent = 2, 1, 2
		in.Windows = []workflows.Window{{Start: start, End: start.Add(15 * time.Second)}}
		env.ExecuteWorkflow(workflows.Rollout, in)

		require.True(t, env.IsWorkflowCompleted())
		var appErr *temporal.ApplicationError
		require.ErrorAs(t, env.GetWorkflowError(), &appErr)
		assert.Equal(t, workflows.ErrRolloutNoWindow, appErr.Type())
		var p workflows.RolloutProgress
		require.NoError(t, appErr.Details(&p))
		assert.Equal(t, workflows.RolloutAborted, p.State)
		assert.Equal(t, 4, p.Succeeded)
		assert.Equal(t, workflows.RollbackNotRun, p.Rollback.Phase)
		assert.Contains(t, p.Rollback.Reason, "ran out of maintenance windows")
		assert.Empty(t, rb.invoked())
	})
}

func TestRolloutRollbackValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(in *workflows.RolloutInput)
		want string
	}{
		{"reboot rollout", func(in *workflows.RolloutInput) {
			in.Operation, in.Firmware = workflows.OperationReboot, nil
		}, "a rollback applies to a firmware rollout"},
		{"target version", func(in *workflows.RolloutInput) { in.Rollback.Version = fwVersion }, `rollback version "2.0.0" is the target version`},
		{"no version", func(in *workflows.RolloutInput) { in.Rollback.Version = "" }, "rollback version is required"},
		{"credentials in the URI", func(in *workflows.RolloutInput) {
			in.Rollback.PackageURI = "https://fw.example/v1.bin?sv=2020&sig=secret"
		}, "rollback package URI"},
		{"include", func(in *workflows.RolloutInput) { in.Rollback.Include = "all" }, `rollback include "all" is not updated, failed or both`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := rollbackInput(3)
			tc.mod(&in)
			err := in.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "secret")
		})
	}
	for _, include := range []string{"", workflows.RollbackIncludeUpdated, workflows.RollbackIncludeFailed, workflows.RollbackIncludeBoth} {
		in := rollbackInput(3)
		in.Rollback.Include = include
		assert.NoError(t, in.Validate(), include)
	}
}

// A shard whose devices all finished before the abort (here shard 0, the first wave's 250) stays
// open for the rollback, which reaches its devices first, and the rollback's concurrency is shared
// among the shards.
func TestRolloutRollbackReachesShardsDoneBeforeTheAbort(t *testing.T) {
	sim, rb := newShardSim(), newRBSim()
	sim.fail["dev-250"], sim.fail["dev-251"] = 1, 1
	env := newRollbackEnv(t, sim, rb)
	in := rollbackInput(300)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 250, 1, 100, "1"
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, workflows.RolloutRolledBack, p.State)
	assert.Equal(t, 298, p.Rollback.RolledBack)
	assert.Equal(t, 2, p.Rollback.Waves, "waves of 250 and 48")
	assert.LessOrEqual(t, sim.peak, 100, "at most max-concurrent devices in flight")
	assert.Len(t, rb.invoked(), 298)
	rows := rowsByID(shardedReport(t, env))
	require.NotNil(t, rows["dev-000"].Rollback, "shard 0 finished before the abort and stayed open")
	assert.Equal(t, 0, rows["dev-000"].Rollback.Wave)
	assert.Equal(t, workflows.DeviceRolledBack, rows["dev-249"].Rollback.Result)
	assert.Equal(t, 1, rows["dev-299"].Rollback.Wave)
	assert.Nil(t, rows["dev-250"].Rollback)
}

// An abort with no device updated has nothing to roll back: the rollout ends rolled back at once.
func TestRolloutRollbackWithNothingUpdated(t *testing.T) {
	sim, rb := newShardSim(), newRBSim()
	sim.fail["dev-000"], sim.fail["dev-001"] = 1, 1
	env := newRollbackEnv(t, sim, rb)
	in := rollbackInput(10)
	in.Canary, in.MaxFailures = 2, "1"
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, workflows.RolloutRolledBack, p.State)
	assert.True(t, strings.HasSuffix(p.Reason, "; nothing to roll back to 1.0.0: no device was updated"), p.Reason)
	assert.Equal(t, workflows.RollbackCompleted, p.Rollback.Phase)
	assert.Zero(t, p.Rollback.Devices)
	assert.Equal(t, start.Add(10*time.Second), p.Finished)
	assert.Empty(t, rb.invoked())
}
