package workflows_test

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
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
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// lookHub plays the hub's side of a continuous rollout: devices registered over time, the target
// query and the looks' queries answered from them, and the read before each call of a look's
// device. A device on dmflow's contract reports its version (the target after its update); a
// device from the tutorials reports none, and a look finds it again after its update as long as
// the hub's query lags (lag): then only the read before the call keeps it from a second one.
type lookHub struct {
	mu      sync.Mutex
	env     *testsuite.TestWorkflowEnvironment
	sim     *shardSim
	devs    map[string]*lookDev
	looks   []lookQuery // the looks' queries, in order
	initial int         // target queries
	failAt  map[int]bool
	// quiet drops the test environment's logs (a line per activity), for many devices.
	quiet bool
}

type lookDev struct {
	tutorial bool
	// changed is the hub's $lastUpdated of the reported properties; updated when the rollout's
	// call reached the device; lag: looks see it as before its update until then.
	changed time.Time
	updated time.Time
	lag     time.Duration
}

type lookQuery struct {
	at    time.Time
	since time.Time
	found []string
}

var lookSince = regexp.MustCompile(`\$metadata\.\$lastUpdated >= '([^']+)'`)

func newLookHub(t *testing.T, sim *shardSim) (*lookHub, *testsuite.TestWorkflowEnvironment) {
	h := &lookHub{sim: sim, devs: map[string]*lookDev{}, failAt: map[int]bool{}}
	return h, h.newEnv(t)
}

// newEnv is a test environment playing the hub, for a rollout or its next run.
func (h *lookHub) newEnv(t *testing.T) *testsuite.TestWorkflowEnvironment {
	var s testsuite.WorkflowTestSuite
	if h.quiet {
		s.SetLogger(log.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	}
	env := s.NewTestWorkflowEnvironment()
	env.OnActivity(a.QueryDevicesPage, mock.Anything, mock.Anything).Return(h.page)
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(h.invoke)
	h.sim.install(t, env)
	h.mu.Lock()
	h.env = env
	h.mu.Unlock()
	return env
}

// register adds devices now (their twin changed now).
func (h *lookHub) register(tutorial bool, ids ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range ids {
		h.devs[id] = &lookDev{tutorial: tutorial, changed: h.env.Now().UTC()}
	}
}

// report makes devices report something unrelated to the update (their twin changes).
func (h *lookHub) report(ids ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range ids {
		h.devs[id].changed = h.env.Now().UTC()
	}
}

func (h *lookHub) page(_ context.Context, in activities.QueryDevicesPageInput) (activities.QueryDevicesPageResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.env.Now().UTC()
	m := lookSince.FindStringSubmatch(in.Query)
	var since time.Time
	if m != nil {
		var err error
		if since, err = time.Parse(time.RFC3339Nano, m[1]); err != nil {
			return activities.QueryDevicesPageResult{}, err
		}
		if h.failAt[len(h.looks)+1] {
			h.looks = append(h.looks, lookQuery{at: now, since: since})
			return activities.QueryDevicesPageResult{}, temporal.NewNonRetryableApplicationError("query: syntax error", activities.ErrBadRequest, nil)
		}
	} else {
		h.initial++
	}
	var out []activities.QueriedDevice
	for _, id := range slices.Sorted(mapKeys(h.devs)) {
		d := h.devs[id]
		sees := !d.updated.IsZero() && now.Sub(d.updated) >= d.lag // the update shows in the query
		switch {
		case m != nil && d.changed.Before(since):
		case sees && !d.tutorial:
			// Reports the target version: left out by the version condition.
		case sees:
			// Reports a stage stamped since the rollout began: left out.
		default:
			q := activities.QueriedDevice{DeviceID: id}
			if !d.tutorial {
				q.Reported = map[string]any{protocol.PropFirmwareVersion: "1.0.0"}
			}
			out = append(out, q)
		}
	}
	if m != nil {
		var ids []string
		for _, q := range out {
			ids = append(ids, q.DeviceID)
		}
		h.looks = append(h.looks, lookQuery{at: now, since: since, found: ids})
	}
	return activities.QueryDevicesPageResult{Devices: out, Rows: len(out)}, nil
}

// invoke skips a look's device whose twin shows the rollout's update (activities.Touched), else
// calls it as the shard simulation does.
func (h *lookHub) invoke(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
	h.mu.Lock()
	d := h.devs[in.DeviceID]
	if t := in.ReadFirst.Touched; t != nil && d != nil && !d.updated.IsZero() {
		h.mu.Unlock()
		return activities.InvokeMethodResult{Skipped: true, SkipReason: "updated since this rollout began", TwinReads: 1, Attempt: 1,
			Read: &activities.GetTwinResult{}}, nil
	}
	if d != nil {
		d.updated, d.changed = h.env.Now().UTC(), h.env.Now().UTC()
	}
	h.mu.Unlock()
	return h.sim.invoke(ctx, in)
}

func (h *lookHub) lookCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.looks)
}

