// Package activities holds the Temporal activities through which dmflow workflows reach Azure IoT Hub:
// invoking a direct method on a device (InvokeMethod), reading reported twin properties (GetTwin),
// waiting for a device to report a twin property (WaitForReported) and following a firmware update
// through its reported stages (FollowStages). The two waits share one heartbeating poll loop with
// exponential backoff (poll.go).
//
// Activities are methods on [Activities], whose dependencies are set once by the worker; workflows
// reference them through a nil *Activities. Every error from the hub passes through one classification
// (see classify): an unknown device, rejected credentials and malformed requests become non-retryable
// [temporal.ApplicationError]s typed with the Err* constants, which retry policies name in
// NonRetryableErrorTypes; a device that is offline, a gateway timeout, throttling, server errors and
// network failures stay plain wrapped errors, which Temporal retries.
package activities

import (
	"context"
	"errors"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
)

// Error types of the non-retryable ApplicationErrors the activities return. Retry policies list them
// in NonRetryableErrorTypes; callers match them with errors.As and ApplicationError.Type.
const (
	// ErrDeviceNotFound: the device is not registered in the hub (IoT Hub error 404001).
	ErrDeviceNotFound = "DeviceNotFound"
	// ErrUnauthorized: the hub refused the service credentials (HTTP 401 or 403).
	ErrUnauthorized = "Unauthorized"
	// ErrBadRequest: the hub or the activity rejected the request itself (HTTP 400, invalid input).
	ErrBadRequest = "BadRequest"
	// ErrMethodFailed: the device answered a direct method with a status outside 200–299.
	ErrMethodFailed = "MethodFailed"
	// ErrDeadlineExceeded: WaitForReported or FollowStages passed its deadline before the condition
	// held or the update completed.
	ErrDeadlineExceeded = "DeadlineExceeded"
	// ErrStageTimeout: FollowStages saw no next firmware stage within the stage timeout; the message
	// names the stage the device is stuck in.
	ErrStageTimeout = "StageTimeout"
	// ErrDeviceError: the device reported firmwareStatus "error" for the update, with its reason and
	// the stage it failed in.
	ErrDeviceError = "DeviceError"
)

// Hub is the part of the IoT Hub service API the activities use. *iotservice.Client satisfies it;
// keeping it this small lets tests substitute a fake and the worker choose how the client is built.
type Hub interface {
	CallDeviceMethod(ctx context.Context, deviceID string, call *iotservice.MethodCall) (*iotservice.MethodResult, error)
	GetDeviceTwin(ctx context.Context, deviceID string) (*iotservice.Twin, error)
}

// Activities groups the IoT Hub activities. The worker registers one value with Hub set; workflows
// call the methods through a nil *Activities, which only names them.
type Activities struct {
	Hub Hub

	// heartbeatInterval overrides how often InvokeMethod heartbeats while the call is in flight;
	// zero derives it from the activity's heartbeat timeout. Only tests set it, to observe
	// heartbeats without waiting seconds.
	heartbeatInterval time.Duration
}

// errNoHub is returned when the worker registered Activities without a Hub. It is left retryable:
// a worker deployed with the fix picks the activity up again.
var errNoHub = errors.New("activities: Hub is not set: the worker must build Activities with an IoT Hub service client")
