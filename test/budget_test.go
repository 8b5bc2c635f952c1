//go:build integration

package test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/budget"
	"github.com/dmflow/dmflow/internal/sim/fleet"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/require"
)

// Two workers and two rollouts on one hub with a small budget, each rollout's own --rate far
// above it: the hub admits no more calls in any second than the budget, throttles none, and both
// rollouts complete. The workers share the budget through the hub's HubBudget workflow.
func TestHubBudgetSharedByWorkersAndRollouts(t *testing.T) {
	const (
		methods, twinReads, twinUpdates = 6, 12, 24
		count                           = 30 // devices per rollout
	)
	hub := startOwnHub(t, "budget-localhub", "--quota", "methods=20/s", "--quota", "twinReads=40/s", "--quota", "twinUpdates=60/s")
	hubBudget := "DMFLOW_HUB_BUDGET=methods=6/s,twinReads=12/s,twinUpdates=24/s"
	queue := "it-budget"
	stacks := make([]*chaosStack, 2)
	for i, name := range []string{"budget-a", "budget-b"} {
		s := &chaosStack{name: name, temporalAddr: env.temporalAddr, hub: hub, queue: queue}
		s.worker = startWorkerWith(t, s.env("DMFLOW_TASK_QUEUE="+queue, hubBudget))
		if !strings.Contains(s.worker.output(), `hub_budget="methods=6/s,`) {
			t.Fatalf("worker ready line without the budget: %s", s.worker.tail(3))
		}
		stacks[i] = s
	}
	fleets := []*chaosFleet{
		stacks[0].startFleet(t, count, 21, fleet.Faults{}, "--stage-duration", "500ms"),
		stacks[1].startFleet(t, count, 22, fleet.Faults{}, "--stage-duration", "500ms"),
	}
	// The devices' own traffic at start (a twin read and a report each) is over before the
	// seconds counted begin: two whole seconds without either.
	var since time.Time
	require.Eventually(t, func() bool {
		quiet := time.Now().Add(-2 * time.Second).Truncate(time.Second)
		p := hub.perSecondSince(t, quiet)
		if p["twinReads"].Total+p["twinUpdates"].Total == 0 {
			since = time.Now()
			return true
		}
		return false
	}, time.Minute, 200*time.Millisecond, "the fleets' start-up traffic did not end")
	before := hub.stats(t)
	for _, s := range stacks {
		s.startChaosRollout(t, "--canary", "10", "--growth", "3", "--max-concurrent", "30", "--rate", "200/s", "--stage-timeout", "30s")
	}
	c := temporalClient(t)
	for i, s := range stacks {
		p := checkChaos(t, s, c, fleets[i], 5*time.Minute, chaosExpect{lossless: true})
		if p.Succeeded != count {
			t.Errorf("rollout %s: %+v, want all %d updated", s.name, p, count)
		}
	}

	peaks := hub.perSecondSince(t, since)
	after := hub.stats(t)
	for op, limit := range map[string]int{"methods": methods, "twinReads": twinReads} {
		rec := peaks[op]
		t.Logf("%s: peak %d/s at %s, %d in all (budget %d/s)", op, rec.Peak, rec.At.Format(time.TimeOnly), rec.Total, limit)
		if rec.From.After(since) {
			t.Errorf("%s: the hub's seconds start at %s, after the rollouts began at %s", op, rec.From, since)
		}
		if rec.Peak > limit {
			t.Errorf("%s: the hub admitted %d calls in the second at %s, above the budget of %d/s", op, rec.Peak, rec.At, limit)
		}
		if rec.Total == 0 {
			t.Errorf("%s: no calls counted", op)
		}
	}
	// The devices' own reports are paced through the starts: 3 tokens of twinUpdates a firmware
	// update. They come from the devices, so they are checked for 429s, not per second.
	t.Logf("twinUpdates: peak %d/s (budget %d/s)", peaks["twinUpdates"].Peak, twinUpdates)
	for _, op := range []string{"methods", "twinReads", "twinUpdates"} {
		if n := after.Throttled[op] - before.Throttled[op]; n != 0 {
			t.Errorf("localhub throttled %d %s", n, op)
		}
	}

	// Both workers held shares of the methods budget, never more than it together.
	v, err := c.QueryWorkflow(t.Context(), workflows.HubBudgetWorkflowID(hubHost(t, hub)), "", workflows.QueryBudget)
	if err != nil {
		t.Fatalf("query the hub budget: %v", err)
	}
	var keys []budget.KeyView
	if err := v.Get(&keys); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(keys)
	t.Logf("hub budget: %s", out)
	for _, k := range keys {
		if k.Granted > k.Rate+1e-9 {
			t.Errorf("%s: %g granted of %g", k.Key, k.Granted, k.Rate)
		}
	}
}

// hubHost is the HostName of hub's connection string, which names its budget workflow.
func hubHost(t *testing.T, hub ownHub) string {
	t.Helper()
	for _, part := range strings.Split(hub.cs, ";") {
		if v, ok := strings.CutPrefix(part, "HostName="); ok {
			return v
		}
	}
	t.Fatalf("no HostName in the hub's connection string")
	return ""
}
