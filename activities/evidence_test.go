package activities

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// stamped builds reported properties with the hub's $lastUpdated time of each, as IoT Hub returns
// them: props maps a name to its value and its time.
func stamped(props map[string][2]any) map[string]any {
	reported := map[string]any{"$version": float64(3)}
	meta := map[string]any{}
	for k, vt := range props {
		reported[k] = vt[0]
		if vt[1] != nil {
			meta[k] = map[string]any{"$lastUpdated": vt[1]}
		}
	}
	reported["$metadata"] = meta
	return reported
}

func TestEvidenceSeen(t *testing.T) {
	const before = "2026-12-06T18:00:00.000Z"
	reboot := Evidence{Property: "rebootTime", Before: before, IDProperty: "lastRebootRequestId", ID: "reboot/d/r1"}
	tests := []struct {
		name     string
		ev       Evidence
		reported map[string]any
		want     string // "" when there is no evidence
	}{
		{name: "tutorial device: rebootTime rewritten after the read", ev: reboot,
			reported: stamped(map[string][2]any{"rebootTime": {"2026-12-06 18:34:08.808000", "2026-12-06T18:00:20.500Z"}}), want: "changed"},
		{name: "tutorial device: rebootTime left from before", ev: reboot,
			reported: stamped(map[string][2]any{"rebootTime": {"2026-12-06 17:00:00.000000", before}})},
		{name: "the same value written again still counts: the hub's time moved", ev: reboot,
			reported: stamped(map[string][2]any{"rebootTime": {"same", "2026-12-06T18:00:00.001Z"}}), want: "changed"},
		{name: "dmflow device reports this request", ev: reboot,
			reported: stamped(map[string][2]any{"rebootTime": {"2026-12-06T18:00:20Z", before}, "lastRebootRequestId": {"reboot/d/r1", before}}), want: "id"},
		{name: "dmflow device reports another request: its rebootTime is that one's", ev: reboot,
			reported: stamped(map[string][2]any{"rebootTime": {"2026-12-06T18:00:20Z", "2026-12-06T18:00:20Z"}, "lastRebootRequestId": {"reboot/d/r0", "2026-12-06T18:00:20Z"}})},
		{name: "no rebootTime at all", ev: reboot, reported: stamped(nil)},
		{name: "absent before: any report counts", ev: Evidence{Property: "rebootTime"},
			reported: stamped(map[string][2]any{"rebootTime": {"x", "2020-01-01T00:00:00Z"}}), want: "changed"},
		{name: "hub gave no time before: only the ID counts", ev: Evidence{Property: "rebootTime", Before: NoMetadata},
			reported: stamped(map[string][2]any{"rebootTime": {"x", "2030-01-01T00:00:00Z"}})},
		{name: "hub gives no time now", ev: reboot,
			reported: stamped(map[string][2]any{"rebootTime": {"x", nil}})},
		{name: "firmware: a stage after the read", ev: Evidence{Property: "firmwareStatus", Before: before, OneOf: []string{"downloading", "applying", "completed", "error"}},
			reported: stamped(map[string][2]any{"firmwareStatus": {"downloading", "2026-12-06T18:00:15Z"}}), want: "changed"},
		{name: "firmware: standBy reported by a restarted device is no update", ev: Evidence{Property: "firmwareStatus", Before: before, OneOf: []string{"downloading", "applying", "completed", "error"}},
			reported: stamped(map[string][2]any{"firmwareStatus": {"standBy", "2026-12-06T18:00:15Z"}})},
		{name: "a time that does not parse", ev: reboot,
			reported: stamped(map[string][2]any{"rebootTime": {"x", "yesterday"}})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ok, how := tc.ev.Seen(tc.reported)
			if tc.want == "" {
				assert.False(t, ok, "evidence %q", how)
				return
			}
			assert.True(t, ok, "no evidence: %s", how)
			assert.Equal(t, tc.want, how)
		})
	}
}

func TestDeliveryOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want delivery
	}{
		{"answered", nil, delivered},
		{"answer the hub garbled", &hubconn.UnreadableAnswerError{Body: []byte("<html>")}, delivered},
		{"device offline", hubErr(404, 404103, "DeviceNotOnline"), notDelivered},
		{"unknown device", hubErr(404, 404001, "DeviceNotFound"), notDelivered},
		{"throttled", hubErr(429, 429001, "ThrottlingException"), notDelivered},
		{"unauthorized", hubErr(401, 401002, "IotHubUnauthorizedAccess"), notDelivered},
		{"forbidden", hubErr(403, 403001, "Forbidden"), notDelivered},
		{"bad request", hubErr(400, 400004, "ArgumentInvalid"), notDelivered},
		{"connection refused before sending", &hubconn.NotSentError{Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}, notDelivered},
		{"device did not answer in time", hubErr(504, 504101, "GatewayTimeout"), maybeDelivered},
		{"hub failed", hubErr(500, 500001, "ServerError"), maybeDelivered},
		{"hub unavailable", hubErr(503, 503001, "ServiceUnavailable"), maybeDelivered},
		{"connection cut after sending", fmt.Errorf("post: %w", errors.New("connection reset by peer")), maybeDelivered},
		{"local timeout after sending", context.DeadlineExceeded, maybeDelivered},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want.String(), deliveryOf(tc.err).String())
		})
	}
}

// TestInvokeMethodAnswersAnyJSON: a device's payload is kept as it sent it, whatever its JSON
// shape, and no shape leads to a second call.
func TestInvokeMethodAnswersAnyJSON(t *testing.T) {
	for _, payload := range []string{
		`{"Response":"Firmware update started"}`,
		`"{ \"Response\": \"Firmware update started\" }"`,
		`[1,2,3]`, `42`, `true`, `false`, ``,
	} {
		t.Run(payload, func(t *testing.T) {
			hub := &fakeHub{call: func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
				return hubconn.MethodAnswer{Status: 200, Payload: json.RawMessage(payload)}, nil
			}}
			res, err := invokeRetried(t, hub, firmwareCall(time.Second))
			require.NoError(t, err)
			assert.Equal(t, payload, string(res.Payload))
			assert.Equal(t, 1, hub.callCount())
			assert.Equal(t, 0, hub.readCount())
		})
	}
}

// firmwareCall is a firmwareUpdate with evidence on both contracts, the firmware status read
// before the call stamped at 18:00.
func firmwareCall(window time.Duration) InvokeMethodInput {
	return InvokeMethodInput{
		DeviceID: "dev1", Method: "firmwareUpdate",
		Payload:         map[string]any{"fwPackageUri": "https://example.com/fw.bin", "updateId": "u1"},
		ResponseTimeout: 5 * time.Second,
		Evidence: &Evidence{
			Property: "firmwareStatus", Before: "2026-12-06T18:00:00.000Z",
			IDProperty: "firmwareUpdateId", ID: "u1", Window: window,
		},
	}
}

// invokeRetried runs InvokeMethod retried by Temporal, as the workflows do.
func invokeRetried(t *testing.T, hub Hub, in InvokeMethodInput) (InvokeMethodResult, error) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterActivity(&Activities{Hub: hub})
	env.RegisterWorkflowWithOptions(func(ctx workflow.Context, in InvokeMethodInput) (InvokeMethodResult, error) {
		ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			StartToCloseTimeout: time.Minute,
			RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumAttempts: 4,
				NonRetryableErrorTypes: []string{ErrMethodFailed}},
		})
		var out InvokeMethodResult
		err := workflow.ExecuteActivity(ctx, (&Activities{}).InvokeMethod, in).Get(ctx, &out)
		return out, err
	}, workflow.RegisterOptions{Name: "invoke"})
	env.ExecuteWorkflow("invoke", in)
	require.True(t, env.IsWorkflowCompleted())
	if err := env.GetWorkflowError(); err != nil {
		return InvokeMethodResult{}, err
	}
	var out InvokeMethodResult
	require.NoError(t, env.GetWorkflowResult(&out))
	return out, nil
}

