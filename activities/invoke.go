package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/dmflow/dmflow/internal/hubconn"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
)

// IoT Hub limits for direct methods (REST API "Invoke device method").
const (
	minResponseTimeout     = 5 * time.Second
	maxResponseTimeout     = 300 * time.Second
	maxConnectTimeout      = 300 * time.Second
	defaultResponseTimeout = 30 * time.Second // what the hub applies when the field is left out
	maxPayloadBytes        = 128 * 1024
)

const (
	// callSlack is added to the hub's own timeouts to bound the HTTP call locally: the hub answers
	// 504101 once the response timeout passes, so a call still open after that plus TLS and
	// round-trip time is stuck in the network, and ending it here gives a classified, retryable
	// error instead of waiting for the activity's StartToCloseTimeout.
	callSlack = 10 * time.Second
	// defaultHeartbeatInterval is used when the activity has no heartbeat timeout: heartbeats are
	// still how a running activity learns that it was cancelled.
	defaultHeartbeatInterval = 5 * time.Second
)

// InvokeMethodInput names a direct method call. It carries no credentials: the worker's Hub has them.
type InvokeMethodInput struct {
	DeviceID string `json:"deviceId"`
	Method   string `json:"method"`
	// Payload is sent as the method's JSON payload (at most 128 KB). Idempotent methods carry a
	// request ID in it so that a device can ignore a call repeated by a retry.
	Payload map[string]any `json:"payload,omitempty"`
	// ResponseTimeout is how long the hub waits for the device's answer, rounded up to whole seconds;
	// IoT Hub accepts 5–300 s. Zero leaves the hub's default of 30 s.
	ResponseTimeout time.Duration `json:"responseTimeout,omitempty"`
	// ConnectTimeout is how long the hub waits for a disconnected device to connect, rounded up to
	// whole seconds; IoT Hub accepts 0–300 s. Zero means the device must be connected now, otherwise
	// the hub answers DeviceNotOnline, which is retried.
	ConnectTimeout time.Duration `json:"connectTimeout,omitempty"`
	// Rate, when set, draws a token from the rollout's bucket before each hub call.
	Rate *HubRate `json:"rate,omitempty"`
	// Evidence, when set, is how a retry tells that an earlier attempt's call reached the device
	// (see InvokeMethod): on both device contracts, from the twin alone.
	Evidence *Evidence `json:"evidence,omitempty"`
	// ReadFirst, when set, makes the attempt read the device's twin before calling, within this
	// activity, once for the operation rather than once per attempt; see ReadFirst. With it,
	// Evidence.Before is taken from that read, whatever the input holds.
	ReadFirst *ReadFirst `json:"readFirst,omitempty"`
	// AcceptedWhen is the check of workflows started before Evidence existed, kept so that they
	// run on as they began: every retry (attempt 2 on) reads the twin first and returns
	// AlreadyAccepted when the device reports the property with the value. Ignored when Evidence
	// is set.
	AcceptedWhen *ReportedValue `json:"acceptedWhen,omitempty"`
	// FailOffline ends the operation at the hub's first DeviceNotOnline (404103) with the
	// non-retryable ErrDeviceNotOnline instead of retrying the call: for a caller that retries
	// offline devices itself, later, and frees the device's slot meanwhile (a rollout's retries by
	// failure type). Nothing was delivered then.
	FailOffline bool `json:"failOffline,omitempty"`
}

// ReportedValue is a reported property with the value that shows a method call was received.
type ReportedValue struct {
	Property string `json:"property"`
	Value    string `json:"value"`
}

