package budget

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
)

// limit returns the refill rate and burst of key's bucket, or zeros before its first grant.
func (l *Leaser) limit(key string) (rate.Limit, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.keys[key]; b != nil && b.lim != nil {
		return b.lim.Limit(), b.lim.Burst()
	}
	return 0, 0
}

func TestPace(t *testing.T) {
	for _, tc := range []struct {
		share float64
		rate  rate.Limit
		burst int
	}{
		{100, 95, 5},
		{40, 38, 2},
		{10, 9, 1},
		{5, 4, 1},
		{2, 1, 1},
		{1, 1, 1},
		{0.1, 0.1, 1},
	} {
		r, b := pace(tc.share)
		assert.Equal(t, tc.rate, r, "share %g", tc.share)
		assert.Equal(t, tc.burst, b, "share %g", tc.share)
		if tc.share >= 2 {
			assert.LessOrEqual(t, float64(r)+float64(b), tc.share, "one second of a %g share", tc.share)
		}
	}
}

// Two workers on one ledger: the first holds the whole budget, the second waits for a share, and
// after both renew each paces at half. A new bucket starts with its burst.
func TestLeasersShareOneBudget(t *testing.T) {
	ctx := context.Background()
	granter := &Solo{}
	budget := map[string]float64{"methods": 40}
	w1 := New(Config{Worker: "w1", Budget: budget, Granter: granter})
	defer w1.Close()
	w2 := New(Config{Worker: "w2", Budget: budget, Granter: granter})
	defer w2.Close()
	methods := []Take{{Key: "methods", N: 1}}

	require.NoError(t, w1.Wait(ctx, methods, 0, nil))
	r, b := w1.limit("methods")
	assert.Equal(t, rate.Limit(38), r)
	assert.Equal(t, 2, b)

	// w2 gets nothing while w1 holds it all: its call waits past a short deadline.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err := w2.Wait(short, methods, 0, nil)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)

	require.NoError(t, w1.renew(ctx))
	require.NoError(t, w2.renew(ctx))
	require.NoError(t, w2.Wait(ctx, methods, 0, nil))
	for _, w := range []*Leaser{w1, w2} {
		r, b := w.limit("methods")
		assert.Equal(t, rate.Limit(19), r)
		assert.Equal(t, 1, b)
	}
	granter.mu.Lock()
	v := granter.ledger.View(time.Now())
	granter.mu.Unlock()
	require.Len(t, v, 1)
	assert.Equal(t, 40.0, v[0].Granted)

	// A fresh bucket starts with its burst: one call at once, the next a refill's worth away.
	w3 := New(Config{Worker: "w3", Granter: &Solo{}})
	defer w3.Close()
	require.NoError(t, w3.renew(ctx)) // no keys yet
	assert.False(t, w3.reserve(Take{Key: "rollout:r", Rate: 2, N: 1}, 1, time.Now()).ok, "no share before the first grant")
	require.NoError(t, w3.renew(ctx))
	now := time.Now()
	first := w3.reserve(Take{Key: "rollout:r", Rate: 2, N: 1}, 1, now)
	require.True(t, first.ok)
	assert.Zero(t, first.delay)
	res := w3.reserve(Take{Key: "rollout:r", Rate: 2, N: 1}, 1, now)
	require.True(t, res.ok)
	assert.InDelta(t, time.Second.Seconds(), res.delay.Seconds(), 0.05, "2/s paces at 1/s refill with a burst of 1")
}

// A call whose tokens would come after its context's deadline fails at once, naming the key.
func TestLeaserDeadline(t *testing.T) {
	l := New(Config{Worker: "w", Budget: map[string]float64{"queries": 0.2}})
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	queries := []Take{{Key: "queries", N: 1}}
	// The first call takes the burst of 1; the next is 5 s of refill (0.2/s) away, more than its
	// second.
	require.NoError(t, l.Wait(ctx, queries, 0, nil))
	short, cancel2 := context.WithTimeout(ctx, time.Second)
	defer cancel2()
	err := l.Wait(short, queries, 0, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "hub budget queries: the next call is due in")
	assert.False(t, errors.Is(err, context.DeadlineExceeded), "fails at once, not at the deadline")
}

// A failing granter leaves calls waiting, heartbeating, until their context ends.
func TestLeaserWithoutGrants(t *testing.T) {
	l := New(Config{Worker: "w", Budget: map[string]float64{"methods": 40}, Granter: failing{}})
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var mu sync.Mutex
	beats := 0
	err := l.Wait(ctx, []Take{{Key: "methods", N: 1}}, 50*time.Millisecond, func() { mu.Lock(); beats++; mu.Unlock() })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	mu.Lock()
	defer mu.Unlock()
	assert.Positive(t, beats)
}

type failing struct{}

func (failing) Lease(context.Context, Request) (Grant, error) {
	return Grant{}, errors.New("Temporal is unreachable")
}

// A share that shrinks drops what was booked at the larger one: a call waiting on such a booking
// books again at the new share instead of overrunning the budget the workers now share.
func TestLeaserShrinkRebooks(t *testing.T) {
	ctx := context.Background()
	granter := &Solo{}
	budget := map[string]float64{"methods": 10}
	methods := Take{Key: "methods", N: 1}
	w1 := New(Config{Worker: "w1", Budget: budget, Granter: granter})
	defer w1.Close()
	require.NoError(t, w1.Wait(ctx, []Take{methods}, 0, nil))
	var booked reservation
	for range 20 {
		booked = w1.reserve(methods, 1, time.Now())
		require.True(t, booked.ok)
	}
	require.Greater(t, booked.delay, time.Second, "booked ahead at 8/s")

	w2 := New(Config{Worker: "w2", Budget: budget, Granter: granter})
	defer w2.Close()
	w2.reserve(methods, 1, time.Now()) // w2 now uses the key
	require.NoError(t, w2.renew(ctx))
	require.NoError(t, w1.renew(ctx))
	r, _ := w1.limit("methods")
	assert.Equal(t, rate.Limit(4), r, "half of 10/s, less its burst")
	done, err := w1.await(ctx, "methods", booked, nil, nil)
	require.NoError(t, err)
	assert.False(t, done, "the booking at 8/s is void: book again")
}

// A key unused for idleAfter is given back at the next renewal.
func TestLeaserGivesIdleKeysBack(t *testing.T) {
	granter := &Solo{}
	l := New(Config{Worker: "w", Budget: map[string]float64{"methods": 10, "twinReads": 10}, Granter: granter})
	defer l.Close()
	l.reserve(Take{Key: "methods", N: 1}, 1, time.Now().Add(-idleAfter-time.Second))
	l.reserve(Take{Key: "twinReads", N: 1}, 1, time.Now())
	require.NoError(t, l.renew(context.Background()))
	granter.mu.Lock()
	defer granter.mu.Unlock()
	v := granter.ledger.View(time.Now())
	require.Len(t, v, 1)
	assert.Equal(t, "twinReads", v[0].Key)
}

// Many calls at once on two keys, under -race: every one gets its tokens.
func TestLeaserConcurrentCalls(t *testing.T) {
	l := New(Config{Worker: "w", Budget: map[string]float64{"twinReads": 1000}})
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- l.Wait(ctx, []Take{{Key: "twinReads", N: 1}, {Key: "rollout:r", Rate: 2000, N: 1}}, 10*time.Millisecond, func() {})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}
