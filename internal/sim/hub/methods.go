package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// Documented direct-method limits.
const (
	defaultResponseTimeout = 30 * time.Second
	minResponseTimeout     = 5 * time.Second
	maxResponseTimeout     = 300 * time.Second
	maxConnectTimeout      = 300 * time.Second
	maxMethodPayload       = 128 * 1024
)

// subscribeGrace delays a method request that would reach a device within
// this long after it subscribed to methods. The SDKs subscribe first and
// register their handler only when the SUBACK arrives (the Go SDK does so
// in RegisterMethod), so a request sent the moment the subscription exists
// finds no handler and is never answered.
const subscribeGrace = 500 * time.Millisecond

// methodCall is a validated direct-method invocation.
type methodCall struct {
	name            string
	payload         []byte // JSON
	responseTimeout time.Duration
	connectTimeout  time.Duration
}

// methodResult is the device's answer, or why it cannot be passed on.
type methodResult struct {
	status  int
	payload []byte // JSON, possibly "null"
	text    bool   // payload is the device's text that was not JSON, as a string
	err     error
}

type callKey struct{ device, rid string }

// callTable holds the calls waiting for a device's answer.
type callTable struct {
	mu      sync.Mutex
	next    uint64
	pending map[callKey]chan methodResult
}

func newCallTable() *callTable {
	return &callTable{pending: map[callKey]chan methodResult{}}
}

// register reserves a request ID for a call to deviceID.
func (t *callTable) register(deviceID string) (string, chan methodResult, func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	rid := strconv.FormatUint(t.next, 10)
	ch := make(chan methodResult, 1)
	key := callKey{deviceID, rid}
	t.pending[key] = ch
	return rid, ch, func() {
		t.mu.Lock()
		delete(t.pending, key)
		t.mu.Unlock()
	}
}

// complete hands a device's answer to the waiting call; answers to unknown
// or finished calls (late, duplicated, or naming another device's request)
// are dropped.
func (t *callTable) complete(deviceID, rid string, r methodResult) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch, ok := t.pending[callKey{deviceID, rid}]
	if !ok {
		return false
	}
	delete(t.pending, callKey{deviceID, rid})
	ch <- r
	return true
}

// invokeMethod delivers a direct method to a device and waits for its answer. Every call is
// entered in the method log, refused ones included.
func (h *Hub) invokeMethod(ctx context.Context, deviceID string, call methodCall) (res methodResult, err error) {
	start := time.Now()
	delivered := false
	defer func() { h.logMethod(deviceID, call, start, delivered, res, err) }()
	// IoT Hub meters the request payload in 4 KB chunks; the answer's size
	// is not known before the call is admitted, so it is not metered.
	if err := h.limits.wait(ctx, hubquota.Methods, hubquota.MethodCost(len(call.payload))); err != nil {
		return methodResult{}, err
	}
	err = h.store.View(func(tx *store.Tx) error {
		_, err := tx.Device(deviceID)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return methodResult{}, errorf(ErrDeviceNotFound, "device %q is not registered", deviceID)
	}
	if err != nil {
		return methodResult{}, err
	}
	if h.standIns.is(deviceID) {
		delivered = true
		h.countInvocation(deviceID, call.name)
		res = h.standInAnswer(deviceID, call)
		return res, nil
	}

	cl, since, ready, err := h.waitForMethods(ctx, deviceID, call.connectTimeout)
	if err != nil {
		return methodResult{}, err
	}

	rid, answer, done := h.calls.register(deviceID)
	defer done()
	topic := topicMethodsPOST + call.name + "/?$rid=" + rid
	if ready {
		if wait := time.Until(since.Add(subscribeGrace)); wait > 0 {
			if err := h.sleep(ctx, wait); err != nil {
				return methodResult{}, err
			}
		}
		if h.sendToClient(cl, topic, call.payload) {
			delivered = true
			h.countInvocation(deviceID, call.name)
			h.log.Debug("direct method delivered", "device", deviceID, "method", call.name, "rid", rid)
		}
	}
	// A device that is connected but not subscribed gets nothing and the
	// call runs into the response timeout, as on IoT Hub.

	timer := time.NewTimer(call.responseTimeout)
	defer timer.Stop()
	select {
	case r := <-answer:
		return r, r.err
	case <-timer.C:
		return methodResult{}, errorf(ErrGatewayTimeout, "Timed out waiting for the response from device.")
	case <-ctx.Done():
		return methodResult{}, ctx.Err()
	case <-h.ctx.Done():
		return methodResult{}, errorf(ErrServiceUnavailable, "localhub is shutting down")
	}
}

// waitForMethods waits up to connectTimeout for the device to be connected
// and subscribed to methods. It returns the client, when it subscribed (zero
// for a subscription inherited from an earlier session) and whether it is
// subscribed at all: a connected device that never subscribes is returned
// with ready false once connectTimeout has passed.
func (h *Hub) waitForMethods(ctx context.Context, deviceID string, connectTimeout time.Duration) (cl *mqtt.Client, since time.Time, ready bool, err error) {
	defer h.conns.wait(deviceID)()
	deadline := time.NewTimer(connectTimeout)
	defer deadline.Stop()
	for {
		cl, since, changed := h.conns.client(deviceID)
		if cl != nil && subscribed(cl, topicMethodsPOST+"m/?$rid=1") {
			return cl, since, true, nil
		}
		select {
		case <-changed:
			continue
		case <-deadline.C:
		case <-ctx.Done():
			return nil, time.Time{}, false, ctx.Err()
		case <-h.ctx.Done():
			return nil, time.Time{}, false, errorf(ErrServiceUnavailable, "localhub is shutting down")
		}
		if cl, _, _ = h.conns.client(deviceID); cl != nil {
			return cl, time.Time{}, false, nil
		}
		return nil, time.Time{}, false, errorf(ErrDeviceNotOnline, "Timed out waiting for device to connect.")
	}
}

func (h *Hub) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-h.ctx.Done():
		return errorf(ErrServiceUnavailable, "localhub is shutting down")
	}
}

