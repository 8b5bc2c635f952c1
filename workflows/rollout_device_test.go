package workflows_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// deviceUpdate is the outcome of a skip or retry update sent from a delayed callback.
type deviceUpdate struct {
	rejected error
	result   workflows.DeviceControlResult
	err      error
	done     bool
}

// sendDevices sends the update (UpdateSkip or UpdateRetry) for devices of shard 0, as "id" or
// "id@shard".
func sendDevices(t *testing.T, env *testsuite.TestWorkflowEnvironment, update, note string, ids ...string) *deviceUpdate {
	out := &deviceUpdate{}
	updateSeq++
	req := workflows.DeviceControlRequest{Note: note}
	for _, id := range ids {
		ref := workflows.DeviceRef{ID: id}
		if dev, shard, ok := strings.Cut(id, "@"); ok {
			ref.ID, ref.Shard = dev, mustAtoi(shard)
		}
		req.Devices = append(req.Devices, ref)
	}
	env.UpdateWorkflow(update, fmt.Sprintf("%s-%d", update, updateSeq), &testsuite.TestUpdateCallback{
		OnReject: func(err error) { out.rejected, out.done = err, true },
		OnAccept: func() {},
		OnComplete: func(v any, err error) {
			out.done, out.err = true, err
			if r, ok := v.(workflows.DeviceControlResult); ok {
				out.result = r
			}
		},
	}, req)
	return out
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

func outcomeOf(t *testing.T, u *deviceUpdate, device string) workflows.DeviceControlOutcome {
	t.Helper()
	require.NotNil(t, u)
	require.NoError(t, u.rejected)
	require.NoError(t, u.err)
	for _, o := range u.result.Devices {
		if o.Device == device {
			return o
		}
	}
	t.Fatalf("no outcome for %s in %+v", device, u.result.Devices)
	return workflows.DeviceControlOutcome{}
}

// Devices not started are skipped with the note and never called; one running is refused, naming
// its state. The wave is what is left, and the rollout completes.
func TestShardedRolloutSkipsDevicesNotStarted(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(6)
	in.Canary, in.Growth, in.MaxConcurrent = 6, 1, 1
	var skip, again *deviceUpdate
	env.RegisterDelayedCallback(func() {
		skip = sendDevices(t, env, workflows.UpdateSkip, "bad batch", "dev-003", "dev-004", "dev-000")
	}, 5*time.Second)
	env.RegisterDelayedCallback(func() { again = sendDevices(t, env, workflows.UpdateSkip, "", "dev-004") }, 6*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	assert.Equal(t, workflows.ControlSkipped, outcomeOf(t, skip, "dev-003").Result)
	assert.Equal(t, workflows.ControlSkipped, outcomeOf(t, skip, "dev-004").Result)
	running := outcomeOf(t, skip, "dev-000")
	assert.Equal(t, workflows.ControlRefused, running.Result)
	assert.Equal(t, workflows.DeviceRunning, running.State)
	assert.Equal(t, "device dev-000 is running: skip applies to devices not started; cancel the rollout or wait", running.Reason)
	assert.Equal(t, 2, skip.result.Progress.Skipped, "the answer counts them")
	assert.Equal(t, workflows.ControlSkipped, outcomeOf(t, again, "dev-004").Result, "a repeated skip is no error")

	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 4, p.Succeeded)
	assert.Equal(t, 2, p.Skipped)
	assert.Equal(t, 4, p.WaveSize, "the wave is the devices left")
	assert.Equal(t, []string{"dev-000", "dev-001", "dev-002", "dev-005"}, sim.startedDevices())
	assert.Equal(t, start.Add(40*time.Second), p.Finished, "four devices of 10 s, one at a time")
	rows := shardedReport(t, env)
	assert.Equal(t, workflows.DeviceSkipped, rows[3].Result)
	assert.Equal(t, "bad batch", rows[3].Note)
	assert.Equal(t, -1, rows[3].Wave)
	assert.Zero(t, rows[3].Attempts)
}

// A device skipped in a later wave's part: the waves take the next devices instead, and keep their
// planned sizes (1, 2, then the rest).
func TestShardedRolloutSkipKeepsTheWaves(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(7)
	in.Canary, in.Growth, in.MaxConcurrent = 1, 2, 4
	var skip *deviceUpdate
	env.RegisterDelayedCallback(func() { skip = sendDevices(t, env, workflows.UpdateSkip, "", "dev-002") }, 5*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.ControlSkipped, outcomeOf(t, skip, "dev-002").Result)
	assert.Equal(t, 6, p.Succeeded)
	assert.Equal(t, 3, p.Waves)
	assert.Equal(t, start.Add(10*time.Second), sim.startedAt("dev-003"), "wave 2 takes dev-001 and dev-003")
	assert.Equal(t, start.Add(20*time.Second), sim.startedAt("dev-004"))
	rows := shardedReport(t, env)
	assert.Equal(t, workflows.DefaultSkipNote, rows[2].Note)
	assert.Equal(t, 1, rows[3].Wave, "in wave 2")
}

// The validator refuses what the rollout knows to be wrong, all problems in one line.
func TestShardedRolloutRefusesBadDeviceControl(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(3)
	in.Canary, in.Growth, in.MaxConcurrent = 3, 1, 1
	var none, badShard, badID, cancel, afterCancel *deviceUpdate
	env.RegisterDelayedCallback(func() {
		none = sendDevices(t, env, workflows.UpdateSkip, "")
		badShard = sendDevices(t, env, workflows.UpdateRetry, "", "dev-001@3", "dev-002@7")
		badID = sendDevices(t, env, workflows.UpdateSkip, "", "dev 1")
	}, 5*time.Second)
	env.RegisterDelayedCallback(func() {
		sendUpdate(t, env, workflows.UpdateCancel, "")
		afterCancel = sendDevices(t, env, workflows.UpdateRetry, "", "dev-000")
	}, 15*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)
	require.True(t, env.IsWorkflowCompleted())
	_ = cancel

	require.Error(t, none.rejected)
	assert.Contains(t, none.rejected.Error(), "name the devices to skip")
	require.Error(t, badShard.rejected)
	assert.Contains(t, badShard.rejected.Error(), "device dev-001: shard 3 is not a shard of rollout fw-2.0 (it has 1)")
	assert.Contains(t, badShard.rejected.Error(), "device dev-002: shard 7")
	require.Error(t, badID.rejected)
	assert.Contains(t, badID.rejected.Error(), "dev 1")
	require.Error(t, afterCancel.rejected)
	assert.Contains(t, afterCancel.rejected.Error(), "being cancelled")
	assert.Equal(t, []string{"dev-000", "dev-001"}, sim.startedDevices(), "nothing else ran")
}

// A failed device runs again as attempt 2 (a new update ID) within the running wave; its earlier
// failure no longer counts. Devices running or updated are refused, naming their state.
func TestShardedRolloutRetriesAFailedDevice(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-001"] = 1
	sim.duration["dev-001"] = time.Second
	sim.duration["dev-002"] = time.Second
	env := newShardEnv(t, sim)
	in := rolloutInput(4)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 4, 1, 4, "50%"
	var during workflows.RolloutProgress
	var retry, twice *deviceUpdate
	env.RegisterDelayedCallback(func() {
		during = rolloutProgress(t, env)
		retry = sendDevices(t, env, workflows.UpdateRetry, "", "dev-001", "dev-000", "dev-002")
	}, 5*time.Second)
	env.RegisterDelayedCallback(func() { twice = sendDevices(t, env, workflows.UpdateRetry, "", "dev-001") }, 5500*time.Millisecond)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	assert.Equal(t, 1, during.Failed)
	queued := outcomeOf(t, retry, "dev-001")
	assert.Equal(t, workflows.ControlQueued, queued.Result)
	assert.Equal(t, 2, queued.Attempt)
	running := outcomeOf(t, retry, "dev-000")
	assert.Equal(t, "device dev-000 is running: retry applies to devices that failed; wait for it to finish", running.Reason)
	updated := outcomeOf(t, retry, "dev-002")
	assert.Equal(t, "device dev-002 is updated: retry applies to devices that failed", updated.Reason)
	assert.Zero(t, retry.result.Progress.Failed, "no longer failed once queued")
	assert.Equal(t, workflows.DeviceRunning, outcomeOf(t, twice, "dev-001").State, "queued and started at once")

	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, 4, p.Succeeded)
	assert.Zero(t, p.Failed)
	assert.Equal(t, 1, p.Waves)
	assert.Equal(t, 4, p.WaveSize, "a device of the wave itself: the wave keeps its size")
	assert.Equal(t, start.Add(5*time.Second), sim.startedAt("dev-001"), "at once")
	assert.Equal(t, 2, sim.attempts["dev-001"])
	var ids []string
	for _, c := range sim.calls {
		if c.device == "dev-001" {
			ids = append(ids, c.requestID)
		}
	}
	assert.Equal(t, []string{workflows.RolloutUpdateID(rolloutName, 1), workflows.RolloutUpdateID(rolloutName, 2)}, ids)
	last := sim.calls[len(sim.calls)-1]
	require.NotNil(t, last.earlier, "the read before the call looks for attempt 1's update")
	assert.Equal(t, []string{workflows.RolloutUpdateID(rolloutName, 1)}, last.earlier.IDs)
	assert.Equal(t, "2026-01-01T00:00:00Z", last.earlier.Before, "attempt 1's read")
	assert.Equal(t, protocol.FirmwareStages, last.earlier.Taken)
	rows := shardedReport(t, env)
	assert.Equal(t, 2, rows[1].Attempts)
	assert.Equal(t, workflows.DeviceUpdated, rows[1].Result)
	assert.Empty(t, rows[1].Error)
	assert.Contains(t, sim.ids, "dev-001/firmwareUpdate#2")
}

