package workflows_test

import (
	"errors"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// Rollouts with maintenance windows. The tests start at 12:00 UTC (start) and let the test
// environment skip the time between windows.

// at is start's day at hh:mm UTC, plus days.
func at(days, hh, mm int) time.Time {
	return time.Date(start.Year(), start.Month(), start.Day()+days, hh, mm, 0, 0, time.UTC)
}

// assertStartsInWindows checks that every device the fleet started, started while one of ws was
// open.
func assertStartsInWindows(t *testing.T, sim *fleetSim, ws []workflows.Window) {
	t.Helper()
	sim.mu.Lock()
	defer sim.mu.Unlock()
	for _, s := range sim.starts {
		open, opens, closes, _ := workflows.WindowAt(ws, s.at)
		assert.True(t, open, "%s started at %s, outside the windows (next %s–%s)", s.device, s.at, opens, closes)
	}
}

// rolloutStates records the DmflowRolloutState values the rollout upserts, in order.
func rolloutStates(env *testsuite.TestWorkflowEnvironment) *[]string {
	var states []string
	env.OnUpsertTypedSearchAttributes(mock.Anything).Return(nil).Run(func(args mock.Arguments) {
		if s, ok := args.Get(0).(temporal.SearchAttributes).GetKeyword(workflows.SearchAttrRolloutState); ok {
			states = append(states, s)
		}
	})
	return &states
}

// A rollout over three daily windows of 20 minutes with devices of 12 minutes: a window closes
// mid-wave twice, the devices in flight finish after the close, the rest of the wave starts in the
// next window, and no device starts outside one.
func TestRolloutSpansThreeWindows(t *testing.T) {
	sim := newFleetSim()
	for _, id := range devices(12) {
		sim.duration[id] = 12 * time.Minute
	}
	env := newRolloutEnv(t, sim)
	states := rolloutStates(env)
	in := rolloutInput(12)
	in.Canary, in.Growth, in.MaxConcurrent = 2, 2, 3 // waves of 2, 4, 6
	in.Windows = []workflows.Window{{Cron: "0 13,16,19 * * *", Duration: 20 * time.Minute}}

	var before, inWindow, afterClose, between workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { before = rolloutProgress(t, env) }, 30*time.Minute)
	env.RegisterDelayedCallback(func() { inWindow = rolloutProgress(t, env) }, 65*time.Minute)
	env.RegisterDelayedCallback(func() { afterClose = rolloutProgress(t, env) }, 82*time.Minute)
	env.RegisterDelayedCallback(func() { between = rolloutProgress(t, env) }, 2*time.Hour)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 12, p.Succeeded)
	assertStartsInWindows(t, sim, in.Windows)

	// Before the first window: waiting, with the opening.
	assert.Equal(t, workflows.RolloutWaiting, before.State)
	assert.Equal(t, at(0, 13, 0), before.WindowOpens)
	assert.True(t, before.WindowCloses.IsZero())
	assert.Zero(t, before.Running+before.Succeeded)
	// Inside: running, with the close.
	assert.Equal(t, workflows.RolloutRunning, inWindow.State)
	assert.Equal(t, at(0, 13, 20), inWindow.WindowCloses)
	assert.True(t, inWindow.WindowOpens.IsZero())
	assert.Equal(t, 2, inWindow.Running, "the canary")
	// After the close, no device having finished since: waiting, those in flight still running.
	assert.Equal(t, workflows.RolloutWaiting, afterClose.State)
	assert.Equal(t, at(0, 16, 0), afterClose.WindowOpens)
	assert.Equal(t, 3, afterClose.Running, "wave 2 in flight across the close")
	assert.Equal(t, workflows.RolloutWaiting, between.State)
	assert.Equal(t, 5, between.Succeeded)
	assert.Zero(t, between.Running)
	assert.Equal(t, 2, between.Wave, "wave 2 goes on in the next window")

	// Window 1 (13:00–13:20): the canary at 13:00, three of wave 2 at 13:12; they finish at
	// 13:24, after the close. Window 2: dev-005 finishes wave 2, wave 3 starts at 16:12 with
	// three. Window 3: the last three.
	assert.Equal(t, at(0, 13, 0), sim.startedAt("dev-000"))
	assert.Equal(t, at(0, 13, 12), sim.startedAt("dev-004"))
	assert.Equal(t, at(0, 16, 0), sim.startedAt("dev-005"))
	assert.Equal(t, at(0, 16, 12), sim.startedAt("dev-006"))
	assert.Equal(t, at(0, 19, 0), sim.startedAt("dev-009"))
	assert.Equal(t, at(0, 19, 12), p.Finished)
	rows := rolloutReport(t, env)
	assert.Equal(t, at(0, 13, 24), rows[4].Started.Add(rows[4].Duration), "finished after its window closed")

	// Active leaves out the waits (12:00–13:00, 13:20–16:00, 16:20–19:00): 20 + 20 + 12 minutes.
	assert.Equal(t, 52*time.Minute, p.Active)
	assert.Equal(t, 6*time.Hour+20*time.Minute, p.Waited)
	// A snapshot counts up to its last change, here wave 2's three finishing at 13:24.
	assert.Equal(t, at(0, 13, 24), between.Updated)
	assert.Equal(t, time.Hour+4*time.Minute, between.Waited)
	assert.Equal(t, []string{workflows.RolloutResolving, workflows.RolloutWaiting, workflows.RolloutRunning, workflows.RolloutWaiting,
		workflows.RolloutRunning, workflows.RolloutWaiting, workflows.RolloutRunning, workflows.RolloutCompleted}, *states)
}