// calledOnce checks that every device was called exactly once.
func calledOnce(t *testing.T, sim *shardSim, want ...string) {
	t.Helper()
	sim.mu.Lock()
	defer sim.mu.Unlock()
	n := map[string]int{}
	for _, c := range sim.calls {
		n[c.device]++
	}
	for _, id := range want {
		assert.Equal(t, 1, n[id], "calls to %s", id)
	}
	assert.Len(t, n, len(want), "devices called: %v", n)
}

func continuousInput(every time.Duration, until time.Time) workflows.RolloutInput {
	in := rolloutInput(0)
	in.Devices, in.Query = nil, "SELECT * FROM devices WHERE tags.ring = 'beta'"
	in.Canary, in.Growth = 1, 2
	in.Continuous = &workflows.RolloutContinuous{Every: every, Until: until}
	return in
}

// The first resolution's devices run first; looks begin once they finished and find the devices
// registered later, which run in the next waves; a device found by two looks (its twin kept
// changing) runs once; the rollout completes once Until passed and the devices found finished.
func TestContinuousRolloutUpdatesDevicesThatComeToMatch(t *testing.T) {
	sim := newShardSim()
	h, env := newLookHub(t, sim)
	h.register(false, "a", "b", "c")
	until := start.Add(20 * time.Minute)
	in := continuousInput(time.Minute, until)

	var during workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { h.register(false, "d") }, 3*time.Minute+30*time.Second)
	env.RegisterDelayedCallback(func() {
		h.register(true, "e", "f")
		h.devs["f"].lag = time.Hour
	}, 6*time.Minute+30*time.Second)
	// f reports again and again, and the hub's query is slow to show its update: the looks after
	// the one that found it find it again.
	for _, m := range []time.Duration{7, 8, 9} {
		env.RegisterDelayedCallback(func() { h.report("f") }, m*time.Minute+30*time.Second)
	}
	env.RegisterDelayedCallback(func() { during = rolloutProgress(t, env) }, 7*time.Minute+30*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, until, p.Finished, "ends at until: the devices found finished long before")
	assert.Contains(t, p.Reason, "continuous until "+until.Format(time.RFC3339)+" reached")
	assert.Equal(t, 6, p.Total)
	assert.Equal(t, 6, p.Succeeded)
	calledOnce(t, sim, "a", "b", "c", "d", "e", "f")

	assert.Equal(t, start, sim.startedAt("a"))
	assert.Equal(t, start.Add(4*time.Minute), sim.startedAt("d"), "found by the look at 4 minutes")
	assert.Equal(t, start.Add(7*time.Minute), sim.startedAt("e"))
	assert.Equal(t, 1, h.initial, "the target query is read once")

	h.mu.Lock()
	require.NotEmpty(t, h.looks)
	first := h.looks[0]
	assert.Equal(t, start.Add(time.Minute), first.at, "the first look once the first targets finished, at its time")
	assert.Equal(t, start.Add(-workflows.LookOverlap), first.since, "it reaches back the overlap from the start")
	assert.Equal(t, h.looks[1].at.Add(-workflows.LookOverlap), h.looks[2].since, "each look from the one before, less the overlap")
	var foundF int
	for _, l := range h.looks {
		if slices.Contains(l.found, "f") {
			foundF++
		}
	}
	assert.GreaterOrEqual(t, foundF, 3, "f was found by several looks")
	looks := len(h.looks)
	h.mu.Unlock()
	assert.Equal(t, 19, looks, "a look a minute from 1m to 19m")

	require.NotNil(t, p.Continuous)
	assert.Equal(t, 19, p.Continuous.Looks)
	assert.Equal(t, 3, p.Continuous.Found, "d, e and f, each counted once")
	assert.True(t, p.Continuous.Ended)
	assert.Zero(t, p.Continuous.NextLook)

	require.NotNil(t, during.Continuous)
	assert.Equal(t, start.Add(8*time.Minute), during.Continuous.NextLook)
	assert.Equal(t, start.Add(7*time.Minute), during.Continuous.LastLook)
	assert.Equal(t, until, during.Continuous.Until)
	assert.Equal(t, time.Minute, during.Continuous.Every)

	rows := shardedReport(t, env)
	require.Len(t, rows, 6)
	looksOf := map[string]int{}
	for _, r := range rows {
		looksOf[r.DeviceID] = r.Look
	}
	assert.Equal(t, map[string]int{"a": 0, "b": 0, "c": 0, "d": 4, "e": 7, "f": 7}, looksOf)
	assert.Equal(t, 2, rows[3].Wave, "d is the next wave after the first targets' two")
}

