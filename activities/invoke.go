package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
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
	// AcceptedWhen, when set, makes every retry (attempt 2 on) read the twin before calling: when the
	// device already reports the property with the value, an earlier attempt's call reached it (the
	// worker died, or the answer was lost, after the hub delivered it), and the activity returns
	// with AlreadyAccepted instead of calling again. Devices ignore a repeated request ID anyway;
	// this keeps the repeat off the hub and the device.
	AcceptedWhen *ReportedValue `json:"acceptedWhen,omitempty"`
}

// ReportedValue is a reported property with the value that shows a method call was received.
type ReportedValue struct {
	Property string `json:"property"`
	Value    string `json:"value"`
}

// InvokeMethodResult is the device's answer to a direct method.
type InvokeMethodResult struct {
	// Status is the status the device answered with, in 200–299 (other statuses fail the activity).
	Status  int            `json:"status"`
	Payload map[string]any `json:"payload,omitempty"`
	// Attempt is the activity attempt that got the answer (1 for the first), so that a workflow can
	// report how many invocations it took, retries of offline devices included.
	Attempt int `json:"attempt"`
	// AlreadyAccepted is set when a retry found the device reporting InvokeMethodInput.AcceptedWhen
	// and made no call; Status is then 200 and Payload empty.
	AlreadyAccepted bool `json:"alreadyAccepted,omitempty"`
}

// InvokeMethod invokes a direct method on a device through IoT Hub and returns the device's answer.
//
// The call lasts as long as the device takes to answer (the reboot tutorial's device answers after
// its ~20 s reboot), so the activity heartbeats while the call is in flight: a HeartbeatTimeout then
// detects a dead worker long before the StartToCloseTimeout would.
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

	// The heartbeats cover the wait for a rate token as well as the call.
	stop := a.heartbeatWhile(ctx)
	if attempt > 1 && in.AcceptedWhen != nil && a.accepted(ctx, logger, in) {
		stop()
		return InvokeMethodResult{Status: 200, Attempt: attempt, AlreadyAccepted: true}, nil
	}
	if err := a.takeToken(ctx, in.Rate, nil); err != nil {
		stop()
		return InvokeMethodResult{}, tokenError(ctx, logger, err)
	}
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	// The SDK's activity logger already carries the attempt number.
	logger.Info("invoking direct method",
		"response_timeout_s", call.ResponseTimeout, "connect_timeout_s", call.ConnectTimeout)
	res, err := a.Hub.CallDeviceMethod(callCtx, in.DeviceID, call)
	cancel()
	stop()
	if ctx.Err() != nil {
		// Cancelled or timed out as an activity: report that, not the aborted HTTP call.
		return InvokeMethodResult{}, ctx.Err()
	}
	if err != nil {
		err = classify(err, "invoke "+in.Method, in.DeviceID)
		logger.Warn("direct method failed", "error", err)
		return InvokeMethodResult{}, err
	}

	out := InvokeMethodResult{Status: res.Status, Payload: res.Payload, Attempt: attempt}
	if res.Status < 200 || res.Status > 299 {
		logger.Warn("device answered with a failure status", "status", res.Status)
		return InvokeMethodResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("invoke %s on %s: device answered status %d with payload %s",
				in.Method, in.DeviceID, res.Status, payloadString(res.Payload)),
			ErrMethodFailed, nil, out)
	}
	logger.Info("device answered", "status", res.Status)
	return out, nil
}

// accepted reports whether the device already reports in.AcceptedWhen. A failed read is no answer:
// the call goes ahead, and the device's own deduplication covers it.
func (a *Activities) accepted(ctx context.Context, logger log.Logger, in InvokeMethodInput) bool {
	if err := a.takeToken(ctx, in.Rate, nil); err != nil {
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
func (in InvokeMethodInput) methodCall() (*iotservice.MethodCall, time.Duration, error) {
	if in.DeviceID == "" {
		return nil, 0, badRequest("invoke %q: device ID is empty", in.Method)
	}
	if in.Method == "" {
		return nil, 0, badRequest("invoke on %s: method name is empty", in.DeviceID)
	}
	response := ceilSeconds(in.ResponseTimeout)
	if in.ResponseTimeout != 0 && (response < minResponseTimeout || response > maxResponseTimeout) {
		return nil, 0, badRequest("invoke %s on %s: response timeout %s is outside IoT Hub's %s–%s",
			in.Method, in.DeviceID, in.ResponseTimeout, minResponseTimeout, maxResponseTimeout)
	}
	connect := ceilSeconds(in.ConnectTimeout)
	if in.ConnectTimeout < 0 || connect > maxConnectTimeout {
		return nil, 0, badRequest("invoke %s on %s: connect timeout %s is outside IoT Hub's 0s–%s",
			in.Method, in.DeviceID, in.ConnectTimeout, maxConnectTimeout)
	}
	if problem := in.Rate.problem(); problem != "" {
		return nil, 0, badRequest("invoke %s on %s: %s", in.Method, in.DeviceID, problem)
	}
	if b, err := json.Marshal(in.Payload); err != nil {
		return nil, 0, badRequest("invoke %s on %s: payload is not JSON: %v", in.Method, in.DeviceID, err)
	} else if len(b) > maxPayloadBytes {
		return nil, 0, badRequest("invoke %s on %s: payload has %d bytes, IoT Hub accepts at most %d",
			in.Method, in.DeviceID, len(b), maxPayloadBytes)
	}

	wait := response
	if wait == 0 {
		wait = defaultResponseTimeout
	}
	call := &iotservice.MethodCall{
		MethodName:      in.Method,
		ResponseTimeout: uint(response / time.Second),
		ConnectTimeout:  uint(connect / time.Second),
		Payload:         in.Payload,
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
// for the goroutine, so that no heartbeat is recorded after the activity has returned.
func (a *Activities) heartbeatWhile(ctx context.Context) (stop func()) {
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
				activity.RecordHeartbeat(ctx)
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// payloadString renders a device payload for an error message, shortened: devices may answer
// with large payloads and the message ends up in workflow histories and logs.
func payloadString(p map[string]any) string {
	const limit = 512
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Sprintf("%v", p)
	}
	if len(b) > limit {
		return string(b[:limit]) + "…"
	}
	return string(b)
}
