package activities

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
)

func TestClassify(t *testing.T) {
	dnsErr := &url.Error{Op: "Post", URL: "https://hub/twins/dev1/methods", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}
	timeoutErr := &url.Error{Op: "Post", URL: "https://hub/twins/dev1/methods", Err: context.DeadlineExceeded}

	tests := []struct {
		name     string
		err      error
		wantType string // "" for a retryable plain error
		wantText []string
	}{
		{name: "device not found", err: hubErr(404, 404001, "DeviceNotFound"), wantType: ErrDeviceNotFound,
			wantText: []string{`device "dev1" is not registered`}},
		{name: "bare 404", err: &iotservice.RequestError{Code: 404}, wantType: ErrDeviceNotFound},
		{name: "code as a name only", err: &iotservice.RequestError{Code: 404, Body: []byte(`{"Message":"x","ErrorCode":"DeviceNotFound"}`)},
			wantType: ErrDeviceNotFound},
		{name: "device offline", err: hubErr(404, 404103, "DeviceNotOnline"),
			wantText: []string{"invoke rebootDevice on dev1: ", "DeviceNotOnline"}},
		{name: "device offline named in message only", err: &iotservice.RequestError{Code: 404, Body: []byte(`{"Message":"ErrorCode:DeviceNotOnline;Timed out waiting for device to connect."}`)}},
		{name: "connection closed remotely", err: hubErr(404, 404104, "DeviceConnectionClosedRemotely")},
		{name: "gateway timeout", err: hubErr(504, 504101, "GatewayTimeout")},
		{name: "throttled", err: hubErr(429, 429001, "ThrottlingException")},
		{name: "server error", err: hubErr(500, 500001, "ServerError")},
		{name: "service unavailable", err: &iotservice.RequestError{Code: 503, Body: []byte("upstream unavailable")}},
		{name: "request timeout", err: &iotservice.RequestError{Code: 408}},
		{name: "unauthorized", err: hubErr(401, 401002, "IotHubUnauthorizedAccess"), wantType: ErrUnauthorized,
			wantText: []string{"IOTHUB_CONNECTION_STRING", "HTTP 401"}},
		{name: "forbidden", err: &iotservice.RequestError{Code: 403}, wantType: ErrUnauthorized},
		{name: "bad request", err: hubErr(400, 400004, "ArgumentInvalid"), wantType: ErrBadRequest,
			wantText: []string{"HTTP 400, code 400004", "ErrorCode:ArgumentInvalid"}},
		{name: "bad request decoded by the client", err: &iotservice.BadRequestError{Message: "ErrorCode:ArgumentInvalid;bad", ExceptionMessage: "x"},
			wantType: ErrBadRequest, wantText: []string{"ArgumentInvalid"}},
		{name: "payload too large", err: &iotservice.RequestError{Code: 413}, wantType: ErrBadRequest},
		{name: "network error", err: dnsErr, wantText: []string{"connection refused"}},
		{name: "call timed out", err: timeoutErr},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := classify(tc.err, "invoke rebootDevice", "dev1")
			require.Error(t, got)
			var appErr *temporal.ApplicationError
			if tc.wantType == "" {
				assert.False(t, errors.As(got, &appErr), "want a plain retryable error, got %v", got)
				assert.ErrorIs(t, got, tc.err)
				assert.True(t, strings.HasPrefix(got.Error(), "invoke rebootDevice on dev1: "), got.Error())
			} else {
				require.True(t, errors.As(got, &appErr), "want an ApplicationError, got %T", got)
				assert.Equal(t, tc.wantType, appErr.Type())
				assert.True(t, appErr.NonRetryable())
				assert.ErrorIs(t, got, tc.err, "the hub's error stays the cause")
				assert.Contains(t, got.Error(), "dev1")
			}
			for _, s := range tc.wantText {
				assert.Contains(t, got.Error(), s)
			}
		})
	}
}

func TestClassifyPassesThrough(t *testing.T) {
	assert.NoError(t, classify(nil, "read twin", "dev1"))

	appErr := temporal.NewNonRetryableApplicationError("already classified", ErrMethodFailed, nil)
	assert.Same(t, appErr, classify(appErr, "read twin", "dev1"))

	// A cancelled activity reports the cancellation itself, so that Temporal records it as such.
	assert.Equal(t, context.Canceled, classify(context.Canceled, "read twin", "dev1"))
}

func TestErrorDetails(t *testing.T) {
	progress := FollowStagesProgress{Polls: 3}
	withDetails := temporal.NewNonRetryableApplicationError("stuck", ErrStageTimeout, nil, progress)
	tests := []struct {
		name  string
		err   error
		types []string
		ok    bool
	}{
		{name: "any type", err: withDetails, ok: true},
		{name: "wrapped", err: fmt.Errorf("activity: %w", withDetails), ok: true},
		{name: "one of the types", err: withDetails, types: []string{ErrDeviceError, ErrStageTimeout}, ok: true},
		{name: "other type", err: withDetails, types: []string{ErrDeviceError}},
		{name: "no details", err: temporal.NewNonRetryableApplicationError("stuck", ErrStageTimeout, nil)},
		{name: "not an application error", err: errors.New("plain")},
		{name: "nil", err: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p FollowStagesProgress
			ok := ErrorDetails(tc.err, &p, tc.types...)
			assert.Equal(t, tc.ok, ok)
			if ok {
				assert.Equal(t, progress.Polls, p.Polls)
			}
		})
	}
}
