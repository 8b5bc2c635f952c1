package workflows_test

import (
	"context"
	"fmt"
	"log/slog"
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
	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
)

// shardSim plays the devices of a sharded rollout through its activities: InvokeMethod answers at
// once (or skips a device already on the version, or refuses), FollowStages and WaitForReported
// take the device's duration (default 10 s) and succeed, or fail while the device's failing
// attempts last. Device durations are set before install: they become per-device mocks.
type shardSim struct {
	mu       sync.Mutex
	duration map[string]time.Duration
	fail     map[string]int  // device → how many attempts fail in their stages
	refuse   map[string]bool // device refuses the method (ErrMethodFailed)
	onVer    map[string]bool // device already runs the target version
	late     map[string]bool // device took its earlier attempt's call (ReadFirst.Earlier shows it)
	pages    [][]activities.QueriedDevice
	queries  []activities.QueryDevicesPageInput
	calls    []simCall
	starts   []simStart
	ids      []string // activity IDs started
	attempts map[string]int
	running  int
	peak     int
	// instant makes the devices take no time at all (a fleet too large for timers).
	instant bool
	// ended are the workflows EndedWorkflows reports ended (workflow ID → status); looks counts
	// its calls.
	ended map[string]string
	looks int
}

func (s *shardSim) defaultDuration() time.Duration {
	if s.instant {
		return 0
	}
	return 10 * time.Second
}

type simCall struct {
	device, method, requestID string
	rate                      *activities.HubRate
	// earlier is the evidence of the attempt before, which the read before the call looks for.
	earlier *activities.Earlier
}

func newShardSim() *shardSim {
	return &shardSim{duration: map[string]time.Duration{}, fail: map[string]int{}, refuse: map[string]bool{},
		onVer: map[string]bool{}, attempts: map[string]int{}, ended: map[string]string{}, late: map[string]bool{}}
}

// end marks workflow id ended with status, for EndedWorkflows.
func (s *shardSim) end(id, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended[id] = status
}

// endedWorkflows plays activities.EndedWorkflows on the workflows marked ended.
func (s *shardSim) endedWorkflows(_ context.Context, refs []activities.WorkflowRef) ([]activities.WorkflowEnded, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.looks++
	var out []activities.WorkflowEnded
	for _, r := range refs {
		if st, ok := s.ended[r.ID]; ok {
			out = append(out, activities.WorkflowEnded{ID: r.ID, Status: st})
		}
	}
	return out, nil
}

