package workflows_test

import (
	"slices"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The new policies with one another, where one could hold up or undo another.

// A rollout that reaches its end time is not rolled back, though devices failed: nothing crossed
// the threshold.
func TestRolloutEndTimeRollsNothingBack(t *testing.T) {
	sim, rb := newShardSim(), newRBSim()
	sim.fail["dev-001"] = 1
	env := newRollbackEnv(t, sim, rb)
	in := rollbackInput(10)
	in.Canary, in.Growth, in.MaxConcurrent = 10, 1, 2
	in.EndAfter = 25 * time.Second
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutEnded, p.State)
	assert.Equal(t, 1, p.Failed)
	assert.Equal(t, 5, p.Succeeded)
	require.NotNil(t, p.Rollback)
	assert.Equal(t, workflows.RollbackNotRun, p.Rollback.Phase)
	assert.Equal(t, "the rollout reached its end time: nothing failed", p.Rollback.Reason)
	assert.Empty(t, rb.invoked())
}

// An end time that passes during a rollback lets the rollback finish: undoing a bad update is not
// cut short, and the rollout ends rolled back.
func TestRolloutRollbackOutlivesTheEndTime(t *testing.T) {
	sim, rb := newShardSim(), newRBSim()
	sim.fail["dev-001"], sim.fail["dev-002"] = 1, 1
	env := newRollbackEnv(t, sim, rb)
	in := rollbackInput(6)
	in.Canary, in.MaxConcurrent, in.MaxFailures = 6, 6, "1"
	in.EndAfter = 15 * time.Second // the abort is at 10 s, the rollback runs 10–20 s
	var during workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { during = rolloutProgress(t, env) }, 16*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, workflows.RolloutRollingBack, during.State, "past the end time")
	assert.Equal(t, workflows.RolloutRolledBack, p.State)
	assert.Equal(t, start.Add(20*time.Second), p.Finished)
	assert.Equal(t, workflows.RollbackCompleted, p.Rollback.Phase)
	assert.Equal(t, 4, p.Rollback.RolledBack)
	assert.Equal(t, []string{"dev-000", "dev-003", "dev-004", "dev-005"}, rb.invoked())
}

// A rollback waits for no approval: its waves follow one another though the rollout's gate each
// wave, and the approval before the abort is kept.
func TestRolloutRollbackPassesTheApprovalGates(t *testing.T) {
	sim, rb := newShardSim(), newRBSim()
	sim.fail["dev-002"], sim.fail["dev-003"] = 1, 1
	env := newRollbackEnv(t, sim, rb)
	states := rolloutStates(env)
	in := rollbackInput(10) // waves of 2, 4, 4
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 2, 2, 50, "1"
	in.ApproveEachWave = true
	var approve *updateOutcome
	env.RegisterDelayedCallback(func() { approve = sendApprove(env, "", "canary fine") }, time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	p := abortedProgress(t, env.GetWorkflowError())
	require.NoError(t, approve.rejected)
	assert.Equal(t, workflows.RolloutRolledBack, p.State)
	// Wave 2 runs from the approval at 1 min and fails at 1:10; the four updated devices roll back
	// in waves of 2 and 2, one after the other.
	assert.Equal(t, []string{"dev-000", "dev-001", "dev-004", "dev-005"}, rb.invoked())
	assert.Equal(t, 2, p.Rollback.Waves)
	assert.Equal(t, start.Add(90*time.Second), p.Finished, "no wait for an approval between the rollback's waves")
	assert.Len(t, p.Approvals, 1)
	i := slices.Index(*states, workflows.RolloutRollingBack)
	require.GreaterOrEqual(t, i, 0, "states %v", *states)
	assert.NotContains(t, (*states)[i:], workflows.RolloutAwaitingApproval, "states %v", *states)
}

// A continuous rollout with an end time stops looking at the end time and ends there, though it
// would look until cancelled.
func TestContinuousRolloutEndsAtItsEndTime(t *testing.T) {
	sim := newShardSim()
	h, env := newLookHub(t, sim)
	h.register(false, "a", "b")
	in := continuousInput(time.Minute, time.Time{})
	in.EndAfter = 10 * time.Minute
	env.RegisterDelayedCallback(func() { h.register(false, "c") }, 3*time.Minute+30*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutEnded, p.State)
	assert.Equal(t, start.Add(10*time.Minute), p.Finished)
	assert.Contains(t, p.Reason, "the end time")
	assert.Equal(t, 3, p.Succeeded)
	calledOnce(t, sim, "a", "b", "c")
	require.NotEmpty(t, h.looks)
	for _, l := range h.looks {
		assert.False(t, l.at.After(start.Add(10*time.Minute)), "a look at %s, after the end time", l.at)
	}
}