// A device the hub's query still shows as before its update (the query lags) is found again by a
// later look; the read before its second call shows the update, and it is skipped: one call.
func TestContinuousRolloutSkipsADeviceFoundAgainAfterItsUpdate(t *testing.T) {
	sim := newShardSim()
	h, env := newLookHub(t, sim)
	h.register(true, "a")
	h.devs["a"].lag = time.Hour
	in := continuousInput(time.Minute, start.Add(45*time.Minute))
	// a keeps reporting; once its entry in the recent set is evicted (its shard closed more than
	// the overlap ago), the next look places it again.
	for m := 2; m < 45; m += 3 {
		env.RegisterDelayedCallback(func() { h.report("a") }, time.Duration(m)*time.Minute)
	}
	env.RegisterDelayedCallback(func() { h.register(true, "b") }, 30*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	calledOnce(t, sim, "a", "b")
	rows := shardedReport(t, env)
	var again []workflows.DeviceRow
	for _, r := range rows {
		if r.DeviceID == "a" && r.Look > 0 {
			again = append(again, r)
		}
	}
	// The first look finds a (its update does not show in the query yet) and skips it; the recent
	// set keeps the next looks from placing it again until its shard closed the overlap ago.
	require.Len(t, again, 2, "rows %v", rows)
	assert.Equal(t, 1, again[0].Look)
	assert.Equal(t, 32, again[1].Look, "the shard closed at 1m, seen closed at the look at 2m, evicted 30m later")
	for _, r := range again {
		assert.Equal(t, workflows.DeviceSkipped, r.Result)
		assert.Contains(t, r.Note, "updated since this rollout began")
	}
}

// A cancel ends a continuous rollout; nothing is looked for afterwards.
func TestContinuousRolloutEndsOnCancel(t *testing.T) {
	sim := newShardSim()
	h, env := newLookHub(t, sim)
	h.register(false, "a")
	in := continuousInput(time.Minute, time.Time{})
	var cancel *updateOutcome
	env.RegisterDelayedCallback(func() { cancel = sendUpdate(t, env, workflows.UpdateCancel, "enough") }, 5*time.Minute+30*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	require.NoError(t, cancel.rejected)
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, start.Add(5*time.Minute+30*time.Second), p.Finished)
	assert.Equal(t, 5, h.lookCount(), "looks at 1 to 5 minutes, none after the cancel")
	require.NotNil(t, p.Continuous)
	assert.Zero(t, p.Continuous.NextLook)
}

// No look while paused; the first after the resume reaches back to the last one's time, so the
// device registered meanwhile is found.
func TestContinuousRolloutDoesNotLookWhilePaused(t *testing.T) {
	sim := newShardSim()
	h, env := newLookHub(t, sim)
	h.register(false, "a")
	in := continuousInput(time.Minute, start.Add(15*time.Minute))
	var paused workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { sendUpdate(t, env, workflows.UpdatePause, "") }, 2*time.Minute+30*time.Second)
	env.RegisterDelayedCallback(func() { h.register(false, "b") }, 3*time.Minute)
	env.RegisterDelayedCallback(func() { paused = rolloutProgress(t, env) }, 5*time.Minute)
	env.RegisterDelayedCallback(func() { sendUpdate(t, env, workflows.UpdateResume, "") }, 8*time.Minute+10*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	calledOnce(t, sim, "a", "b")
	assert.Equal(t, start.Add(8*time.Minute+10*time.Second), sim.startedAt("b"), "found by the look at the resume")
	h.mu.Lock()
	var at []time.Duration
	for _, l := range h.looks {
		at = append(at, l.at.Sub(start))
	}
	resumed := h.looks[2]
	h.mu.Unlock()
	assert.Equal(t, []time.Duration{time.Minute, 2 * time.Minute, 8*time.Minute + 10*time.Second}, at[:3], "none from 2m30s to 8m10s")
	assert.Equal(t, start.Add(2*time.Minute-workflows.LookOverlap), resumed.since)
	require.NotNil(t, paused.Continuous)
	assert.Contains(t, paused.Continuous.Waiting, "paused")
	assert.Zero(t, paused.Continuous.NextLook)
}

// A run that continues as new carries its looks: their count, the next look's time, the recent
// set (a device found before is not placed again after).
func TestContinuousRolloutCarriesItsLooksOverContinueAsNew(t *testing.T) {
	sim := newShardSim()
	h, env := newLookHub(t, sim)
	h.register(false, "a", "b", "c")
	in := continuousInput(time.Minute, start.Add(12*time.Minute))
	env.RegisterDelayedCallback(func() {
		h.register(false, "d", "e", "f")
		for _, id := range []string{"d", "e", "f"} {
			h.devs[id].lag = time.Hour
		}
	}, 3*time.Minute+30*time.Second)
	env.RegisterDelayedCallback(func() { h.report("d", "e", "f") }, 5*time.Minute+30*time.Second)
	// A long history: the run continues as new at its next turn, the look at 6 minutes, which
	// finds d, e and f again (no shard is open then: a new test environment has none).
	env.RegisterDelayedCallback(func() { env.SetCurrentHistoryLength(9000) }, 5*time.Minute+40*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	var can *workflow.ContinueAsNewError
	require.ErrorAs(t, env.GetWorkflowError(), &can)
	next := decodeContinued(t, can)
	looks := next.State.Looks
	require.NotNil(t, looks)
	assert.Equal(t, 6, looks.Looks)
	assert.Equal(t, 3, looks.Found)
	assert.Equal(t, start.Add(6*time.Minute), looks.Since)
	assert.Equal(t, start.Add(7*time.Minute), looks.Next)
	assert.NotEmpty(t, looks.Recent, "d, e and f, packed")
	require.NotNil(t, next.Continuous)

	env = h.newEnv(t)
	env.SetStartTime(start.Add(6 * time.Minute))
	env.RegisterDelayedCallback(func() { h.report("d", "e", "f") }, 90*time.Second)
	env.RegisterDelayedCallback(func() { h.register(false, "g") }, 2*time.Minute+30*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, next)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 2, p.Runs)
	calledOnce(t, sim, "a", "b", "c", "d", "e", "f", "g")
	assert.Equal(t, 7, p.Total, "d, e and f placed once, though found by looks in both runs")
	assert.Equal(t, start.Add(9*time.Minute), sim.startedAt("g"))
	require.NotNil(t, p.Continuous)
	assert.Equal(t, 4, p.Continuous.Found)
	assert.Equal(t, 11, p.Continuous.Looks, "a look a minute from 1m to 11m, across the runs")
	assert.Equal(t, 11, h.lookCount())
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Equal(t, start.Add(7*time.Minute), h.looks[6].at, "the next run looks at the time the first set")
	assert.Equal(t, []string{"d", "e", "f"}, h.looks[6].found, "found again, and dropped")
}

// Outside its maintenance windows a continuous rollout with nothing to start goes on looking; the
// devices found wait for the next window.
func TestContinuousRolloutLooksOutsideWindowsAndStartsInThem(t *testing.T) {
	sim := newShardSim()
	h, env := newLookHub(t, sim)
	h.register(false, "a")
	in := continuousInput(time.Minute, start.Add(30*time.Minute))
	in.Windows = []workflows.Window{
		{Start: start, End: start.Add(2 * time.Minute)},
		{Start: start.Add(20 * time.Minute), End: start.Add(25 * time.Minute)},
	}
	var waiting workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { h.register(false, "b") }, 4*time.Minute+30*time.Second)
	env.RegisterDelayedCallback(func() { waiting = rolloutProgress(t, env) }, 10*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	calledOnce(t, sim, "a", "b")
	assert.Equal(t, start.Add(20*time.Minute), sim.startedAt("b"), "found at 5 minutes, started when the window opened")
	assert.Equal(t, workflows.RolloutWaiting, waiting.State)
	assert.Equal(t, 1, waiting.Pending)
	require.NotNil(t, waiting.Continuous)
	assert.Equal(t, 1, waiting.Continuous.Found)
	h.mu.Lock()
	assert.Equal(t, start.Add(5*time.Minute), h.looks[4].at, "the looks went on outside the window")
	h.mu.Unlock()
}

// A look that fails does not end the rollout: it says so, and the next looks again from the same
// time.
func TestContinuousRolloutLooksAgainAfterAFailedLook(t *testing.T) {
	sim := newShardSim()
	h, env := newLookHub(t, sim)
	h.register(false, "a")
	h.failAt[2] = true
	in := continuousInput(time.Minute, start.Add(5*time.Minute))
	var failed workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { h.register(false, "b") }, 90*time.Second)
	env.RegisterDelayedCallback(func() { failed = rolloutProgress(t, env) }, 2*time.Minute+30*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	calledOnce(t, sim, "a", "b")
	require.NotNil(t, failed.Continuous)
	assert.Contains(t, failed.Continuous.Error, "look 2")
	assert.Equal(t, workflows.RolloutRunning, failed.State)
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Equal(t, h.looks[1].since, h.looks[2].since, "the look after the failed one from the same time")
	assert.Equal(t, start.Add(3*time.Minute), sim.startedAt("b"))
}

// The devices looks find are judged by the threshold as any wave's: failures past it abort.
func TestContinuousRolloutAbortsWhenFoundDevicesFail(t *testing.T) {
	sim := newShardSim()
	sim.fail["d"], sim.fail["e"] = 1, 1
	h, env := newLookHub(t, sim)
	h.register(false, "a")
	in := continuousInput(time.Minute, time.Time{})
	in.MaxFailures = "1"
	env.RegisterDelayedCallback(func() { h.register(false, "d", "e") }, 90*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, 2, p.Failed)
	assert.Equal(t, start.Add(2*time.Minute+10*time.Second), p.Finished)
}

func TestContinuousRolloutRefusals(t *testing.T) {
	until := start.Add(time.Hour)
	for _, tc := range []struct {
		name string
		edit func(in *workflows.RolloutInput)
		want string
	}{
		{"reboot", func(in *workflows.RolloutInput) {
			in.Operation, in.Firmware = workflows.OperationReboot, nil
		}, "continuous applies to a firmware rollout"},
		{"device IDs", func(in *workflows.RolloutInput) { in.Query, in.Devices = "", []string{"a"} }, "by query, not by device IDs"},
		{"scheduled", func(in *workflows.RolloutInput) { in.Schedule = "nightly" }, "a schedule cannot start a continuous rollout"},
		{"too often", func(in *workflows.RolloutInput) { in.Continuous.Every = time.Millisecond }, "look every 1ms must lie between"},
		{"too seldom", func(in *workflows.RolloutInput) { in.Continuous.Every = 48 * time.Hour }, "must lie between 1s and 24h"},
		{"retry without until", func(in *workflows.RolloutInput) { in.RetryFailed = true }, "give until, or drop retry-failed"},
		{"long query", func(in *workflows.RolloutInput) {
			in.Query = "SELECT * FROM devices WHERE tags.x = '" + strings.Repeat("x", 7800) + "'"
		}, "too long for a continuous rollout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := continuousInput(0, time.Time{})
			tc.edit(&in)
			err := in.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	in := continuousInput(0, until)
	in.RetryFailed = true
	require.NoError(t, in.Validate(), "retry-failed with until")
	in = continuousInput(0, time.Time{})
	in.Query, in.Reconcile = "", true
	require.NoError(t, in.Validate(), "every device of the hub whose version differs")
}

// The waves of the devices looks find keep growing by the plan, at most MaxLookWave each.
func TestContinuousRolloutCapsTheWavesOfLooks(t *testing.T) {
	sim := newShardSim()
	sim.instant = true
	h := &lookHub{sim: sim, devs: map[string]*lookDev{}, failAt: map[int]bool{}, quiet: true}
	env := h.newEnv(t)
	env.SetTestTimeout(3 * time.Minute)
	h.register(false, "a")
	in := continuousInput(time.Minute, start.Add(3*time.Minute))
	in.Growth, in.MaxConcurrent, in.DevicesPerRun = 100, 200, 1<<20 // one run: a test environment follows no continue-as-new
	env.RegisterDelayedCallback(func() {
		var ids []string
		for i := range 1500 {
			ids = append(ids, fmt.Sprintf("n%04d", i))
		}
		h.register(false, ids...)
	}, 30*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, 1501, p.Succeeded)
	assert.Equal(t, 4, p.Waves, "a; then 100, 1,000 (not 10,000) and the last 400")
	assert.Equal(t, 400, p.WaveSize)
}
