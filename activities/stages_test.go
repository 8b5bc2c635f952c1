package activities

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/sdk/converter"
)

// fastFollow is a FollowStagesInput for update u1 with intervals short enough for tests.
func fastFollow(mod func(*FollowStagesInput)) FollowStagesInput {
	in := FollowStagesInput{
		DeviceID:        "dev1",
		UpdateID:        "u1",
		Since:           time.Now(),
		StageTimeout:    time.Minute,
		Deadline:        time.Now().Add(time.Minute),
		InitialInterval: time.Millisecond,
		MaxInterval:     2 * time.Millisecond,
	}
	if mod != nil {
		mod(&in)
	}
	return in
}

func follow(t *testing.T, a *Activities, in FollowStagesInput) (FollowStagesResult, *heartbeatRecorder, error) {
	t.Helper()
	env, rec := newEnv(t, a)
	val, err := env.ExecuteActivity((&Activities{}).FollowStages, in)
	var res FollowStagesResult
	if err == nil {
		require.NoError(t, val.Get(&res))
	}
	return res, rec, err
}

// fwTwin is a firmware device's reported properties: status for update id, plus extra properties.
func fwTwin(version int, status, id string, extra map[string]any) *iotservice.Twin {
	props := map[string]any{"firmwareStatus": status, "firmwareVersion": "1.0.0"}
	if id != "" {
		props["firmwareUpdateId"] = id
	}
	for k, v := range extra {
		props[k] = v
	}
	return reportedTwin(version, props)
}

// Timestamps the tutorial's device reports with each stage, by its own clock.
var (
	tDownload = "2026-05-01T12:00:15Z"
	tApply    = "2026-05-01T12:00:30Z"
	tComplete = "2026-05-01T12:00:45.5Z"
)

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestFollowStagesTutorial(t *testing.T) {
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		switch n {
		case 1: // the previous update's completed status must not count
			return fwTwin(n, "completed", "u0", map[string]any{"lastFirmwareUpdate": "2026-04-01T00:00:00Z"}), nil
		case 2, 3:
			return fwTwin(n, "downloading", "u1", map[string]any{"downloadComplete": tDownload, "lastFirmwareUpdate": "2026-04-01T00:00:00Z"}), nil
		case 4:
			return fwTwin(n, "applying", "u1", map[string]any{"downloadComplete": tDownload, "startedApplyingImage": tApply}), nil
		default:
			return fwTwin(n, "completed", "u1", map[string]any{"downloadComplete": tDownload, "startedApplyingImage": tApply, "lastFirmwareUpdate": tComplete}), nil
		}
	}}
	begin := time.Now()
	res, rec, err := follow(t, &Activities{Hub: hub}, fastFollow(nil))
	require.NoError(t, err)

	assert.Equal(t, 5, res.Polls)
	assert.Equal(t, 5, hub.readCount())
	require.Len(t, res.Stages, 3)
	for i, want := range []struct {
		status   string
		reported string
	}{{"downloading", tDownload}, {"applying", tApply}, {"completed", tComplete}} {
		s := res.Stages[i]
		assert.Equal(t, want.status, s.Status)
		assert.True(t, s.ReportedAt.Equal(mustTime(want.reported)), "%s reported at %s", s.Status, s.ReportedAt)
		assert.True(t, !s.SeenAt.Before(begin) && !s.SeenAt.After(time.Now()), "%s seen at %s", s.Status, s.SeenAt)
	}
	assert.True(t, res.Stages[0].SeenAt.Before(res.Stages[1].SeenAt))

	// A heartbeat per read, carrying the stages seen so far and the last status.
	beats := rec.recorded()
	require.Len(t, beats, 5)
	var stages []int
	for _, d := range beats {
		require.Len(t, d, 1)
		p, ok := d[0].(FollowStagesProgress)
		require.True(t, ok, "details are a FollowStagesProgress, got %T", d[0])
		stages = append(stages, len(p.Stages))
	}
	assert.Equal(t, []int{0, 1, 1, 2, 3}, stages)
	first := beats[0][0].(FollowStagesProgress)
	assert.Equal(t, FollowStagesProgress{Polls: 1, LastStatus: "completed", LastUpdateID: "u0"}, first)
}

