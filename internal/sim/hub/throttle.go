package hub

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Operation names a throttled IoT Hub operation: one token bucket for the
// whole hub per operation, as IoT Hub meters them.
type Operation string

// Throttled operations. The names are those of --quota and of
// Stats.Throttled.
const (
	// OpMethods is direct-method invocations, metered in 4 KB chunks of
	// request payload: a 9 KB payload costs 3.
	OpMethods Operation = "methods"
	// OpTwinReads is twin reads from services (GET /twins/{id}) and
	// devices ($iothub/twin/GET).
	OpTwinReads Operation = "twinReads"
	// OpTwinUpdates is twin updates from services (PATCH/PUT /twins/{id})
	// and devices (reported-property PATCH).
	OpTwinUpdates Operation = "twinUpdates"
	// OpQueries is POST /devices/query requests (one page is one query).
	OpQueries Operation = "queries"
	// OpRegistry is identity registry operations: create, get, list,
	// update, delete. A bulk request (POST /devices, up to 100 devices)
	// counts as one: IoT Hub documents the throttle per operation (call),
	// and the bulk API exists to register many devices under it.
	OpRegistry Operation = "registry"
	// OpConnections is new device connections (the rate, not the total).
	OpConnections Operation = "connections"
	// OpTelemetry is device-to-cloud sends.
	OpTelemetry Operation = "telemetry"
)

// Operations lists every throttled operation.
var Operations = []Operation{OpMethods, OpTwinReads, OpTwinUpdates, OpQueries, OpRegistry, OpConnections, OpTelemetry}

// Tiers localhub knows. F1 (free) and B1 take the S1 figures; B2 and B3
// those of S2 and S3.
const (
	TierS1 = "S1"
	TierS2 = "S2"
	TierS3 = "S3"
)

// DefaultMaxQueueDelay is how long a request above its rate waits for a
// token (IoT Hub's traffic shaping) before it is refused with 429.
const DefaultMaxQueueDelay = time.Second

// methodChunk is the unit direct methods are metered in.
const methodChunk = 4 * 1024

// Quota is a documented throttle: Rate tokens per second, refilled
// continuously, with at most Burst saved. Burst is one metering window's
// worth (a second or a minute, as the quota is documented), so a hub at
// rest takes a window's worth of requests at once, as IoT Hub does.
type Quota struct {
	Rate  float64 // per second; +Inf for no limit
	Burst int
}

// Unlimited reports whether the quota lets everything through.
func (q Quota) Unlimited() bool { return math.IsInf(q.Rate, 1) }

// normalTier maps a tier name (any case) to S1, S2 or S3.
func normalTier(tier string) (string, error) {
	switch strings.ToUpper(strings.TrimSpace(tier)) {
	case "", "S1", "F1", "B1":
		return TierS1, nil
	case "S2", "B2":
		return TierS2, nil
	case "S3", "B3":
		return TierS3, nil
	}
	return "", fmt.Errorf("tier %q is not known: use S1, S2 or S3 (F1 and B1 throttle as S1)", tier)
}

// DocumentedQuota returns IoT Hub's documented throttle for op on a hub of
// units units of tier (see IoT Hub's "Quotas and throttling").
func DocumentedQuota(tier string, units int, op Operation) (Quota, error) {
	t, err := normalTier(tier)
	if err != nil {
		return Quota{}, err
	}
	if units < 1 {
		return Quota{}, fmt.Errorf("units %d: a hub has at least 1 unit", units)
	}
	u := float64(units)
	perS1S2S3 := func(s1, s2, s3 float64) float64 {
		switch t {
		case TierS2:
			return s2
		case TierS3:
			return s3
		}
		return s1
	}
	const minute = 60.0
	var perSecond float64
	window := 1.0 // seconds of tokens a full bucket holds
	switch op {
	case OpMethods: // 160 KB/s/unit, 480 KB/s/unit, 24 MB/s/unit in 4 KB chunks
		perSecond = perS1S2S3(40*u, 120*u, 6000*u)
	case OpTwinReads:
		perSecond = perS1S2S3(100, math.Max(100, 10*u), 500*u)
	case OpTwinUpdates:
		perSecond = perS1S2S3(50, math.Max(50, 5*u), 250*u)
	case OpQueries:
		perSecond, window = perS1S2S3(20*u, 20*u, 1000*u)/minute, minute
	case OpRegistry:
		perSecond, window = perS1S2S3(100*u, 100*u, 5000*u)/minute, minute
	case OpConnections, OpTelemetry:
		perSecond = perS1S2S3(math.Max(100, 12*u), 120*u, 6000*u)
	default:
		return Quota{}, fmt.Errorf("operation %q is not known: use one of %s", op, operationNames())
	}
	return Quota{Rate: perSecond, Burst: burstFor(perSecond, window)}, nil
}

