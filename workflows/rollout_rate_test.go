package workflows_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// startTimes are the times the devices' first calls started, in order, as offsets from start.
func (s *shardSim) startTimes() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]time.Duration, len(s.starts))
	for i, st := range s.starts {
		out[i] = st.at.Sub(start)
	}
	slices.Sort(out)
	return out
}

// mostInAMinute is the most starts within any minute [t, t+60s).
func mostInAMinute(at []time.Duration) int {
	most := 0
	for i := range at {
		n := 0
		for _, b := range at[i:] {
			if b-at[i] < time.Minute {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}

func seconds(s ...float64) []time.Duration {
	out := make([]time.Duration, len(s))
	for i, v := range s {
		out[i] = time.Duration(v * float64(time.Second))
	}
	return out
}

// Six starts a minute: one every 10 s in workflow time, though twelve devices may run at once and
// each takes 10 s; the progress says the rate.
func TestShardedRolloutStartRatePacesStarts(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(12)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxPerMinute = 12, 1, 12, 6
	var mid workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { mid = rolloutProgress(t, env) }, 35*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, 12, p.Succeeded)
	assert.Equal(t, seconds(0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110), sim.startTimes())
	assert.Equal(t, 6, mostInAMinute(sim.startTimes()))
	assert.Equal(t, workflows.RolloutRunning, mid.State, "waiting for the next start is running")
	assert.Equal(t, 6.0, mid.StartRate)
	assert.Equal(t, 6, mid.MaxPerMinute)
	assert.Zero(t, mid.RampAt, "no ramp")
	assert.Equal(t, 4, mid.Succeeded+mid.Running)
}

// A fast rate starts a second's worth at once (the burst) rather than one timer per device: 240 a
// minute is four every second.
func TestShardedRolloutStartRateBurstIsASecondsWorth(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(12)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxPerMinute = 12, 1, 50, 240
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	assert.Equal(t, seconds(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2), sim.startTimes())
}

// The rate holds the granted runs to the free concurrency: with two at a time and devices of 10 s,
// a start follows each finish, and no granted runs pile up in the shard to start in a rush.
func TestShardedRolloutStartRateGrantsOnlyFreeSlots(t *testing.T) {
	sim := newShardSim()
	for _, id := range devices(8)[2:] {
		sim.duration[id] = time.Second
	}
	env := newShardEnv(t, sim)
	in := rolloutInput(8)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxPerMinute = 8, 1, 2, 60
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	// dev-000 and dev-001 hold both slots until 10 s and 11 s; the quick ones then follow at
	// one a second, as the bucket allows, not all at once.
	assert.Equal(t, seconds(0, 1, 10, 11, 12, 13, 14, 15), sim.startTimes())
	assert.LessOrEqual(t, mostInAMinute(sim.startTimes()), 60)
}

// The ramp doubles the rate each time two more devices have succeeded, up to 24 a minute: the
// gaps between starts shrink from 10 s to 2.5 s, and the progress says when it next rises.
func TestShardedRolloutRampRaisesTheRate(t *testing.T) {
	sim := newShardSim()
	for _, id := range devices(10) {
		sim.duration[id] = time.Second
	}
	env := newShardEnv(t, sim)
	in := rolloutInput(10)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxPerMinute = 10, 1, 10, 6
	in.Ramp = &workflows.Ramp{Factor: 2, Every: 2, Max: 24}
	var first, later workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { first = rolloutProgress(t, env) }, 5*time.Second)
	env.RegisterDelayedCallback(func() { later = rolloutProgress(t, env) }, 30*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	at := sim.startTimes()
	require.Len(t, at, 10)
	var gaps []time.Duration
	for i := 1; i < len(at); i++ {
		gaps = append(gaps, at[i]-at[i-1])
	}
	t.Logf("starts %v, gaps %v", at, gaps)
	assert.Equal(t, 10*time.Second, gaps[0], "6 a minute before any succeeded")
	for i := 1; i < len(gaps); i++ {
		assert.LessOrEqual(t, gaps[i], gaps[i-1], "the rate only rises: gap %d", i)
	}
	assert.Equal(t, 2500*time.Millisecond, gaps[len(gaps)-1], "24 a minute, the ceiling")

	assert.Equal(t, 6.0, first.StartRate)
	assert.Equal(t, 2, first.RampAt)
	assert.Equal(t, 12.0, first.NextStartRate)
	assert.Equal(t, 24.0, later.StartRate, "after four succeeded: 6×2×2")
	assert.Zero(t, later.RampAt, "at the ceiling it rises no more")
	require.NotNil(t, later.Ramp)
	assert.Equal(t, 24, later.Ramp.Max)
}

// A pause leaves at most the burst in the bucket: after five minutes paused the starts go on one
// every 10 s, not with the 30 the pause would have earned.
func TestShardedRolloutStartRateAfterPause(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(6)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxPerMinute = 6, 1, 6, 6
	var pause, resume *updateOutcome
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "") }, 15*time.Second)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(t, env, workflows.UpdateResume, "") }, 315*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.NoError(t, pause.rejected)
	require.NoError(t, resume.rejected)
	assert.Equal(t, seconds(0, 10, 315, 325, 335, 345), sim.startTimes())
}