func TestFollowStagesMissedStages(t *testing.T) {
	// A fast device: standBy at the first read, completed at the second. The stages it went through
	// in between are recorded with their reported times.
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		if n == 1 {
			return fwTwin(n, "standBy", "", nil), nil
		}
		return fwTwin(n, "completed", "u1", map[string]any{"downloadComplete": tDownload, "startedApplyingImage": tApply, "lastFirmwareUpdate": tComplete}), nil
	}}
	res, _, err := follow(t, &Activities{Hub: hub}, fastFollow(nil))
	require.NoError(t, err)
	require.Len(t, res.Stages, 3)
	assert.Equal(t, []string{"downloading", "applying", "completed"}, statuses(res.Stages))
	assert.True(t, res.Stages[0].SeenAt.Equal(res.Stages[2].SeenAt), "seen at the same read")
	assert.True(t, res.Stages[1].ReportedAt.Equal(mustTime(tApply)))
	assert.Equal(t, 2, res.Polls)
}

func statuses(stages []StageSeen) []string {
	var out []string
	for _, s := range stages {
		out = append(out, s.Status)
	}
	return out
}

func TestFollowStagesOnlyThisUpdateCounts(t *testing.T) {
	// The device keeps reporting an earlier update as completed (it never got ours, or does not
	// report update IDs): no stage is seen, and the first stage times out.
	for _, tc := range []struct {
		name, id, wantLast string
	}{
		{"earlier update", "u0", `firmwareStatus "completed" for update "u0"`},
		{"no update ID", "", `firmwareStatus "completed" for update none`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
				return fwTwin(n, "completed", tc.id, nil), nil
			}}
			since := time.Now()
			_, _, err := follow(t, &Activities{Hub: hub}, fastFollow(func(in *FollowStagesInput) {
				in.Since = since
				in.StageTimeout = 30 * time.Millisecond
			}))
			appErr := requireNonRetryable(t, err, ErrStageTimeout)
			assert.False(t, time.Now().Before(since.Add(30*time.Millisecond)), "not before the stage timeout")
			assert.Contains(t, err.Error(), "firmware update u1 on dev1 stuck before downloading: the device reported no downloading within 30ms")
			assert.Contains(t, err.Error(), tc.wantLast)
			var p FollowStagesProgress
			require.NoError(t, appErr.Details(&p))
			assert.Empty(t, p.Stages)
			assert.Equal(t, tc.id, p.LastUpdateID)
		})
	}
}

func TestFollowStagesStuckInDownloading(t *testing.T) {
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		return fwTwin(n, "downloading", "u1", map[string]any{"downloadComplete": tDownload}), nil
	}}
	begin := time.Now()
	_, _, err := follow(t, &Activities{Hub: hub}, fastFollow(func(in *FollowStagesInput) {
		in.StageTimeout = 50 * time.Millisecond
	}))
	appErr := requireNonRetryable(t, err, ErrStageTimeout)
	assert.Contains(t, err.Error(), "firmware update u1 on dev1 stuck in downloading: no applying within 50ms of downloading being seen")
	var p FollowStagesProgress
	require.NoError(t, appErr.Details(&p))
	require.Len(t, p.Stages, 1)
	assert.Equal(t, "downloading", p.Stage())
	assert.False(t, time.Now().Before(p.Stages[0].SeenAt.Add(50*time.Millisecond)), "the timeout counts from the stage being seen")
	assert.Less(t, time.Since(begin), 5*time.Second)
	assert.Equal(t, hub.readCount(), p.Polls)
}

func TestFollowStagesDeviceError(t *testing.T) {
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		switch n {
		case 1: // an earlier update's failure does not count
			return fwTwin(n, "error", "u0", map[string]any{"firmwareError": "old failure", "firmwareErrorStage": "applying"}), nil
		case 2:
			return fwTwin(n, "downloading", "u1", nil), nil
		}
		return fwTwin(n, "error", "u1", map[string]any{"firmwareError": "checksum mismatch", "firmwareErrorStage": "downloading"}), nil
	}}
	_, _, err := follow(t, &Activities{Hub: hub}, fastFollow(nil))
	appErr := requireNonRetryable(t, err, ErrDeviceError)
	assert.Contains(t, err.Error(), "firmware update u1 on dev1 failed in stage downloading: the device reports: checksum mismatch")
	assert.NotContains(t, err.Error(), "old failure")
	var p FollowStagesProgress
	require.NoError(t, appErr.Details(&p))
	assert.Equal(t, 3, p.Polls)
	assert.Equal(t, []string{"downloading"}, statuses(p.Stages))

	// Without reason and stage, the last stage seen stands in.
	hub = &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		if n == 1 {
			return fwTwin(n, "applying", "u1", nil), nil
		}
		return fwTwin(n, "error", "u1", nil), nil
	}}
	_, _, err = follow(t, &Activities{Hub: hub}, fastFollow(nil))
	requireNonRetryable(t, err, ErrDeviceError)
	assert.Contains(t, err.Error(), "failed in stage applying: the device reports: no reason given")
}

