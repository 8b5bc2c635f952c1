package workflows_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// Approval gates, the success condition per wave and the end time, on sharded rollouts (shardSim:
// devices take 10 s each unless told otherwise).

const approver = "4242@ops-laptop"

// sendApprove sends UpdateApprove from inside a delayed callback, to the rollout (workflowID ""
// for the test's own workflow) and records its outcome.
func sendApprove(env *testsuite.TestWorkflowEnvironment, workflowID, note string) *updateOutcome {
	out := &updateOutcome{}
	updateSeq++
	cb := &testsuite.TestUpdateCallback{
		OnReject: func(err error) { out.rejected, out.done = err, true },
		OnAccept: func() {},
		OnComplete: func(v any, err error) {
			out.done, out.err = true, err
			if p, ok := v.(workflows.RolloutProgress); ok {
				out.result = p
			}
		},
	}
	req := workflows.ApproveRequest{Note: note, Identity: approver}
	id := fmt.Sprintf("approve-%d", updateSeq)
	if workflowID == "" {
		env.UpdateWorkflow(workflows.UpdateApprove, id, cb, req)
	} else {
		env.UpdateWorkflowByID(workflowID, workflows.UpdateApprove, id, cb, req)
	}
	return out
}

// gatedInput is a rollout of n devices in waves of 2, 4, 8…, all of a wave at once.
func gatedInput(n int) workflows.RolloutInput {
	in := rolloutInput(n)
	in.Canary, in.Growth, in.MaxConcurrent = 2, 2, 50
	return in
}

// A rollout gated after wave 1 waits, once the canary finished, in awaiting-approval with nothing in
// flight (the search attribute says so); approve is refused before, accepted then, refused after;
// the approval is recorded with the identity and note; the wait is not active time.
func TestGatedRolloutAwaitsApprovalAfterWave1(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	states := rolloutStates(env)
	in := gatedInput(10) // waves of 2, 4, 4
	in.ApproveAfterWave = 1

	var early, approve, again *updateOutcome
	var awaiting workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { early = sendApprove(env, "", "") }, 5*time.Second)
	env.RegisterDelayedCallback(func() { awaiting = rolloutProgress(t, env) }, 30*time.Minute)
	env.RegisterDelayedCallback(func() { approve = sendApprove(env, "", "canary looks good") }, time.Hour)
	env.RegisterDelayedCallback(func() { again = sendApprove(env, "", "") }, time.Hour+5*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.Error(t, early.rejected)
	assert.Contains(t, early.rejected.Error(), "rollout fw-2.0 is running, not awaiting approval")
	assert.Contains(t, early.rejected.Error(), "once wave 1 has finished")

	assert.Equal(t, workflows.RolloutAwaitingApproval, awaiting.State)
	assert.Equal(t, 2, awaiting.Succeeded)
	assert.Zero(t, awaiting.Running, "nothing in flight while awaiting approval")
	assert.Equal(t, 1, awaiting.Wave)
	assert.Equal(t, "1", awaiting.ApproveAfterWave)
	assert.Equal(t, start.Add(10*time.Second), awaiting.AwaitingSince)
	assert.Contains(t, awaiting.Reason, "wave 1 finished; approve to start wave 2: starter rollout approve fw-2.0")

	require.NoError(t, approve.rejected)
	assert.Equal(t, workflows.RolloutRunning, approve.result.State)
	require.Error(t, again.rejected)
	assert.Contains(t, again.rejected.Error(), "is running, not awaiting approval: wave 1 was approved already")

	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 10, p.Succeeded)
	assert.Equal(t, start.Add(time.Hour), sim.startedAt("dev-002"), "wave 2 starts at the approval")
	assert.Equal(t, start.Add(time.Hour+10*time.Second), sim.startedAt("dev-006"), "wave 3 is not gated")
	assert.Equal(t, []workflows.Approval{{Wave: 1, At: start.Add(time.Hour), Identity: approver, Note: "canary looks good"}}, p.Approvals)
	assert.Equal(t, time.Hour-10*time.Second, p.Awaited)
	assert.Equal(t, 30*time.Second, p.Active, "the wait for approval is not active")
	assert.Equal(t, []string{workflows.RolloutResolving, workflows.RolloutRunning, workflows.RolloutAwaitingApproval,
		workflows.RolloutRunning, workflows.RolloutCompleted}, *states)
}