// InvokeMethodResult is the device's answer to a direct method.
type InvokeMethodResult struct {
	// Status is the status the device answered with, in 200–299 (other statuses fail the activity);
	// 0 when no answer was read (AlreadyAccepted by Evidence, or an answer the hub garbled).
	Status int `json:"status"`
	// Payload is the device's payload as it sent it: any JSON value, or empty when it sent none.
	Payload json.RawMessage `json:"payload,omitempty"`
	// Attempt is the activity attempt that got the answer (1 for the first), so that a workflow can
	// report how many invocations it took, retries of offline devices included.
	Attempt int `json:"attempt"`
	// Calls is the number of calls that reached the hub over all attempts; a retry that found
	// evidence made none.
	Calls int `json:"calls,omitempty"`
	// AlreadyAccepted is set when a retry found the device had taken an earlier attempt's call and
	// made no call; AcceptedBy then says how it knew: "id" (the device reports this request's ID)
	// or "changed" (the property the device writes changed after the read before the call).
	AlreadyAccepted bool   `json:"alreadyAccepted,omitempty"`
	AcceptedBy      string `json:"acceptedBy,omitempty"`
	// TwinReads counts the twin reads made looking for evidence, and ReadFirst's, over all
	// attempts.
	TwinReads int `json:"twinReads,omitempty"`
	// Skipped is set when the device reported ReadFirst.SkipIf and no call was made.
	Skipped bool `json:"skipped,omitempty"`
	// Read is ReadFirst's read, the one the operation's decisions were based on: the reported
	// properties ReadFirst.Properties named, with the hub's times of them, as GetTwin returns them.
	Read *GetTwinResult `json:"read,omitempty"`
	// EvidenceBefore is the Evidence.Before that ReadFirst set: Read.LastUpdated[Evidence.Property],
	// or, in ReadFirst's fallback, ScheduledAt less readFirstSlack. It is the "before" of what
	// follows the call (FollowStages' StatusBefore, WaitForReported's Changed). With Earlier set
	// it is Earlier.Before, the "before" of the earlier request to follow.
	EvidenceBefore string `json:"evidenceBefore,omitempty"`
	// Earlier is set when ReadFirst.Earlier found that the device took an earlier request of the
	// operation, which it is at or finished: no call was made.
	Earlier *EarlierTaken `json:"earlier,omitempty"`

	// SkipReason says why ReadFirst.Touched skipped the call (Skipped is set too).
	SkipReason string `json:"skipReason,omitempty"`
}

// InvokeProgress is what InvokeMethod records in its heartbeat details: which attempt it is and
// what its call came to. The next attempt reads it back to decide whether it must look for
// evidence before calling again. The SDK sends the last details when an attempt fails, so an
// attempt that ends with a not-delivered outcome is known as such.
type InvokeProgress struct {
	Attempt int `json:"attempt"`
	// Outcome is OutcomeLooking, OutcomeCalling or a delivery ("not delivered", "maybe delivered",
	// "delivered"); "not delivered" also when ReadFirst's read failed before anything was called.
	Outcome   string `json:"outcome"`
	Calls     int    `json:"calls,omitempty"`
	TwinReads int    `json:"twinReads,omitempty"`
	// LastError is the failure of the last call, kept for the error of an attempt that finds no
	// evidence and has no time left to call again.
	LastError string `json:"lastError,omitempty"`
	// Read and Before are ReadFirst's read and the Evidence.Before taken from it, carried by every
	// attempt's details from the one that read on.
	Read   *GetTwinResult `json:"read,omitempty"`
	Before string         `json:"before,omitempty"`
}

// Outcomes in InvokeProgress besides the deliveries.
const (
	// OutcomeLooking: the attempt is looking for evidence of an earlier call.
	OutcomeLooking = "looking for evidence"
	// OutcomeCalling: the request is on its way; a worker that dies now leaves a call that may have
	// reached the device.
	OutcomeCalling = "calling"
)

// progressBox guards an InvokeProgress that the heartbeat goroutine reads.
type progressBox struct {
	mu sync.Mutex
	p  InvokeProgress
}

func (b *progressBox) get() any {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.p
}

func (b *progressBox) update(fn func(p *InvokeProgress)) {
	b.mu.Lock()
	fn(&b.p)
	b.mu.Unlock()
}

