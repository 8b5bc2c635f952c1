package workflows_test

import (
	"context"
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
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
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
	pages    [][]activities.QueriedDevice
	queries  []activities.QueryDevicesPageInput
	calls    []simCall
	starts   []simStart
	ids      []string // activity IDs started
	attempts map[string]int
	running  int
	peak     int
}

type simCall struct {
	device, method, requestID string
	rate                      *activities.HubRate
}

func newShardSim() *shardSim {
	return &shardSim{duration: map[string]time.Duration{}, fail: map[string]int{}, refuse: map[string]bool{},
		onVer: map[string]bool{}, attempts: map[string]int{}}
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
	env.OnActivity(a.FollowStages, mock.Anything, mock.Anything).After(10 * time.Second).Return(s.follow)
	env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).After(10 * time.Second).Return(s.wait)
	env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(s.invoke)
	env.OnActivity(a.QueryDevicesPage, mock.Anything, mock.Anything).Return(s.page)
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
	s.calls = append(s.calls, simCall{device: in.DeviceID, method: in.Method, requestID: id, rate: in.Rate})
	s.attempts[in.DeviceID]++
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

	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var p workflows.RolloutProgress
	require.NoError(t, env.GetWorkflowResult(&p))
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
