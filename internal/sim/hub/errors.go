package hub

import (
	"errors"
	"fmt"
	"net/http"
)

// Error codes, named as IoT Hub names them in the "ErrorCode:…" prefix of its
// error messages and in the iothub-errorcode response header.
const (
	ErrArgumentInvalid          = "ArgumentInvalid"
	ErrIotHubUnauthorizedAccess = "IotHubUnauthorizedAccess"
	ErrNotFound                 = "NotFound"         // an unknown REST route
	ErrMethodNotAllowed         = "MethodNotAllowed" // a known route, another HTTP method
	ErrDeviceNotFound           = "DeviceNotFound"
	ErrDeviceNotOnline          = "DeviceNotOnline"
	ErrDeviceAlreadyExists      = "DeviceAlreadyExists"
	ErrPreconditionFailed       = "PreconditionFailed"
	ErrMessageTooLarge          = "MessageTooLarge"
	ErrThrottling               = "ThrottlingException"
	ErrServerError              = "ServerError"
	ErrServiceUnavailable       = "ServiceUnavailable"
	ErrGatewayTimeout           = "GatewayTimeout"
)

// Error is an error with an IoT Hub error code.
type Error struct {
	Code    string // one of the Err… constants
	Message string
}

func (e *Error) Error() string {
	return e.Code + ": " + e.Message
}

func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the IoT Hub error code of err, or ErrServerError for an
// error that carries none (a bug or an I/O failure inside localhub).
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ErrServerError
}

// errorStatus maps an error code to its HTTP status and the numeric IoT Hub
// error code. It is the one place where localhub decides how an error looks to
// a REST client. The numbers are those of the service's ErrorCode enumeration
// (e.g. 404103 DeviceNotOnline, 504101 GatewayTimeout); PreconditionFailed is
// 412001, 412002 being DeviceMessageLockLost.
func errorStatus(code string) (status, number int) {
	switch code {
	case ErrArgumentInvalid:
		return http.StatusBadRequest, 400004
	case ErrIotHubUnauthorizedAccess:
		return http.StatusUnauthorized, 401002
	case ErrNotFound:
		return http.StatusNotFound, 404000
	case ErrDeviceNotFound:
		return http.StatusNotFound, 404001
	case ErrMethodNotAllowed:
		return http.StatusMethodNotAllowed, 405000
	case ErrDeviceNotOnline:
		return http.StatusNotFound, 404103
	case ErrDeviceAlreadyExists:
		return http.StatusConflict, 409001
	case ErrPreconditionFailed:
		return http.StatusPreconditionFailed, 412001
	case ErrMessageTooLarge:
		return http.StatusRequestEntityTooLarge, 413001
	case ErrThrottling:
		return http.StatusTooManyRequests, 429001
	case ErrServiceUnavailable:
		return http.StatusServiceUnavailable, 503001
	case ErrGatewayTimeout:
		return http.StatusGatewayTimeout, 504101
	default:
		return http.StatusInternalServerError, 500001
	}
}