// install registers the activities' mocks and the listeners that follow the devices in flight.
func (s *shardSim) install(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
	t.Helper()
	env.RegisterActivity(&activities.Activities{})
	env.RegisterWorkflow(workflows.RolloutShard)
	for _, id := range slices.Sorted(mapKeys(s.duration)) {
		d := s.duration[id]
		env.OnActivity(a.FollowStages, mock.Anything, mock.MatchedBy(func(in activities.FollowStagesInput) bool { return in.DeviceID == id })).
			After(d).Return(s.follow)
		env.OnActivity(a.WaitForReported, mock.Anything, mock.MatchedBy(func(in activities.WaitForReportedInput) bool { return in.DeviceID == id })).
			After(d).Return(s.wait)
	}
	env.OnActivity(a.FollowStages, mock.Anything, mock.Anything).After(s.defaultDuration()).Return(s.follow)
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).After(s.defaultDuration()).Return(s.wait)
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(s.invoke)
	env.OnActivity(a.QueryDevicesPage, mock.Anything, mock.Anything).Return(s.page)
	env.OnActivity(a.EndedWorkflows, mock.Anything, mock.Anything).Return(s.endedWorkflows)
	env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, _ converter.EncodedValues) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.ids = append(s.ids, info.ActivityID)
		if info.ActivityType.Name == "InvokeMethod" {
			s.starts = append(s.starts, simStart{info.ActivityID[:strings.Index(info.ActivityID, "/")], env.Now().UTC()})
			s.running++
			s.peak = max(s.peak, s.running)
		}
	})
	env.SetOnActivityCompletedListener(func(info *activity.Info, result converter.EncodedValue, err error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		switch info.ActivityType.Name {
		case "InvokeMethod":
			var inv activities.InvokeMethodResult
			if err != nil || result.Get(&inv) == nil && inv.Skipped {
				s.running--
			}
		case "FollowStages", "WaitForReported":
			s.running--
		}
	})
	env.SetStartTime(start)
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: workflows.RolloutWorkflowID(rolloutName), TaskQueue: workflows.TaskQueue})
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func (s *shardSim) invoke(_ context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, _ := in.Payload[protocol.FieldUpdateID].(string)
	if id == "" {
		id, _ = in.Payload[protocol.FieldRequestID].(string)
	}
	call := simCall{device: in.DeviceID, method: in.Method, requestID: id, rate: in.Rate}
	if in.ReadFirst != nil {
		call.earlier = in.ReadFirst.Earlier
	}
	s.calls = append(s.calls, call)
	s.attempts[in.DeviceID]++
	if call.earlier != nil && s.late[in.DeviceID] {
		// The earlier attempt's update completed after it had failed: the read shows it.
		return activities.InvokeMethodResult{Earlier: &activities.EarlierTaken{By: "changed", Value: "completed", Before: "2026-01-01T00:00:00Z"}, TwinReads: 1, Attempt: 1,
			Read: &activities.GetTwinResult{Reported: map[string]any{protocol.PropFirmwareStatus: "completed"}}, EvidenceBefore: "2026-01-01T00:00:00Z"}, nil
	}
	read := &activities.GetTwinResult{Reported: map[string]any{protocol.PropFirmwareVersion: "1.0.0"}}
	if s.onVer[in.DeviceID] {
		read.Reported[protocol.PropFirmwareVersion] = fwVersion
		return activities.InvokeMethodResult{Skipped: true, Read: read, TwinReads: 1, Attempt: 1}, nil
	}
	if s.refuse[in.DeviceID] {
		return activities.InvokeMethodResult{}, temporal.NewNonRetryableApplicationError(
			"invoke firmwareUpdate on "+in.DeviceID+": device answered status 400", activities.ErrMethodFailed, nil,
			activities.InvokeMethodResult{Status: 400, Calls: 1, TwinReads: 1, Attempt: 1})
	}
	return activities.InvokeMethodResult{Status: 200, Calls: 1, TwinReads: 1, Attempt: 1, Read: read, EvidenceBefore: "2026-01-01T00:00:00Z"}, nil
}

// failing reports whether the device's current attempt fails.
func (s *shardSim) failing(device string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts[device] <= s.fail[device]
}

func (s *shardSim) follow(_ context.Context, in activities.FollowStagesInput) (activities.FollowStagesResult, error) {
	if s.failing(in.DeviceID) {
		return activities.FollowStagesResult{}, temporal.NewNonRetryableApplicationError(
			"device "+in.DeviceID+" reported firmwareStatus error in applying: flash write failed", activities.ErrDeviceError,
			nil, activities.FollowStagesProgress{Polls: 4, Stages: []activities.StageSeen{{Status: "downloading"}, {Status: "applying"}}})
	}
	return activities.FollowStagesResult{Polls: 6,
		Stages: []activities.StageSeen{{Status: "downloading"}, {Status: "applying"}, {Status: "completed"}}}, nil
}

func (s *shardSim) wait(_ context.Context, in activities.WaitForReportedInput) (activities.WaitForReportedResult, error) {
	if s.failing(in.DeviceID) {
		return activities.WaitForReportedResult{}, temporal.NewNonRetryableApplicationError("device "+in.DeviceID+" is not registered", activities.ErrDeviceNotFound, nil)
	}
	return activities.WaitForReportedResult{Value: "2026-12-07T12:00:00Z", Polls: 2}, nil
}

// page answers the query's pages: the token is the number of the next page.
func (s *shardSim) page(_ context.Context, in activities.QueryDevicesPageInput) (activities.QueryDevicesPageResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries = append(s.queries, in)
	n := 0
	if in.Token != "" {
		n, _ = strconv.Atoi(in.Token)
	}
	res := activities.QueryDevicesPageResult{Devices: s.pages[n], Rows: len(s.pages[n])}
	if n+1 < len(s.pages) {
		res.Next = strconv.Itoa(n + 1)
	}
	return res, nil
}

func (s *shardSim) startedDevices() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for _, st := range s.starts {
		ids = append(ids, st.device)
	}
	slices.Sort(ids)
	return ids
}

func (s *shardSim) startedAt(id string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var at time.Time
	for _, st := range s.starts {
		if st.device == id {
			at = st.at
		}
	}
	return at
}

func newShardEnv(t *testing.T, sim *shardSim) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	sim.install(t, env)
	return env
}