// each gates every wave but the last: two approvals for three waves.
func TestGatedRolloutEachWave(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := gatedInput(10)
	in.ApproveEachWave = true
	var first, second workflows.RolloutProgress
	var a1, a2 *updateOutcome
	env.RegisterDelayedCallback(func() { first = rolloutProgress(t, env); a1 = sendApprove(env, "", "") }, 10*time.Minute)
	env.RegisterDelayedCallback(func() { second = rolloutProgress(t, env); a2 = sendApprove(env, "", "wave 2 fine") }, 20*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	require.NoError(t, a1.rejected)
	require.NoError(t, a2.rejected)
	assert.Equal(t, workflows.RolloutAwaitingApproval, first.State)
	assert.Equal(t, workflows.RolloutAwaitingApproval, second.State)
	assert.Equal(t, 6, second.Succeeded)
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, "each", p.ApproveAfterWave)
	require.Len(t, p.Approvals, 2)
	assert.Equal(t, 2, p.Approvals[1].Wave)
	assert.Equal(t, start.Add(20*time.Minute+10*time.Second), p.Finished, "no approval after the last wave")
}

// Paused while awaiting approval: approve is refused naming the pause, resume returns to awaiting
// approval, approve goes on; paused and awaiting time are both left out of the active time, once.
func TestGatedRolloutPauseWhileAwaiting(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := gatedInput(6)
	in.ApproveAfterWave = 1
	var pause, approvePaused, resume, approve *updateOutcome
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "change freeze") }, time.Minute)
	env.RegisterDelayedCallback(func() { approvePaused = sendApprove(env, "", "") }, 2*time.Minute)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(t, env, workflows.UpdateResume, "") }, 3*time.Minute)
	env.RegisterDelayedCallback(func() { approve = sendApprove(env, "", "") }, 4*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.NoError(t, pause.rejected)
	assert.Equal(t, workflows.RolloutPaused, pause.result.State)
	require.Error(t, approvePaused.rejected)
	assert.Contains(t, approvePaused.rejected.Error(), "rollout fw-2.0 is paused, not awaiting approval: resume it first")
	require.NoError(t, resume.rejected)
	assert.Equal(t, workflows.RolloutAwaitingApproval, resume.result.State, "resume returns to awaiting approval")
	require.NoError(t, approve.rejected)

	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 6, p.Succeeded)
	assert.Equal(t, start.Add(4*time.Minute), sim.startedAt("dev-002"))
	// Awaiting 0:10–1:00 and 3:00–4:00, paused 1:00–3:00; active: the canary and wave 2.
	assert.Equal(t, 110*time.Second, p.Awaited)
	assert.Equal(t, 20*time.Second, p.Active)
}

// Cancel while awaiting approval ends the rollout at once, the rest untouched.
func TestGatedRolloutCancelWhileAwaiting(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := gatedInput(6)
	in.ApproveAfterWave = 1
	var cancel, approve *updateOutcome
	env.RegisterDelayedCallback(func() {
		cancel = sendUpdate(t, env, workflows.UpdateCancel, "wrong image")
		approve = sendApprove(env, "", "")
	}, time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	require.NoError(t, cancel.rejected)
	require.Error(t, approve.rejected)
	assert.Contains(t, approve.rejected.Error(), "being cancelled")
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, 2, p.Succeeded)
	assert.Equal(t, 4, p.NotStarted)
	assert.Equal(t, start.Add(time.Minute), p.Finished)
	assert.Len(t, sim.starts, 2)
}

// A window that closes while the rollout awaits approval changes nothing (awaiting approval it
// stays); after the approval the window rules apply: outside a window it waits for the next.
func TestGatedRolloutAwaitingAcrossAWindowClose(t *testing.T) {
	sim := newShardSim()
	for _, id := range devices(6) {
		sim.duration[id] = 12 * time.Minute
	}
	env := newShardEnv(t, sim)
	in := gatedInput(6)
	in.ApproveAfterWave = 1
	in.Windows = []workflows.Window{{Cron: "0 13 * * *", Duration: 20 * time.Minute}}
	var afterClose workflows.RolloutProgress
	var approve *updateOutcome
	env.RegisterDelayedCallback(func() { afterClose = rolloutProgress(t, env) }, 90*time.Minute)
	env.RegisterDelayedCallback(func() { approve = sendApprove(env, "", "") }, 2*time.Hour)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutAwaitingApproval, afterClose.State, "the window closed at 13:20: still awaiting approval")
	assert.True(t, afterClose.WindowOpens.IsZero())
	require.NoError(t, approve.rejected)
	assert.Equal(t, workflows.RolloutWaiting, approve.result.State, "approved at 14:00, outside the window")
	assert.Equal(t, at(1, 13, 0), sim.startedAt("dev-002"), "wave 2 in the next window")
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 6, p.Succeeded)
	assert.Equal(t, 48*time.Minute, p.Awaited, "13:12 to 14:00")
	assert.Equal(t, 24*time.Minute, p.Active)
}