func burstFor(perSecond, window float64) int {
	return max(1, int(math.Ceil(perSecond*window-1e-9)))
}

func operationNames() string {
	names := make([]string, len(Operations))
	for i, op := range Operations {
		names[i] = string(op)
	}
	return strings.Join(names, ", ")
}

// methodCost is how many tokens a direct method with a payload of n bytes
// takes: one per started 4 KB chunk, at least one.
func methodCost(n int) int {
	return max(1, (n+methodChunk-1)/methodChunk)
}

// ParseQuota parses "op=rate" where rate is "N/s", "N/min" or a bare N per
// second, or "off" for no limit, e.g. "methods=500/s".
func ParseQuota(s string) (Operation, float64, error) {
	name, val, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok {
		return "", 0, fmt.Errorf("quota %q is not op=rate, e.g. methods=500/s", s)
	}
	op := Operation(strings.TrimSpace(name))
	if _, err := DocumentedQuota(TierS1, 1, op); err != nil {
		return "", 0, fmt.Errorf("quota %q: %w", s, err)
	}
	val = strings.TrimSpace(val)
	if strings.EqualFold(val, "off") || strings.EqualFold(val, "unlimited") {
		return op, math.Inf(1), nil
	}
	num, per := val, 1.0
	switch {
	case strings.HasSuffix(val, "/s"):
		num = strings.TrimSuffix(val, "/s")
	case strings.HasSuffix(val, "/min"):
		num, per = strings.TrimSuffix(val, "/min"), 60
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return "", 0, fmt.Errorf("quota %q: rate %q is not a positive number per /s or /min, or off", s, val)
	}
	return op, f / per, nil
}

// ParseQuotas parses a comma-separated list of ParseQuota items.
func ParseQuotas(s string) (map[Operation]float64, error) {
	out := map[Operation]float64{}
	for _, item := range strings.Split(s, ",") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		op, r, err := ParseQuota(item)
		if err != nil {
			return nil, err
		}
		out[op] = r
	}
	return out, nil
}

// FormatQuotas is the inverse of ParseQuotas, sorted by operation.
func FormatQuotas(q map[Operation]float64) string {
	items := make([]string, 0, len(q))
	for op, r := range q {
		v := strconv.FormatFloat(r, 'g', -1, 64) + "/s"
		if math.IsInf(r, 1) {
			v = "off"
		}
		items = append(items, string(op)+"="+v)
	}
	sort.Strings(items)
	return strings.Join(items, ",")
}

// quotas resolves the options into one quota per operation.
func (o *Options) quotas() (map[Operation]Quota, error) {
	out := make(map[Operation]Quota, len(Operations))
	for _, op := range Operations {
		if o.Unlimited {
			out[op] = Quota{Rate: math.Inf(1)}
			continue
		}
		q, err := DocumentedQuota(o.Tier, o.Units, op)
		if err != nil {
			return nil, fmt.Errorf("hub: %w", err)
		}
		if r, ok := o.Quotas[op]; ok {
			window := float64(q.Burst) / q.Rate
			q = Quota{Rate: r, Burst: burstFor(r, window)}
			if math.IsInf(r, 1) {
				q.Burst = 0
			}
		}
		out[op] = q
	}
	for op, r := range o.Quotas {
		if _, ok := out[op]; !ok {
			return nil, fmt.Errorf("hub: Options.Quotas: operation %q is not known: use one of %s", op, operationNames())
		}
		if !(r > 0) {
			return nil, fmt.Errorf("hub: Options.Quotas[%s] = %v: a rate must be positive (math.Inf(1) for no limit)", op, r)
		}
	}
	return out, nil
}

// throttle holds a token bucket per operation and counts refusals.
type throttle struct {
	maxDelay time.Duration
	buckets  map[Operation]*rate.Limiter // nil entry: no limit
	burst    map[Operation]int

	mu        sync.Mutex
	throttled map[Operation]int
}

func newThrottle(quotas map[Operation]Quota, maxDelay time.Duration) *throttle {
	t := &throttle{
		maxDelay:  maxDelay,
		buckets:   map[Operation]*rate.Limiter{},
		burst:     map[Operation]int{},
		throttled: map[Operation]int{},
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
// that ends while waiting returns its error and gives the tokens back.
func (t *throttle) wait(ctx context.Context, op Operation, n int) error {
	b := t.buckets[op]
	if b == nil {
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
		return nil
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		r.Cancel()
		return ctx.Err()
	}
}

func (t *throttle) count(op Operation) {
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
