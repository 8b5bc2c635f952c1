package hub

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestErrorStatus(t *testing.T) {
	tests := []struct {
		err        error
		code       string
		status     int
		number     int
		messageHas string
	}{
		{err: errorf(ErrArgumentInvalid, "bad"), code: ErrArgumentInvalid, status: 400, number: 400004},
		{err: errorf(ErrIotHubUnauthorizedAccess, "no"), code: ErrIotHubUnauthorizedAccess, status: 401, number: 401002},
		{err: errorf(ErrNotFound, "route"), code: ErrNotFound, status: 404, number: 404000},
		{err: errorf(ErrDeviceNotFound, "d"), code: ErrDeviceNotFound, status: 404, number: 404001},
		{err: errorf(ErrMethodNotAllowed, "m"), code: ErrMethodNotAllowed, status: 405, number: 405000},
		{err: errorf(ErrDeviceNotOnline, "d"), code: ErrDeviceNotOnline, status: 404, number: 404103},
		{err: errorf(ErrDeviceAlreadyExists, "d"), code: ErrDeviceAlreadyExists, status: 409, number: 409001},
		{err: errorf(ErrPreconditionFailed, "etag"), code: ErrPreconditionFailed, status: 412, number: 412001},
		{err: errorf(ErrThrottling, "slow"), code: ErrThrottling, status: 429, number: 429001},
		{err: errorf(ErrServiceUnavailable, "bye"), code: ErrServiceUnavailable, status: 503, number: 503001},
		{err: errorf(ErrGatewayTimeout, "late"), code: ErrGatewayTimeout, status: 504, number: 504101},
		{err: fmt.Errorf("wrapped: %w", errorf(ErrDeviceNotFound, "d")), code: ErrDeviceNotFound, status: 404, number: 404001},
		{err: errors.New("disk on fire"), code: ErrServerError, status: 500, number: 500001, messageHas: "internal error"},
	}
	for _, tc := range tests {
		t.Run(tc.code, func(t *testing.T) {
			if got := ErrorCode(tc.err); got != tc.code {
				t.Fatalf("ErrorCode = %q, want %q", got, tc.code)
			}
			status, number := errorStatus(tc.code)
			if status != tc.status || number != tc.number {
				t.Fatalf("errorStatus = %d/%d, want %d/%d", status, number, tc.status, tc.number)
			}

			rec := httptest.NewRecorder()
			writeError(rec, tc.err)
			if rec.Code != tc.status {
				t.Errorf("HTTP status = %d, want %d", rec.Code, tc.status)
			}
			if got := rec.Header().Get("iothub-errorcode"); got != tc.code {
				t.Errorf("iothub-errorcode = %q, want %q", got, tc.code)
			}
			var body errorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body.String(), err)
			}
			if body.ErrorCode != tc.number {
				t.Errorf("ErrorCode field = %d, want %d", body.ErrorCode, tc.number)
			}
			if !strings.HasPrefix(body.Message, "ErrorCode:"+tc.code+";") {
				t.Errorf("Message = %q", body.Message)
			}
			if tc.messageHas != "" && !strings.Contains(body.Message, tc.messageHas) {
				t.Errorf("Message = %q, want it to contain %q", body.Message, tc.messageHas)
			}
			if strings.Contains(body.Message, "disk on fire") {
				t.Errorf("internal error detail leaked: %q", body.Message)
			}
			if body.ExceptionMessage == "" {
				t.Error("ExceptionMessage is empty")
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q", ct)
			}
		})
	}
}

func TestErrorStatusUnknownCode(t *testing.T) {
	if status, number := errorStatus("SomethingNew"); status != http.StatusInternalServerError || number != 500001 {
		t.Errorf("errorStatus(unknown) = %d/%d", status, number)
	}
}