// InvokeMethod invokes a direct method on a device through IoT Hub and returns the device's answer.
//
// The call lasts as long as the device takes to answer (the reboot tutorial's device answers after
// its ~20 s reboot), so the activity heartbeats while the call is in flight: a HeartbeatTimeout then
// detects a dead worker long before the StartToCloseTimeout would.
//
// Delivery. Every outcome is classed as not delivered (the hub refused before the device: offline,
// throttled, unauthorized, bad request, unknown device; or the request never left), maybe
// delivered (the hub timed out waiting for the device, 5xx, a connection cut after the request was
// sent, a worker that died during the call) or delivered (the hub answered with the device's
// status, whatever the payload). A delivered call is never repeated: a refusal fails for good, any
// payload is kept as the device sent it. With in.Evidence set, an attempt after one that may have
// reached the device first reads the twin, for up to Evidence.Window, and returns AlreadyAccepted
// when it shows the device took the call; only then does it call again. An attempt after one that
// was not delivered calls at once.
//
// With in.ReadFirst set, the operation's first attempt reads the twin before all that, and the
// operation ends without a call when the read shows ReadFirst.SkipIf (Skipped) or this request's
// ID (AlreadyAccepted); the read and the Evidence.Before it gives are kept for the retries, and a
// retry that finds no record of them falls back on a read of its own and a look for evidence (see
// ReadFirst).
//
// Errors: invalid input → ErrBadRequest; hub errors as classify decides; a device status outside
// 200–299 → non-retryable ErrMethodFailed with the InvokeMethodResult as the error's details, since the
// device has run the method and said no.
func (a *Activities) InvokeMethod(ctx context.Context, in InvokeMethodInput) (InvokeMethodResult, error) {
	logger := log.With(activity.GetLogger(ctx), "device", in.DeviceID, "method", in.Method)
	attempt := int(activity.GetInfo(ctx).Attempt)

	call, callTimeout, err := in.methodCall()
	if err != nil {
		return InvokeMethodResult{}, err
	}
	if a.Hub == nil {
		return InvokeMethodResult{}, errNoHub
	}

	var prev InvokeProgress
	var prevp *InvokeProgress
	if activity.HasHeartbeatDetails(ctx) && activity.GetHeartbeatDetails(ctx, &prev) == nil {
		prevp = &prev
	}
	box := &progressBox{p: InvokeProgress{Attempt: attempt, Outcome: OutcomeLooking, Calls: prev.Calls, TwinReads: prev.TwinReads,
		LastError: prev.LastError, Read: prev.Read, Before: prev.Before}}
	result := func(r InvokeMethodResult) InvokeMethodResult {
		p := box.get().(InvokeProgress)
		r.Attempt, r.Calls, r.TwinReads = attempt, p.Calls, p.TwinReads
		r.Read, r.EvidenceBefore = p.Read, p.Before
		return r
	}

	// The heartbeats cover the read, the look for evidence and the wait for a rate token as well
	// as the call.
	stop := a.heartbeatWhile(ctx, box.get)
	defer stop()
	look := lookFirst(in.Evidence, attempt, prevp)
	if in.ReadFirst != nil {
		fresh := prevp == nil || prevp.Read == nil
		done, fallback, err := a.readFirst(ctx, logger, in, attempt, prevp, box, stop)
		if err != nil {
			return InvokeMethodResult{}, err
		}
		if done != nil {
			r := result(*done)
			if r.Earlier != nil {
				logger.Info("the device took an earlier request of this operation: not calling", "earlier_id", r.Earlier.ID,
					"by", r.Earlier.By, "value", r.Earlier.Value)
				r.EvidenceBefore = r.Earlier.Before
			}
			return r, nil
		}
		in.Evidence = withBefore(in.Evidence, box.get().(InvokeProgress).Before)
		switch {
		case fallback:
			// lookFirst already holds for every fallback (readFallback asks what it asks); said
			// here too, since a fallback that called without looking could deliver twice.
			look = in.Evidence != nil
		case fresh:
			// No attempt before this one recorded a read, and none calls before recording it:
			// nothing was called yet.
			look = false
		}
	}
	switch {
	case look:
		how, err := a.lookBeforeCall(ctx, logger, in, box, prevp, callTimeout, stop)
		if err != nil {
			return InvokeMethodResult{}, err
		}
		if how != "" {
			return result(InvokeMethodResult{AlreadyAccepted: true, AcceptedBy: how}), nil
		}
	case in.Evidence == nil && attempt > 1 && in.AcceptedWhen != nil && a.accepted(ctx, logger, in):
		return result(InvokeMethodResult{Status: 200, AlreadyAccepted: true, AcceptedBy: "id"}), nil
	}
	if err := a.takeToken(ctx, hubCall{op: opMethods, patches: devicePatches(in.Method)}, in.Rate, nil); err != nil {
		return InvokeMethodResult{}, tokenError(ctx, logger, err)
	}

	box.update(func(p *InvokeProgress) { p.Outcome = OutcomeCalling; p.Calls++ })
	activity.RecordHeartbeat(ctx, box.get())
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	// The SDK's activity logger already carries the attempt number.
	logger.Info("invoking direct method",
		"response_timeout_s", call.ResponseTimeout, "connect_timeout_s", call.ConnectTimeout)
	res, err := a.Hub.CallMethod(callCtx, in.DeviceID, call)
	cancel()
	// Stopped first, so that the heartbeat below is the last one.
	stop()
	d := deliveryOf(err)
	box.update(func(p *InvokeProgress) {
		p.Outcome = d.String()
		if err != nil {
			p.LastError = shortError(classify(err, "invoke "+in.Method, in.DeviceID))
		}
	})
	// Sent at once or, throttled, with the failure: the next attempt reads it.
	activity.RecordHeartbeat(ctx, box.get())

	var unreadable *hubconn.UnreadableAnswerError
	switch {
	case errors.As(err, &unreadable):
		// Delivered, so not to be repeated; what the device did shows in its twin.
		logger.Warn("the hub's answer is unreadable; taking the call as delivered", "error", err)
		return result(InvokeMethodResult{}), nil
	case ctx.Err() != nil:
		// Cancelled or timed out as an activity: report that, not the aborted HTTP call.
		return InvokeMethodResult{}, ctx.Err()
	case err != nil:
		if offline := classify(err, "invoke "+in.Method, in.DeviceID); in.FailOffline && notOnline(err) {
			logger.Warn("device not online: failing at once, as asked", "error", offline)
			return InvokeMethodResult{}, temporal.NewNonRetryableApplicationError(offline.Error(), ErrDeviceNotOnline, nil)
		}
		err = classify(err, "invoke "+in.Method, in.DeviceID)
		if d == maybeDelivered && in.Evidence != nil && !isNonRetryable(err) {
			err = &hubCallError{msg: err.Error() + " (the call may have reached the device: the next attempt looks for evidence in its twin before calling again)", err: err}
		}
		logger.Warn("direct method failed", "delivery", d.String(), "error", err)
		return InvokeMethodResult{}, err
	}

	out := result(InvokeMethodResult{Status: res.Status, Payload: asJSON(res.Payload)})
	if res.Status < 200 || res.Status > 299 {
		logger.Warn("device answered with a failure status", "status", res.Status)
		return InvokeMethodResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("invoke %s on %s: device answered status %d with payload %s",
				in.Method, in.DeviceID, res.Status, PayloadString(out.Payload)),
			ErrMethodFailed, nil, out)
	}
	logger.Info("device answered", "status", res.Status)
	return out, nil
}

