package activities

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/dmflow/dmflow/internal/budget"
	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/protocol"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
)

// HubRate caps the IoT Hub calls of a group of activities (every device of a rollout), over
// every worker process: every twin read, method call and query the activities make for inputs
// carrying the same Key waits for a token of the key's rate, under the hub's own budget. The
// workers serving the key share its rate through the hub's budget leases (internal/budget).
type HubRate struct {
	// Key names the rate; a rollout uses its workflow ID.
	Key string `json:"key"`
	// PerSecond is the rate in hub calls per second over all workers; zero or less means no limit.
	PerSecond float64 `json:"perSecond"`
	// Burst is no longer used: each worker's bucket takes its burst from its share of the rate.
	// Kept so that inputs recorded with it still decode.
	Burst int `json:"burst,omitempty"`
}

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
	case math.IsInf(r.PerSecond, 1):
		return "rate: perSecond is infinite: set it to the hub calls per second, or 0 for no limit"
	case r.Key == "":
		return "rate: key is empty: set it to what names the group sharing the limit, e.g. the rollout's workflow ID"
	case r.Burst < 0:
		return fmt.Sprintf("rate %s: burst %d is negative: set it to at least 1, or 0 for one second's worth", r.Key, r.Burst)
	}
	return ""
}

// The hub operations as IoT Hub meters them, the keys of the hub budget (internal/hubquota).
const (
	opMethods     = string(hubquota.Methods)
	opTwinReads   = string(hubquota.TwinReads)
	opTwinUpdates = string(hubquota.TwinUpdates)
	opQueries     = string(hubquota.Queries)
)

// devicePatches is how many reported-property patches a device sends after taking method: the
// tutorials' firmware update reports downloading, applying and completed, their reboot rebootTime.
// A call to it waits for as many tokens of the hub's twin-update budget, so that devices are
// started no faster than the hub takes their reports.
func devicePatches(method string) int {
	switch method {
	case protocol.MethodFirmwareUpdate:
		return 3
	case protocol.MethodReboot:
		return 1
	}
	return 0
}

// Pacer paces the activities' hub calls: every call waits for its tokens first. The worker's is
// a budget.Leaser holding its lease on the hub budget and on the rollouts' ceilings, shared with
// the other workers of the hub through its HubBudget workflow.
type Pacer interface {
	Wait(ctx context.Context, takes []budget.Take, beatEvery time.Duration, beat func()) error
	Budgeted(op string) bool
}

// The worker's Leaser is a Pacer.
var _ Pacer = (*budget.Leaser)(nil)

// processPacer paces the calls of Activities without a Pacer: a leaser of this process alone, with
// no hub budget, which still holds every rollout's ceiling within the process.
var processPacer = sync.OnceValue(func() *budget.Leaser {
	return budget.New(budget.Config{Worker: "process"})
})

func (a *Activities) pacer() Pacer {
	if a.Pacer != nil {
		return a.Pacer
	}
	return processPacer()
}

// hubCall is one hub call, for pacing: its operation, and for a direct method the patches the
// device will send after taking it.
type hubCall struct {
	op      string
	patches int
}

// takeToken waits until call may go to the hub: a token of its operation's budget (and of the
// twin-update budget for the patches it sets off), and one of r's ceiling when r limits. beat
// heartbeats the activity with its progress while it waits; nil when the caller heartbeats by
// other means.
func (a *Activities) takeToken(ctx context.Context, call hubCall, r *HubRate, beat func()) error {
	p := a.pacer()
	var takes []budget.Take
	if p.Budgeted(call.op) {
		takes = append(takes, budget.Take{Key: call.op, N: 1})
	}
	if call.patches > 0 && p.Budgeted(opTwinUpdates) {
		takes = append(takes, budget.Take{Key: opTwinUpdates, N: call.patches})
	}
	if r.limited() {
		takes = append(takes, budget.Take{Key: budget.RolloutKeyPrefix + r.Key, Rate: r.PerSecond, N: 1})
	}
	if len(takes) == 0 {
		return nil
	}
	start := time.Now()
	err := p.Wait(ctx, takes, a.beatInterval(ctx), beat)
	if err == nil {
		activity.GetMetricsHandler(ctx).WithTags(map[string]string{LabelOp: call.op}).
			Timer(MetricBudgetWait).Record(time.Since(start))
	}
	return err
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
