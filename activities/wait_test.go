package activities

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
)

// fastWait is a WaitForReportedInput with backoff intervals short enough for tests.
func fastWait(in WaitForReportedInput) WaitForReportedInput {
	in.DeviceID = "dev1"
	in.InitialInterval = time.Millisecond
	in.MaxInterval = 2 * time.Millisecond
	return in
}

func waitResult(t *testing.T, a *Activities, in WaitForReportedInput) (WaitForReportedResult, *heartbeatRecorder, error) {
	t.Helper()
	env, rec := newEnv(t, a)
	val, err := env.ExecuteActivity((&Activities{}).WaitForReported, in)
	var res WaitForReportedResult
	if err == nil {
		require.NoError(t, val.Get(&res))
	}
	return res, rec, err
}

func TestWaitForReportedAfterPolls(t *testing.T) {
	started := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		switch n {
		case 1, 2: // rebooting: nothing reported yet
			return reportedTwin(n, nil), nil
		case 3: // a reboot from before this one
			return reportedTwin(3, map[string]any{"rebootTime": started.Add(-time.Hour).Format(time.RFC3339)}), nil
		default:
			return reportedTwin(4, map[string]any{"rebootTime": "2026-05-01T12:00:21.5Z"}), nil
		}
	}}
	res, rec, err := waitResult(t, &Activities{Hub: hub}, fastWait(WaitForReportedInput{
		Property: "rebootTime",
		After:    started,
		Deadline: time.Now().Add(time.Minute),
	}))
	require.NoError(t, err)

	assert.Equal(t, "2026-05-01T12:00:21.5Z", res.Value)
	assert.Equal(t, 4, res.Version)
	assert.Equal(t, 4, res.Polls)
	assert.WithinDuration(t, time.Now(), res.SeenAt, 5*time.Second)
	assert.Equal(t, 4, hub.readCount())

	// One heartbeat per poll, carrying the progress so far.
	var polls []int
	for _, d := range rec.recorded() {
		require.Len(t, d, 1)
		p, ok := d[0].(WaitForReportedProgress)
		require.True(t, ok, "details are a WaitForReportedProgress, got %T", d[0])
		polls = append(polls, p.Polls)
	}
	assert.Equal(t, []int{1, 2, 3, 4}, polls)
}

func TestWaitForReportedOneOfNested(t *testing.T) {
	stages := []string{"standBy", "downloading", "applying", "completed"}
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		stage := stages[min(n, len(stages))-1]
		return reportedTwin(n, map[string]any{"firmware": map[string]any{"status": stage}}), nil
	}}
	res, _, err := waitResult(t, &Activities{Hub: hub}, fastWait(WaitForReportedInput{
		Property: "firmware.status",
		OneOf:    []string{"completed", "failed"},
	}))
	require.NoError(t, err)
	assert.Equal(t, "completed", res.Value)
	assert.Equal(t, 4, res.Polls)
}

func TestWaitForReportedPresence(t *testing.T) {
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		if n < 2 {
			return reportedTwin(1, map[string]any{"other": 1.0}), nil
		}
		return reportedTwin(2, map[string]any{"rebootTime": "whatever the device wrote"}), nil
	}}
	res, _, err := waitResult(t, &Activities{Hub: hub}, fastWait(WaitForReportedInput{Property: "rebootTime"}))
	require.NoError(t, err)
	assert.Equal(t, "whatever the device wrote", res.Value)
	assert.Equal(t, 2, res.Polls)
}