// lookBeforeCall looks for evidence that an earlier attempt's call reached the device, and returns
// how it found it ("id", "changed"), or "" when the attempt is to call.
//
// The whole window is looked through before a call: a device that took the call may show it only
// after its first stage. Where the window and a call do not both fit before the activity's deadline
// (the operation's), there is no call: the look goes on to the deadline and the attempt fails
// saying what the last call came to, recorded (after stop, so that it is the last heartbeat) for
// an attempt after this one, should there be time for one.
func (a *Activities) lookBeforeCall(ctx context.Context, logger log.Logger, in InvokeMethodInput, box *progressBox,
	prev *InvokeProgress, callTimeout time.Duration, stop func()) (string, error) {
	until := time.Now().Add(in.Evidence.Window)
	canCall := true
	if dl, ok := ctx.Deadline(); ok && until.Add(callTimeout).After(dl) {
		until, canCall = dl.Add(-lookMargin), false
	}
	how, err := a.lookForEvidence(ctx, logger, in, box, until)
	if err != nil || how != "" || canCall {
		return how, err
	}
	last := box.get().(InvokeProgress).LastError
	if prev != nil && prev.Outcome == OutcomeCalling {
		last = "the worker of attempt " + strconv.Itoa(prev.Attempt) + " stopped during its call, which may have reached the device"
	} else if last == "" {
		last = "the last call may have reached the device"
	}
	box.update(func(p *InvokeProgress) { p.LastError = last })
	stop()
	activity.RecordHeartbeat(ctx, box.get())
	return "", fmt.Errorf("%s; the twin showed no sign that it did up to the deadline, too close to look for %s and then call again",
		last, in.Evidence.Window)
}