// A device that failed in an earlier wave joins the current one, which grows by it and waits for
// it before the next wave starts.
func TestShardedRolloutRetryJoinsTheCurrentWave(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-000"] = 1
	sim.duration["dev-000"] = time.Second
	env := newShardEnv(t, sim)
	in := rolloutInput(7)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 1, 2, 4, "1"
	var during workflows.RolloutProgress
	var retry *deviceUpdate
	env.RegisterDelayedCallback(func() {
		retry = sendDevices(t, env, workflows.UpdateRetry, "", "dev-000")
	}, 10500*time.Millisecond)
	env.RegisterDelayedCallback(func() { during = rolloutProgress(t, env) }, 10700*time.Millisecond)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.ControlQueued, outcomeOf(t, retry, "dev-000").Result)
	assert.Equal(t, 2, during.Wave)
	assert.Equal(t, 3, during.WaveSize, "wave 2's two devices and the retried one")
	assert.Equal(t, 7, p.Succeeded)
	assert.Equal(t, 3, p.Waves)
	// The canary failed at 1 s, wave 2 runs 1–11 s; the retry runs 10.5–11.5 s.
	assert.Equal(t, start.Add(10500*time.Millisecond), sim.startedAt("dev-000"))
	assert.Equal(t, start.Add(11500*time.Millisecond), sim.startedAt("dev-003"), "wave 3 waits for the retried device")
	assert.Equal(t, 1, shardedReport(t, env)[0].Wave, "counted in wave 2")
}