func TestFollowStagesDeadline(t *testing.T) {
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		return fwTwin(n, "standBy", "", nil), nil
	}}
	deadline := time.Now().Add(30 * time.Millisecond)
	_, _, err := follow(t, &Activities{Hub: hub}, fastFollow(func(in *FollowStagesInput) {
		in.Deadline = deadline
	}))
	appErr := requireNonRetryable(t, err, ErrDeadlineExceeded)
	assert.False(t, time.Now().Before(deadline))
	assert.Contains(t, err.Error(), "firmware update u1 on dev1: deadline")
	assert.Contains(t, err.Error(), "passed in stage (none seen)")
	var p FollowStagesProgress
	require.NoError(t, appErr.Details(&p))
	assert.Equal(t, "standBy", p.LastStatus)
}

func TestFollowStagesResumesFromHeartbeat(t *testing.T) {
	var mu sync.Mutex
	var firstRead time.Time
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		mu.Lock()
		if n == 1 {
			firstRead = time.Now()
		}
		mu.Unlock()
		return fwTwin(n, "completed", "u1", map[string]any{"lastFirmwareUpdate": tComplete}), nil
	}}
	env, rec := newEnv(t, &Activities{Hub: hub})
	seen := time.Date(2026, 5, 1, 12, 0, 29, 0, time.UTC)
	env.SetHeartbeatDetails(FollowStagesProgress{
		Polls:        4,
		Stages:       []StageSeen{{Status: "downloading", SeenAt: seen, ReportedAt: mustTime(tDownload)}},
		LastStatus:   "downloading",
		LastUpdateID: "u1",
	})
	begin := time.Now()
	val, err := env.ExecuteActivity((&Activities{}).FollowStages, fastFollow(func(in *FollowStagesInput) {
		// Long first interval: a resumed attempt reads at once regardless.
		in.InitialInterval, in.MaxInterval = 10*time.Second, 10*time.Second
	}))
	require.NoError(t, err)
	var res FollowStagesResult
	require.NoError(t, val.Get(&res))

	assert.Equal(t, 5, res.Polls, "4 polls before the retry, 1 in this attempt")
	require.Len(t, res.Stages, 3)
	assert.True(t, res.Stages[0].SeenAt.Equal(seen), "downloading keeps the time it was first seen: %s", res.Stages[0].SeenAt)
	assert.Equal(t, "applying", res.Stages[1].Status)
	assert.Less(t, firstRead.Sub(begin), 5*time.Second)
	require.Len(t, rec.recorded(), 1)
}

// TestFollowStagesResumesAfterCompletion: the previous attempt saw "completed" and heartbeat it,
// then its worker died before the activity returned (seen in the worker-kill integration test).
// The retry returns the stages at once, without reading the twin again.
func TestFollowStagesResumesAfterCompletion(t *testing.T) {
	hub := &fakeHub{}
	env, _ := newEnv(t, &Activities{Hub: hub})
	seen := time.Date(2026, 5, 1, 12, 0, 29, 0, time.UTC)
	stages := []StageSeen{
		{Status: "downloading", SeenAt: seen, ReportedAt: mustTime(tDownload)},
		{Status: "applying", SeenAt: seen.Add(15 * time.Second)},
		{Status: "completed", SeenAt: seen.Add(30 * time.Second), ReportedAt: mustTime(tComplete)},
	}
	env.SetHeartbeatDetails(FollowStagesProgress{Polls: 10, Stages: stages, LastStatus: "completed", LastUpdateID: "u1"})
	val, err := env.ExecuteActivity((&Activities{}).FollowStages, fastFollow(func(in *FollowStagesInput) {
		// A stage timeout long past: the stages are complete, so it no longer applies.
		in.Since, in.StageTimeout = seen.Add(-time.Hour), time.Second
	}))
	require.NoError(t, err)
	var res FollowStagesResult
	require.NoError(t, val.Get(&res))
	assert.Equal(t, 10, res.Polls)
	require.Len(t, res.Stages, 3)
	assert.True(t, res.Stages[2].SeenAt.Equal(stages[2].SeenAt))
	assert.Zero(t, hub.reads, "no twin read")
}