// Cancel while waiting ends the rollout at once, every device untouched.
func TestRolloutCancelWhileWaiting(t *testing.T) {
	sim := newFleetSim()
	env := newRolloutEnv(t, sim)
	in := rolloutInput(4)
	in.Windows = []workflows.Window{{Start: at(0, 14, 0), End: at(0, 15, 0)}}
	var cancel *updateOutcome
	env.RegisterDelayedCallback(func() { cancel = sendUpdate(t, env, workflows.UpdateCancel, "change freeze") }, 10*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	require.NoError(t, cancel.rejected)
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, "change freeze", p.Reason)
	assert.Equal(t, 4, p.NotStarted)
	assert.Equal(t, start.Add(10*time.Minute), p.Finished, "no wait for the window")
	assert.True(t, p.WindowOpens.IsZero(), "an ended rollout waits for nothing")
	assert.Empty(t, sim.starts)
}

// Cancelling the workflow in Temporal while it waits ends it as cancelled at once too.
func TestRolloutWorkflowCancellationWhileWaiting(t *testing.T) {
	sim := newFleetSim()
	env := newRolloutEnv(t, sim)
	in := rolloutInput(4)
	in.Windows = []workflows.Window{{Cron: "0 3 * * *", Duration: time.Hour}}
	env.RegisterDelayedCallback(env.CancelWorkflow, 10*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	var canceled *temporal.CanceledError
	require.ErrorAs(t, env.GetWorkflowError(), &canceled)
	var p workflows.RolloutProgress
	require.NoError(t, canceled.Details(&p))
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, 4, p.NotStarted)
	assert.Equal(t, start.Add(10*time.Minute), p.Finished)
	assert.Empty(t, sim.starts)
}

// Pause while waiting shows paused; resume before the window returns to waiting, and the devices
// start when it opens. Waiting and paused time are both left out of Active.
func TestRolloutPauseWhileWaitingThenResume(t *testing.T) {
	sim := newFleetSim()
	for _, id := range devices(3) {
		sim.duration[id] = 10 * time.Minute
	}
	env := newRolloutEnv(t, sim)
	in := rolloutInput(3)
	in.Canary = 3
	in.Windows = []workflows.Window{{Start: at(0, 13, 0), End: at(0, 14, 0)}}

	var pause, resume, pauseIn, resumeIn *updateOutcome
	var paused, waiting workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "") }, 10*time.Minute)
	env.RegisterDelayedCallback(func() { paused = rolloutProgress(t, env) }, 20*time.Minute)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(t, env, workflows.UpdateResume, "") }, 30*time.Minute)
	env.RegisterDelayedCallback(func() { waiting = rolloutProgress(t, env) }, 40*time.Minute)
	// Inside the window: a pause holds nothing back (all three run), the resume finds it open.
	env.RegisterDelayedCallback(func() { pauseIn = sendUpdate(t, env, workflows.UpdatePause, "") }, 65*time.Minute)
	env.RegisterDelayedCallback(func() { resumeIn = sendUpdate(t, env, workflows.UpdateResume, "") }, 75*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.NoError(t, pause.rejected)
	assert.Equal(t, workflows.RolloutPaused, pause.result.State)
	assert.Equal(t, workflows.RolloutPaused, paused.State)
	assert.True(t, paused.WindowOpens.IsZero(), "paused: no device starts at the opening either")
	require.NoError(t, resume.rejected)
	assert.Equal(t, workflows.RolloutWaiting, resume.result.State, "resumed outside the window: back to waiting")
	assert.Equal(t, at(0, 13, 0), resume.result.WindowOpens)
	assert.Equal(t, workflows.RolloutWaiting, waiting.State)
	require.NotNil(t, pauseIn, "the rollout ended before 13:05")
	require.NotNil(t, resumeIn, "the rollout ended before 13:15")
	require.NoError(t, pauseIn.rejected)
	require.NoError(t, resumeIn.rejected)
	assert.Equal(t, workflows.RolloutRunning, resumeIn.result.State)

	assert.Equal(t, at(0, 13, 0), sim.startedAt("dev-000"))
	assertStartsInWindows(t, sim, in.Windows)
	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, 3, p.Succeeded)
	// 75 minutes: waiting 12:00–12:10 and 12:30–13:00, paused 12:10–12:30 and 13:05–13:15:
	// active 5 minutes.
	assert.Equal(t, start.Add(75*time.Minute), p.Finished)
	assert.Equal(t, 5*time.Minute, p.Active)
	assert.Equal(t, 40*time.Minute, p.Waited)
}

