package activities

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/hubconn"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
)

func rebootInput() InvokeMethodInput {
	return InvokeMethodInput{
		DeviceID:        "dev1",
		Method:          "rebootDevice",
		Payload:         map[string]any{"method_number": "42", "requestId": "reboot/dev1/r1"},
		ResponseTimeout: 60 * time.Second,
	}
}

func TestInvokeMethodSuccess(t *testing.T) {
	var callDeadline bool
	hub := &fakeHub{call: func(ctx context.Context, _ int, _ hubconn.MethodCall) (hubconn.MethodAnswer, error) {
		_, callDeadline = ctx.Deadline()
		return hubconn.MethodAnswer{Status: 200, Payload: json.RawMessage(`{"Response":"This is the response from the device"}`)}, nil
	}}
	env, _ := newEnv(t, &Activities{Hub: hub})

	val, err := env.ExecuteActivity((&Activities{}).InvokeMethod, rebootInput())
	require.NoError(t, err)
	var res InvokeMethodResult
	require.NoError(t, val.Get(&res))

	assert.Equal(t, InvokeMethodResult{
		Status:  200,
		Payload: json.RawMessage(`{"Response":"This is the response from the device"}`),
		Attempt: 1,
		Calls:   1,
	}, res)
	require.Equal(t, 1, hub.callCount())
	assert.Equal(t, hubconn.MethodCall{
		Method:          "rebootDevice",
		ResponseTimeout: 60,
		ConnectTimeout:  0,
		Payload:         json.RawMessage(`{"method_number":"42","requestId":"reboot/dev1/r1"}`),
	}, hub.calls[0])
	assert.True(t, callDeadline, "the HTTP call is bounded locally")
}

func TestInvokeMethodHeartbeatsWhileWaiting(t *testing.T) {
	// The device takes a while to answer, like the tutorial's device rebooting for 20 s.
	hub := &fakeHub{call: func(ctx context.Context, _ int, _ hubconn.MethodCall) (hubconn.MethodAnswer, error) {
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return hubconn.MethodAnswer{}, ctx.Err()
		}
		return hubconn.MethodAnswer{Status: 200}, nil
	}}
	env, rec := newEnv(t, &Activities{Hub: hub, heartbeatInterval: 10 * time.Millisecond})

	_, err := env.ExecuteActivity((&Activities{}).InvokeMethod, rebootInput())
	require.NoError(t, err)
	beats := len(rec.recorded())
	assert.GreaterOrEqual(t, beats, 5, "heartbeats while the call was in flight")

	// No heartbeat after the activity has returned.
	time.Sleep(50 * time.Millisecond)
	assert.Equal(t, beats, len(rec.recorded()))
}