func TestWaitForReportedDeadline(t *testing.T) {
	tests := []struct {
		name     string
		reported map[string]any
		wantLast string
	}{
		{name: "never reported", reported: nil, wantLast: "none (property not reported)"},
		// After on values that are not times: they never satisfy it, the wait ends at the deadline.
		{name: "not a time", reported: map[string]any{"rebootTime": "soon"}, wantLast: `"soon"`},
		{name: "a number", reported: map[string]any{"rebootTime": 42.0}, wantLast: "42"},
		{name: "stale time", reported: map[string]any{"rebootTime": "2020-01-01T00:00:00Z"}, wantLast: `"2020-01-01T00:00:00Z"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
				return reportedTwin(7, tc.reported), nil
			}}
			deadline := time.Now().Add(30 * time.Millisecond)
			_, _, err := waitResult(t, &Activities{Hub: hub}, fastWait(WaitForReportedInput{
				Property: "rebootTime",
				After:    time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC),
				Deadline: deadline,
			}))
			require.Error(t, err)
			assert.False(t, time.Now().Before(deadline), "waited until the deadline")

			var appErr *temporal.ApplicationError
			require.True(t, errors.As(err, &appErr), "%v", err)
			assert.Equal(t, ErrDeadlineExceeded, appErr.Type())
			assert.True(t, appErr.NonRetryable())
			for _, s := range []string{"dev1", "rebootTime", "last value seen: " + tc.wantLast} {
				assert.Contains(t, err.Error(), s)
			}

			var p WaitForReportedProgress
			require.NoError(t, appErr.Details(&p))
			assert.Equal(t, hub.readCount(), p.Polls)
			assert.GreaterOrEqual(t, p.Polls, 2)
			assert.Equal(t, 7, p.LastVersion)
		})
	}
}

func TestWaitForReportedDeadlinePassedStillPollsOnce(t *testing.T) {
	// A retry scheduled after the deadline (the worker died just before it) still looks once: the
	// device may have reported in the meantime.
	hub := &fakeHub{twin: func(context.Context, int) (*iotservice.Twin, error) {
		return reportedTwin(2, map[string]any{"rebootTime": "2026-05-01T12:00:21Z"}), nil
	}}
	res, _, err := waitResult(t, &Activities{Hub: hub}, fastWait(WaitForReportedInput{
		Property: "rebootTime",
		After:    time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC),
		Deadline: time.Now().Add(-time.Minute),
	}))
	require.NoError(t, err)
	assert.Equal(t, 1, res.Polls)
}

func TestWaitForReportedResumesFromHeartbeat(t *testing.T) {
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		if n < 2 {
			return reportedTwin(3, nil), nil
		}
		return reportedTwin(4, map[string]any{"rebootTime": "2026-05-01T12:00:21Z"}), nil
	}}
	env, rec := newEnv(t, &Activities{Hub: hub})
	// What the previous attempt recorded before its worker died.
	env.SetHeartbeatDetails(WaitForReportedProgress{Polls: 7, LastValue: nil, LastVersion: 3})

	val, err := env.ExecuteActivity((&Activities{}).WaitForReported, fastWait(WaitForReportedInput{
		Property: "rebootTime",
		After:    time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC),
		Deadline: time.Now().Add(time.Minute),
	}))
	require.NoError(t, err)
	var res WaitForReportedResult
	require.NoError(t, val.Get(&res))
	assert.Equal(t, 9, res.Polls, "7 polls before the retry, 2 in this attempt")
	assert.Equal(t, 2, hub.readCount())

	beats := rec.recorded()
	require.Len(t, beats, 2)
	assert.Equal(t, WaitForReportedProgress{Polls: 8, LastVersion: 3}, beats[0][0])
}

func TestWaitForReportedTransientReadErrors(t *testing.T) {
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		switch n {
		case 1:
			return nil, hubErr(429, 429001, "ThrottlingException")
		case 2:
			return nil, hubErr(503, 503001, "ServiceUnavailable")
		case 3:
			return nil, context.DeadlineExceeded // the per-read timeout
		}
		return reportedTwin(5, map[string]any{"rebootTime": "2026-05-01T12:00:21Z"}), nil
	}}
	res, rec, err := waitResult(t, &Activities{Hub: hub}, fastWait(WaitForReportedInput{
		Property: "rebootTime",
		Deadline: time.Now().Add(time.Minute),
	}))
	require.NoError(t, err)
	assert.Equal(t, 4, res.Polls, "failed reads count as polls")
	assert.Len(t, rec.recorded(), 4, "failed reads heartbeat too")
}

func TestWaitForReportedNonRetryableReadError(t *testing.T) {
	hub := &fakeHub{twin: func(context.Context, int) (*iotservice.Twin, error) {
		return nil, hubErr(404, 404001, "DeviceNotFound")
	}}
	_, _, err := waitResult(t, &Activities{Hub: hub}, fastWait(WaitForReportedInput{
		Property: "rebootTime",
		Deadline: time.Now().Add(time.Minute),
	}))
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr), "%v", err)
	assert.Equal(t, ErrDeviceNotFound, appErr.Type())
	assert.True(t, appErr.NonRetryable())
	assert.Contains(t, err.Error(), "read twin on dev1")
	assert.Equal(t, 1, hub.readCount(), "fails at once")
}

func TestWaitForReportedValidation(t *testing.T) {
	tests := []struct {
		name string
		in   WaitForReportedInput
		want string
	}{
		{name: "no device", in: WaitForReportedInput{Property: "rebootTime"}, want: "device ID is empty"},
		{name: "no property", in: WaitForReportedInput{DeviceID: "dev1"}, want: "property path"},
		{name: "empty path segment", in: WaitForReportedInput{DeviceID: "dev1", Property: "firmware..status"}, want: "property path"},
		{name: "negative interval", in: WaitForReportedInput{DeviceID: "dev1", Property: "p", InitialInterval: -time.Second}, want: "negative"},
		{name: "initial above max", in: WaitForReportedInput{DeviceID: "dev1", Property: "p", InitialInterval: 20 * time.Second, MaxInterval: 10 * time.Second}, want: "exceeds max interval"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{}
			_, _, err := waitResult(t, &Activities{Hub: hub}, tc.in)
			var appErr *temporal.ApplicationError
			require.True(t, errors.As(err, &appErr), "%v", err)
			assert.Equal(t, ErrBadRequest, appErr.Type())
			assert.True(t, appErr.NonRetryable())
			assert.Contains(t, err.Error(), tc.want)
			assert.Equal(t, 0, hub.readCount())
		})
	}

	initial, maxInterval, err := WaitForReportedInput{DeviceID: "dev1", Property: "p"}.validate()
	require.NoError(t, err)
	assert.Equal(t, time.Second, initial)
	assert.Equal(t, 10*time.Second, maxInterval)
}

func TestSatisfied(t *testing.T) {
	after := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		in    WaitForReportedInput
		value any
		found bool
		want  bool
	}{
		{name: "missing", in: WaitForReportedInput{}, found: false, want: false},
		{name: "null", in: WaitForReportedInput{}, value: nil, found: true, want: false},
		{name: "present", in: WaitForReportedInput{}, value: false, found: true, want: true},
		{name: "later time", in: WaitForReportedInput{After: after}, value: "2026-05-01T12:00:00.001Z", found: true, want: true},
		{name: "later time in another zone", in: WaitForReportedInput{After: after}, value: "2026-05-01T14:00:01+02:00", found: true, want: true},
		{name: "equal time", in: WaitForReportedInput{After: after}, value: "2026-05-01T12:00:00Z", found: true, want: false},
		{name: "earlier time", in: WaitForReportedInput{After: after}, value: "2026-05-01T11:59:59Z", found: true, want: false},
		{name: "not a time", in: WaitForReportedInput{After: after}, value: "yesterday", found: true, want: false},
		{name: "date only", in: WaitForReportedInput{After: after}, value: "2026-05-02", found: true, want: false},
		{name: "number", in: WaitForReportedInput{After: after}, value: 1777636800.0, found: true, want: false},
		{name: "object", in: WaitForReportedInput{After: after}, value: map[string]any{"t": "2026-05-02T00:00:00Z"}, found: true, want: false},
		{name: "one of", in: WaitForReportedInput{OneOf: []string{"applying", "completed"}}, value: "completed", found: true, want: true},
		{name: "not one of", in: WaitForReportedInput{OneOf: []string{"completed"}}, value: "Completed", found: true, want: false},
		{name: "one of, number", in: WaitForReportedInput{OneOf: []string{"3"}}, value: 3.0, found: true, want: true},
		{name: "one of, bool", in: WaitForReportedInput{OneOf: []string{"true"}}, value: true, found: true, want: true},
		{name: "both hold", in: WaitForReportedInput{After: after, OneOf: []string{"2026-05-01T13:00:00Z"}}, value: "2026-05-01T13:00:00Z", found: true, want: true},
		{name: "both, one fails", in: WaitForReportedInput{After: after, OneOf: []string{"2026-05-01T14:00:00Z"}}, value: "2026-05-01T13:00:00Z", found: true, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, why := tc.in.satisfied(tc.value, tc.found)
			assert.Equal(t, tc.want, got)
			if !got {
				assert.NotEmpty(t, why)
			}
		})
	}
}

func TestReadReportedPath(t *testing.T) {
	twin := reportedTwin(12, map[string]any{
		"rebootTime": "2026-05-01T12:00:21Z",
		"firmware":   map[string]any{"status": "applying", "progress": map[string]any{"percent": 40.0}},
	})
	hub := &fakeHub{twin: func(context.Context, int) (*iotservice.Twin, error) { return twin, nil }}
	a := &Activities{Hub: hub}

	tests := []struct {
		path  string
		value any
		found bool
	}{
		{path: "rebootTime", value: "2026-05-01T12:00:21Z", found: true},
		{path: "firmware.status", value: "applying", found: true},
		{path: "firmware.progress.percent", value: 40.0, found: true},
		{path: "firmware.missing", found: false},
		{path: "rebootTime.deeper", found: false},
		{path: "absent", found: false},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			reported, err := a.readReported(context.Background(), "dev1")
			require.NoError(t, err)
			assert.Equal(t, 12, reportedVersion(reported))
			value, found := lookup(reported, tc.path)
			assert.Equal(t, tc.found, found)
			assert.Equal(t, tc.value, value)
		})
	}

	// A twin without reported properties (a device that never connected).
	hub.twin = func(context.Context, int) (*iotservice.Twin, error) { return &iotservice.Twin{DeviceID: "dev1"}, nil }
	reported, err := a.readReported(context.Background(), "dev1")
	require.NoError(t, err)
	assert.Nil(t, reported)
	_, found := lookup(reported, "rebootTime")
	assert.False(t, found)
	assert.Equal(t, 0, reportedVersion(reported))
}
