package workflows

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dmflow/dmflow/activities"
	"go.temporal.io/sdk/workflow"
)

// Retries by failure type, and abort criteria by failure type (policy 4 of issue 18).
//
// Every failed device attempt has a failure type (FailureType): timed-out, offline or failed. A
// rollout with a RetryPolicy starts a device again, as a new request (RolloutUpdateID with the
// attempt number), when its attempt failed with a type the policy names and retries remain,
// after a backoff that doubles with each retry. The device waits out its backoff in its shard
// without holding a concurrency slot (DeviceRetrying, a durable timer), counts as pending, and
// its wave is not done until its last attempt ended: only then does a failure count against the
// thresholds. MaxTimeouts and MaxOffline are thresholds like MaxFailures for the devices whose
// last attempt timed out or found them offline.
//
// A retry never delivers a second update to a device that took an earlier one: its InvokeMethod
// reads the twin first (activities.ReadFirst) and, when the device shows an earlier request of the
// rollout running or completed (by its ID on dmflow's contract, by the hub's time of its report on
// the tutorials'), makes no call and follows that request instead (activities.Earlier).

// retriesChange is the workflow.GetVersion change ID of retries by failure type, asked in Rollout
// and RolloutShard only when a RetryPolicy (or a threshold by type) is given.
const retriesChange = "rollout-retries"

// Failure types of a failed device attempt (DeviceRow.FailureType): what RetryPolicy.On and the
// thresholds by type name.
const (
	// FailureTimedOut: the device did not finish a stage, its reboot or its update within the
	// stage timeout or the deadline, or did not answer the method in time.
	FailureTimedOut = "timed-out"
	// FailureOffline: the device was not connected (IoT Hub's 404103 DeviceNotOnline) whenever it
	// was called.
	FailureOffline = "offline"
	// FailureFailed: anything else: the device refused the update, reported an error, runs
	// another version afterwards, is not registered…
	FailureFailed = "failed"
)

// FailureTypes lists the failure types, for messages.
var FailureTypes = []string{FailureFailed, FailureTimedOut, FailureOffline}

// DeviceRetrying is the result of a device whose attempt failed with a type the rollout retries
// and which waits out its backoff before the next one (DeviceRow.RetryAt). It counts as pending.
const DeviceRetrying = "retrying"

// Defaults and bounds of RetryPolicy.
const (
	// MaxRetries bounds RetryPolicy.Count, as AWS IoT Jobs bounds its retries.
	MaxRetries = 10
	// DefaultRetryBackoff is the wait before a device's first retry; each next one waits twice as
	// long, up to MaxRetryBackoff. A minute gives an offline device time to come back and a slow
	// one time to finish what it started, without holding up its wave long.
	DefaultRetryBackoff = time.Minute
	// MinRetryBackoff and MaxRetryBackoff bound RetryPolicy.Backoff; MaxRetryBackoff also caps the
	// doubled waits.
	MinRetryBackoff = time.Second
	MaxRetryBackoff = time.Hour
)

// DefaultRetryOn are the failure types retried when RetryPolicy.On is empty: a device that timed
// out or was offline may well succeed later; one that refused the update or reported an error
// would most likely do so again.
var DefaultRetryOn = []string{FailureTimedOut, FailureOffline}

// RetryPolicy retries a device whose attempt failed with one of the failure types On, up to Count
// more times, each retry a new request. The first retry waits Backoff after the failure, each
// next one twice as long as the one before, up to MaxRetryBackoff.
type RetryPolicy struct {
	// Count is the most retries of one device, 1 to MaxRetries.
	Count int `json:"count"`
	// On are the failure types retried (FailureTimedOut, FailureOffline, FailureFailed); default
	// DefaultRetryOn.
	On []string `json:"on,omitempty"`
	// Backoff is the wait before the first retry, MinRetryBackoff to MaxRetryBackoff; default
	// DefaultRetryBackoff.
	Backoff time.Duration `json:"backoff,omitempty"`
}

// withDefaults fills the zero fields.
func (p RetryPolicy) withDefaults() RetryPolicy {
	if len(p.On) == 0 {
		p.On = slices.Clone(DefaultRetryOn)
	}
	if p.Backoff == 0 {
		p.Backoff = DefaultRetryBackoff
	}
	return p
}

// Retries reports whether the policy retries a failure of type t.
func (p RetryPolicy) Retries(t string) bool {
	return slices.Contains(p.withDefaults().On, t)
}

// Delay is the wait before retry n (1 for the first): Backoff doubled n-1 times, at most
// MaxRetryBackoff.
func (p RetryPolicy) Delay(n int) time.Duration {
	d := p.withDefaults().Backoff
	for i := 1; i < n && d < MaxRetryBackoff; i++ {
		d *= 2
	}
	return min(d, MaxRetryBackoff)
}

// String is "3 on timed-out,offline, backoff 1m".
func (p RetryPolicy) String() string {
	p = p.withDefaults()
	return fmt.Sprintf("%d on %s, backoff %s", p.Count, strings.Join(p.On, ","), ShortDuration(p.Backoff))
}