// A shard with a failed device stays open while its rollout runs: here every device is final while
// the rollout is paused, the failed one is queued, held by the pause, and runs at the resume.
func TestShardedRolloutRetryWhilePausedAfterAllFinished(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-001"] = 1
	env := newShardEnv(t, sim)
	in := rolloutInput(3)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 3, 1, 3, "100%"
	var pause, resume *updateOutcome
	var retry *deviceUpdate
	var held workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "") }, 5*time.Second)
	env.RegisterDelayedCallback(func() { retry = sendDevices(t, env, workflows.UpdateRetry, "", "dev-001") }, 20*time.Second)
	env.RegisterDelayedCallback(func() { held = rolloutProgress(t, env) }, 50*time.Second)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(t, env, workflows.UpdateResume, "") }, 60*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	require.NoError(t, pause.rejected)
	require.NoError(t, resume.rejected)
	assert.Equal(t, workflows.ControlQueued, outcomeOf(t, retry, "dev-001").Result)
	assert.Equal(t, workflows.RolloutPaused, held.State)
	assert.Equal(t, 1, held.Pending, "queued, held by the pause")
	assert.Zero(t, held.Running)
	assert.Equal(t, start.Add(60*time.Second), sim.startedAt("dev-001"), "at the resume")
	assert.Equal(t, 3, p.Succeeded)
	assert.Equal(t, start.Add(70*time.Second), p.Finished)
}

