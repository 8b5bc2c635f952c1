package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/amenzhinsky/iothub/iotservice"
	"go.temporal.io/sdk/temporal"
)

// IoT Hub error codes the classification tells apart. The hub sends them as the integer ErrorCode of
// the error body and as the name in its Message ("ErrorCode:DeviceNotOnline;…"); both are checked
// because not every endpoint (nor every hub emulator) fills in both.
const (
	codeDeviceNotFound                 = 404001
	codeDeviceNotOnline                = 404103
	codeDeviceConnectionClosedRemotely = 404104
)

// codeNames maps the names in a Message to codes; the ones beyond the three
// above only make messages complete when a body carries the name alone.
var codeNames = map[string]int{
	"DeviceNotFound":                 codeDeviceNotFound,
	"DeviceNotOnline":                codeDeviceNotOnline,
	"DeviceConnectionClosedRemotely": codeDeviceConnectionClosedRemotely,
	"ArgumentInvalid":                400004,
	"IotHubUnauthorizedAccess":       401002,
	"ThrottlingException":            429001,
	"GatewayTimeout":                 504101,
}

// hubError is what an IoT Hub REST error says about itself.
type hubError struct {
	status  int    // HTTP status
	code    int    // IoT Hub error code such as 404001; 0 when the body names none
	message string // the hub's Message, for people
}

// parseHubError extracts the HTTP status and IoT Hub error code from the errors the amenzhinsky
// service client returns for non-2xx answers: *iotservice.RequestError in general, and
// *iotservice.BadRequestError for a 400 whose body has a Message. ok is false for anything else
// (transport failures, timeouts, JSON errors), which did not come from the hub's error handling.
func parseHubError(err error) (he hubError, ok bool) {
	var body []byte
	var reqErr *iotservice.RequestError
	var badErr *iotservice.BadRequestError
	switch {
	case errors.As(err, &reqErr):
		he.status = reqErr.Code
		body = reqErr.Body
	case errors.As(err, &badErr):
		he.status = http.StatusBadRequest
		he.message = badErr.Message
	default:
		return he, false
	}

	if len(body) > 0 {
		var b struct {
			Message   string          `json:"Message"`
			ErrorCode json.RawMessage `json:"ErrorCode"`
		}
		if json.Unmarshal(body, &b) == nil {
			he.message = b.Message
			he.code = parseErrorCode(b.ErrorCode)
		}
	}
	if he.code == 0 {
		he.code = codeFromMessage(he.message)
	}
	return he, true
}

// parseErrorCode reads ErrorCode as sent: a number (404001), a numeric string ("404001") or a name
// ("DeviceNotFound").
func parseErrorCode(raw json.RawMessage) int {
	if len(raw) == 0 {
		return 0
	}
	var n int
	if json.Unmarshal(raw, &n) == nil {
		return n
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return 0
	}
	if n, err := strconv.Atoi(s); err == nil {
		return n
	}
	return codeNames[s]
}

// codeFromMessage reads the code name from a Message of the form "ErrorCode:DeviceNotOnline;…".
func codeFromMessage(msg string) int {
	rest, ok := strings.CutPrefix(msg, "ErrorCode:")
	if !ok {
		return 0
	}
	name, _, _ := strings.Cut(rest, ";")
	return codeNames[strings.TrimSpace(name)]
}

// classify turns an error from the hub into what a retry policy acts on. op says what was attempted
// ("invoke rebootDevice", "read twin") and is combined with the device into the message. This is the
// one place that decides retryability:
//   - 404001 DeviceNotFound (or a bare 404) → non-retryable ErrDeviceNotFound: retrying cannot
//     register the device;
//   - 401, 403 → non-retryable ErrUnauthorized: the worker's credentials will not change by themselves;
//   - 400 and other 4xx the hub does not document as transient → non-retryable ErrBadRequest;
//   - 404103 DeviceNotOnline, 404104, 408, 429 throttling, 5xx (504101 GatewayTimeout included),
//     network errors and timeouts → the error wrapped with context, which Temporal retries.
//
// ApplicationErrors and context cancellation pass through unchanged.
func classify(err error, op, device string) error {
	if err == nil {
		return nil
	}
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) || errors.Is(err, context.Canceled) {
		return err
	}
	where := fmt.Sprintf("%s on %s", op, device)
	retryable := fmt.Errorf("%s: %w", where, err)

	he, ok := parseHubError(err)
	if !ok {
		return retryable
	}
	// The client's error text is the raw body, escaped JSON with tracking
	// IDs; what lands in the workflow's history should read as a sentence.
	retryable = &hubCallError{
		msg: fmt.Sprintf("%s: IoT Hub answered HTTP %d%s: %s", where, he.status, codeSuffix(he.code), he.message),
		err: err,
	}
	switch {
	case he.code == codeDeviceNotOnline || he.code == codeDeviceConnectionClosedRemotely:
		return retryable
	case he.code == codeDeviceNotFound || (he.status == http.StatusNotFound && he.code == 0):
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("%s: device %q is not registered in the IoT hub: check the device ID or create the device", where, device),
			ErrDeviceNotFound, err)
	case he.status == http.StatusUnauthorized || he.status == http.StatusForbidden:
		// The message names the setting to fix but never its value: the connection string holds the key.
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("%s: IoT Hub refused the service credentials (HTTP %d): check that IOTHUB_CONNECTION_STRING names a shared access policy with ServiceConnect permission and its current key", where, he.status),
			ErrUnauthorized, err)
	case he.status == http.StatusRequestTimeout || he.status == http.StatusTooManyRequests || he.status >= 500:
		return retryable
	case he.status >= 400:
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("%s: IoT Hub rejected the request (HTTP %d%s): %s", where, he.status, codeSuffix(he.code), he.message),
			ErrBadRequest, err)
	}
	return retryable
}

// notOnline reports whether err is the hub's answer for a device that is not connected (404103):
// nothing was delivered.
func notOnline(err error) bool {
	he, ok := parseHubError(err)
	return ok && he.code == codeDeviceNotOnline
}

// hubCallError is a retryable hub answer, readable, with the client's error
// underneath for errors.As.
type hubCallError struct {
	msg string
	err error
}

func (e *hubCallError) Error() string { return e.msg }
func (e *hubCallError) Unwrap() error { return e.err }

func codeSuffix(code int) string {
	if code == 0 {
		return ""
	}
	return fmt.Sprintf(", code %d", code)
}

// badRequest reports input the activity refuses before calling the hub; it is as final as a 400.
func badRequest(format string, args ...any) error {
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf(format, args...), ErrBadRequest, nil)
}

// ErrorDetails decodes the details of the ApplicationError in err's chain (the first, as errors.As
// finds it) into into, when its type is one of types (any type when none is given) and it carries
// details, and reports whether it did. Failures carry what their caller needs beyond the message
// there: the activities' progress (FollowStagesProgress, WaitForReportedProgress), a device's
// answer (InvokeMethodResult), a rollout's final progress.
func ErrorDetails(err error, into any, types ...string) bool {
	var app *temporal.ApplicationError
	if !errors.As(err, &app) || (len(types) > 0 && !slices.Contains(types, app.Type())) {
		return false
	}
	return app.HasDetails() && app.Details(into) == nil
}