// problems says what is wrong with the policy.
func (p RetryPolicy) problems() []string {
	var out []string
	if p.Count < 1 || p.Count > MaxRetries {
		out = append(out, fmt.Sprintf("retries %d must lie between 1 and %d", p.Count, MaxRetries))
	}
	if _, err := CheckFailureTypes(p.On); err != nil {
		out = append(out, err.Error())
	}
	if p.Backoff != 0 && (p.Backoff < MinRetryBackoff || p.Backoff > MaxRetryBackoff) {
		out = append(out, fmt.Sprintf("retry backoff %s must lie between %s and %s", p.Backoff, MinRetryBackoff, MaxRetryBackoff))
	}
	return out
}

// CheckFailureTypes checks a list of failure types (RetryPolicy.On) and returns it without
// repeats, in the order given.
func CheckFailureTypes(types []string) ([]string, error) {
	var out []string
	for _, t := range types {
		t = strings.TrimSpace(t)
		if !slices.Contains(FailureTypes, t) {
			return nil, fmt.Errorf("retry on %q: the failure types are %s", t, strings.Join(FailureTypes, ", "))
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

// FailureType classifies a failed device attempt by its error type (DeviceRow.ErrorType, the
// activities' or workflows' Err* type, or "Timeout" for a Temporal timeout) and message. This is
// the one place that decides it:
//
//   - offline: ErrDeviceNotOnline, and any failure whose message names IoT Hub's 404103
//     DeviceNotOnline or 404104 DeviceConnectionClosedRemotely (an attempt that retried an
//     offline device until its deadline ends with ErrDeadlineExceeded carrying the last answer);
//   - timed-out: ErrDeadlineExceeded, ErrStageTimeout and Temporal timeouts otherwise (a stage,
//     the reboot or the update not finished in time, a device that did not answer in time:
//     504101 GatewayTimeout);
//   - failed: everything else (a refusal, a device error, another version afterwards, an unknown
//     device, a shard cancelled outside the rollout…).
func FailureType(errType, errMsg string) string {
	switch {
	case errType == activities.ErrDeviceNotOnline:
		return FailureOffline
	case errType == activities.ErrDeadlineExceeded || errType == activities.ErrStageTimeout || errType == "Timeout":
		if notConnected(errMsg) {
			return FailureOffline
		}
		return FailureTimedOut
	}
	return FailureFailed
}

// notConnected reports whether a failure's message is IoT Hub's answer for a device that is not
// connected.
func notConnected(msg string) bool {
	for _, s := range []string{"404103", "DeviceNotOnline", "404104", "DeviceConnectionClosedRemotely"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// retryProblems says what is wrong with the input's retries and thresholds by type.
func (in RolloutInput) retryProblems() []string {
	var problems []string
	if in.Retries != nil {
		problems = append(problems, in.Retries.problems()...)
		if in.RetryFailed {
			problems = append(problems, "retries and retry-failed both run failed devices again: use retries (with on: failed to retry refusals and device errors too), or retry-failed for one more pass at the end, not both")
		}
	}
	for _, t := range []struct{ name, value string }{{"max timeouts", in.MaxTimeouts}, {"max offline", in.MaxOffline}} {
		if t.value == "" {
			continue
		}
		if _, err := ParseThreshold(t.value); err != nil {
			problems = append(problems, t.name+": "+err.Error())
		}
	}
	return problems
}

// retriesOn reports whether the input asks for retries or thresholds by failure type.
func (in RolloutInput) retriesOn() bool {
	return in.Retries != nil || in.MaxTimeouts != "" || in.MaxOffline != ""
}

// typeThreshold is a threshold by failure type and what it counts.
type typeThreshold struct {
	failure string // FailureTimedOut or FailureOffline
	flag    string // how people name it: max-timeouts
	verb    string // "timed out"
	th      Threshold
	// wave counts, per wave, the devices whose last attempt failed with the type; total all of
	// them.
	wave  []int
	total int
}

// rolloutRetries is a rollout's state of retries by failure type: the thresholds by type and the
// counts they judge, derived from the shards' tallies (sumTypes).
type rolloutRetries struct {
	thresholds []*typeThreshold
}

// newRolloutRetries asks, once per run and only when the input has them, for the version of
// retries by failure type; nil for a rollout without them.
func newRolloutRetries(ctx workflow.Context, in RolloutInput) *rolloutRetries {
	if !in.retriesOn() || workflow.GetVersion(ctx, retriesChange, workflow.DefaultVersion, 1) < 1 {
		return nil
	}
	rt := &rolloutRetries{}
	for _, t := range []struct{ failure, flag, verb, value string }{
		{FailureTimedOut, "max-timeouts", "timed out", in.MaxTimeouts},
		{FailureOffline, "max-offline", "were offline", in.MaxOffline},
	} {
		if t.value == "" {
			continue
		}
		th, _ := ParseThreshold(t.value) // Validate parsed it
		rt.thresholds = append(rt.thresholds, &typeThreshold{failure: t.failure, flag: t.flag, verb: t.verb, th: th})
	}
	return rt
}

// retryPolicy is the policy the rollout hands its shards, nil without one.
func (r *rollout) retryPolicy() *RetryPolicy {
	if r.retries == nil || r.in.Retries == nil {
		return nil
	}
	p := r.in.Retries.withDefaults()
	return &p
}

// sumTypes derives the counts by failure type from the waves' tallies (sumShards).
func (r *rollout) sumTypes(waves []WaveTally) {
	if r.retries == nil {
		return
	}
	for _, t := range r.retries.thresholds {
		t.wave, t.total = make([]int, len(r.waveDone)), 0
		for _, w := range waves {
			n := w.TimedOut
			if t.failure == FailureOffline {
				n = w.Offline
			}
			t.wave[w.Wave] += n
			t.total += n
		}
	}
}

// checkTypeThresholds sets abortReason when the devices of one failure type in wave w, or among
// all devices finished, exceed their threshold, judged as checkThreshold judges MaxFailures: a
// wave against its size, all devices by count at once, by percentage once a wave has finished
// and MinDevices have. It reports whether it did.
func (r *rollout) checkTypeThresholds(w int) bool {
	if r.retries == nil || w >= len(r.st.WaveSizes) {
		return false
	}
	size := r.st.WaveSizes[w]
	for _, t := range r.retries.thresholds {
		n := 0
		if w < len(t.wave) {
			n = t.wave[w]
		}
		if allowed := t.th.Allowed(size); n > allowed {
			r.abortReason = fmt.Sprintf("%d of the %d devices of wave %d %s, more than the %s allowed by %s (%d)",
				n, size, w+1, t.verb, t.th, t.flag, allowed)
			return true
		}
		switch {
		case !t.th.IsPct:
			if t.total > t.th.Count {
				r.abortReason = fmt.Sprintf("%d devices %s, more than the %d allowed by %s", t.total, t.verb, t.th.Count, t.flag)
				return true
			}
		case r.waveDone[w] >= size && r.finished >= r.in.MinDevices:
			if allowed := t.th.Allowed(r.finished); t.total > allowed {
				r.abortReason = fmt.Sprintf("%d of the %d devices finished %s, more than the %s allowed by %s (%d)",
					t.total, r.finished, t.verb, t.th, t.flag, allowed)
				return true
			}
		}
	}
	return false
}

// retriesProgress fills the progress's fields of retries by failure type.
func (r *rollout) retriesProgress(p *RolloutProgress) {
	if r.fl == nil {
		return
	}
	c := r.agg
	p.TimedOut, p.Offline, p.AwaitingRetry, p.RetriesStarted = c.TimedOut, c.Offline, c.AwaitingRetry, c.Retries
	if r.retries == nil {
		return
	}
	p.RetryPolicy = r.retryPolicy()
	p.MaxTimeouts, p.MaxOffline = r.in.MaxTimeouts, r.in.MaxOffline
	for _, t := range r.retries.thresholds {
		// As MaxFailures shows it: the threshold as parsed.
		if t.failure == FailureTimedOut {
			p.MaxTimeouts = t.th.String()
		} else {
			p.MaxOffline = t.th.String()
		}
	}
}

// countType counts a row's failure type and retries (Tally.count).
func (t *Tally) countType(row DeviceRow) {
	if row.Result == DeviceFailed {
		switch row.FailureType {
		case FailureTimedOut:
			t.TimedOut++
		case FailureOffline:
			t.Offline++
		}
	}
	n := len(row.RetriedOn)
	if row.Result == DeviceRetrying {
		t.AwaitingRetry++
		n-- // the retry it waits for has not started
	}
	t.Retries += max(n, 0)
}

// addTypes adds (sign 1) or subtracts (sign -1) o's counts by failure type (Tally.add).
func (t *Tally) addTypes(o Tally, sign int) {
	t.TimedOut += sign * o.TimedOut
	t.Offline += sign * o.Offline
	t.AwaitingRetry += sign * o.AwaitingRetry
	t.Retries += sign * o.Retries
}

// countType counts a finished row's failure type in its wave (shard.tally).
func (w *WaveTally) countType(row DeviceRow) {
	if row.Result != DeviceFailed {
		return
	}
	switch row.FailureType {
	case FailureTimedOut:
		w.TimedOut++
	case FailureOffline:
		w.Offline++
	}
}

// addTypes adds o's counts by failure type (addWaves).
func (w *WaveTally) addTypes(o WaveTally) {
	w.TimedOut += o.TimedOut
	w.Offline += o.Offline
}

// retryNeed is how many more device runs than its quotas say the shard needs slots for: the
// retries by failure type started (they finish as runs) and those its devices wait for. A device
// waiting out its backoff holds no slot in its shard, whose other devices run meanwhile; the
// shard keeps the share of the rollout's concurrency that the device will need again, so that a
// shard's need never rises and MaxConcurrent holds across shards (see flushCommands).
func (t ShardTally) retryNeed() int { return t.Retries + t.AwaitingRetry }