// Retried devices are starts like any other: under a start rate, the retry waits for its token.
func TestShardedRolloutRetryIsPaced(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-000"] = 1
	sim.duration["dev-000"] = time.Second
	env := newShardEnv(t, sim)
	in := rolloutInput(3)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures, in.MaxPerMinute = 3, 1, 3, "100%", 6
	var retry *deviceUpdate
	env.RegisterDelayedCallback(func() { retry = sendDevices(t, env, workflows.UpdateRetry, "", "dev-000") }, 12*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	assert.Equal(t, workflows.ControlQueued, outcomeOf(t, retry, "dev-000").Result)
	// Starts at 0, 10 and 20 s for the three devices; the retry, asked at 12 s, takes the token
	// of 20 s first, and dev-002 the next at 30 s.
	assert.Equal(t, seconds(0, 10, 20, 30), sim.startTimes())
	assert.Equal(t, start.Add(30*time.Second), sim.startedAt("dev-002"))
}

// A retry outside the maintenance window waits for the next opening.
func TestShardedRolloutRetryWaitsForTheWindow(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-000"] = 1
	sim.duration["dev-000"] = time.Second
	for _, id := range devices(4)[1:] {
		sim.duration[id] = 4 * time.Minute
	}
	env := newShardEnv(t, sim)
	in := rolloutInput(4)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 4, 1, 1, "100%"
	in.Windows = []workflows.Window{{Cron: "0 13,15 * * *", Duration: 5 * time.Minute}}
	var retry *deviceUpdate
	env.RegisterDelayedCallback(func() { retry = sendDevices(t, env, workflows.UpdateRetry, "", "dev-000") }, at(0, 14, 0).Sub(start))
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.ControlQueued, outcomeOf(t, retry, "dev-000").Result)
	assert.Equal(t, at(0, 15, 0), sim.startedAt("dev-000"), "at the next opening, before dev-003")
	assert.Equal(t, at(0, 15, 0).Add(time.Second), sim.startedAt("dev-003"))
	assert.Equal(t, 4, p.Succeeded)
}

// The --retry-failed pass is the rollout's last wave: single retries are refused meanwhile.
func TestShardedRolloutRefusesRetryDuringTheRetryPass(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-000"] = 2
	sim.duration["dev-000"] = time.Second
	env := newShardEnv(t, sim)
	in := rolloutInput(2)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures, in.RetryFailed = 2, 1, 2, "100%", true
	var retry *deviceUpdate
	env.RegisterDelayedCallback(func() { retry = sendDevices(t, env, workflows.UpdateRetry, "", "dev-001") }, 10500*time.Millisecond)
	env.ExecuteWorkflow(workflows.Rollout, in)
	require.True(t, env.IsWorkflowCompleted())
	require.Error(t, retry.rejected)
	assert.Contains(t, retry.rejected.Error(), "--retry-failed")
}