// --pause-below: a wave followed by another whose share of succeeded devices among those finished
// (skipped ones not counted) is below the condition pauses the rollout, with a reason naming the
// wave and its share; resume goes on; a wave above it does not pause.
func TestRolloutPausesBelowSuccessShare(t *testing.T) {
	sim := newShardSim()
	sim.onVer["dev-000"] = true // skipped: not counted
	sim.fail["dev-001"] = 1     // 2 of the 3 others succeed: 66.7%
	env := newShardEnv(t, sim)
	in := gatedInput(14) // waves of 4, 8, 2
	in.Canary, in.MaxFailures, in.PauseBelow = 4, "50%", "95%"
	var paused workflows.RolloutProgress
	var resume *updateOutcome
	env.RegisterDelayedCallback(func() { paused = rolloutProgress(t, env) }, 30*time.Minute)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(t, env, workflows.UpdateResume, "") }, time.Hour)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutPaused, paused.State)
	assert.Equal(t, "wave 1: 2 of its 3 devices finished succeeded (66.7%, skipped ones not counted), below the 95% required: see the failures in the report, then resume", paused.Reason)
	assert.Equal(t, "95%", paused.PauseBelow)
	require.NoError(t, resume.rejected)
	assert.Equal(t, start.Add(time.Hour), sim.startedAt("dev-004"), "wave 2 at the resume")
	assert.Equal(t, workflows.RolloutCompleted, p.State, "wave 2 (8 of 8) does not pause")
	assert.Equal(t, 12, p.Succeeded)
	assert.Equal(t, 1, p.Skipped)
	assert.Equal(t, 1, p.Failed)
}

// The failure threshold is judged first: a wave past it aborts the rollout, not pauses it.
func TestRolloutThresholdWinsOverPauseBelow(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-000"], sim.fail["dev-001"] = 1, 1
	env := newShardEnv(t, sim)
	in := gatedInput(12)
	in.Canary, in.MaxFailures, in.PauseBelow = 4, "1", "95%"
	in.ApproveAfterWave = 1
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, workflows.RolloutAborted, p.State)
	assert.Contains(t, p.Reason, "failed, more than the 1 allowed")
	assert.Equal(t, 8, p.NotStarted)
	assert.Empty(t, p.Approvals)
}

// endAfter runs the rollout of 10 devices, two at a time, with the end time 25 s after its start:
// at 25 s four finished, two are in flight, four are to start.
func endRollout(t *testing.T, behavior string) (workflows.RolloutProgress, []workflows.DeviceRow, *shardSim) {
	t.Helper()
	sim := newShardSim()
	env := newShardEnv(t, sim)
	states := rolloutStates(env)
	in := rolloutInput(10)
	in.Canary, in.Growth, in.MaxConcurrent = 10, 1, 2
	in.EndAfter, in.EndBehavior = 25*time.Second, behavior
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError(), "ended is not a failure")
	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, workflows.RolloutEnded, p.State)
	assert.True(t, p.Done())
	assert.Equal(t, start.Add(25*time.Second), p.EndAt)
	assert.Equal(t, workflows.RolloutEnded, (*states)[len(*states)-1], "the search attribute")
	assert.Len(t, sim.starts, 6, "no device starts after the end time")
	return p, shardedReport(t, env), sim
}

func TestRolloutEndTimeStopLetsTheDevicesInFlightFinish(t *testing.T) {
	p, rows, _ := endRollout(t, "")
	assert.Equal(t, workflows.EndStop, p.EndBehavior, "the default")
	assert.Equal(t, 6, p.Succeeded)
	assert.Equal(t, 4, p.NotStarted)
	assert.Zero(t, p.Cancelled)
	assert.Equal(t, start.Add(30*time.Second), p.Finished, "the two in flight finished")
	assert.Equal(t, "the end time 2026-05-01T12:00:25Z was reached (end behavior stop): 4 devices not started", p.Reason)
	assert.Equal(t, workflows.DeviceUpdated, rows[5].Result)
	assert.Equal(t, workflows.DeviceNotStarted, rows[6].Result)
}