// Outside a maintenance window nothing starts and the bucket holds only the burst: the opening
// brings one start, then one every 10 s.
func TestShardedRolloutStartRateInWindows(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(4)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxPerMinute = 4, 1, 4, 6
	in.Windows = []workflows.Window{{Cron: "0 13 * * *", Duration: 20 * time.Minute}}
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	open := at(0, 13, 0).Sub(start)
	assert.Equal(t, []time.Duration{open, open + 10*time.Second, open + 20*time.Second, open + 30*time.Second}, sim.startTimes())
}

// A cancel while the rollout waits for its next start ends it at once: the devices not started
// stay untouched.
func TestShardedRolloutStartRateCancelWhileWaiting(t *testing.T) {
	sim := newShardSim()
	for _, id := range devices(5) {
		sim.duration[id] = time.Second
	}
	env := newShardEnv(t, sim)
	in := rolloutInput(5)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxPerMinute = 5, 1, 5, 2
	var cancel *updateOutcome
	env.RegisterDelayedCallback(func() { cancel = sendUpdate(t, env, workflows.UpdateCancel, "too slow") }, 45*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	require.NoError(t, cancel.rejected)
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, start.Add(45*time.Second), p.Finished, "not waiting for the next start")
	assert.Equal(t, 2, p.Succeeded, "at 0 s and 30 s")
	assert.Equal(t, 3, p.NotStarted)
	assert.Equal(t, seconds(0, 30), sim.startTimes())
}

// The bucket travels over continue-as-new: a rollout that continues after three devices (at 0,
// 10 and 20 s) carries its tokens, and its next run grants the fourth device at 30 s, not at once.
// The next run plays its shard by mocks: the commands it sends are recorded.
func TestShardedRolloutStartRateAcrossContinueAsNew(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(9)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxPerMinute, in.DevicesPerRun = 9, 1, 9, 6, 3
	// The shard outlives this environment's run; it closes at its first look for its rollout.
	sim.end(workflows.RolloutWorkflowID(rolloutName), "ContinuedAsNew")
	env.ExecuteWorkflow(workflows.Rollout, in)
	require.True(t, env.IsWorkflowCompleted())
	var can *workflow.ContinueAsNewError
	require.ErrorAs(t, env.GetWorkflowError(), &can)
	next := decodeContinued(t, can)
	assert.Equal(t, seconds(0, 10, 20), sim.startTimes())
	assert.Equal(t, start.Add(20*time.Second), next.State.StartTokensAt, "the bucket, as of the last grant")
	assert.InDelta(t, 0, next.State.StartTokens, 1e-9)
	// It continued as new right after that grant.
	continuedAt := next.State.StartTokensAt

	sim2 := newShardSim()
	var s testsuite.WorkflowTestSuite
	env2 := s.NewTestWorkflowEnvironment()
	sim2.install(t, env2)
	env2.SetStartTime(continuedAt)
	shard := workflows.RolloutShardWorkflowID(rolloutName, 0)
	type sent struct {
		at    time.Duration
		quota int
	}
	var commands []sent
	env2.OnSignalExternalWorkflow(mock.Anything, shard, "", workflows.SignalShardCommand, mock.Anything).Return(
		func(_, _, _, _ string, arg any) error {
			commands = append(commands, sent{env2.Now().Sub(start), arg.(workflows.ShardCommand).Quota})
			return nil
		})
	// Cancelled at 45 s; the shard, played by nobody, is found ended at the next look.
	env2.RegisterDelayedCallback(func() {
		sim2.end(shard, "Terminated")
		env2.CancelWorkflow()
	}, start.Add(45*time.Second).Sub(continuedAt))
	env2.ExecuteWorkflow(workflows.Rollout, next)
	require.True(t, env2.IsWorkflowCompleted())
	var quotas []sent
	for _, c := range commands {
		if len(quotas) == 0 || c.quota != quotas[len(quotas)-1].quota {
			quotas = append(quotas, c)
		}
	}
	require.GreaterOrEqual(t, len(quotas), 2, "commands %v", commands)
	assert.Equal(t, []sent{{30 * time.Second, 4}, {40 * time.Second, 5}}, quotas[:2], "commands %v", commands)
}