// When no window opens any more, the devices left end as not started and the rollout as aborted
// with RolloutNoWindow; those in flight finish first.
func TestRolloutOutOfWindows(t *testing.T) {
	tests := []struct {
		name       string
		windows    []workflows.Window
		succeeded  int
		reason     string
		finishedAt time.Time
	}{
		{name: "windows only in the past", windows: []workflows.Window{
			{Start: at(-2, 10, 0), End: at(-2, 11, 0)}, {Start: at(0, 11, 0), End: at(0, 12, 0)}},
			reason: "no maintenance window opens after 2026-05-01T12:00:00Z; 6 devices not started", finishedAt: start},
		// Waves of 2 and 4, two at a time, 10 minutes each: the window closes at 12:15 with
		// dev-002 and dev-003 in flight; they finish at 12:20.
		{name: "the last window closes mid-wave", windows: []workflows.Window{{Start: start, End: at(0, 12, 15)}},
			succeeded: 4, reason: "no maintenance window opens after 2026-05-01T12:15:00Z; 2 devices not started", finishedAt: at(0, 12, 20)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim := newFleetSim()
			for _, id := range devices(6) {
				sim.duration[id] = 10 * time.Minute
			}
			env := newRolloutEnv(t, sim)
			in := rolloutInput(6)
			in.Canary, in.Growth, in.MaxConcurrent = 2, 2, 2
			in.Windows = tc.windows
			env.ExecuteWorkflow(workflows.Rollout, in)

			require.True(t, env.IsWorkflowCompleted())
			err := env.GetWorkflowError()
			var appErr *temporal.ApplicationError
			require.ErrorAs(t, err, &appErr)
			assert.Equal(t, workflows.ErrRolloutNoWindow, appErr.Type())
			assert.Contains(t, err.Error(), "rollout "+rolloutName+" aborted: "+tc.reason)
			var p workflows.RolloutProgress
			require.NoError(t, appErr.Details(&p))
			assert.Equal(t, workflows.RolloutAborted, p.State)
			assert.Equal(t, tc.reason, p.Reason)
			assert.Equal(t, tc.succeeded, p.Succeeded)
			assert.Equal(t, 6-tc.succeeded, p.NotStarted)
			assert.Zero(t, p.Running+p.Pending)
			assert.Equal(t, tc.finishedAt, p.Finished)
			assertStartsInWindows(t, sim, in.Windows)
			for _, row := range rolloutReport(t, env)[tc.succeeded:] {
				assert.Equal(t, workflows.DeviceNotStarted, row.Result, row.DeviceID)
			}
		})
	}
}