func TestRolloutEndTimeCancelCancelsTheDevicesInFlight(t *testing.T) {
	p, rows, _ := endRollout(t, workflows.EndCancel)
	assert.Equal(t, 4, p.Succeeded)
	assert.Equal(t, 2, p.Cancelled)
	assert.Equal(t, 4, p.NotStarted)
	assert.Equal(t, start.Add(25*time.Second), p.Finished)
	assert.Equal(t, "the end time 2026-05-01T12:00:25Z was reached (end behavior cancel): 4 devices not started, 2 in flight cancelled", p.Reason)
	assert.Equal(t, workflows.DeviceCancelled, rows[4].Result)
	assert.Equal(t, workflows.DeviceNotStarted, rows[9].Result)
}

// The end time fires whatever the rollout does: paused, waiting for a window, awaiting approval;
// and an end time already past at the start ends the rollout before any device starts.
func TestRolloutEndTimeFiresInEveryState(t *testing.T) {
	for _, tc := range []struct {
		name    string
		set     func(in *workflows.RolloutInput, env *testsuite.TestWorkflowEnvironment)
		endAt   time.Time
		started int
	}{
		{"paused", func(in *workflows.RolloutInput, env *testsuite.TestWorkflowEnvironment) {
			env.RegisterDelayedCallback(func() { sendUpdate(t, env, workflows.UpdatePause, "") }, 5*time.Second)
		}, start.Add(time.Hour), 2},
		{"waiting for a window", func(in *workflows.RolloutInput, _ *testsuite.TestWorkflowEnvironment) {
			in.Windows = []workflows.Window{{Start: at(0, 14, 0), End: at(0, 15, 0)}}
		}, at(0, 13, 30), 0},
		{"awaiting approval", func(in *workflows.RolloutInput, _ *testsuite.TestWorkflowEnvironment) {
			in.ApproveAfterWave = 1
		}, start.Add(time.Hour), 2},
		{"past at the start", func(*workflows.RolloutInput, *testsuite.TestWorkflowEnvironment) {}, start.Add(-time.Minute), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := newShardSim()
			env := newShardEnv(t, sim)
			in := gatedInput(6)
			in.EndAt = tc.endAt
			tc.set(&in, env)
			env.ExecuteWorkflow(workflows.Rollout, in)

			p := completed(t, env)
			assert.Equal(t, workflows.RolloutEnded, p.State)
			ended := tc.endAt
			if ended.Before(start) {
				ended = start
			}
			assert.Equal(t, ended, p.Finished)
			assert.Equal(t, tc.started, p.Succeeded)
			assert.Equal(t, 6-tc.started, p.NotStarted)
			assert.Contains(t, p.Reason, fmt.Sprintf("%d devices not started", 6-tc.started))
			assert.Len(t, sim.starts, tc.started)
		})
	}
}

// A run that continues as new after an approval (it started DevicesPerRun devices) carries the
// approvals, the time awaited and the end time's origin: the next run neither asks again for the
// approved wave nor counts its end time from its own start.
func TestGatesTravelThroughContinueAsNew(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	// The run's end is the test's: its shards, left running, would wait for the next run.
	env.SetDetachedChildWait(false)
	in := gatedInput(10) // waves of 2, 4, 4
	in.ApproveAfterWave, in.DevicesPerRun, in.PauseBelow = 1, 3, "90%"
	in.EndAfter = 4 * time.Hour
	var approve *updateOutcome
	env.RegisterDelayedCallback(func() { approve = sendApprove(env, "", "go") }, 30*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, approve.rejected)
	var can *workflow.ContinueAsNewError
	require.ErrorAs(t, env.GetWorkflowError(), &can, "two of the canary and one of wave 2 make DevicesPerRun")
	next := decodeContinued(t, can)
	st := next.State
	assert.Equal(t, []workflows.Approval{{Wave: 1, At: start.Add(30 * time.Minute), Identity: approver, Note: "go"}}, st.Approvals)
	assert.Zero(t, st.AwaitingWave)
	assert.Equal(t, 30*time.Minute-10*time.Second, st.AwaitedFor)
	assert.Equal(t, 1, st.JudgedWave, "wave 1 judged once")
	assert.Equal(t, start, st.Started)
	p := workflows.RestoredProgress(t, next)
	assert.Equal(t, workflows.RolloutRunning, p.State, "approved: the next run goes on")
	assert.Equal(t, start.Add(4*time.Hour), p.EndAt, "from the first run's start")
	assert.Equal(t, "1", p.ApproveAfterWave)
	assert.Len(t, p.Approvals, 1)
}

