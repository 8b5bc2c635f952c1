package activities

import (
	"context"
	"errors"
	"fmt"
	"github.com/dmflow/dmflow/internal/hubconn"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
)

func TestHubRateProblem(t *testing.T) {
	tests := []struct {
		name      string
		rate      *HubRate
		want      string // "" when the rate is usable
		wantBurst int
	}{
		{name: "none", rate: nil},
		{name: "no limit", rate: &HubRate{Key: "", PerSecond: 0}},
		{name: "negative is no limit", rate: &HubRate{Key: "", PerSecond: -1}},
		{name: "default burst, one second's worth", rate: &HubRate{Key: "r", PerSecond: 20}, wantBurst: 20},
		{name: "default burst, whole calls", rate: &HubRate{Key: "r", PerSecond: 2.5}, wantBurst: 2},
		{name: "default burst, at least one", rate: &HubRate{Key: "r", PerSecond: 0.1}, wantBurst: 1},
		{name: "burst set", rate: &HubRate{Key: "r", PerSecond: 0.1, Burst: 5}, wantBurst: 5},
		{name: "no key", rate: &HubRate{PerSecond: 10}, want: "key is empty"},
		{name: "negative burst", rate: &HubRate{Key: "r", PerSecond: 10, Burst: -1}, want: "burst -1 is negative"},
		{name: "not a number", rate: &HubRate{Key: "r", PerSecond: math.NaN()}, want: "not a number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.rate.problem()
			if tc.want == "" {
				assert.Empty(t, got)
			} else {
				assert.Contains(t, got, tc.want)
			}
			if tc.wantBurst != 0 {
				assert.Equal(t, tc.wantBurst, tc.rate.burst())
			}
		})
	}
}

func TestHubRatesSpacesCalls(t *testing.T) {
	// The limiter's own arithmetic, at given times: a 20/s bucket of one spaces calls 50 ms
	// apart, after the first, which the full bucket lets through at once.
	var h hubRates
	r := &HubRate{Key: "rollout/a", PerSecond: 20, Burst: 1}
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for i := range 5 {
		res := h.reserve(r, t0)
		require.True(t, res.OK())
		assert.Equal(t, time.Duration(i)*50*time.Millisecond, res.DelayFrom(t0), "call %d", i+1)
	}
	lim := h.limiter(r.Key)
	require.NotNil(t, lim)
	assert.InDelta(t, -4, lim.TokensAt(t0), 1e-9, "four calls are owed")
	assert.InDelta(t, 1, lim.TokensAt(t0.Add(250*time.Millisecond)), 1e-9, "and paid back after 250 ms")

	// Another key has its own bucket.
	other := h.reserve(&HubRate{Key: "rollout/b", PerSecond: 20, Burst: 1}, t0)
	assert.Zero(t, other.DelayFrom(t0))

	// A rollout changing its rate changes the bucket.
	h.reserve(&HubRate{Key: "rollout/a", PerSecond: 5, Burst: 3}, t0.Add(time.Second))
	assert.InDelta(t, 5, float64(lim.Limit()), 1e-9)
	assert.Equal(t, 3, lim.Burst())
	assert.Same(t, lim, h.limiter(r.Key), "the bucket is updated, not replaced")
}

func TestHubRatesSweep(t *testing.T) {
	var h hubRates
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	done := &HubRate{Key: "finished", PerSecond: 10}
	busy := &HubRate{Key: "running", PerSecond: 10}
	// A bucket in debt for long: two calls at 1/1000 s, the second due in 1000 s.
	slow := &HubRate{Key: "slow", PerSecond: 0.001, Burst: 1}

	h.reserve(done, t0)
	h.reserve(slow, t0)
	h.reserve(slow, t0)
	h.reserve(busy, t0.Add(5*time.Minute))
	require.NotNil(t, h.limiter(done.Key), "idle for 5 minutes: kept")

	h.reserve(busy, t0.Add(11*time.Minute))
	assert.Nil(t, h.limiter(done.Key), "idle for 11 minutes and full: dropped")
	assert.NotNil(t, h.limiter(busy.Key))
	assert.NotNil(t, h.limiter(slow.Key), "a call is due in the future: kept")

	// Ten minutes after its last call was due the slow bucket holds 0.6 of its token: dropping
	// it would let a call through early.
	due := t0.Add(1000 * time.Second)
	h.reserve(busy, due.Add(10*time.Minute))
	assert.NotNil(t, h.limiter(slow.Key), "idle but not full: kept")
	h.reserve(busy, due.Add(1000*time.Second+time.Minute))
	assert.Nil(t, h.limiter(slow.Key), "full again: dropped")

	// Sweeps run at most once a minute, whatever the call rate.
	h.reserve(done, t0.Add(2*time.Hour))
	swept := h.swept
	h.reserve(busy, swept.Add(30*time.Second))
	assert.Equal(t, swept, h.swept)
}