func TestFollowStagesWaitsBeforeTheFirstRead(t *testing.T) {
	var mu sync.Mutex
	var reads []time.Time
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		mu.Lock()
		reads = append(reads, time.Now())
		mu.Unlock()
		if n < 5 {
			// A new stage at every read but the first: the backoff must go on growing anyway.
			return fwTwin(n, []string{"standBy", "downloading", "applying", "applying"}[n-1], "u1", nil), nil
		}
		return fwTwin(n, "completed", "u1", nil), nil
	}}
	begin := time.Now()
	res, _, err := follow(t, &Activities{Hub: hub}, fastFollow(func(in *FollowStagesInput) {
		in.InitialInterval, in.MaxInterval = 20*time.Millisecond, 200*time.Millisecond
	}))
	require.NoError(t, err)
	assert.Equal(t, 5, res.Polls)

	mu.Lock()
	defer mu.Unlock()
	// Jitter is ±20 %: the first read comes after at least 16 ms, the gaps after at least 0.8 × 40,
	// 80, 160 ms; a backoff reset at a stage would make a gap of about 20 ms again.
	assert.GreaterOrEqual(t, reads[0].Sub(begin), 16*time.Millisecond, "the device has just accepted the update")
	for i, want := range []time.Duration{32, 64, 128} {
		assert.GreaterOrEqual(t, reads[i+1].Sub(reads[i]), want*time.Millisecond, "gap %d", i+1)
	}
	assert.LessOrEqual(t, reads[4].Sub(reads[3]), 200*time.Millisecond+50*time.Millisecond, "capped at MaxInterval")
}

func TestFollowStagesReadErrors(t *testing.T) {
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		switch n {
		case 1:
			return nil, hubErr(429, 429001, "ThrottlingException")
		case 2:
			return nil, context.DeadlineExceeded
		}
		return fwTwin(n, "completed", "u1", nil), nil
	}}
	res, rec, err := follow(t, &Activities{Hub: hub}, fastFollow(nil))
	require.NoError(t, err)
	assert.Equal(t, 3, res.Polls, "failed reads count as polls")
	assert.Len(t, rec.recorded(), 3, "failed reads heartbeat too")

	hub = &fakeHub{twin: func(context.Context, int) (*iotservice.Twin, error) {
		return nil, hubErr(404, 404001, "DeviceNotFound")
	}}
	_, _, err = follow(t, &Activities{Hub: hub}, fastFollow(nil))
	requireNonRetryable(t, err, ErrDeviceNotFound)
	assert.Equal(t, 1, hub.readCount(), "fails at once")
}

func TestFollowStagesValidation(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*FollowStagesInput)
		want string
	}{
		{"no device", func(in *FollowStagesInput) { in.DeviceID = "" }, "device ID is empty"},
		{"no update", func(in *FollowStagesInput) { in.UpdateID = "" }, "update ID is empty"},
		{"no since", func(in *FollowStagesInput) { in.Since = time.Time{} }, "(since) is not set"},
		{"no stage timeout", func(in *FollowStagesInput) { in.StageTimeout = 0 }, "stage timeout 0s must be positive"},
		{"initial above max", func(in *FollowStagesInput) { in.InitialInterval, in.MaxInterval = time.Minute, time.Second }, "exceeds max interval"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{}
			_, _, err := follow(t, &Activities{Hub: hub}, fastFollow(tc.mod))
			requireNonRetryable(t, err, ErrBadRequest)
			assert.Contains(t, err.Error(), tc.want)
			assert.Equal(t, 0, hub.readCount())
		})
	}

	initial, maxInterval, err := FollowStagesInput{DeviceID: "d", UpdateID: "u", Since: time.Now(), StageTimeout: time.Minute}.validate()
	require.NoError(t, err)
	assert.Equal(t, 2*time.Second, initial)
	assert.Equal(t, 15*time.Second, maxInterval)
}

