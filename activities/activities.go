// Package activities holds the Temporal activities through which dmflow workflows reach Azure IoT Hub:
// invoking a direct method on a device (InvokeMethod), reading reported twin properties (GetTwin),
// waiting for a device to report a twin property (WaitForReported), following a firmware update
// through its reported stages (FollowStages) and listing the devices a query selects, all at once
// (QueryDevices) or a page at a time (QueryDevicesPage). The two waits share one heartbeating poll loop with exponential backoff
// (poll.go).
//
// Inputs may carry a [HubRate]: the activities sharing its Key (a rollout's devices) then draw a
// token from one bucket in the worker before every hub call they make, so that a rollout stays
// under a share of the hub's quota however many devices it runs at once (rate.go).
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
	"github.com/dmflow/dmflow/internal/hubconn"
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
	// ErrDeviceNotOnline: the device is not connected (IoT Hub error 404103), and the caller asked
	// InvokeMethod to fail at once rather than retry (InvokeMethodInput.FailOffline).
	ErrDeviceNotOnline = "DeviceNotOnline"
)

// Hub is the part of the IoT Hub service API the activities use. *hubconn.ServiceClient satisfies it;
// keeping it this small lets tests substitute a fake and the worker choose how the client is built.
type Hub interface {
	// CallMethod invokes a direct method and returns the device's answer with its payload as raw
	// JSON (any JSON value, or none); see hubconn.ServiceClient for the errors it returns.
	CallMethod(ctx context.Context, deviceID string, call hubconn.MethodCall) (hubconn.MethodAnswer, error)
	GetDeviceTwin(ctx context.Context, deviceID string) (*iotservice.Twin, error)
	// QueryPage requests one page of a device query: up to pageSize twins (1 to
	// hubconn.MaxQueryPageSize) from the continuation token on ("" for the first page), and the
	// token of the next page ("" after the last). Unlike the amenzhinsky client's QueryDevices,
	// which pages by itself in pages of 100 and keeps the token, it leaves paging to the caller.
	QueryPage(ctx context.Context, query string, pageSize int, token string) (hubconn.TwinPage, error)
}

// The service client is what the worker passes as Hub.
var _ Hub = (*hubconn.ServiceClient)(nil)

// Activities groups the IoT Hub activities. The worker registers one value with Hub set; workflows
// call the methods through a nil *Activities, which only names them.
type Activities struct {
	Hub Hub

	// Pacer paces the hub calls (rate.go): the worker's budget.Leaser. Nil paces by the rollouts'
	// ceilings within this process alone, without a hub budget.
	Pacer Pacer

	// Heartbeats, when set, records heartbeat details synchronously: the worker's Temporal
	// client. InvokeMethod's ReadFirst records its twin read through it before calling, so that an
	// attempt that finds no read knows its predecessor never called (see ReadFirst). Nil falls back
	// on the SDK's batched heartbeats and on ReadFirst's fallback.
	Heartbeats HeartbeatRecorder

	// Workflows describes workflow executions for EndedWorkflows: the worker's Temporal client.
	Workflows WorkflowDescriber

	// heartbeatInterval overrides how often InvokeMethod heartbeats while the call is in flight,
	// and how often any activity heartbeats while it waits for a HubRate token; zero derives it
	// from the activity's heartbeat timeout. Only tests set it, to observe heartbeats without
	// waiting seconds.
	heartbeatInterval time.Duration
}

// HeartbeatRecorder records an activity's heartbeat details with the server and returns once it
// has: client.Client does.
type HeartbeatRecorder interface {
	RecordActivityHeartbeat(ctx context.Context, taskToken []byte, details ...any) error
}

// errNoHub is returned when the worker registered Activities without a Hub. It is left retryable:
// a worker deployed with the fix picks the activity up again.
var errNoHub = errors.New("activities: Hub is not set: the worker must build Activities with an IoT Hub service client")