// A run continues as new while awaiting approval (Temporal suggests it, its history grown): the
// wait, its clock and the approvals travel in the state.
func TestAwaitingApprovalTravelsThroughContinueAsNew(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	env.SetDetachedChildWait(false)
	in := gatedInput(10)
	in.ApproveAfterWave = 1
	env.RegisterDelayedCallback(func() { sendUpdate(t, env, workflows.UpdatePause, "") }, 20*time.Minute)
	env.RegisterDelayedCallback(func() {
		// The resume wakes the loop, which continues as new once back to awaiting approval.
		env.SetContinueAsNewSuggested(true)
		sendUpdate(t, env, workflows.UpdateResume, "")
	}, 25*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	var can *workflow.ContinueAsNewError
	require.ErrorAs(t, env.GetWorkflowError(), &can)
	next := decodeContinued(t, can)
	assert.Equal(t, 1, next.State.AwaitingWave)
	assert.Equal(t, start.Add(25*time.Minute), next.State.AwaitingSince, "the clock runs on from the resume")
	assert.Equal(t, 20*time.Minute-10*time.Second, next.State.AwaitedFor)
	p := workflows.RestoredProgress(t, next)
	assert.Equal(t, workflows.RolloutAwaitingApproval, p.State, "the next run awaits approval")
	assert.Contains(t, p.Reason, "approve to start wave 2")
}

func TestRolloutGateInputValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(in *workflows.RolloutInput)
		want string
	}{
		{"negative wave", func(in *workflows.RolloutInput) { in.ApproveAfterWave = -1 }, "give a wave from 1, or each"},
		{"wave and each", func(in *workflows.RolloutInput) { in.ApproveAfterWave, in.ApproveEachWave = 2, true }, "not both"},
		{"share without %", func(in *workflows.RolloutInput) { in.PauseBelow = "95" }, `success share "95"`},
		{"share above 100%", func(in *workflows.RolloutInput) { in.PauseBelow = "101%" }, "up to 100%"},
		{"share of 0%", func(in *workflows.RolloutInput) { in.PauseBelow = "0%" }, "above 0%"},
		{"end at and after", func(in *workflows.RolloutInput) { in.EndAt, in.EndAfter = start, time.Hour }, "not both"},
		{"negative end after", func(in *workflows.RolloutInput) { in.EndAfter = -time.Hour }, "positive duration"},
		{"unknown behavior", func(in *workflows.RolloutInput) { in.EndAt, in.EndBehavior = start, "abort" }, `end behavior "abort" is not stop`},
		{"behavior without end", func(in *workflows.RolloutInput) { in.EndBehavior = "cancel" }, "give end at or end after too"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := rolloutInput(3)
			tc.mod(&in)
			err := in.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	in := rolloutInput(3)
	in.ApproveEachWave, in.PauseBelow, in.EndAfter, in.EndBehavior = true, "99.5%", time.Hour, "cancel"
	assert.NoError(t, in.Validate())
}

func TestParseApproveAfterWave(t *testing.T) {
	for _, tc := range []struct {
		in   string
		wave int
		each bool
		ok   bool
	}{{"1", 1, false, true}, {" 3 ", 3, false, true}, {"each", 0, true, true}, {"EACH", 0, true, true}, {"0", 0, false, false}, {"-1", 0, false, false}, {"all", 0, false, false}, {"", 0, false, false}} {
		wave, each, err := workflows.ParseApproveAfterWave(tc.in)
		if !tc.ok {
			assert.Error(t, err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.wave, wave, tc.in)
		assert.Equal(t, tc.each, each, tc.in)
		assert.Equal(t, strings.ToLower(strings.TrimSpace(tc.in)), workflows.FormatApproveAfterWave(wave, each))
	}
}

// Approve on a rollout without gates is refused, naming its state and what has gates.
func TestApproveRefusedWithoutGates(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	var approve *updateOutcome
	env.RegisterDelayedCallback(func() { approve = sendApprove(env, "", "") }, 5*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, gatedInput(4))
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.Error(t, approve.rejected)
	assert.Equal(t, "rollout fw-2.0 is running, not awaiting approval: it has no approval gate (a rollout started with --approve-after-wave has)", approve.rejected.Error())
}