func TestPendingFollowStages(t *testing.T) {
	progress := FollowStagesProgress{
		Polls:  3,
		Stages: []StageSeen{{Status: "downloading", SeenAt: time.Date(2026, 5, 1, 12, 0, 29, 0, time.UTC)}},
	}
	details, err := converter.GetDefaultDataConverter().ToPayloads(progress)
	require.NoError(t, err)
	pending := func(name string, details *commonpb.Payloads) *workflowpb.PendingActivityInfo {
		return &workflowpb.PendingActivityInfo{
			ActivityId:       "4",
			ActivityType:     &commonpb.ActivityType{Name: name},
			State:            enumspb.PENDING_ACTIVITY_STATE_STARTED,
			HeartbeatDetails: details,
		}
	}

	got, ok, err := PendingFollowStages([]*workflowpb.PendingActivityInfo{pending("InvokeMethod", nil), pending("FollowStages", details)})
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, progress, got)
	assert.Equal(t, "downloading", got.Stage())

	_, ok, err = PendingFollowStages([]*workflowpb.PendingActivityInfo{pending("FollowStages", nil)})
	require.NoError(t, err)
	assert.False(t, ok, "no heartbeat yet")

	_, ok, err = PendingFollowStages(nil)
	require.NoError(t, err)
	assert.False(t, ok)

	bad, err := converter.GetDefaultDataConverter().ToPayloads("not progress")
	require.NoError(t, err)
	_, ok, err = PendingFollowStages([]*workflowpb.PendingActivityInfo{pending("FollowStages", bad)})
	assert.Error(t, err)
	assert.False(t, ok)
}

// TestFollowStagesTutorialContract follows a device built from the tutorial: no firmwareUpdateId,
// no firmwareVersion, timestamps in Python's local format. Its stages count once the hub stamped
// firmwareStatus after the read before the call; the "completed" left from an earlier update does
// not, nor does a status labelled with another update's ID.
func TestFollowStagesTutorialContract(t *testing.T) {
	const before = "2026-12-06T18:00:00.000Z"
	local := func(s string) string { return "2026-12-06 19:" + s + ".123456" }
	reads := []map[string]any{
		stamped(map[string][2]any{"firmwareStatus": {"completed", before}, "lastFirmwareUpdate": {local("00:00"), before}}),
		stamped(map[string][2]any{"firmwareStatus": {"downloading", "2026-12-06T18:00:15.010Z"}, "downloadComplete": {local("00:15"), "2026-12-06T18:00:15.010Z"}}),
		stamped(map[string][2]any{"firmwareStatus": {"completed", "2026-12-06T18:00:45.030Z"}, "downloadComplete": {local("00:15"), "x"},
			"startedApplyingImage": {local("00:30"), "x"}, "lastFirmwareUpdate": {local("00:45"), "x"}}),
	}
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		return &iotservice.Twin{Properties: &iotservice.Properties{Reported: reads[min(n, len(reads))-1]}}, nil
	}}
	res, _, err := follow(t, &Activities{Hub: hub}, fastFollow(func(in *FollowStagesInput) {
		in.ByMetadata, in.StatusBefore = true, before
	}))
	require.NoError(t, err)
	require.Len(t, res.Stages, 3)
	assert.Equal(t, []string{"downloading", "applying", "completed"}, []string{res.Stages[0].Status, res.Stages[1].Status, res.Stages[2].Status})
	assert.Equal(t, local("00:15"), res.Stages[0].Reported, "shown as the device wrote it")
	assert.True(t, res.Stages[0].ReportedAt.IsZero(), "a time without a zone is on no known clock")
	assert.Equal(t, "2026-12-06T18:00:15.010Z", res.Stages[0].UpdatedAt)
	assert.Equal(t, "2026-12-06T18:00:45.030Z", res.Stages[2].UpdatedAt)
	assert.Equal(t, 3, res.Polls)

	t.Run("stale completed and another update's status never count", func(t *testing.T) {
		hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
			r := stamped(map[string][2]any{"firmwareStatus": {"completed", before}})
			if n > 2 {
				r = stamped(map[string][2]any{"firmwareStatus": {"completed", "2026-12-06T18:00:45Z"}, "firmwareUpdateId": {"u0", "2026-12-06T18:00:45Z"}})
			}
			return &iotservice.Twin{Properties: &iotservice.Properties{Reported: r}}, nil
		}}
		_, _, err := follow(t, &Activities{Hub: hub}, fastFollow(func(in *FollowStagesInput) {
			in.ByMetadata, in.StatusBefore = true, before
			in.StageTimeout = 50 * time.Millisecond
		}))
		requireNonRetryable(t, err, ErrStageTimeout)
	})
}