// lookFirst reports whether an attempt must look for evidence of an earlier call before calling:
// every retry must, unless the attempt just before it recorded that its call was not delivered.
// Details of an older attempt say nothing of the last one, which died before it recorded any.
func lookFirst(ev *Evidence, attempt int, prev *InvokeProgress) bool {
	if ev == nil || attempt <= 1 {
		return false
	}
	return prev == nil || prev.Attempt != attempt-1 || prev.Outcome != notDelivered.String()
}

// errNoEvidence ends a look for evidence whose window passed.
var errNoEvidence = errors.New("no evidence within the window")

// lookForEvidence reads the twin until it shows that the device took an earlier attempt's call, or
// until. It returns how the twin showed it ("id", "changed"), or "" when it did
// not, and an error only when the activity was cancelled or the hub refused the read for good.
func (a *Activities) lookForEvidence(ctx context.Context, logger log.Logger, in InvokeMethodInput, box *progressBox, until time.Time) (string, error) {
	ev := *in.Evidence
	logger.Info("an earlier attempt may have reached the device: looking for evidence before calling again",
		"property", ev.Property, "id_property", ev.IDProperty, "window", ev.Window)
	how := ""
	err := a.runPoll(ctx, logger, twinPoll{
		deviceID:    in.DeviceID,
		initial:     evidenceInitialInterval,
		maxInterval: evidenceMaxInterval,
		multiplier:  waitMultiplier,
		jitter:      waitJitter,
		observe: func(reported map[string]any, readErr error) (bool, error) {
			box.update(func(p *InvokeProgress) { p.TwinReads++ })
			if readErr == nil {
				if ok, why := ev.Seen(reported); ok {
					how = why
					logger.Info("the device took an earlier attempt's call; not calling again", "evidence", why)
					return true, nil
				} else {
					logger.Debug("no evidence yet", "reason", why)
				}
			}
			if !time.Now().Before(until) {
				return false, errNoEvidence
			}
			return false, nil
		},
		nextDeadline: func() time.Time { return until },
		progress:     box.get,
		rate:         in.Rate,
	})
	if errors.Is(err, errNoEvidence) {
		logger.Info("no evidence that an earlier attempt's call reached the device", "window", ev.Window)
		return "", nil
	}
	return how, err
}

// lookMargin ends a look for evidence this long before the activity's deadline, so that the
// attempt fails with its own error rather than Temporal's timeout.
const lookMargin = 2 * time.Second

// shortError is an error's message for heartbeat details, shortened.
func shortError(err error) string {
	const limit = 300
	s := err.Error()
	if len(s) > limit {
		s = s[:limit] + "…"
	}
	return s
}

// Polling while looking for evidence: the twin read at once, then as WaitForReported polls by
// default.
const (
	evidenceInitialInterval = WaitInitialInterval
	evidenceMaxInterval     = WaitMaxInterval
)

// accepted reports whether the device already reports in.AcceptedWhen. A failed read is no answer:
// the call goes ahead, and the device's own deduplication covers it.
func (a *Activities) accepted(ctx context.Context, logger log.Logger, in InvokeMethodInput) bool {
	if err := a.takeToken(ctx, hubCall{op: opTwinReads}, in.Rate, nil); err != nil {
		return false
	}
	reported, err := a.readReported(ctx, in.DeviceID)
	if err != nil {
		logger.Warn("cannot check whether an earlier call reached the device; calling again", "error", classify(err, "read twin", in.DeviceID))
		return false
	}
	v, ok := lookup(reported, in.AcceptedWhen.Property)
	if !ok || fmt.Sprint(v) != in.AcceptedWhen.Value {
		return false
	}
	logger.Info("an earlier attempt's call reached the device; not calling again",
		"property", in.AcceptedWhen.Property, "value", in.AcceptedWhen.Value)
	return true
}