// TestInvokeMethodNeverCallsTwiceAfterMaybeDelivered: the first call may have reached the device
// (the hub timed out waiting for its answer, or the connection broke after the request was sent).
// The retry looks at the twin first; a device that shows it took the call, by its ID or, on the
// tutorials' contract, by a firmwareStatus the hub stamped after the read before the call, is not
// called again. Only a device that shows nothing within the window is.
func TestInvokeMethodNeverCallsTwiceAfterMaybeDelivered(t *testing.T) {
	const later = "2026-12-06T18:00:15.000Z"
	tests := []struct {
		name      string
		first     error
		twin      map[string]any
		wantCalls int
		wantBy    string
	}{
		{name: "gateway timeout, tutorial device downloading", first: hubErr(504, 504101, "GatewayTimeout"),
			twin: stamped(map[string][2]any{"firmwareStatus": {"downloading", later}}), wantCalls: 1, wantBy: "changed"},
		{name: "connection cut, dmflow device reports the update", first: errors.New("read: connection reset by peer"),
			twin: stamped(map[string][2]any{"firmwareStatus": {"downloading", later}, "firmwareUpdateId": {"u1", later}}), wantCalls: 1, wantBy: "id"},
		{name: "hub 503, status left from an earlier update", first: hubErr(503, 503001, "ServiceUnavailable"),
			twin: stamped(map[string][2]any{"firmwareStatus": {"completed", "2026-12-06T17:00:00.000Z"}}), wantCalls: 2},
		{name: "gateway timeout, dmflow device busy with another update", first: hubErr(504, 504101, "GatewayTimeout"),
			twin: stamped(map[string][2]any{"firmwareStatus": {"downloading", later}, "firmwareUpdateId": {"u0", later}}), wantCalls: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{
				call: func(_ context.Context, n int, _ hubconn.MethodCall) (hubconn.MethodAnswer, error) {
					if n == 1 {
						return hubconn.MethodAnswer{}, tc.first
					}
					return hubconn.MethodAnswer{Status: 200, Payload: json.RawMessage(`{"Response":"Firmware update started"}`)}, nil
				},
				twin: func(context.Context, int) (*iotservice.Twin, error) {
					return &iotservice.Twin{Properties: &iotservice.Properties{Reported: tc.twin}}, nil
				},
			}
			res, err := invokeRetried(t, hub, firmwareCall(300*time.Millisecond))
			require.NoError(t, err)
			assert.Equal(t, tc.wantCalls, hub.callCount())
			assert.Equal(t, 2, res.Attempt)
			assert.Equal(t, tc.wantCalls, res.Calls)
			assert.GreaterOrEqual(t, res.TwinReads, 1)
			assert.Equal(t, tc.wantBy != "", res.AlreadyAccepted)
			assert.Equal(t, tc.wantBy, res.AcceptedBy)
		})
	}
}

// TestInvokeMethodRetriesNotDeliveredAtOnce: a call the hub refused before the device (offline,
// throttled) is called again without looking at the twin.
func TestInvokeMethodRetriesNotDeliveredAtOnce(t *testing.T) {
	for _, first := range []error{
		hubErr(404, 404103, "DeviceNotOnline"),
		hubErr(429, 429001, "ThrottlingException"),
		&hubconn.NotSentError{Err: errors.New("dial tcp: connection refused")},
	} {
		t.Run(first.Error(), func(t *testing.T) {
			hub := &fakeHub{call: func(_ context.Context, n int, _ hubconn.MethodCall) (hubconn.MethodAnswer, error) {
				if n < 3 {
					return hubconn.MethodAnswer{}, first
				}
				return hubconn.MethodAnswer{Status: 200}, nil
			}}
			res, err := invokeRetried(t, hub, firmwareCall(time.Minute))
			require.NoError(t, err)
			assert.Equal(t, 3, hub.callCount())
			assert.Equal(t, 0, hub.readCount(), "no twin read after a call that was not delivered")
			assert.Equal(t, 3, res.Attempt)
			assert.False(t, res.AlreadyAccepted)
		})
	}
}

