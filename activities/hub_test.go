package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/dmflow/dmflow/internal/hubconn"
	"sync"
	"testing"

	"github.com/amenzhinsky/iothub/iotservice"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
)

// fakeHub answers from functions the test sets and counts the calls. The tests against a real
// localhub are in localhub_test.go; this fake drives the activities through sequences that are
// awkward to stage on a real hub (exact poll counts, transient errors in a given order, throttling).
type fakeHub struct {
	call func(ctx context.Context, n int, call hubconn.MethodCall) (hubconn.MethodAnswer, error)
	twin func(ctx context.Context, n int) (*iotservice.Twin, error)
	// query answers QueryDevices; pagedQuery builds one that pages as the real client does.
	query func(ctx context.Context, query string, fn func(v map[string]interface{}) error) error

	mu      sync.Mutex
	calls   []hubconn.MethodCall
	reads   int
	queries []string
}

func (h *fakeHub) CallMethod(ctx context.Context, deviceID string, call hubconn.MethodCall) (hubconn.MethodAnswer, error) {
	h.mu.Lock()
	h.calls = append(h.calls, call)
	n := len(h.calls)
	h.mu.Unlock()
	if h.call == nil {
		return hubconn.MethodAnswer{}, fmt.Errorf("unexpected method call %s on %s", call.Method, deviceID)
	}
	return h.call(ctx, n, call)
}

func (h *fakeHub) GetDeviceTwin(ctx context.Context, deviceID string) (*iotservice.Twin, error) {
	h.mu.Lock()
	h.reads++
	n := h.reads
	h.mu.Unlock()
	if h.twin == nil {
		return nil, fmt.Errorf("unexpected twin read of %s", deviceID)
	}
	return h.twin(ctx, n)
}

func (h *fakeHub) QueryDevices(ctx context.Context, query string, fn func(v map[string]interface{}) error) error {
	h.mu.Lock()
	h.queries = append(h.queries, query)
	h.mu.Unlock()
	if h.query == nil {
		return fmt.Errorf("unexpected query %s", query)
	}
	return h.query(ctx, query, fn)
}

// pagedQuery answers a query with pages of twins the way *iotservice.Client does: it decodes
// every page's JSON into the same slice, so later pages arrive in the row maps of earlier ones
// (keys a row lacks survive from the row before, unless fn cleared the map). After each page it
// calls onPage, if set, with the page's index, before "requesting" the next one. It stops at the
// first error, of fn or of ctx.
func pagedQuery(onPage func(page int), pages ...[]map[string]any) func(context.Context, string, func(map[string]interface{}) error) error {
	return func(ctx context.Context, _ string, fn func(map[string]interface{}) error) error {
		var res []map[string]interface{}
		for i, page := range pages {
			if err := ctx.Err(); err != nil {
				return err
			}
			b, err := json.Marshal(page)
			if err != nil {
				return err
			}
			if err := json.Unmarshal(b, &res); err != nil {
				return err
			}
			for _, v := range res {
				if err := fn(v); err != nil {
					return err
				}
			}
			if onPage != nil {
				onPage(i)
			}
		}
		return nil
	}
}

// queryTwin is a twin row as a query returns it; reported may be nil.
func queryTwin(id string, reported map[string]any) map[string]any {
	row := map[string]any{"deviceId": id, "status": "enabled", "tags": map[string]any{"ring": "beta"}}
	if reported != nil {
		row["properties"] = map[string]any{"reported": reported, "desired": map[string]any{}}
	}
	return row
}

func (h *fakeHub) queryCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.queries)
}

func (h *fakeHub) callCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.calls)
}

func (h *fakeHub) readCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reads
}

// reportedTwin builds a twin whose reported properties are props plus $version, as the hub sends it
// (numbers decoded from JSON are float64).
func reportedTwin(version int, props map[string]any) *iotservice.Twin {
	reported := map[string]any{"$version": float64(version), "$metadata": map[string]any{}}
	for k, v := range props {
		reported[k] = v
	}
	return &iotservice.Twin{DeviceID: "dev1", Properties: &iotservice.Properties{Reported: reported}}
}

// hubErr builds the error the amenzhinsky client returns for an IoT Hub error answer.
func hubErr(status, code int, name string) error {
	return &iotservice.RequestError{
		Code: status,
		Body: fmt.Appendf(nil, `{"Message":"ErrorCode:%s;something went wrong","ExceptionMessage":"Tracking ID:abc","ErrorCode":%d}`, name, code),
	}
}

// heartbeatRecorder sees every activity.RecordHeartbeat call. The test environment's heartbeat
// listener only sees the heartbeats that survive batching, too few to count polls with.
type heartbeatRecorder struct {
	interceptor.WorkerInterceptorBase

	mu      sync.Mutex
	details [][]any
}

func (r *heartbeatRecorder) InterceptActivity(_ context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	i := &heartbeatInbound{root: r}
	i.Next = next
	return i
}

func (r *heartbeatRecorder) recorded() [][]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]any(nil), r.details...)
}

type heartbeatInbound struct {
	interceptor.ActivityInboundInterceptorBase
	root *heartbeatRecorder
}

func (i *heartbeatInbound) Init(outbound interceptor.ActivityOutboundInterceptor) error {
	o := &heartbeatOutbound{root: i.root}
	o.Next = outbound
	return i.Next.Init(o)
}

type heartbeatOutbound struct {
	interceptor.ActivityOutboundInterceptorBase
	root *heartbeatRecorder
}

func (o *heartbeatOutbound) RecordHeartbeat(ctx context.Context, details ...any) {
	o.root.mu.Lock()
	o.root.details = append(o.root.details, details)
	o.root.mu.Unlock()
	o.Next.RecordHeartbeat(ctx, details...)
}

// newEnv returns an activity test environment with a registered Activities on hub and a recorder of
// its heartbeats.
func newEnv(t *testing.T, a *Activities) (*testsuite.TestActivityEnvironment, *heartbeatRecorder) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	rec := &heartbeatRecorder{}
	env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{rec}})
	env.RegisterActivity(a)
	return env, rec
}