// A recurring window in a time zone opens by that zone's wall clock, in summer and in winter
// alike: the devices start between 02:30 and 03:30 in Warsaw, which is 00:30 UTC in summer and
// 01:30 UTC in winter.
func TestRolloutWindowInTimeZone(t *testing.T) {
	warsaw, err := time.LoadLocation("Europe/Warsaw")
	require.NoError(t, err)
	for _, tc := range []struct {
		name        string
		begin       time.Time
		firstOpens  time.Time // UTC
		offsetHours int
	}{
		{"summer", time.Date(2026, 7, 10, 12, 0, 0, 0, time.UTC), time.Date(2026, 7, 11, 0, 30, 0, 0, time.UTC), 2},
		{"winter", time.Date(2027, 1, 15, 12, 0, 0, 0, time.UTC), time.Date(2027, 1, 16, 1, 30, 0, 0, time.UTC), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := newFleetSim()
			for _, id := range devices(6) {
				sim.duration[id] = 40 * time.Minute
			}
			env := newRolloutEnv(t, sim)
			env.SetStartTime(tc.begin)
			in := rolloutInput(6)
			in.Canary, in.Growth = 1, 1 // one device at a time: two a night
			in.Windows = []workflows.Window{{Cron: "30 2 * * *", Duration: time.Hour, TimeZone: "Europe/Warsaw"}}
			env.ExecuteWorkflow(workflows.Rollout, in)

			require.True(t, env.IsWorkflowCompleted())
			require.NoError(t, env.GetWorkflowError())
			assertStartsInWindows(t, sim, in.Windows)
			sim.mu.Lock()
			starts := append([]simStart(nil), sim.starts...)
			sim.mu.Unlock()
			require.Len(t, starts, 6)
			for _, s := range starts {
				local := s.at.In(warsaw)
				wall := time.Duration(local.Hour())*time.Hour + time.Duration(local.Minute())*time.Minute
				assert.True(t, wall >= 2*time.Hour+30*time.Minute && wall < 3*time.Hour+30*time.Minute,
					"%s started at %s in Warsaw", s.device, local.Format("15:04"))
				_, off := local.Zone()
				assert.Equal(t, tc.offsetHours*3600, off)
			}
			assert.Equal(t, tc.firstOpens, sim.startedAt("dev-000").UTC())
			assert.Equal(t, tc.firstOpens.Add(40*time.Minute), sim.startedAt("dev-001").UTC(), "the second of the night")
			assert.Equal(t, tc.firstOpens.Add(24*time.Hour), sim.startedAt("dev-002").UTC(), "the next night")
		})
	}
}

// Windows travel through continue-as-new, as does the time waited; a run never continues as new
// while waiting, but when the next window opens.
func TestRolloutWindowsAcrossContinueAsNew(t *testing.T) {
	sim := newFleetSim()
	for _, id := range devices(6) {
		sim.duration[id] = 10 * time.Minute
	}
	in := rolloutInput(6)
	in.Canary, in.Growth, in.MaxConcurrent, in.DevicesPerRun = 2, 1, 2, 2
	in.Windows = []workflows.Window{{Cron: "0 13 * * *", Duration: 15 * time.Minute}}

	begin := start
	var continued []time.Time
	var final workflows.RolloutProgress
	for runs := 1; ; runs++ {
		require.LessOrEqual(t, runs, 5, "too many runs")
		env := newRolloutEnv(t, sim)
		env.SetStartTime(begin)
		env.ExecuteWorkflow(workflows.Rollout, in)
		require.True(t, env.IsWorkflowCompleted())
		err := env.GetWorkflowError()
		var can *workflow.ContinueAsNewError
		if errors.As(err, &can) {
			p := rolloutProgress(t, env)
			continued = append(continued, p.Updated)
			next := decodeContinued(t, can)
			require.Len(t, next.Windows, 1)
			in, begin = next, p.Updated
			continue
		}
		require.NoError(t, err)
		require.NoError(t, env.GetWorkflowResult(&final))
		break
	}
	// Run 1: 13:00–13:10, then full. Run 2: two more at 13:10, in flight past the close at 13:15;
	// full, it waits for the next day's window before it continues. Run 3: the last two.
	assert.Equal(t, []time.Time{at(0, 13, 10), at(1, 13, 0)}, continued)
	assert.Equal(t, 3, final.Runs)
	assert.Equal(t, 6, final.Succeeded)
	assert.Equal(t, at(1, 13, 10), final.Finished)
	assertStartsInWindows(t, sim, in.Windows)
	// Waited 12:00–13:00 and 13:15 to the next day's 13:00: active 10 + 5 + 10 minutes.
	assert.Equal(t, 25*time.Minute, final.Active)
}

// decodeContinued is the input a run continued as new with.
func decodeContinued(t *testing.T, can *workflow.ContinueAsNewError) workflows.RolloutInput {
	t.Helper()
	var next workflows.RolloutInput
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
	require.NotNil(t, next.State)
	return next
}
