package workflows_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/dmflow/dmflow/internal/budget"
	"github.com/dmflow/dmflow/workflows"
)

// lease sends a lease request from inside a delayed callback and records the grant.
type leaseOutcome struct {
	grant    budget.Grant
	rejected error
	done     bool
}

func sendLease(env *testsuite.TestWorkflowEnvironment, id string, req budget.Request) *leaseOutcome {
	out := &leaseOutcome{}
	env.UpdateWorkflow(workflows.UpdateLease, id, &testsuite.TestUpdateCallback{
		OnReject: func(err error) { out.rejected, out.done = err, true },
		OnAccept: func() {},
		OnComplete: func(v any, err error) {
			out.done = true
			if g, ok := v.(budget.Grant); ok {
				out.grant = g
			}
		},
	}, req)
	return out
}

func methodsWant(worker string) budget.Request {
	return budget.Request{Worker: worker, Budget: map[string]float64{"methods": 40}, Wants: []budget.Want{{Key: "methods"}}}
}

// Two workers lease one hub's budget: the second gets its half once the first renews; a worker
// that stops renewing loses its share when its lease ends; with no live lease for an hour the
// workflow ends.
func TestHubBudgetLeases(t *testing.T) {
	env := bareEnv(t)
	var w1, w2, w1again, w2again, w1alone *leaseOutcome
	var bad *leaseOutcome
	env.RegisterDelayedCallback(func() { w1 = sendLease(env, "u1", methodsWant("w1")) }, time.Second)
	env.RegisterDelayedCallback(func() { w2 = sendLease(env, "u2", methodsWant("w2")) }, 2*time.Second)
	env.RegisterDelayedCallback(func() { w1again = sendLease(env, "u3", methodsWant("w1")) }, 3*time.Second)
	env.RegisterDelayedCallback(func() { w2again = sendLease(env, "u4", methodsWant("w2")) }, 4*time.Second)
	env.RegisterDelayedCallback(func() { bad = sendLease(env, "u5", budget.Request{}) }, 5*time.Second)
	// w2 stops renewing: 15 s after its last lease, w1 has the whole budget again.
	env.RegisterDelayedCallback(func() { w1alone = sendLease(env, "u6", methodsWant("w1")) }, 15*time.Second)
	var view []budget.KeyView
	env.RegisterDelayedCallback(func() {
		v, err := env.QueryWorkflow(workflows.QueryBudget)
		require.NoError(t, err)
		require.NoError(t, v.Get(&view))
	}, 16*time.Second)
	env.ExecuteWorkflow(workflows.HubBudget, workflows.HubBudgetInput{Hub: "hub.example"})

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError(), "ends once idle")
	for _, o := range []*leaseOutcome{w1, w2, w1again, w2again, w1alone} {
		require.NotNil(t, o)
		require.True(t, o.done)
		require.NoError(t, o.rejected)
		require.Len(t, o.grant.Shares, 1)
		assert.Equal(t, budget.DefaultPeriod, o.grant.Period)
	}
	assert.Equal(t, 40.0, w1.grant.Shares[0].Rate)
	assert.Equal(t, 0.0, w2.grant.Shares[0].Rate, "nothing free while w1 holds it all")
	assert.Equal(t, 20.0, w1again.grant.Shares[0].Rate)
	assert.Equal(t, 20.0, w2again.grant.Shares[0].Rate)
	assert.Equal(t, 40.0, w1alone.grant.Shares[0].Rate)
	require.NotNil(t, bad)
	require.Error(t, bad.rejected)
	assert.Contains(t, bad.rejected.Error(), "without a worker")
	require.Len(t, view, 1)
	assert.Equal(t, map[string]float64{"w1": 40}, view[0].Shares)
}

// After its updates per run the workflow continues as new, carrying the live leases.
func TestHubBudgetContinuesAsNew(t *testing.T) {
	env := bareEnv(t)
	const updates = 6
	for i := range updates {
		env.RegisterDelayedCallback(func() {
			sendLease(env, fmt.Sprintf("u%d", i), methodsWant(fmt.Sprintf("w%d", i%2)))
		}, time.Duration(i+1)*time.Millisecond)
	}
	env.ExecuteWorkflow(workflows.HubBudget, workflows.HubBudgetInput{Hub: "hub.example", UpdatesPerRun: updates})

	require.True(t, env.IsWorkflowCompleted())
	err := env.GetWorkflowError()
	var can *workflow.ContinueAsNewError
	require.ErrorAs(t, err, &can)
	var next workflows.HubBudgetInput
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
	assert.Equal(t, "hub.example", next.Hub)
	assert.Len(t, next.Ledger.Leases, 2, "both workers' leases carried over")
	assert.Equal(t, updates, next.UpdatesPerRun)
}
