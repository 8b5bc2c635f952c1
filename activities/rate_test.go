package activities

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uber-go/tally/v4"
	sdktally "go.temporal.io/sdk/contrib/tally"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/dmflow/dmflow/internal/budget"
	"github.com/dmflow/dmflow/internal/hubconn"
)

func TestHubRateProblem(t *testing.T) {
	tests := []struct {
		name string
		rate *HubRate
		want string // "" when the rate is usable
	}{
		{name: "none", rate: nil},
		{name: "no limit", rate: &HubRate{Key: "", PerSecond: 0}},
		{name: "negative is no limit", rate: &HubRate{Key: "", PerSecond: -1}},
		{name: "a limit", rate: &HubRate{Key: "r", PerSecond: 0.1}},
		{name: "burst set, unused", rate: &HubRate{Key: "r", PerSecond: 0.1, Burst: 5}},
		{name: "infinite", rate: &HubRate{Key: "r", PerSecond: math.Inf(1)}, want: "infinite"},
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
		})
	}
}

// countingPacer stands in for the worker's budget.Leaser: it records every take, lets allow[key]
// tokens of a key through and then refuses as the leaser does when the next token comes after the
// activity's deadline, and calls beat beats times a wait.
type countingPacer struct {
	mu       sync.Mutex
	budgeted map[string]bool
	allow    map[string]int
	beats    int
	taken    map[string]int
	order    []budget.Take
}

func (p *countingPacer) Budgeted(op string) bool { return p.budgeted[op] }

func (p *countingPacer) Wait(ctx context.Context, takes []budget.Take, _ time.Duration, beat func()) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.taken == nil {
		p.taken = map[string]int{}
	}
	for _, t := range takes {
		if limit, ok := p.allow[t.Key]; ok && p.taken[t.Key]+t.N > limit {
			return fmt.Errorf("hub budget %s: the next call is due in 1h0m0s, after the activity's deadline in 10s", t.Key)
		}
		p.taken[t.Key] += t.N
		p.order = append(p.order, t)
	}
	for range p.beats {
		if beat != nil {
			beat()
		}
	}
	return nil
}

func (p *countingPacer) count(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.taken[key]
}

// slowRate is a rollout ceiling of key whose pacer lets n calls through and no more.
func slowRate(p *countingPacer, key string, n int) *HubRate {
	if p.allow == nil {
		p.allow = map[string]int{}
	}
	p.allow[budget.RolloutKeyPrefix+key] = n
	return &HubRate{Key: key, PerSecond: 1}
}

func requireRateError(t *testing.T, err error, key string) {
	t.Helper()
	requireRetryable(t, err)
	assert.Contains(t, err.Error(), "hub budget "+budget.RolloutKeyPrefix+key)
	assert.Contains(t, err.Error(), "after the activity's deadline")
}

// assertDrawn checks that n tokens of key's ceiling were drawn.
func assertDrawn(t *testing.T, p *countingPacer, key string, n int) {
	t.Helper()
	assert.Equal(t, n, p.count(budget.RolloutKeyPrefix+key), "tokens of %s", key)
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
	p := &countingPacer{}
	a := &Activities{Hub: hub, Pacer: p}
	env, _ := newEnv(t, a)

	t.Run("get twin", func(t *testing.T) {
		in := GetTwinInput{DeviceID: "dev1", Properties: []string{"firmwareVersion"}, Rate: slowRate(p, "twin", 2)}
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
		in.Rate = slowRate(p, "invoke", 1)
		_, err := env.ExecuteActivity(a.InvokeMethod, in)
		require.NoError(t, err)
		_, err = env.ExecuteActivity(a.InvokeMethod, in)
		requireRateError(t, err, "invoke")
		assert.Equal(t, 1, hub.callCount())
	})

	t.Run("wait for reported", func(t *testing.T) {
		// The property never comes: the third read has no token, and the retryable error leaves
		// the progress of the two reads in the heartbeat details for the next attempt.
		in := fastWait(WaitForReportedInput{Property: "rebootTime", Deadline: time.Now().Add(5 * time.Second), Rate: slowRate(p, "wait", 2)})
		env, rec := newEnv(t, &Activities{Hub: hub, Pacer: p})
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
		in.Rate = slowRate(p, "follow", 1)
		before := hub.readCount()
		_, _, err := follow(t, &Activities{Hub: hub, Pacer: p}, in)
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
		assert.Zero(t, p.count(budget.RolloutKeyPrefix+"free"), "no token for a rate without a limit")
	})
}