// shardedReport reads a sharded rollout's report as starter does: the shards, then each one's rows.
func shardedReport(t *testing.T, env *testsuite.TestWorkflowEnvironment) []workflows.DeviceRow {
	t.Helper()
	v, err := env.QueryWorkflow(workflows.QueryShards, workflows.ShardsRequest{})
	require.NoError(t, err)
	var shards workflows.ShardsPage
	require.NoError(t, v.Get(&shards))
	var rows []workflows.DeviceRow
	for _, ref := range shards.Shards {
		require.Equal(t, len(rows), ref.Offset)
		for offset := 0; ; {
			v, err := env.QueryWorkflowByID(ref.WorkflowID, workflows.QueryReport, workflows.ReportRequest{Offset: offset, Limit: 7})
			require.NoError(t, err)
			var page workflows.ReportPage
			require.NoError(t, v.Get(&page))
			rows = append(rows, page.Rows...)
			if page.Next == 0 {
				break
			}
			offset = page.Next
		}
	}
	require.Len(t, rows, shards.Total)
	return rows
}

func TestShardedRolloutRunsWavesInOrder(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(12)
	in.Canary, in.Growth, in.MaxConcurrent, in.Rate = 2, 2, 3, 50
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 12, p.Total)
	assert.Equal(t, 12, p.Succeeded)
	assert.Zero(t, p.Failed+p.Pending+p.Running+p.NotStarted)
	assert.Equal(t, 3, p.Waves, "waves of 2, 4, 6")
	assert.Equal(t, 12*8, p.HubCalls, "per device: the read, the call, six polls")
	assert.Equal(t, 3, sim.peak, "at most max-concurrent devices in flight")

	assert.Equal(t, devices(12), sim.startedDevices())
	assert.Equal(t, start, sim.startedAt("dev-001"))
	assert.Equal(t, start.Add(10*time.Second), sim.startedAt("dev-002"), "wave 2 waits for the canary")
	assert.Equal(t, start.Add(10*time.Second), sim.startedAt("dev-004"))
	assert.Equal(t, start.Add(20*time.Second), sim.startedAt("dev-005"), "at most 3 in flight")
	assert.Equal(t, start.Add(30*time.Second), sim.startedAt("dev-006"), "wave 3 waits for wave 2")

	for _, c := range sim.calls {
		assert.Equal(t, workflows.RolloutUpdateID(rolloutName, 1), c.requestID)
		require.NotNil(t, c.rate)
		assert.Equal(t, activities.HubRate{Key: workflows.RolloutWorkflowID(rolloutName), PerSecond: 50}, *c.rate, "one ceiling for the whole rollout")
	}
	assert.Contains(t, sim.ids, "dev-003/firmwareUpdate", "the device names its activities")
	assert.Contains(t, sim.ids, "dev-003/stages")

	rows := shardedReport(t, env)
	require.Len(t, rows, 12)
	assert.Equal(t, "dev-000", rows[0].DeviceID)
	assert.Equal(t, workflows.DeviceUpdated, rows[11].Result)
	assert.Equal(t, "1.0.0", rows[11].FromVersion)
	assert.Equal(t, []string{"downloading", "applying", "completed"}, rows[11].Stages)
	assert.Equal(t, 10*time.Second, rows[11].Duration)
	assert.Equal(t, 8, rows[11].HubCalls)
	assert.Equal(t, 2, rows[11].Wave)
}

// The failed device's row keeps the hub calls made and the stages seen before the failure.
func TestShardedRolloutCanaryFailureAbortsBeforeWave2(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-000"] = 1
	env := newShardEnv(t, sim)
	in := rolloutInput(20)
	in.Canary, in.MaxFailures = 1, "5%"
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, workflows.RolloutAborted, p.State)
	assert.Contains(t, p.Reason, "wave 1")
	assert.Equal(t, 1, p.Failed)
	assert.Equal(t, 19, p.NotStarted)
	assert.Equal(t, []string{"dev-000"}, sim.startedDevices(), "nothing after the canary")

	rows := shardedReport(t, env)
	assert.Equal(t, workflows.DeviceFailed, rows[0].Result)
	assert.Equal(t, activities.ErrDeviceError, rows[0].ErrorType)
	assert.Contains(t, rows[0].Error, "flash write failed")
	assert.Equal(t, []string{"downloading", "applying"}, rows[0].Stages)
	assert.Equal(t, 2+4, rows[0].HubCalls, "the read and the call, and four polls")
	assert.Equal(t, 6, p.HubCalls)
	assert.Equal(t, workflows.DeviceNotStarted, rows[1].Result)
}

