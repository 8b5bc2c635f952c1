package activities

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
	"golang.org/x/time/rate"
)

// HubRate caps the IoT Hub calls of a group of activities (every device of a rollout) with one
// token bucket per Key in the worker process: every twin read, method call and query the
// activities make for inputs carrying the same Key draws a token first.
type HubRate struct {
	// Key names the bucket; a rollout uses its workflow ID.
	Key string `json:"key"`
	// PerSecond is the bucket's refill rate in hub calls per second; zero or less means no limit.
	PerSecond float64 `json:"perSecond"`
	// Burst is the bucket's size; zero means max(1, PerSecond), one second's worth.
	Burst int `json:"burst,omitempty"`
}

const (
	// bucketIdle is how long a bucket may go unused before it is dropped: a finished rollout's
	// bucket must not stay in a long-running worker for good. Only full buckets are dropped, so
	// dropping one never lets more calls through than keeping it would have.
	bucketIdle = 10 * time.Minute
	// sweepEvery is how often an access to the buckets looks for idle ones, so that a sweep
	// costs one pass over the map a minute at most, whatever the call rate.
	sweepEvery = time.Minute
)

// limited reports whether r asks for a limit at all.
func (r *HubRate) limited() bool { return r != nil && r.PerSecond > 0 }

// problem says what is wrong with r, for the caller's error message, or "" when r can be used.
func (r *HubRate) problem() string {
	switch {
	case r == nil:
		return ""
	case math.IsNaN(r.PerSecond):
		return "rate: perSecond is not a number: set it to the hub calls per second, e.g. 10"
	case !r.limited():
		return ""
	case r.Key == "":
		return "rate: key is empty: set it to what names the group sharing the limit, e.g. the rollout's workflow ID"
	case r.Burst < 0:
		return fmt.Sprintf("rate %s: burst %d is negative: set it to at least 1, or 0 for one second's worth", r.Key, r.Burst)
	}
	return ""
}

// burst is the bucket size r asks for, with the default applied.
func (r *HubRate) burst() int {
	if r.Burst > 0 {
		return r.Burst
	}
	if math.IsInf(r.PerSecond, 1) {
		return 1
	}
	// The cap keeps the conversion defined for absurd rates; a bucket that size never empties.
	return int(max(1, min(r.PerSecond, math.MaxInt32)))
}

// describe names the rate in messages.
func (r *HubRate) describe() string {
	return fmt.Sprintf("%q (%g calls/s, burst %d)", r.Key, r.PerSecond, r.burst())
}

// hubRates holds the token buckets of the HubRate keys in use. Its zero value is ready, so that
// Activities built as a literal by the worker need no constructor.
type hubRates struct {
	mu      sync.Mutex
	buckets map[string]*rateBucket
	swept   time.Time
}

type rateBucket struct {
	lim *rate.Limiter
	// used is the latest time a token was taken, or is due, from the bucket.
	used time.Time
}

// reserve takes a token from r's bucket at now, creating the bucket or applying a changed rate
// first, and sweeps idle buckets now and then.
func (h *hubRates) reserve(r *HubRate, now time.Time) *rate.Reservation {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.swept) >= sweepEvery {
		h.sweep(now)
	}
	if h.buckets == nil {
		h.buckets = make(map[string]*rateBucket)
	}
	limit, burst := rate.Limit(r.PerSecond), r.burst()
	b := h.buckets[r.Key]
	switch {
	case b == nil:
		b = &rateBucket{lim: rate.NewLimiter(limit, burst)}
		h.buckets[r.Key] = b
	default:
		// A rollout changed its rate (an update, or a continue-as-new with a new input).
		if b.lim.Limit() != limit {
			b.lim.SetLimitAt(now, limit)
		}
		if b.lim.Burst() != burst {
			b.lim.SetBurstAt(now, burst)
		}
	}
	res := b.lim.ReserveN(now, 1)
	if due := now.Add(res.DelayFrom(now)); due.After(b.used) {
		b.used = due
	}
	return res
}

// sweep drops the buckets unused for bucketIdle that are full again: a new bucket would behave
// exactly like them. Called with mu held.
func (h *hubRates) sweep(now time.Time) {
	h.swept = now
	for key, b := range h.buckets {
		if now.Sub(b.used) >= bucketIdle && b.lim.TokensAt(now) >= float64(b.lim.Burst()) {
			delete(h.buckets, key)
		}
	}
}

// limiter returns the bucket of key, or nil when there is none; for tests.
func (h *hubRates) limiter(key string) *rate.Limiter {
	h.mu.Lock()
	defer h.mu.Unlock()
	if b := h.buckets[key]; b != nil {
		return b.lim
	}
	return nil
}

// wait takes a token from r's bucket, waiting for it if need be. While it waits it calls beat
// every interval (when both are set), so that a heartbeating activity stays alive however long
// the rollout's rate makes it wait. It returns ctx's error when ctx ends first, giving the token
// back, and a retryable error naming the rate, at once, when the token would come after ctx's
// deadline: waiting would only end in a timeout, and a retry later, with fewer calls competing,
// may find the bucket fuller.
func (h *hubRates) wait(ctx context.Context, r *HubRate, every time.Duration, beat func()) error {
	if !r.limited() {
		return nil
	}
	now := time.Now()
	res := h.reserve(r, now)
	if !res.OK() {
		// Cannot happen with a burst of at least 1; kept so that a bucket that refuses
		// reports why instead of letting the call through.
		return fmt.Errorf("hub rate %s refuses a call", r.describe())
	}
	delay := res.DelayFrom(now)
	if delay <= 0 {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok && now.Add(delay).After(dl) {
		res.CancelAt(now)
		return fmt.Errorf("hub rate %s: the next call is due in %s, after the activity's deadline in %s: "+
			"the calls sharing the rate need more time than the activity has; raise the rate or the activity's timeout",
			r.describe(), delay.Round(time.Millisecond), dl.Sub(now).Round(time.Millisecond))
	}

	timer := time.NewTimer(delay)
	defer timer.Stop()
	var tick <-chan time.Time
	if beat != nil && every > 0 && every < delay {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			res.Cancel()
			return ctx.Err()
		case <-timer.C:
			return nil
		case <-tick:
			beat()
		}
	}
}

// takeToken draws a token for one hub call from r's bucket (see hubRates.wait); a nil r or one
// without a positive PerSecond lets the call through at once. beat heartbeats the activity with
// its progress while it waits; nil when the caller heartbeats by other means.
func (a *Activities) takeToken(ctx context.Context, r *HubRate, beat func()) error {
	if !r.limited() {
		return nil
	}
	return a.rates.wait(ctx, r, a.beatInterval(ctx), beat)
}

// tokenError is what an activity returns when it got no rate token: the context's error when the
// activity was cancelled or timed out, else the retryable error saying the token comes too late.
func tokenError(ctx context.Context, logger log.Logger, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	logger.Warn("no hub rate token before the activity's deadline", "error", err)
	return err
}

// beatInterval is how often a waiting activity heartbeats: a third of its heartbeat timeout,
// which leaves room for two lost or late heartbeats (the SDK batches them, so sending more often
// costs nothing on the wire), or defaultHeartbeatInterval without one, since heartbeats are still
// how a running activity learns that it was cancelled.
func (a *Activities) beatInterval(ctx context.Context) time.Duration {
	if a.heartbeatInterval > 0 {
		return a.heartbeatInterval
	}
	if interval := activity.GetInfo(ctx).HeartbeatTimeout / 3; interval > 0 {
		return interval
	}
	return defaultHeartbeatInterval
}