// methodCall validates the input against IoT Hub's limits and builds the hub request, together with
// the local bound on the HTTP call.
func (in InvokeMethodInput) methodCall() (hubconn.MethodCall, time.Duration, error) {
	if in.DeviceID == "" {
		return hubconn.MethodCall{}, 0, badRequest("invoke %q: device ID is empty", in.Method)
	}
	if in.Method == "" {
		return hubconn.MethodCall{}, 0, badRequest("invoke on %s: method name is empty", in.DeviceID)
	}
	response := ceilSeconds(in.ResponseTimeout)
	if in.ResponseTimeout != 0 && (response < minResponseTimeout || response > maxResponseTimeout) {
		return hubconn.MethodCall{}, 0, badRequest("invoke %s on %s: response timeout %s is outside IoT Hub's %s–%s",
			in.Method, in.DeviceID, in.ResponseTimeout, minResponseTimeout, maxResponseTimeout)
	}
	connect := ceilSeconds(in.ConnectTimeout)
	if in.ConnectTimeout < 0 || connect > maxConnectTimeout {
		return hubconn.MethodCall{}, 0, badRequest("invoke %s on %s: connect timeout %s is outside IoT Hub's 0s–%s",
			in.Method, in.DeviceID, in.ConnectTimeout, maxConnectTimeout)
	}
	if problem := in.Rate.problem(); problem != "" {
		return hubconn.MethodCall{}, 0, badRequest("invoke %s on %s: %s", in.Method, in.DeviceID, problem)
	}
	var payload json.RawMessage
	if in.Payload != nil {
		b, err := json.Marshal(in.Payload)
		if err != nil {
			return hubconn.MethodCall{}, 0, badRequest("invoke %s on %s: payload is not JSON: %v", in.Method, in.DeviceID, err)
		}
		payload = b
	}
	if problem := in.Evidence.problem(); problem != "" {
		return hubconn.MethodCall{}, 0, badRequest("invoke %s on %s: %s", in.Method, in.DeviceID, problem)
	}
	if problem := in.ReadFirst.problem(in.Evidence); problem != "" {
		return hubconn.MethodCall{}, 0, badRequest("invoke %s on %s: %s", in.Method, in.DeviceID, problem)
	}
	if b := payload; len(b) > maxPayloadBytes {
		return hubconn.MethodCall{}, 0, badRequest("invoke %s on %s: payload has %d bytes, IoT Hub accepts at most %d",
			in.Method, in.DeviceID, len(b), maxPayloadBytes)
	}

	wait := response
	if wait == 0 {
		wait = defaultResponseTimeout
	}
	call := hubconn.MethodCall{
		Method:          in.Method,
		ResponseTimeout: uint(response / time.Second),
		ConnectTimeout:  uint(connect / time.Second),
		Payload:         payload,
	}
	return call, connect + wait + callSlack, nil
}

// ceilSeconds rounds up to whole seconds, the hub's unit, so that the caller's timeout is a minimum.
func ceilSeconds(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return (d + time.Second - 1) / time.Second * time.Second
}

// heartbeatWhile heartbeats in the background until the returned stop function is called. stop waits
// for the goroutine, so that no heartbeat is recorded after the activity has returned; calls after
// the first do nothing, so that a deferred stop can back up the ones that order heartbeats.
func (a *Activities) heartbeatWhile(ctx context.Context, details func() any) (stop func()) {
	interval := a.beatInterval(ctx)

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				// Every heartbeat carries the details: the server keeps those of the last one.
				activity.RecordHeartbeat(ctx, details())
			}
		}
	}()
	return sync.OnceFunc(func() {
		close(done)
		wg.Wait()
	})
}

// asJSON keeps a payload that is JSON as it is and turns anything else (a hub that relayed a
// device's bytes unchecked) into a JSON string of it, so that results and error details always
// encode.
func asJSON(p json.RawMessage) json.RawMessage {
	if len(p) == 0 || json.Valid(p) {
		return p
	}
	b, _ := json.Marshal(string(p))
	return b
}

// PayloadString renders a device payload for a message, as the device sent it, shortened: devices
// may answer with large payloads and the message ends up in workflow histories and logs.
func PayloadString(p json.RawMessage) string {
	const limit = 512
	if len(p) == 0 {
		return "(none)"
	}
	if len(p) > limit {
		return string(p[:limit]) + "…"
	}
	return string(p)
}