func TestHubRatesWaitCancelled(t *testing.T) {
	var h hubRates
	r := &HubRate{Key: "rollout/c", PerSecond: 0.1, Burst: 1}
	require.NoError(t, h.wait(context.Background(), r, 0, nil), "the first call finds a full bucket")

	ctx, cancel := context.WithCancel(context.Background())
	var beats atomic.Int32
	go func() {
		time.Sleep(100 * time.Millisecond)
		cancel()
	}()
	begin := time.Now()
	err := h.wait(ctx, r, 10*time.Millisecond, func() { beats.Add(1) })
	require.ErrorIs(t, err, context.Canceled)
	// The token was 10 s away; returning long before shows the wait followed ctx.
	assert.Less(t, time.Since(begin), 5*time.Second)
	assert.Positive(t, beats.Load(), "heartbeats while waiting")
	assert.Greater(t, h.limiter(r.Key).Tokens(), -0.5, "the cancelled call gave its token back")
}

func TestHubRatesWaitPastDeadline(t *testing.T) {
	var h hubRates
	r := &HubRate{Key: "rollout/d", PerSecond: 0.1, Burst: 1}
	require.NoError(t, h.wait(context.Background(), r, 0, nil))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := h.wait(ctx, &HubRate{Key: "rollout/d", PerSecond: 0.01, Burst: 1}, 0, nil)
	require.Error(t, err)
	assert.NoError(t, ctx.Err(), "refused at once, not at the deadline")
	for _, s := range []string{`"rollout/d"`, "0.01 calls/s", "burst 1", "after the activity's deadline", "raise the rate"} {
		assert.Contains(t, err.Error(), s)
	}
	assert.Greater(t, h.limiter(r.Key).Tokens(), -0.5, "the refused call gave its token back")
}

func TestHubRatesConcurrent(t *testing.T) {
	var h hubRates
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &HubRate{Key: fmt.Sprintf("rollout/%d", i%4), PerSecond: 10000, Burst: 5}
			for range 10 {
				assert.NoError(t, h.wait(context.Background(), r, 0, nil))
			}
		}()
	}
	wg.Wait()
	for i := range 4 {
		assert.NotNil(t, h.limiter(fmt.Sprintf("rollout/%d", i)))
	}
}

// slowRate lets burst calls through and then none for 1000 s, longer than the test environment's
// 10 minute activity timeout: the next call fails at once with the retryable rate error. That
// shows, without timing anything, that an activity draws a token per hub call.
func slowRate(key string, burst int) *HubRate {
	return &HubRate{Key: key, PerSecond: 0.001, Burst: burst}
}

func requireRateError(t *testing.T, err error, key string) {
	t.Helper()
	requireRetryable(t, err)
	assert.Contains(t, err.Error(), fmt.Sprintf("hub rate %q", key))
	assert.Contains(t, err.Error(), "after the activity's deadline")
}

func TestActivitiesDrawTokens(t *testing.T) {
	twin := func(context.Context, int) (*iotservice.Twin, error) {
		return reportedTwin(1, map[string]any{"firmwareVersion": "1.0.0"}), nil
	}
	hub := &fakeHub{
		twin: twin,
		call: func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
			return hubconn.MethodAnswer{Status: 200}, nil
		},
	}
	a := &Activities{Hub: hub}
	env, _ := newEnv(t, a)

	t.Run("get twin", func(t *testing.T) {
		in := GetTwinInput{DeviceID: "dev1", Properties: []string{"firmwareVersion"}, Rate: slowRate("twin", 2)}
		before := hub.readCount()
		for range 2 {
			_, err := env.ExecuteActivity(a.GetTwin, in)
			require.NoError(t, err)
		}
		_, err := env.ExecuteActivity(a.GetTwin, in)
		requireRateError(t, err, "twin")
		assert.Equal(t, before+2, hub.readCount(), "no read without a token")
	})

	t.Run("invoke method", func(t *testing.T) {
		in := rebootInput()
		in.Rate = slowRate("invoke", 1)
		_, err := env.ExecuteActivity(a.InvokeMethod, in)
		require.NoError(t, err)
		_, err = env.ExecuteActivity(a.InvokeMethod, in)
		requireRateError(t, err, "invoke")
		assert.Equal(t, 1, hub.callCount())
	})

	t.Run("wait for reported", func(t *testing.T) {
		// The property never comes: the third read has no token, and the retryable error leaves
		// the progress of the two reads in the heartbeat details for the next attempt.
		in := fastWait(WaitForReportedInput{Property: "rebootTime", Deadline: time.Now().Add(5 * time.Second), Rate: slowRate("wait", 2)})
		env, rec := newEnv(t, &Activities{Hub: hub})
		before := hub.readCount()
		_, err := env.ExecuteActivity((&Activities{}).WaitForReported, in)
		requireRateError(t, err, "wait")
		assert.Equal(t, before+2, hub.readCount())
		beats := rec.recorded()
		require.NotEmpty(t, beats)
		assert.Equal(t, []any{WaitForReportedProgress{Polls: 2, LastVersion: 1}}, beats[len(beats)-1])
	})

	t.Run("follow stages", func(t *testing.T) {
		in := fastFollow(func(in *FollowStagesInput) { in.Deadline = time.Now().Add(5 * time.Second) })
		in.Rate = slowRate("follow", 1)
		before := hub.readCount()
		_, _, err := follow(t, &Activities{Hub: hub}, in)
		requireRateError(t, err, "follow")
		assert.Equal(t, before+1, hub.readCount())
	})

	t.Run("invalid rate", func(t *testing.T) {
		_, err := env.ExecuteActivity(a.GetTwin, GetTwinInput{DeviceID: "dev1", Properties: []string{"p"}, Rate: &HubRate{PerSecond: 5}})
		requireNonRetryable(t, err, ErrBadRequest)
		assert.Contains(t, err.Error(), "key is empty")
	})

	t.Run("no limit", func(t *testing.T) {
		before := hub.readCount()
		for range 5 {
			_, err := env.ExecuteActivity(a.GetTwin, GetTwinInput{DeviceID: "dev1", Properties: []string{"p"}, Rate: &HubRate{Key: "free"}})
			require.NoError(t, err)
		}
		assert.Equal(t, before+5, hub.readCount())
		assert.Nil(t, a.rates.limiter("free"), "no bucket for a rate without a limit")
	})
}