// Every hub call waits for a token of its operation's hub budget, and a firmware update's call
// also for the three reports the device will send, before the rollout's ceiling.
func TestActivitiesPayTheHubBudget(t *testing.T) {
	hub := &fakeHub{
		twin: func(context.Context, int) (*iotservice.Twin, error) {
			return reportedTwin(1, map[string]any{"firmwareVersion": "1.0.0"}), nil
		},
		call: func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
			return hubconn.MethodAnswer{Status: 200}, nil
		},
		page: pagedQuery([]map[string]any{queryTwin("a", nil), queryTwin("b", nil)}),
	}
	p := &countingPacer{budgeted: map[string]bool{opMethods: true, opTwinReads: true, opTwinUpdates: true, opQueries: true}}
	a := &Activities{Hub: hub, Pacer: p}
	env, _ := newEnv(t, a)
	rollout := &HubRate{Key: "rollout/r", PerSecond: 10}

	_, err := env.ExecuteActivity(a.GetTwin, GetTwinInput{DeviceID: "dev1", Properties: []string{"firmwareVersion"}, Rate: rollout})
	require.NoError(t, err)
	fw := InvokeMethodInput{DeviceID: "dev1", Method: "firmwareUpdate", ResponseTimeout: 30 * time.Second, Rate: rollout,
		Payload: map[string]any{"fwPackageUri": "https://fw.example/v2.bin"}}
	_, err = env.ExecuteActivity(a.InvokeMethod, fw)
	require.NoError(t, err)
	reboot := rebootInput()
	_, err = env.ExecuteActivity(a.InvokeMethod, reboot)
	require.NoError(t, err)
	_, _, err = queryOn(t, a, QueryDevicesInput{Query: "SELECT * FROM devices"})
	require.NoError(t, err)

	ceiling := budget.RolloutKeyPrefix + "rollout/r"
	assert.Equal(t, []budget.Take{
		{Key: opTwinReads, N: 1}, {Key: ceiling, Rate: 10, N: 1},
		{Key: opMethods, N: 1}, {Key: opTwinUpdates, N: 3}, {Key: ceiling, Rate: 10, N: 1},
		{Key: opMethods, N: 1}, {Key: opTwinUpdates, N: 1},
		{Key: opQueries, N: 1},
	}, p.order)
}

func TestWaitForReportedPacedByRate(t *testing.T) {
	// Every read waits for a token first; the waits heartbeat with the progress, never with empty
	// details.
	hub := &fakeHub{twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
		if n < 6 {
			return reportedTwin(n, nil), nil
		}
		return reportedTwin(n, map[string]any{"rebootTime": "2026-05-01T12:00:21Z"}), nil
	}}
	p := &countingPacer{beats: 2}
	a := &Activities{Hub: hub, Pacer: p, heartbeatInterval: 5 * time.Millisecond}
	in := fastWait(WaitForReportedInput{Property: "rebootTime", Rate: &HubRate{Key: "rollout/paced", PerSecond: 20}})

	res, rec, err := waitResult(t, a, in)
	require.NoError(t, err)
	assert.Equal(t, 6, res.Polls)
	assertDrawn(t, p, "rollout/paced", 6)

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

// Every call that waited for budget tokens records the wait, labelled with its operation.
func TestBudgetWaitIsMetered(t *testing.T) {
	hub := &fakeHub{twin: func(context.Context, int) (*iotservice.Twin, error) {
		return reportedTwin(1, map[string]any{"firmwareVersion": "1.0.0"}), nil
	}}
	scope := tally.NewTestScope("", nil)
	var s testsuite.WorkflowTestSuite
	s.SetMetricsHandler(sdktally.NewMetricsHandler(scope))
	env := s.NewTestActivityEnvironment()
	a := &Activities{Hub: hub, Pacer: &countingPacer{budgeted: map[string]bool{opTwinReads: true}}}
	env.RegisterActivity(a)
	for range 2 {
		_, err := env.ExecuteActivity(a.GetTwin, GetTwinInput{DeviceID: "dev1", Properties: []string{"firmwareVersion"}})
		require.NoError(t, err)
	}
	var waits []string
	for _, tm := range scope.Snapshot().Timers() {
		if tm.Name() == MetricBudgetWait {
			waits = append(waits, fmt.Sprintf("%s %s n=%d", tm.Tags()[LabelOp], tm.Tags()["activity_type"], len(tm.Values())))
		}
	}
	assert.Equal(t, []string{"twinReads GetTwin n=2"}, waits)
}