// Never twice: the retried device had taken its first attempt's update after all (it completed
// late). The read before the new call shows it; the shard follows that update's stages instead of
// calling again, and the row says so.
func TestShardedRolloutRetryFollowsAnUpdateThatCompletedLate(t *testing.T) {
	sim := newShardSim()
	sim.late["dev-000"] = true
	sim.duration["dev-001"] = time.Minute
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	// dev-000's stages: attempt 1 times out in downloading; the follow of attempt 2 finds the
	// update completed.
	var follows []activities.FollowStagesInput
	env.OnActivity(a.FollowStages, mock.Anything, mock.MatchedBy(func(in activities.FollowStagesInput) bool { return in.DeviceID == "dev-000" })).
		Return(func(_ context.Context, in activities.FollowStagesInput) (activities.FollowStagesResult, error) {
			sim.mu.Lock()
			defer sim.mu.Unlock()
			follows = append(follows, in)
			if len(follows) == 1 {
				return activities.FollowStagesResult{}, temporal.NewNonRetryableApplicationError("no stage after downloading within 2m0s",
					activities.ErrStageTimeout, nil, activities.FollowStagesProgress{Polls: 3, Stages: []activities.StageSeen{{Status: "downloading"}}})
			}
			return activities.FollowStagesResult{Polls: 1, Stages: []activities.StageSeen{{Status: "completed"}}}, nil
		})
	sim.install(t, env)
	in := rolloutInput(2)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 2, 1, 2, "100%"
	var retry *deviceUpdate
	env.RegisterDelayedCallback(func() { retry = sendDevices(t, env, workflows.UpdateRetry, "", "dev-000") }, 20*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	assert.Equal(t, workflows.ControlQueued, outcomeOf(t, retry, "dev-000").Result)
	require.Len(t, follows, 2, "attempt 1's, then the follow of attempt 1's update")
	assert.Equal(t, workflows.RolloutUpdateID(rolloutName, 1), follows[1].UpdateID, "attempt 1's update, not a new one")
	assert.Equal(t, "2026-01-01T00:00:00Z", follows[1].StatusBefore, "after attempt 1's read")
	var calls int
	for _, c := range sim.calls {
		if c.device == "dev-000" {
			calls++
		}
	}
	assert.Equal(t, 2, calls, "attempt 2's InvokeMethod read the twin and made no call (EarlierTaken)")
	rows := shardedReport(t, env)
	assert.Equal(t, workflows.DeviceUpdated, rows[0].Result)
	assert.Equal(t, 2, rows[0].Attempts)
	assert.Contains(t, rows[0].Note, "no second call: the device was at an earlier attempt's update")
	assert.Equal(t, "1.0.0", rows[0].FromVersion, "the version from before attempt 1")
}

// Never twice, for a reboot: the device rebooted for attempt 1 after all; the retry confirms it by
// the read and does not reboot it again.
func TestShardedRolloutRetryOfARebootThatHappenedLate(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-000"] = 1
	sim.late["dev-000"] = true
	sim.duration["dev-001"] = time.Minute
	env := newShardEnv(t, sim)
	in := workflows.RolloutInput{Name: rolloutName, Operation: workflows.OperationReboot, Devices: devices(2),
		Canary: 2, Growth: 1, MaxFailures: "100%"}
	var retry *deviceUpdate
	env.RegisterDelayedCallback(func() { retry = sendDevices(t, env, workflows.UpdateRetry, "", "dev-000") }, 20*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	assert.Equal(t, workflows.ControlQueued, outcomeOf(t, retry, "dev-000").Result)
	last := sim.calls[len(sim.calls)-1]
	require.NotNil(t, last.earlier)
	assert.Contains(t, last.earlier.IDs[0], "rollout:"+rolloutName, "attempt 1's request ID")
	assert.Empty(t, last.earlier.Taken, "any rebootTime since counts")
	rows := shardedReport(t, env)
	assert.Equal(t, workflows.DeviceRebooted, rows[0].Result)
	assert.Contains(t, rows[0].Note, "no second call: the device had rebooted for an earlier attempt")
}

// The control state travels over continue-as-new: a skip shrinks its shard's work in the state the
// next run starts from.
func TestShardedRolloutSkipAcrossContinueAsNew(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(9)
	in.Canary, in.Growth, in.MaxConcurrent, in.DevicesPerRun = 1, 2, 4, 3
	sim.end(workflows.RolloutWorkflowID(rolloutName), "ContinuedAsNew")
	var skip *deviceUpdate
	env.RegisterDelayedCallback(func() { skip = sendDevices(t, env, workflows.UpdateSkip, "", "dev-007") }, 5*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)
	require.True(t, env.IsWorkflowCompleted())
	var can *workflow.ContinueAsNewError
	require.ErrorAs(t, env.GetWorkflowError(), &can)
	assert.Equal(t, workflows.ControlSkipped, outcomeOf(t, skip, "dev-007").Result)
	next := decodeContinued(t, can)
	shards, err := workflows.FleetShards(next.State)
	require.NoError(t, err)
	require.Len(t, shards, 1)
	assert.Equal(t, 8, shards[0].Work, "nine devices, one skipped")
	assert.Equal(t, 1, shards[0].ControlSent)
	assert.Equal(t, 1, shards[0].ControlDone)
	assert.Equal(t, 1, shards[0].Last.Skipped)
}

// A retry queued and then cancelled with the rollout (here held by a pause): the device is failed
// again, as it was, not "not started".
func TestShardedRolloutCancelDropsAQueuedRetry(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-001"] = 1
	env := newShardEnv(t, sim)
	in := rolloutInput(3)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 3, 1, 3, "100%"
	var retry *deviceUpdate
	env.RegisterDelayedCallback(func() { sendUpdate(t, env, workflows.UpdatePause, "") }, 5*time.Second)
	env.RegisterDelayedCallback(func() { retry = sendDevices(t, env, workflows.UpdateRetry, "", "dev-001") }, 20*time.Second)
	env.RegisterDelayedCallback(func() { sendUpdate(t, env, workflows.UpdateCancel, "") }, 30*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.ControlQueued, outcomeOf(t, retry, "dev-001").Result)
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, 2, p.Succeeded)
	assert.Equal(t, 1, p.Failed, "failed, as before the retry was queued")
	assert.Zero(t, p.NotStarted+p.Pending)
	assert.Equal(t, 1, sim.attempts["dev-001"], "never run again")
	rows := shardedReport(t, env)
	assert.Equal(t, workflows.DeviceFailed, rows[1].Result)
	assert.Equal(t, 1, rows[1].Attempts)
	assert.NotEmpty(t, rows[1].Error)
}

// A skip while the rollout waits for its window: the device never starts, the others do in the
// window.
func TestShardedRolloutSkipWhileWaitingForTheWindow(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(3)
	in.Canary, in.Growth, in.MaxConcurrent = 3, 1, 3
	in.Windows = []workflows.Window{{Cron: "0 13 * * *", Duration: 20 * time.Minute}}
	var skip *deviceUpdate
	env.RegisterDelayedCallback(func() { skip = sendDevices(t, env, workflows.UpdateSkip, "", "dev-002") }, 30*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.ControlSkipped, outcomeOf(t, skip, "dev-002").Result)
	assert.Equal(t, workflows.RolloutWaiting, skip.result.Progress.State)
	assert.Equal(t, []string{"dev-000", "dev-001"}, sim.startedDevices())
	assert.Equal(t, at(0, 13, 0), sim.startedAt("dev-000"))
	assert.Equal(t, 2, p.Succeeded)
	assert.Equal(t, 1, p.Skipped)
}