// TestInvokeMethodDeliveredIsFinal: once the hub answered with the device's status the call is not
// repeated: a refusal fails for good, an answer the hub garbled is taken as delivered.
func TestInvokeMethodDeliveredIsFinal(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		hub := &fakeHub{call: func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
			return hubconn.MethodAnswer{Status: 409, Payload: json.RawMessage(`"busy"`)}, nil
		}}
		_, err := invokeRetried(t, hub, firmwareCall(time.Second))
		var appErr *temporal.ApplicationError
		require.True(t, errors.As(err, &appErr))
		assert.Equal(t, ErrMethodFailed, appErr.Type())
		assert.Contains(t, err.Error(), `"busy"`)
		assert.Equal(t, 1, hub.callCount())
	})
	t.Run("unreadable", func(t *testing.T) {
		hub := &fakeHub{call: func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
			return hubconn.MethodAnswer{}, &hubconn.UnreadableAnswerError{Body: []byte("garbage")}
		}}
		res, err := invokeRetried(t, hub, firmwareCall(time.Second))
		require.NoError(t, err)
		assert.Equal(t, 0, res.Status)
		assert.Equal(t, 1, hub.callCount())
	})
}

// TestLookFirst: a worker that died during the call leaves heartbeat details saying the call was
// on its way (or none at all, if it died before the first heartbeat left); the next attempt looks
// for evidence before calling again. Only an attempt right after one the hub refused before the
// device calls at once.
func TestLookFirst(t *testing.T) {
	ev := &Evidence{Property: "firmwareStatus"}
	for _, tc := range []struct {
		name    string
		ev      *Evidence
		attempt int
		prev    *InvokeProgress
		want    bool
	}{
		{"first attempt", ev, 1, nil, false},
		{"died before its first heartbeat left", ev, 2, nil, true},
		{"died while calling", ev, 2, &InvokeProgress{Attempt: 1, Outcome: OutcomeCalling, Calls: 1}, true},
		{"died while looking", ev, 3, &InvokeProgress{Attempt: 2, Outcome: OutcomeLooking}, true},
		{"maybe delivered", ev, 2, &InvokeProgress{Attempt: 1, Outcome: maybeDelivered.String()}, true},
		{"not delivered", ev, 2, &InvokeProgress{Attempt: 1, Outcome: notDelivered.String()}, false},
		{"not delivered, but an older attempt's details", ev, 3, &InvokeProgress{Attempt: 1, Outcome: notDelivered.String()}, true},
		{"no evidence to look for", nil, 2, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, lookFirst(tc.ev, tc.attempt, tc.prev))
		})
	}
}

// FuzzInvokeMethodAnswer: whatever the device answers (any JSON, none, invalid bytes, oversized)
// and with whatever status, InvokeMethod never panics and never calls the device a second time:
// the hub answered with the device's status, so the call was delivered.
func FuzzInvokeMethodAnswer(f *testing.F) {
	for _, s := range []string{`{"Response":"ok"}`, `"{ \"Response\": \"Firmware update started\" }"`, `[]`, `null`, ``, `{`, "\xff", `1e999`} {
		f.Add(200, []byte(s))
		f.Add(500, []byte(s))
	}
	f.Add(200, bytes.Repeat([]byte("x"), maxPayloadBytes+1))
	f.Fuzz(func(t *testing.T, status int, payload []byte) {
		hub := &fakeHub{call: func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
			return hubconn.MethodAnswer{Status: status, Payload: payload}, nil
		}}
		res, err := invokeRetried(t, hub, firmwareCall(time.Second))
		if n := hub.callCount(); n != 1 {
			t.Fatalf("status %d, payload %q: %d calls", status, payload, n)
		}
		if err == nil && (status < 200 || status > 299) {
			t.Fatalf("status %d accepted: %+v", status, res)
		}
		if err != nil {
			var appErr *temporal.ApplicationError
			if !errors.As(err, &appErr) || appErr.Type() != ErrMethodFailed {
				t.Fatalf("status %d: %v", status, err)
			}
		}
	})
}