func TestInvokeMethodErrors(t *testing.T) {
	tests := []struct {
		name         string
		answer       func() (hubconn.MethodAnswer, error)
		wantType     string // "" for retryable
		wantContains []string
	}{
		{
			name: "device not found",
			answer: func() (hubconn.MethodAnswer, error) {
				return hubconn.MethodAnswer{}, hubErr(404, 404001, "DeviceNotFound")
			},
			wantType:     ErrDeviceNotFound,
			wantContains: []string{"dev1"},
		},
		{
			name: "device offline",
			answer: func() (hubconn.MethodAnswer, error) {
				return hubconn.MethodAnswer{}, hubErr(404, 404103, "DeviceNotOnline")
			},
			wantContains: []string{"invoke rebootDevice on dev1", "DeviceNotOnline"},
		},
		{
			name: "device did not answer in time",
			answer: func() (hubconn.MethodAnswer, error) {
				return hubconn.MethodAnswer{}, hubErr(504, 504101, "GatewayTimeout")
			},
			wantContains: []string{"invoke rebootDevice on dev1", "GatewayTimeout"},
		},
		{
			name: "unauthorized",
			answer: func() (hubconn.MethodAnswer, error) {
				return hubconn.MethodAnswer{}, hubErr(401, 401002, "IotHubUnauthorizedAccess")
			},
			wantType:     ErrUnauthorized,
			wantContains: []string{"IOTHUB_CONNECTION_STRING"},
		},
		{
			name: "device answers 500",
			answer: func() (hubconn.MethodAnswer, error) {
				return hubconn.MethodAnswer{Status: 500, Payload: json.RawMessage(`{"error":"flash busy"}`)}, nil
			},
			wantType:     ErrMethodFailed,
			wantContains: []string{"status 500", "flash busy"},
		},
		{
			name:         "device answers 199",
			answer:       func() (hubconn.MethodAnswer, error) { return hubconn.MethodAnswer{Status: 199}, nil },
			wantType:     ErrMethodFailed,
			wantContains: []string{"status 199"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{call: func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
				return tc.answer()
			}}
			env, _ := newEnv(t, &Activities{Hub: hub})

			_, err := env.ExecuteActivity((&Activities{}).InvokeMethod, rebootInput())
			require.Error(t, err)
			assert.Equal(t, 1, hub.callCount())
			var appErr *temporal.ApplicationError
			require.True(t, errors.As(err, &appErr), "activity errors reach the caller as ApplicationErrors: %v", err)
			if tc.wantType == "" {
				assert.False(t, appErr.NonRetryable(), "want retryable: %v", err)
			} else {
				assert.Equal(t, tc.wantType, appErr.Type())
				assert.True(t, appErr.NonRetryable())
			}
			for _, s := range tc.wantContains {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestInvokeMethodFailedCarriesAnswer(t *testing.T) {
	hub := &fakeHub{call: func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
		return hubconn.MethodAnswer{Status: 503, Payload: json.RawMessage(`{"retryAfter":30}`)}, nil
	}}
	env, _ := newEnv(t, &Activities{Hub: hub})

	_, err := env.ExecuteActivity((&Activities{}).InvokeMethod, rebootInput())
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	var answer InvokeMethodResult
	require.NoError(t, appErr.Details(&answer))
	assert.Equal(t, InvokeMethodResult{Status: 503, Payload: json.RawMessage(`{"retryAfter":30}`), Attempt: 1, Calls: 1}, answer)
}

func TestInvokeMethodValidation(t *testing.T) {
	big := map[string]any{"blob": strings.Repeat("x", maxPayloadBytes)}
	tests := []struct {
		name   string
		modify func(*InvokeMethodInput)
		want   string // "" when the input is valid
	}{
		{name: "defaults", modify: func(in *InvokeMethodInput) { in.ResponseTimeout, in.ConnectTimeout = 0, 0 }},
		{name: "limits", modify: func(in *InvokeMethodInput) { in.ResponseTimeout, in.ConnectTimeout = 300*time.Second, 300*time.Second }},
		{name: "rounded up to the minimum", modify: func(in *InvokeMethodInput) { in.ResponseTimeout = 4100 * time.Millisecond }},
		{name: "no device", modify: func(in *InvokeMethodInput) { in.DeviceID = "" }, want: "device ID is empty"},
		{name: "no method", modify: func(in *InvokeMethodInput) { in.Method = "" }, want: "method name is empty"},
		{name: "response timeout too short", modify: func(in *InvokeMethodInput) { in.ResponseTimeout = 4 * time.Second }, want: "response timeout"},
		{name: "response timeout too long", modify: func(in *InvokeMethodInput) { in.ResponseTimeout = 301 * time.Second }, want: "response timeout"},
		{name: "negative response timeout", modify: func(in *InvokeMethodInput) { in.ResponseTimeout = -time.Second }, want: "response timeout"},
		{name: "connect timeout too long", modify: func(in *InvokeMethodInput) { in.ConnectTimeout = 300*time.Second + time.Millisecond }, want: "connect timeout"},
		{name: "negative connect timeout", modify: func(in *InvokeMethodInput) { in.ConnectTimeout = -time.Second }, want: "connect timeout"},
		{name: "payload too large", modify: func(in *InvokeMethodInput) { in.Payload = big }, want: "payload has"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := rebootInput()
			tc.modify(&in)
			call, timeout, err := in.methodCall()
			if tc.want == "" {
				require.NoError(t, err)
				assert.GreaterOrEqual(t, call.ResponseTimeout, uint(0))
				assert.Greater(t, timeout, time.Duration(call.ResponseTimeout+call.ConnectTimeout)*time.Second)
				return
			}
			var appErr *temporal.ApplicationError
			require.True(t, errors.As(err, &appErr), "%v", err)
			assert.Equal(t, ErrBadRequest, appErr.Type())
			assert.True(t, appErr.NonRetryable())
			assert.Contains(t, err.Error(), tc.want)
		})
	}

	// Through the activity: refused before the hub is called.
	hub := &fakeHub{}
	env, _ := newEnv(t, &Activities{Hub: hub})
	in := rebootInput()
	in.ResponseTimeout = time.Second
	_, err := env.ExecuteActivity((&Activities{}).InvokeMethod, in)
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	assert.Equal(t, ErrBadRequest, appErr.Type())
	assert.Equal(t, 0, hub.callCount())
}

func TestMethodCallSeconds(t *testing.T) {
	in := rebootInput()
	in.ResponseTimeout = 4100 * time.Millisecond
	in.ConnectTimeout = 1500 * time.Millisecond
	call, timeout, err := in.methodCall()
	require.NoError(t, err)
	assert.Equal(t, uint(5), call.ResponseTimeout, "rounded up so the caller's timeout is a minimum")
	assert.Equal(t, uint(2), call.ConnectTimeout)
	assert.Equal(t, 7*time.Second+callSlack, timeout)

	in.ResponseTimeout = 0
	call, timeout, err = in.methodCall()
	require.NoError(t, err)
	assert.Equal(t, uint(0), call.ResponseTimeout, "left out: the hub applies its default")
	assert.Equal(t, 2*time.Second+defaultResponseTimeout+callSlack, timeout)
}

func TestActivitiesWithoutHub(t *testing.T) {
	env, _ := newEnv(t, &Activities{})
	_, err := env.ExecuteActivity((&Activities{}).InvokeMethod, rebootInput())
	require.ErrorContains(t, err, "Hub is not set")
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	assert.False(t, appErr.NonRetryable(), "a fixed worker can pick it up")

	_, err = env.ExecuteActivity((&Activities{}).WaitForReported, WaitForReportedInput{DeviceID: "dev1", Property: "rebootTime"})
	require.ErrorContains(t, err, "Hub is not set")

	_, err = env.ExecuteActivity((&Activities{}).QueryDevices, QueryDevicesInput{Query: "SELECT * FROM devices"})
	require.ErrorContains(t, err, "Hub is not set")
}