// deviceMethodResponse takes $iothub/methods/res/{status}/?$rid={rid}. An
// answer over the 128 KB a method response may carry fails the waiting call
// with 413 MessageTooLarge rather than leaving it to time out: IoT Hub
// documents the limit but not its error, and a device that answers too much
// will do so again, so the caller should learn it at once.
func (h *Hub) deviceMethodResponse(cl *mqtt.Client, req devicePublish, payload []byte) {
	res, err := parseMethodResponse(req.status, payload)
	if err != nil {
		h.log.Warn("method response refused", "device", cl.ID, "rid", req.rid, "reason", err.Error())
	} else if res.text {
		h.log.Warn("method response is not JSON: passed on as a JSON string", "device", cl.ID, "rid", req.rid, "bytes", len(payload))
	}
	if !h.calls.complete(cl.ID, req.rid, res) {
		h.log.Debug("method response for no waiting call", "device", cl.ID, "rid", req.rid)
	}
}

// parseMethodResponse checks a device's method response payload. On error
// the result carries it for the waiting call.
func parseMethodResponse(status int, payload []byte) (methodResult, error) {
	if len(payload) > maxMethodPayload {
		err := errorf(ErrMessageTooLarge, "the device's response payload is %d bytes; a direct method response may hold at most %d", len(payload), maxMethodPayload)
		return methodResult{err: err}, err
	}
	p, text := responsePayload(payload)
	return methodResult{status: status, payload: p, text: text}, nil
}

// responsePayload makes a device's answer embeddable in the REST response
// and reports whether it had to turn text that is not JSON into a string.
//
// JSON of any kind passes unchanged, byte for byte but for the white space
// around it: IoT Hub embeds the device's body as it is.
//
// An empty body becomes null. Devices need not answer with a body (the C#
// device SDK's new MethodResponse(status) sends none), and IoT Hub's
// callers then see "payload": null (e.g.
// Azure/iotedge-lorawan-starterkit#194); the service SDKs allow for a null
// payload.
//
// A body that is not JSON, or not UTF-8 (which JSON must be), becomes a
// JSON string of its text, invalid bytes replaced by U+FFFD, and the
// device's status is kept. IoT Hub does not check the body: it embeds it
// as it is, the REST answer is then not JSON, and the service SDKs fail to
// decode it (Azure/azure-iot-sdk-node#736 shows such an answer; older hubs
// refused it with InvalidResponseWhileProxying, Azure/azure-iot-sdk-c#6).
// Either way the caller would lose the device's status and words, so
// localhub keeps both, logs a warning, and gives every caller a body it can
// decode.
func responsePayload(b []byte) (payload []byte, text bool) {
	b = bytes.Trim(b, " \t\r\n") // JSON's white space, no more
	if len(b) == 0 {
		return []byte("null"), false
	}
	if utf8.Valid(b) && json.Valid(b) {
		return b, false
	}
	s, _ := json.Marshal(string(b)) // invalid UTF-8 becomes U+FFFD
	return s, true
}

// parseMethodCall validates the body of POST /twins/{id}/methods.
func parseMethodCall(body []byte) (methodCall, error) {
	var req struct {
		MethodName      string          `json:"methodName"`
		Payload         json.RawMessage `json:"payload"`
		ResponseTimeout *int64          `json:"responseTimeoutInSeconds"`
		ConnectTimeout  *int64          `json:"connectTimeoutInSeconds"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return methodCall{}, errorf(ErrArgumentInvalid, "method call body is not valid JSON: %v", err)
	}
	if req.MethodName == "" {
		return methodCall{}, errorf(ErrArgumentInvalid, "methodName is required")
	}
	// The name becomes an MQTT topic level.
	if strings.ContainsAny(req.MethodName, "/+#?\x00") {
		return methodCall{}, errorf(ErrArgumentInvalid, "methodName %q contains '/', '+', '#', '?' or NUL", req.MethodName)
	}
	call := methodCall{name: req.MethodName, responseTimeout: defaultResponseTimeout}
	// The Go SDK leaves zero timeouts out (omitempty), so zero means the
	// default.
	if n := req.ResponseTimeout; n != nil && *n != 0 {
		if *n < int64(minResponseTimeout/time.Second) || *n > int64(maxResponseTimeout/time.Second) {
			return methodCall{}, errorf(ErrArgumentInvalid, "responseTimeoutInSeconds %d is outside 5–300", *n)
		}
		call.responseTimeout = time.Duration(*n) * time.Second
	}
	if n := req.ConnectTimeout; n != nil {
		if *n < 0 || *n > int64(maxConnectTimeout/time.Second) {
			return methodCall{}, errorf(ErrArgumentInvalid, "connectTimeoutInSeconds %d is outside 0–300", *n)
		}
		call.connectTimeout = time.Duration(*n) * time.Second
	}
	call.payload = bytes.TrimSpace(req.Payload)
	if len(call.payload) == 0 {
		call.payload = []byte("null")
	}
	if len(call.payload) > maxMethodPayload {
		return methodCall{}, errorf(ErrArgumentInvalid, "payload is %d bytes, more than the %d allowed", len(call.payload), maxMethodPayload)
	}
	return call, nil
}