func TestShardedRolloutThresholds(t *testing.T) {
	for _, tc := range thresholdCases {
		t.Run(tc.name, func(t *testing.T) {
			sim := newShardSim()
			for _, id := range tc.fail {
				sim.fail[id] = 1
				if tc.fast {
					sim.duration[id] = time.Second
				}
			}
			env := newShardEnv(t, sim)
			in := rolloutInput(40)
			in.Canary, in.Growth, in.MaxConcurrent = 4, 2, 40
			in.MaxFailures, in.MinDevices = tc.maxFailures, tc.minDevices
			env.ExecuteWorkflow(workflows.Rollout, in)
			checkThresholdOutcome(t, env, tc)
		})
	}
}

func TestShardedRolloutPauseHoldsStartsAndResumeContinues(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(6)
	in.Canary, in.Growth, in.MaxConcurrent = 6, 1, 2

	var paused, afterPause workflows.RolloutProgress
	var early, pause, resume *updateOutcome
	env.RegisterDelayedCallback(func() { early = sendUpdate(t, env, workflows.UpdateResume, "") }, 2*time.Second)
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "maintenance window") }, 5*time.Second)
	env.RegisterDelayedCallback(func() { paused = rolloutProgress(t, env) }, 7*time.Second)
	env.RegisterDelayedCallback(func() { afterPause = rolloutProgress(t, env) }, 50*time.Second)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(t, env, workflows.UpdateResume, "") }, 60*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.Error(t, early.rejected, "a running rollout refuses resume")
	require.NoError(t, pause.rejected)
	assert.Equal(t, workflows.RolloutPaused, pause.result.State)
	assert.Equal(t, workflows.RolloutPaused, paused.State)
	assert.Equal(t, 2, paused.Running, "in-flight devices go on")
	assert.Equal(t, 2, afterPause.Succeeded, "the two in flight finished")
	assert.Zero(t, afterPause.Running, "no device started while paused")
	require.NoError(t, resume.rejected)

	assert.Equal(t, start.Add(60*time.Second), sim.startedAt("dev-002"), "the third device starts at the resume")
	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, 6, p.Succeeded)
	assert.Equal(t, start.Add(80*time.Second), p.Finished)
	assert.Equal(t, 25*time.Second, p.Active)
}

// A paused rollout whose devices in flight cross the threshold aborts: it neither stays paused
// nor refuses resume and cancel forever as "aborting" (as rollouts begun before shards did).
func TestShardedRolloutPausedCrossingThresholdAborts(t *testing.T) {
	sim := newShardSim()
	for _, id := range devices(3) {
		sim.fail[id] = 1
	}
	env := newShardEnv(t, sim)
	in := rolloutInput(10)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 10, 1, 3, "2"
	var pause *updateOutcome
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "") }, 5*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, pause.rejected)
	p := abortedProgress(t, env.GetWorkflowError())
	assert.Equal(t, workflows.RolloutAborted, p.State)
	assert.Equal(t, 3, p.Failed)
	assert.Equal(t, 7, p.NotStarted)
	assert.Equal(t, start.Add(10*time.Second), p.Finished, "aborted when the third failed, though paused")
}

func TestShardedRolloutCancelCancelsInFlightAndLeavesTheRestUntouched(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(10)
	in.Canary, in.Growth, in.MaxConcurrent = 10, 1, 3

	var cancel, pauseAfter *updateOutcome
	env.RegisterDelayedCallback(func() {
		cancel = sendUpdate(t, env, workflows.UpdateCancel, "wrong image")
		pauseAfter = sendUpdate(t, env, workflows.UpdatePause, "")
	}, 15*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.NoError(t, cancel.rejected)
	require.Error(t, pauseAfter.rejected)
	assert.Contains(t, pauseAfter.rejected.Error(), "being cancelled")

	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, "wrong image", p.Reason)
	assert.Equal(t, 3, p.Succeeded, "the first three finished at 10 s")
	assert.Equal(t, 3, p.Cancelled, "the next three were in flight")
	assert.Equal(t, 4, p.NotStarted)
	assert.Len(t, sim.starts, 6)
	rows := shardedReport(t, env)
	assert.Equal(t, workflows.DeviceCancelled, rows[3].Result)
	assert.Equal(t, workflows.DeviceNotStarted, rows[9].Result)
}

