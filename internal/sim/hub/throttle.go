package hub

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/dmflow/dmflow/internal/hubquota"
)

// DefaultMaxQueueDelay is how long a request above its rate waits for a
// token (IoT Hub's traffic shaping) before it is refused with 429.
const DefaultMaxQueueDelay = time.Second

// quotas resolves the options into one quota per operation.
func (o *Options) quotas() (map[hubquota.Op]hubquota.Quota, error) {
	out := make(map[hubquota.Op]hubquota.Quota, len(hubquota.Ops))
	for _, op := range hubquota.Ops {
		if o.Unlimited {
			out[op] = hubquota.Quota{Rate: math.Inf(1)}
			continue
		}
		q, err := hubquota.Documented(o.Tier, o.Units, op)
		if err != nil {
			return nil, fmt.Errorf("hub: %w", err)
		}
		if r, ok := o.Quotas[op]; ok {
			q = q.WithRate(r)
		}
		out[op] = q
	}
	for op, r := range o.Quotas {
		if _, ok := out[op]; !ok {
			_, err := hubquota.Documented(hubquota.S1, 1, op)
			return nil, fmt.Errorf("hub: Options.Quotas: %w", err)
		}
		if !(r > 0) {
			return nil, fmt.Errorf("hub: Options.Quotas[%s] = %v: a rate must be positive (math.Inf(1) for no limit)", op, r)
		}
	}
	return out, nil
}

// throttle holds a token bucket per operation, counts refusals and counts
// admissions per second.
type throttle struct {
	maxDelay time.Duration
	buckets  map[hubquota.Op]*rate.Limiter // nil entry: no limit
	burst    map[hubquota.Op]int
	admitted *perSecond

	mu        sync.Mutex
	throttled map[hubquota.Op]int
}

func newThrottle(quotas map[hubquota.Op]hubquota.Quota, maxDelay time.Duration) *throttle {
	t := &throttle{
		maxDelay:  maxDelay,
		buckets:   map[hubquota.Op]*rate.Limiter{},
		burst:     map[hubquota.Op]int{},
		throttled: map[hubquota.Op]int{},
		admitted:  newPerSecond(time.Now()),
	}
	for op, q := range quotas {
		if q.Unlimited() {
			continue
		}
		t.buckets[op] = rate.NewLimiter(rate.Limit(q.Rate), q.Burst)
		t.burst[op] = q.Burst
	}
	return t
}

// wait takes n tokens of op. Like IoT Hub's traffic shaping, a request
// above the rate waits for its tokens if they come within maxDelay; if
// not, it is refused at once with ThrottlingException and counted. A ctx
// that ends while waiting returns its error and gives the tokens back. An
// admitted request counts once in its second, whatever n.
func (t *throttle) wait(ctx context.Context, op hubquota.Op, n int) error {
	b := t.buckets[op]
	if b == nil {
		t.admitted.add(op, time.Now())
		return nil
	}
	// A request bigger than the bucket (a large method at a tiny quota)
	// would never pass; it takes the whole bucket instead.
	n = min(n, t.burst[op])
	now := time.Now()
	r := b.ReserveN(now, n)
	delay := r.DelayFrom(now)
	if !r.OK() || delay > t.maxDelay {
		r.CancelAt(now)
		t.count(op)
		return errorf(ErrThrottling, "%s quota of %v/s exceeded (localhub throttles like IoT Hub; raise it with --tier, --units or --quota %s=…)", op, float64(b.Limit()), op)
	}
	if delay <= 0 {
		t.admitted.add(op, now)
		return nil
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		t.admitted.add(op, time.Now())
		return nil
	case <-ctx.Done():
		r.Cancel()
		return ctx.Err()
	}
}

func (t *throttle) count(op hubquota.Op) {
	t.mu.Lock()
	t.throttled[op]++
	t.mu.Unlock()
}

func (t *throttle) counts() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int, len(t.throttled))
	for op, n := range t.throttled {
		out[string(op)] = n
	}
	return out
}
