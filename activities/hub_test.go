package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/dmflow/dmflow/internal/hubconn"

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
	// page answers QueryPage; pagedQuery builds one that serves fixed pages with their tokens.
	page func(ctx context.Context, query string, size int, token string) (hubconn.TwinPage, error)

	mu      sync.Mutex
	calls   []hubconn.MethodCall
	reads   int
	queries []queryRequest
}

// queryRequest is a QueryPage call as the fake saw it.
type queryRequest struct {
	query string
	size  int
	token string
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

func (h *fakeHub) QueryPage(ctx context.Context, query string, size int, token string) (hubconn.TwinPage, error) {
	h.mu.Lock()
	h.queries = append(h.queries, queryRequest{query, size, token})
	h.mu.Unlock()
	if h.page == nil {
		return hubconn.TwinPage{}, fmt.Errorf("unexpected query %s", query)
	}
	return h.page(ctx, query, size, token)
}

// pagedQuery answers a query with the given pages, whatever the page size asked: the first
// without a token, page i for the token "p<i>", which page i-1 returns. A token it did not issue
// is refused with 400, as IoT Hub refuses it.
func pagedQuery(pages ...[]map[string]any) func(context.Context, string, int, string) (hubconn.TwinPage, error) {
	return func(ctx context.Context, _ string, _ int, token string) (hubconn.TwinPage, error) {
		if err := ctx.Err(); err != nil {
			return hubconn.TwinPage{}, err
		}
		i := 0
		if token != "" {
			n, err := strconv.Atoi(strings.TrimPrefix(token, "p"))
			if err != nil || !strings.HasPrefix(token, "p") || n < 1 || n >= len(pages) {
				return hubconn.TwinPage{}, hubErr(400, 400004, "ArgumentInvalid")
			}
			i = n
		}
		var out hubconn.TwinPage
		for _, row := range pages[i] {
			b, err := json.Marshal(row)
			if err != nil {
				return hubconn.TwinPage{}, err
			}
			out.Twins = append(out.Twins, b)
		}
		if i+1 < len(pages) {
			out.Next = fmt.Sprintf("p%d", i+1)
		}
		return out, nil
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