func TestShardedRolloutWorkflowCancellationEndsCancelled(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(4)
	in.Canary, in.Growth, in.MaxConcurrent = 4, 1, 2
	env.RegisterDelayedCallback(env.CancelWorkflow, 5*time.Second)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	var canceled *temporal.CanceledError
	require.ErrorAs(t, env.GetWorkflowError(), &canceled)
	var p workflows.RolloutProgress
	require.NoError(t, canceled.Details(&p))
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, 2, p.Cancelled)
	assert.Equal(t, 2, p.NotStarted)
}

// The targets are read a page at a time, as the waves need them; each page in device-ID order
// without repeats; devices already on the version are skipped without a call.
func TestShardedRolloutReadsTheQueryPageByPage(t *testing.T) {
	sim := newShardSim()
	sim.pages = [][]activities.QueriedDevice{
		{
			{DeviceID: "b", Reported: map[string]any{"firmwareVersion": "1.0.0"}},
			{DeviceID: "a", Reported: map[string]any{"firmwareVersion": fwVersion}},
			{DeviceID: "c"},
			{DeviceID: "b", Reported: map[string]any{"firmwareVersion": "1.0.0"}},
		},
		{{DeviceID: "d"}, {DeviceID: "e"}},
	}
	sim.onVer["c"] = true // updated between resolution and its turn
	env := newShardEnv(t, sim)
	const query = "SELECT * FROM devices WHERE tags.ring = 'beta'"
	in := rolloutInput(0)
	in.Devices, in.Query, in.Rate, in.Canary = nil, query, 10, 1
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.Len(t, sim.queries, 2)
	assert.Equal(t, query, sim.queries[0].Query)
	assert.Empty(t, sim.queries[0].Token)
	assert.Equal(t, "1", sim.queries[1].Token, "the second page from the first's continuation token")
	assert.Equal(t, []string{"firmwareVersion"}, sim.queries[0].Properties)
	require.NotNil(t, sim.queries[0].Rate)

	assert.Equal(t, []string{"b", "c", "d", "e"}, sim.startedDevices(), "a, already on the version, is never called")
	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, 5, p.Total, "the repeat removed")
	assert.Equal(t, 3, p.Succeeded)
	assert.Equal(t, 2, p.Skipped)
	rows := shardedReport(t, env)
	assert.Equal(t, workflows.DeviceSkipped, rows[0].Result)
	assert.Equal(t, -1, rows[0].Wave)
	assert.Contains(t, rows[0].Note, "already on "+fwVersion)
	assert.Equal(t, workflows.DeviceSkipped, rows[2].Result)
	assert.Equal(t, "e", rows[4].DeviceID)
}

// A cancel while a page of targets is being read ends the rollout at once: the read (here held
// up for 20 minutes, as a throttled hub can) is not waited for.
func TestShardedRolloutCancelDuringResolution(t *testing.T) {
	sim := newShardSim()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.OnActivity(a.QueryDevicesPage, mock.Anything, mock.Anything).After(20*time.Minute).
		Return(activities.QueryDevicesPageResult{Devices: []activities.QueriedDevice{{DeviceID: "a"}}}, nil)
	sim.install(t, env)
	in := rolloutInput(0)
	in.Devices, in.Query = nil, "SELECT * FROM devices"
	var cancel *updateOutcome
	env.RegisterDelayedCallback(func() { cancel = sendUpdate(t, env, workflows.UpdateCancel, "wrong query") }, time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	require.NoError(t, cancel.rejected)
	assert.Equal(t, workflows.RolloutCancelled, p.State)
	assert.Equal(t, start.Add(time.Minute), p.Finished)
	assert.Contains(t, p.Reason, "wrong query")
	assert.Empty(t, sim.calls)
}

func TestShardedRolloutQueryFailureFailsTheRollout(t *testing.T) {
	sim := newShardSim()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.OnActivity(a.QueryDevicesPage, mock.Anything, mock.Anything).Return(activities.QueryDevicesPageResult{},
		temporal.NewNonRetryableApplicationError("query devices: line 1, column 38: expected a value", activities.ErrBadRequest, nil))
	sim.install(t, env)
	in := rolloutInput(0)
	in.Devices, in.Query = nil, "SELECT * FROM devices WHERE tags.ring ="
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	err := env.GetWorkflowError()
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	assert.Equal(t, activities.ErrBadRequest, appErr.Type())
	assert.Contains(t, err.Error(), "column 38")
	assert.Empty(t, sim.calls)
}

func TestShardedRolloutRetriesFailedDevicesOnce(t *testing.T) {
	sim := newShardSim()
	sim.fail["dev-001"] = 1 // fails once, then succeeds
	sim.fail["dev-003"] = 2 // fails both times
	env := newShardEnv(t, sim)
	in := rolloutInput(5)
	in.Canary, in.Growth, in.MaxFailures, in.RetryFailed = 5, 1, "50%", true
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, 4, p.Succeeded)
	assert.Equal(t, 1, p.Failed)
	assert.Equal(t, 2, p.Waves, "the retry is one more wave")
	assert.Equal(t, 2, sim.attempts["dev-001"])
	assert.Equal(t, 2, sim.attempts["dev-003"])
	assert.Equal(t, 1, sim.attempts["dev-000"])
	last := sim.calls[len(sim.calls)-1]
	assert.Equal(t, workflows.RolloutUpdateID(rolloutName, 2), last.requestID, "a retry is a new update for the device")
	assert.Contains(t, sim.ids, "dev-001/firmwareUpdate#2")
	rows := shardedReport(t, env)
	assert.Equal(t, 2, rows[1].Attempts)
	assert.Equal(t, workflows.DeviceUpdated, rows[1].Result)
	assert.Equal(t, workflows.DeviceFailed, rows[3].Result)
}

