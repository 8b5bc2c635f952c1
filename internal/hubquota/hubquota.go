// Package hubquota holds IoT Hub's documented per-hub throttles ("Quotas and
// throttling", https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-quotas-throttling):
// the throttled operations, the rate and burst of each by tier and units, and
// the "op=rate" notation that overrides them. dmflow's workers budget their hub
// calls from it, and localhub (internal/sim/hub) throttles by it.
package hubquota

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Op names a throttled IoT Hub operation: one token bucket for the whole hub
// per operation, as IoT Hub meters them.
type Op string

// Throttled operations. The names are those of localhub's --quota and
// Stats.Throttled.
const (
	// Methods is direct-method invocations, metered in 4 KB chunks of
	// request payload: a 9 KB payload costs 3 (see MethodCost).
	Methods Op = "methods"
	// TwinReads is twin reads from services (GET /twins/{id}) and devices
	// ($iothub/twin/GET).
	TwinReads Op = "twinReads"
	// TwinUpdates is twin updates from services (PATCH/PUT /twins/{id})
	// and devices (reported-property PATCH).
	TwinUpdates Op = "twinUpdates"
	// Queries is POST /devices/query requests (one page is one query).
	Queries Op = "queries"
	// Registry is identity registry operations: create, get, list, update,
	// delete. A bulk request (POST /devices, up to 100 devices) counts as
	// one: IoT Hub documents the throttle per operation (call), and the
	// bulk API exists to register many devices under it.
	Registry Op = "registry"
	// Connections is new device connections (the rate, not the total).
	Connections Op = "connections"
	// Telemetry is device-to-cloud sends.
	Telemetry Op = "telemetry"
)

// Ops lists every throttled operation.
var Ops = []Op{Methods, TwinReads, TwinUpdates, Queries, Registry, Connections, Telemetry}

// Tiers whose throttles are documented. F1 (free) and B1 take the S1
// figures; B2 and B3 those of S2 and S3 (see NormalTier).
const (
	S1 = "S1"
	S2 = "S2"
	S3 = "S3"
)

// methodChunk is the unit direct methods are metered in.
const methodChunk = 4 * 1024

// Quota is a documented throttle: Rate tokens per second, refilled
// continuously, with at most Burst saved. Burst is one metering window's
// worth (a second or a minute, as the quota is documented), so a hub at rest
// takes a window's worth of requests at once, as IoT Hub does.
type Quota struct {
	Rate  float64 // per second; +Inf for no limit
	Burst int
}

// Unlimited reports whether the quota lets everything through.
func (q Quota) Unlimited() bool { return math.IsInf(q.Rate, 1) }

// WithRate returns the quota at rate per second (+Inf for no limit), its
// bucket holding the same window's worth as q's: an override of a
// documented rate keeps the documented metering window.
func (q Quota) WithRate(rate float64) Quota {
	if math.IsInf(rate, 1) {
		return Quota{Rate: rate}
	}
	return Quota{Rate: rate, Burst: burstFor(rate, float64(q.Burst)/q.Rate)}
}

// NormalTier maps a tier name (any case; empty for the default) to S1, S2
// or S3, the tiers whose throttles IoT Hub documents.
func NormalTier(tier string) (string, error) {
	switch strings.ToUpper(strings.TrimSpace(tier)) {
	case "", "S1", "F1", "B1":
		return S1, nil
	case "S2", "B2":
		return S2, nil
	case "S3", "B3":
		return S3, nil
	}
	return "", fmt.Errorf("tier %q is not known: use S1, S2 or S3 (F1 and B1 throttle as S1)", tier)
}

// Documented returns IoT Hub's documented throttle for op on a hub of units
// units of tier.
func Documented(tier string, units int, op Op) (Quota, error) {
	t, err := NormalTier(tier)
	if err != nil {
		return Quota{}, err
	}
	if units < 1 {
		return Quota{}, fmt.Errorf("units %d: a hub has at least 1 unit", units)
	}
	u := float64(units)
	perS1S2S3 := func(s1, s2, s3 float64) float64 {
		switch t {
		case S2:
			return s2
		case S3:
			return s3
		}
		return s1
	}
	const minute = 60.0
	var perSecond float64
	window := 1.0 // seconds of tokens a full bucket holds
	switch op {
	case Methods: // 160 KB/s/unit, 480 KB/s/unit, 24 MB/s/unit in 4 KB chunks
		perSecond = perS1S2S3(40*u, 120*u, 6000*u)
	case TwinReads:
		perSecond = perS1S2S3(100, math.Max(100, 10*u), 500*u)
	case TwinUpdates:
		perSecond = perS1S2S3(50, math.Max(50, 5*u), 250*u)
	case Queries:
		perSecond, window = perS1S2S3(20*u, 20*u, 1000*u)/minute, minute
	case Registry:
		perSecond, window = perS1S2S3(100*u, 100*u, 5000*u)/minute, minute
	case Connections, Telemetry:
		perSecond = perS1S2S3(math.Max(100, 12*u), 120*u, 6000*u)
	default:
		return Quota{}, fmt.Errorf("operation %q is not known: use one of %s", op, opNames())
	}
	return Quota{Rate: perSecond, Burst: burstFor(perSecond, window)}, nil
}

func burstFor(perSecond, window float64) int {
	return max(1, int(math.Ceil(perSecond*window-1e-9)))
}

func opNames() string {
	names := make([]string, len(Ops))
	for i, op := range Ops {
		names[i] = string(op)
	}
	return strings.Join(names, ", ")
}

// MethodCost is how many tokens a direct method with a request payload of
// payloadBytes takes: one per started 4 KB chunk, at least one.
func MethodCost(payloadBytes int) int {
	return max(1, (payloadBytes+methodChunk-1)/methodChunk)
}

// Parse parses "op=rate" where rate is "N/s", "N/min" or a bare N per
// second, or "off" for no limit, e.g. "methods=500/s". It returns the rate
// per second, +Inf for off.
func Parse(s string) (Op, float64, error) {
	name, val, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok {
		return "", 0, fmt.Errorf("quota %q is not op=rate, e.g. methods=500/s", s)
	}
	op := Op(strings.TrimSpace(name))
	if _, err := Documented(S1, 1, op); err != nil {
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
	// f/per > 0 also refuses NaN, and a rate per minute too small to be one per second.
	if err != nil || !(f/per > 0) || math.IsInf(f, 0) {
		return "", 0, fmt.Errorf("quota %q: rate %q is not a positive number per /s or /min, or off", s, val)
	}
	return op, f / per, nil
}

// ParseList parses a comma-separated list of Parse items; empty items are
// skipped, and a later item for an operation replaces an earlier one.
func ParseList(s string) (map[Op]float64, error) {
	out := map[Op]float64{}
	for _, item := range strings.Split(s, ",") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		op, r, err := Parse(item)
		if err != nil {
			return nil, err
		}
		out[op] = r
	}
	return out, nil
}

// FormatList is the inverse of ParseList, sorted by operation.
func FormatList(q map[Op]float64) string {
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