func TestWaitForReportedPacedByRate(t *testing.T) {
	// Six reads at 20/s with a bucket of one take at least 250 ms; without the limit the 1–2 ms
	// backoff would make them take about 10 ms. The heartbeat interval is short, so the waits for
	// tokens heartbeat too, with the progress, never with empty details.
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		if n < 6 {
			return reportedTwin(n, nil), nil
		}
		return reportedTwin(n, map[string]any{"rebootTime": "2026-05-01T12:00:21Z"}), nil
	}}
	a := &Activities{Hub: hub, heartbeatInterval: 5 * time.Millisecond}
	in := fastWait(WaitForReportedInput{Property: "rebootTime", Rate: &HubRate{Key: "rollout/paced", PerSecond: 20, Burst: 1}})

	begin := time.Now()
	res, rec, err := waitResult(t, a, in)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(begin), 200*time.Millisecond, "paced by the bucket")
	assert.Equal(t, 6, res.Polls)
	assert.NotNil(t, a.rates.limiter("rollout/paced"))

	beats := rec.recorded()
	assert.Greater(t, len(beats), res.Polls, "heartbeats while waiting for tokens")
	for _, d := range beats {
		require.Len(t, d, 1)
		assert.IsType(t, WaitForReportedProgress{}, d[0])
	}
}

func TestPollsRideOutThrottling(t *testing.T) {
	// A hub that throttles read after read: 429 never fails the device, the poll reads on with
	// backoff until the value is there, and every throttled read heartbeats its progress.
	throttled := hubErr(429, 429001, "ThrottlingException")

	t.Run("wait for reported", func(t *testing.T) {
		hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
			if n <= 8 {
				return nil, throttled
			}
			return reportedTwin(5, map[string]any{"rebootTime": "2026-05-01T12:00:21Z"}), nil
		}}
		res, rec, err := waitResult(t, &Activities{Hub: hub}, fastWait(WaitForReportedInput{
			Property: "rebootTime",
			Deadline: time.Now().Add(time.Minute),
		}))
		require.NoError(t, err)
		assert.Equal(t, 9, res.Polls)
		assert.Len(t, rec.recorded(), 9)
	})

	t.Run("follow stages", func(t *testing.T) {
		hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
			if n <= 4 {
				return nil, throttled
			}
			return fwTwin(n, "completed", "u1", nil), nil
		}}
		res, _, err := follow(t, &Activities{Hub: hub}, fastFollow(nil))
		require.NoError(t, err)
		assert.Equal(t, 5, res.Polls)
	})

	t.Run("until the deadline", func(t *testing.T) {
		// Throttled throughout: the wait ends at its deadline, not at the first 429.
		hub := &fakeHub{twin: func(context.Context, int) (*iotservice.Twin, error) { return nil, throttled }}
		_, _, err := waitResult(t, &Activities{Hub: hub}, fastWait(WaitForReportedInput{
			Property: "rebootTime",
			Deadline: time.Now().Add(30 * time.Millisecond),
		}))
		requireNonRetryable(t, err, ErrDeadlineExceeded)
		assert.GreaterOrEqual(t, hub.readCount(), 2)
	})
}

func TestClassifyThrottledQuery(t *testing.T) {
	err := classify(hubErr(429, 429001, "ThrottlingException"), "query", "devices")
	var appErr *temporal.ApplicationError
	assert.False(t, errors.As(err, &appErr), "a plain error, which Temporal retries: %v", err)
	assert.Contains(t, err.Error(), "HTTP 429")
}

// assertDrawn checks that n tokens were drawn from the bucket of key. Use it with rates slow
// enough that the bucket does not refill noticeably while the test runs.
func assertDrawn(t *testing.T, a *Activities, key string, n int) {
	t.Helper()
	lim := a.rates.limiter(key)
	if assert.NotNil(t, lim, "no bucket for %s", key) {
		assert.InDelta(t, float64(lim.Burst()-n), lim.Tokens(), 0.1, "tokens left in the bucket of %s", key)
	}
}