func TestShardedRolloutRebootsDevices(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := workflows.RolloutInput{
		Name: rolloutName, Operation: workflows.OperationReboot, Devices: devices(3),
		Reboot: &workflows.RolloutReboot{Deadline: 10 * time.Minute}, Canary: 3,
	}
	env.ExecuteWorkflow(workflows.Rollout, in)
	p := completed(t, env)
	assert.Equal(t, 3, p.Succeeded)
	assert.Equal(t, 3*(2+2), p.HubCalls, "the read, the call and two polls each")
	require.Len(t, sim.calls, 3)
	assert.Equal(t, workflows.RebootMethod, sim.calls[0].method)
	assert.Equal(t, "rollout:"+rolloutName, sim.calls[0].requestID)
	assert.Nil(t, sim.calls[0].rate, "no rate, no ceiling")
	assert.Contains(t, sim.ids, "dev-002/rebootDevice")
	assert.Contains(t, sim.ids, "dev-002/rebootTime")
	assert.Equal(t, workflows.DeviceRebooted, shardedReport(t, env)[2].Result)
}

// A shard cancelled from outside its rollout (the UI's Cancel on the shard workflow) fails its
// devices in flight, which the threshold counts and the retry of failed devices runs again; the
// shard goes on serving its rollout.
func TestShardCancelledFromOutsideFailsItsDevicesInFlight(t *testing.T) {
	sim := newShardSim()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	sim.install(t, env)
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: workflows.RolloutShardWorkflowID(rolloutName, 0), TaskQueue: workflows.TaskQueue})
	parent := workflows.RolloutWorkflowID(rolloutName)
	var tallies []workflows.ShardTally
	env.OnSignalExternalWorkflow(mock.Anything, parent, "", workflows.SignalShardTally, mock.Anything).Return(
		func(_, _, _, _ string, arg any) error {
			tallies = append(tallies, arg.(workflows.ShardTally))
			return nil
		})
	in := workflows.ShardInput{
		Rollout: rolloutName, Parent: parent, Operation: workflows.OperationFirmware, RetryFailed: true,
		Firmware: &workflows.RolloutFirmware{PackageURI: fwURI, Version: fwVersion},
	}
	for _, id := range devices(4) {
		in.Devices = append(in.Devices, workflows.ShardDevice{ID: id})
	}
	command := func(at time.Duration, c workflows.ShardCommand) {
		env.RegisterDelayedCallback(func() { env.SignalWorkflow(workflows.SignalShardCommand, c) }, at)
	}
	command(0, workflows.ShardCommand{Seq: 1, Quota: 4, Concurrency: 2})
	env.RegisterDelayedCallback(env.CancelWorkflow, 5*time.Second)
	// The rollout, told of two failures, retries them.
	command(time.Minute, workflows.ShardCommand{Seq: 2, Quota: 4, Retry: 2, Wave: 1, Concurrency: 2})
	env.ExecuteWorkflow(workflows.RolloutShard, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var last workflows.ShardTally
	require.NoError(t, env.GetWorkflowResult(&last))
	assert.True(t, last.Closed)
	assert.Equal(t, 4, last.Succeeded, "two at once, two after their retry")
	assert.Zero(t, last.Failed+last.Cancelled)
	assert.Equal(t, 2, last.Retried)

	require.NotEmpty(t, tallies)
	var afterCancel *workflows.ShardTally
	for i := range tallies {
		if tallies[i].Failed == 2 {
			afterCancel = &tallies[i]
			break
		}
	}
	require.NotNil(t, afterCancel, "the cancelled devices were told as failed")
	assert.Equal(t, 2, afterCancel.Failed)
	assert.Equal(t, []workflows.WaveTally{{Wave: 0, Done: 2, Failed: 2}}, afterCancel.Waves, "counted in their wave")
	assert.Equal(t, 2, sim.attempts["dev-000"])
	assert.Equal(t, 1, sim.attempts["dev-002"], "started after the cancel, once")
}

