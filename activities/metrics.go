package activities

import (
	"context"
	"errors"
	"strconv"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/dmflow/dmflow/internal/hubconn"
	"go.temporal.io/sdk/activity"
)

// Metrics the activities emit through the SDK's metrics handler (activity.GetMetricsHandler), so
// that they reach the worker's Prometheus registry with the SDK's own and carry its labels
// (namespace, task_queue, workflow_type, activity_type). Prometheus sees counters with _total.
const (
	// MetricHubCalls counts IoT Hub calls, labelled LabelCall and LabelStatus.
	MetricHubCalls = "dmflow_hub_calls"
	// MetricHubThrottled counts the calls the hub refused with 429 (ThrottlingException),
	// labelled LabelCall: the signal that the hub's quota, not dmflow, sets the pace.
	MetricHubThrottled = "dmflow_hub_throttled"
	// MetricBudgetWait times how long a hub call waited for its tokens of the hub budget and the
	// rollout's ceiling (a histogram in seconds), labelled LabelOp: the signal that the budget,
	// not the hub, sets the pace.
	MetricBudgetWait = "dmflow_hub_budget_wait"

	// LabelCall names the hub call: CallInvokeMethod, CallGetTwin, CallQuery.
	LabelCall = "call"
	// LabelStatus is the HTTP status the hub answered ("200", "404", "429", "504", ...), or
	// StatusTimeout, StatusCancelled or StatusError when no answer came.
	LabelStatus = "status"
	// LabelOp is the hub operation as IoT Hub meters it: methods, twinReads, queries.
	LabelOp = "op"
)

// Values of LabelCall.
const (
	CallInvokeMethod = "invoke_method"
	CallGetTwin      = "get_twin"
	// CallQuery is one page of a device query: a query of 2,500 twins is three calls.
	CallQuery = "query"
)

// Values of LabelStatus for calls that got no HTTP answer.
const (
	// StatusTimeout: the call's deadline passed first.
	StatusTimeout = "timeout"
	// StatusCancelled: the activity was cancelled during the call.
	StatusCancelled = "cancelled"
	// StatusError: the request failed otherwise (connection refused, TLS, DNS, a body that does
	// not decode).
	StatusError = "error"
)

// statusOK is what the hub answered a call that returned no error. A direct method the device
// answered with 4xx or 5xx is still an HTTP 200 from the hub: the device's status is in the
// result, the call itself succeeded.
const statusOK = "200"

// statusThrottled is IoT Hub's answer to a call over its quota (ThrottlingException, 429001).
const statusThrottled = "429"

// MeteredHub returns hub with every call counted in MetricHubCalls (and 429s in
// MetricHubThrottled), when made from an activity; the worker wraps its service client in it.
// Calls from outside an activity (a check at start) pass through uncounted: only an activity's
// context carries the handler, and its labels.
func MeteredHub(hub Hub) Hub { return meteredHub{hub} }

type meteredHub struct{ hub Hub }

func (m meteredHub) CallMethod(ctx context.Context, deviceID string, call hubconn.MethodCall) (hubconn.MethodAnswer, error) {
	res, err := m.hub.CallMethod(ctx, deviceID, call)
	countHubCall(ctx, CallInvokeMethod, hubStatus(err))
	return res, err
}

func (m meteredHub) GetDeviceTwin(ctx context.Context, deviceID string) (*iotservice.Twin, error) {
	twin, err := m.hub.GetDeviceTwin(ctx, deviceID)
	countHubCall(ctx, CallGetTwin, hubStatus(err))
	return twin, err
}

// QueryPage counts the page requested.
func (m meteredHub) QueryPage(ctx context.Context, query string, pageSize int, token string) (hubconn.TwinPage, error) {
	page, err := m.hub.QueryPage(ctx, query, pageSize, token)
	countHubCall(ctx, CallQuery, hubStatus(err))
	return page, err
}

// hubStatus is the LabelStatus of a call that returned err.
func hubStatus(err error) string {
	if err == nil {
		return statusOK
	}
	if he, ok := parseHubError(err); ok {
		return strconv.Itoa(he.status)
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return StatusTimeout
	case errors.Is(err, context.Canceled):
		return StatusCancelled
	}
	return StatusError
}

// countHubCall adds one call to the metrics of ctx's activity; outside an activity it does
// nothing.
func countHubCall(ctx context.Context, call, status string) {
	if !activity.IsActivity(ctx) {
		return
	}
	h := activity.GetMetricsHandler(ctx)
	h.WithTags(map[string]string{LabelCall: call, LabelStatus: status}).Counter(MetricHubCalls).Inc(1)
	if status == statusThrottled {
		h.WithTags(map[string]string{LabelCall: call}).Counter(MetricHubThrottled).Inc(1)
	}
}