// The --retry-failed pass is paced too.
func TestShardedRolloutStartRatePacesTheRetryPass(t *testing.T) {
	sim := newShardSim()
	for _, id := range devices(4) {
		sim.fail[id] = 1
		sim.duration[id] = time.Second
	}
	env := newShardEnv(t, sim)
	in := rolloutInput(4)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxPerMinute = 4, 1, 4, 6
	in.MaxFailures, in.RetryFailed = "100%", true
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, 4, p.Succeeded, "each succeeds on its retry")
	at := sim.startTimes()
	require.Len(t, at, 8)
	for i := 1; i < len(at); i++ {
		assert.Equal(t, 10*time.Second, at[i]-at[i-1], "starts %v", at)
	}
}

func TestStartRateOfARamp(t *testing.T) {
	in := workflows.RolloutInput{MaxPerMinute: 10, Ramp: &workflows.Ramp{Factor: 2, Every: 50, Max: 70}}
	for _, tc := range []struct {
		succeeded int
		rate      float64
		at        int
		next      float64
	}{
		{0, 10, 50, 20}, {49, 10, 50, 20}, {50, 20, 100, 40}, {149, 40, 150, 70}, {150, 70, 0, 0}, {100000, 70, 0, 0},
	} {
		rate, at, next := in.StartRate(tc.succeeded)
		assert.Equal(t, tc.rate, rate, "rate at %d", tc.succeeded)
		assert.Equal(t, tc.at, at, "rises at, at %d", tc.succeeded)
		assert.Equal(t, tc.next, next, "next rate, at %d", tc.succeeded)
	}
	noMax := workflows.RolloutInput{MaxPerMinute: 10, Ramp: &workflows.Ramp{Factor: 10, Every: 1}}
	rate, at, _ := noMax.StartRate(1 << 20)
	assert.Equal(t, float64(workflows.MaxStartRate), rate, "no ceiling: up to the bound")
	assert.Zero(t, at)
	rate, _, _ = workflows.RolloutInput{}.StartRate(5)
	assert.Zero(t, rate, "no bound")
}

func TestParseRamp(t *testing.T) {
	r, err := workflows.ParseRamp(" 2x@50 ")
	require.NoError(t, err)
	assert.Equal(t, workflows.Ramp{Factor: 2, Every: 50}, r)
	assert.Equal(t, "2x@50", r.String())
	r, err = workflows.ParseRamp("1.5X@10")
	require.NoError(t, err)
	assert.Equal(t, workflows.Ramp{Factor: 1.5, Every: 10}, r)
	for _, bad := range []string{"", "2", "2x", "2@50", "x@50", "2x@", "2x@0", "1x@50", "0.5x@5", "11x@5", "2x@-1", "NaNx@5"} {
		_, err := workflows.ParseRamp(bad)
		assert.Error(t, err, bad)
	}
}

func TestRolloutInputValidatesTheStartRate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(in *workflows.RolloutInput)
		want string
	}{
		{"negative", func(in *workflows.RolloutInput) { in.MaxPerMinute = -1 }, "max per minute -1"},
		{"too fast", func(in *workflows.RolloutInput) { in.MaxPerMinute = workflows.MaxStartRate + 1 }, "max per minute"},
		{"ramp without a rate", func(in *workflows.RolloutInput) { in.Ramp = &workflows.Ramp{Factor: 2, Every: 5} }, "--max-per-minute"},
		{"ramp factor 1", func(in *workflows.RolloutInput) { in.MaxPerMinute, in.Ramp = 5, &workflows.Ramp{Factor: 1, Every: 5} }, "more than 1"},
		{"ramp factor 20", func(in *workflows.RolloutInput) { in.MaxPerMinute, in.Ramp = 5, &workflows.Ramp{Factor: 20, Every: 5} }, "at most 10"},
		{"ramp step 0", func(in *workflows.RolloutInput) { in.MaxPerMinute, in.Ramp = 5, &workflows.Ramp{Factor: 2} }, "at least 1"},
		{"ramp max below the rate", func(in *workflows.RolloutInput) {
			in.MaxPerMinute, in.Ramp = 50, &workflows.Ramp{Factor: 2, Every: 5, Max: 10}
		}, "below the start rate"},
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
	in.MaxPerMinute, in.Ramp = 50, &workflows.Ramp{Factor: 2, Every: 5, Max: 500}
	assert.NoError(t, in.Validate())
	assert.True(t, strings.HasPrefix(workflows.Ramp{Factor: 2, Every: 5}.String(), "2x@"))
}