// sizeRecorder is a data converter that remembers the largest payload it wrote.
type sizeRecorder struct {
	converter.DataConverter
	mu      sync.Mutex
	largest int
	what    string
}

func (r *sizeRecorder) ToPayloads(values ...any) (*commonpb.Payloads, error) {
	ps, err := r.DataConverter.ToPayloads(values...)
	if err == nil {
		r.mu.Lock()
		for i, p := range ps.GetPayloads() {
			if n := len(p.GetData()); n > r.largest {
				r.largest, r.what = n, fmt.Sprintf("%T", values[i])
			}
		}
		r.mu.Unlock()
	}
	return ps, err
}

// A rollout of 50,000 devices: no payload (inputs, results, signals, query answers) comes near
// Temporal's 256 KB warning, whatever the fleet's size, and every device runs once. Few devices
// at once keep the test environment quick (about 30 s for 100,000 activities).
func TestShardedRolloutOf50000Devices(t *testing.T) {
	const n, page = 50000, 1000
	sim := newShardSim()
	sim.instant = true
	for p := range n / page {
		var devs []activities.QueriedDevice
		for i := range page {
			devs = append(devs, activities.QueriedDevice{DeviceID: fmt.Sprintf("device-%06d", p*page+i)})
		}
		sim.pages = append(sim.pages, devs)
	}
	var s testsuite.WorkflowTestSuite
	// A line per activity would be 100,000 lines.
	s.SetLogger(log.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	env := s.NewTestWorkflowEnvironment()
	rec := &sizeRecorder{DataConverter: converter.GetDefaultDataConverter()}
	env.SetDataConverter(rec)
	env.SetTestTimeout(5 * time.Minute)
	sim.install(t, env)
	in := workflows.RolloutInput{
		Name: rolloutName, Operation: workflows.OperationReboot, Query: "SELECT * FROM devices",
		Canary: 1000, Growth: 4, MaxConcurrent: 8, DevicesPerRun: 1 << 30,
	}
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, n, p.Total)
	assert.Equal(t, n, p.Succeeded)
	assert.Equal(t, len(workflows.PlanWaves(n, 1000, 4)), p.Waves, "1,000, 4,000, 16,000 and the rest")
	assert.Len(t, sim.calls, n, "every device called once")
	assert.Len(t, sim.queries, n/page)
	t.Logf("largest payload: %d bytes (%s)", rec.largest, rec.what)
	assert.Less(t, rec.largest, 128*1024, "largest payload %s", rec.what)

	v, err := env.QueryWorkflow(workflows.QueryShards, workflows.ShardsRequest{})
	require.NoError(t, err)
	var shards workflows.ShardsPage
	require.NoError(t, v.Get(&shards))
	assert.Len(t, shards.Shards, n/workflows.ShardSize)
	assert.Equal(t, n, shards.Total)
}

// A sharded rollout over three daily windows of 20 minutes with devices of 12 minutes, as
// TestRolloutSpansThreeWindows: the close holds the shards (devices in flight finish), the opening
// lets them go on.
func TestShardedRolloutSpansThreeWindows(t *testing.T) {
	sim := newShardSim()
	for _, id := range devices(12) {
		sim.duration[id] = 12 * time.Minute
	}
	env := newShardEnv(t, sim)
	in := rolloutInput(12)
	in.Canary, in.Growth, in.MaxConcurrent = 2, 2, 3 // waves of 2, 4, 6
	in.Windows = []workflows.Window{{Cron: "0 13,16,19 * * *", Duration: 20 * time.Minute}}

	var before, afterClose workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { before = rolloutProgress(t, env) }, 30*time.Minute)
	env.RegisterDelayedCallback(func() { afterClose = rolloutProgress(t, env) }, 82*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 12, p.Succeeded)
	sim.mu.Lock()
	for _, s := range sim.starts {
		open, _, _, _ := workflows.WindowAt(in.Windows, s.at)
		assert.True(t, open, "%s started at %s, outside the windows", s.device, s.at)
	}
	sim.mu.Unlock()

	assert.Equal(t, workflows.RolloutWaiting, before.State)
	assert.Equal(t, at(0, 13, 0), before.WindowOpens)
	assert.Equal(t, workflows.RolloutWaiting, afterClose.State)
	assert.Equal(t, 3, afterClose.Running, "wave 2 in flight across the close")

	assert.Equal(t, at(0, 13, 0), sim.startedAt("dev-000"))
	assert.Equal(t, at(0, 13, 12), sim.startedAt("dev-004"))
	assert.Equal(t, at(0, 16, 0), sim.startedAt("dev-005"))
	assert.Equal(t, at(0, 16, 12), sim.startedAt("dev-006"))
	assert.Equal(t, at(0, 19, 0), sim.startedAt("dev-009"))
	assert.Equal(t, at(0, 19, 12), p.Finished)
	assert.Equal(t, 52*time.Minute, p.Active)
}

// A shard terminated outside the rollout (the UI's Terminate) sends no last tally: the rollout finds
// it ended at its next look (endCheckEvery), counts its devices in flight as failed, and ends
// instead of waiting for ever. The devices here take five hours; the shard is terminated at 30
// minutes, the look comes at one hour.
func TestShardedRolloutCountsATerminatedShardsDevicesFailed(t *testing.T) {
	sim := newShardSim()
	for _, id := range devices(4) {
		sim.duration[id] = 5 * time.Hour
	}
	env := newShardEnv(t, sim)
	in := rolloutInput(4)
	in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 4, 1, 4, "100%"
	shard := workflows.RolloutShardWorkflowID(rolloutName, 0)
	var before workflows.RolloutProgress
	env.RegisterDelayedCallback(func() {
		before = rolloutProgress(t, env)
		sim.end(shard, "Terminated")
	}, 30*time.Minute)
	env.ExecuteWorkflow(workflows.Rollout, in)

	p := completed(t, env)
	assert.Equal(t, 4, before.Running)
	assert.Equal(t, workflows.RolloutCompleted, p.State)
	assert.Equal(t, 4, p.Failed, "the devices in flight in the terminated shard")
	assert.Zero(t, p.Running+p.Pending)
	assert.Equal(t, start.Add(time.Hour), p.Finished, "found at the first look")
	assert.Contains(t, p.Reason, shard+" (Terminated)")
	sim.mu.Lock()
	assert.Equal(t, 4, len(sim.starts), "each device started once")
	sim.mu.Unlock()
}

// A rollout terminated outside dmflow leaves its shards without commands: a shard with nothing in
// flight looks every endCheckEvery whether its rollout still runs, and once it does not, marks its
// devices not started and closes. Here the rollout is paused after the canary; its ending is played
// by EndedWorkflows, and the shard closes at its first look after that.
func TestShardClosesWhenItsRolloutEnded(t *testing.T) {
	sim := newShardSim()
	env := newShardEnv(t, sim)
	in := rolloutInput(6)
	in.Canary, in.Growth, in.MaxConcurrent = 2, 2, 2
	var pause, resume *updateOutcome
	var rows []workflows.DeviceRow
	env.RegisterDelayedCallback(func() { pause = sendUpdate(t, env, workflows.UpdatePause, "") }, 5*time.Second)
	env.RegisterDelayedCallback(func() { sim.end(workflows.RolloutWorkflowID(rolloutName), "Terminated") }, 10*time.Minute)
	env.RegisterDelayedCallback(func() {
		rows = shardedReport(t, env)
		resume = sendUpdate(t, env, workflows.UpdateResume, "")
	}, 3*time.Hour)
	env.ExecuteWorkflow(workflows.Rollout, in)

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	require.NoError(t, pause.rejected)
	require.NoError(t, resume.rejected)
	require.Len(t, rows, 6)
	for _, r := range rows[:2] {
		assert.Equal(t, workflows.DeviceUpdated, r.Result, r.DeviceID)
	}
	for _, r := range rows[2:] {
		assert.Equal(t, workflows.DeviceNotStarted, r.Result, r.DeviceID)
		assert.Contains(t, r.Note, "ended (Terminated) without closing its shard", r.DeviceID)
	}
	// The rollout (still running here, as the test plays only its ending) took the shard's last
	// tally and ends with the two devices updated and the rest not started.
	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
	assert.Equal(t, 2, p.Succeeded)
	assert.Equal(t, 4, p.NotStarted)
}
