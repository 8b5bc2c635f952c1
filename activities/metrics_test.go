package activities

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"testing"

	"github.com/dmflow/dmflow/internal/hubconn"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uber-go/tally/v4"
	sdktally "go.temporal.io/sdk/contrib/tally"
	"go.temporal.io/sdk/testsuite"
)

// meteredEnv is an activity test environment whose metrics go to a tally test scope, with the
// Activities on MeteredHub(hub) registered.
func meteredEnv(t *testing.T, hub Hub) (*testsuite.TestActivityEnvironment, tally.TestScope) {
	t.Helper()
	scope := tally.NewTestScope("", nil)
	var s testsuite.WorkflowTestSuite
	s.SetMetricsHandler(sdktally.NewMetricsHandler(scope))
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(&Activities{Hub: MeteredHub(hub)})
	return env, scope
}

// hubCalls lists the hub-call counters of scope as "metric call status activity=n", sorted.
func hubCalls(scope tally.TestScope) []string {
	var out []string
	for _, c := range scope.Snapshot().Counters() {
		tags := c.Tags()
		switch c.Name() {
		case MetricHubCalls:
			out = append(out, fmt.Sprintf("calls %s %s %s=%d", tags[LabelCall], tags[LabelStatus], tags["activity_type"], c.Value()))
		case MetricHubThrottled:
			out = append(out, fmt.Sprintf("throttled %s %s=%d", tags[LabelCall], tags["activity_type"], c.Value()))
		}
	}
	sort.Strings(out)
	return out
}

func TestMeteredHubCountsCallsByStatus(t *testing.T) {
	twinOK := func(context.Context, int) (*iotservice.Twin, error) {
		return reportedTwin(1, map[string]any{"firmwareVersion": "1.0.0"}), nil
	}
	twinFails := func(err error) func(context.Context, int) (*iotservice.Twin, error) {
		return func(context.Context, int) (*iotservice.Twin, error) { return nil, err }
	}
	callAnswers := func(status int, err error) func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
		return func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
			if err != nil {
				return hubconn.MethodAnswer{}, err
			}
			return hubconn.MethodAnswer{Status: status}, nil
		}
	}
	twinIn := GetTwinInput{DeviceID: "dev1", Properties: []string{"firmwareVersion"}}
	for _, tc := range []struct {
		name string
		hub  *fakeHub
		run  func(env *testsuite.TestActivityEnvironment) error
		want []string
	}{
		{
			name: "twin read",
			hub:  &fakeHub{twin: twinOK},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).GetTwin, twinIn)
				return err
			},
			want: []string{"calls get_twin 200 GetTwin=1"},
		},
		{
			name: "throttled twin read",
			hub:  &fakeHub{twin: twinFails(hubErr(429, 429001, "ThrottlingException"))},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).GetTwin, twinIn)
				return err
			},
			want: []string{"calls get_twin 429 GetTwin=1", "throttled get_twin GetTwin=1"},
		},
		{
			name: "unknown device",
			hub:  &fakeHub{twin: twinFails(hubErr(404, 404001, "DeviceNotFound"))},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).GetTwin, twinIn)
				return err
			},
			want: []string{"calls get_twin 404 GetTwin=1"},
		},
		{
			name: "network failure",
			hub:  &fakeHub{twin: twinFails(&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")})},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).GetTwin, twinIn)
				return err
			},
			want: []string{"calls get_twin error GetTwin=1"},
		},
		{
			name: "read timed out",
			hub:  &fakeHub{twin: twinFails(fmt.Errorf("Get twin: %w", context.DeadlineExceeded))},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).GetTwin, twinIn)
				return err
			},
			want: []string{"calls get_twin timeout GetTwin=1"},
		},
		{
			// The device refused, but the hub answered the call: a 200 call.
			name: "method refused by the device",
			hub:  &fakeHub{call: callAnswers(409, nil)},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).InvokeMethod, rebootInput())
				return err
			},
			want: []string{"calls invoke_method 200 InvokeMethod=1"},
		},
		{
			name: "device did not answer in time",
			hub:  &fakeHub{call: callAnswers(0, hubErr(504, 504101, "GatewayTimeout"))},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).InvokeMethod, rebootInput())
				return err
			},
			want: []string{"calls invoke_method 504 InvokeMethod=1"},
		},
		{
			name: "throttled method",
			hub:  &fakeHub{call: callAnswers(0, hubErr(429, 429001, "ThrottlingException"))},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).InvokeMethod, rebootInput())
				return err
			},
			want: []string{"calls invoke_method 429 InvokeMethod=1", "throttled invoke_method InvokeMethod=1"},
		},
		{
			name: "three query pages",
			hub: &fakeHub{page: pagedQuery(
				[]map[string]any{queryTwin("d1", nil), queryTwin("d2", nil)},
				[]map[string]any{queryTwin("d3", nil)},
				[]map[string]any{queryTwin("d4", nil)})},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).QueryDevices, QueryDevicesInput{Query: "SELECT * FROM devices"})
				return err
			},
			want: []string{"calls query 200 QueryDevices=3"},
		},
		{
			name: "empty query result",
			hub:  &fakeHub{page: pagedQuery([]map[string]any{})},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).QueryDevices, QueryDevicesInput{Query: "SELECT * FROM devices"})
				return err
			},
			want: []string{"calls query 200 QueryDevices=1"},
		},
		{
			name: "second page throttled",
			hub: &fakeHub{page: func(ctx context.Context, q string, size int, token string) (hubconn.TwinPage, error) {
				if token == "" {
					return pagedQuery([]map[string]any{queryTwin("d1", nil)}, nil)(ctx, q, size, token)
				}
				return hubconn.TwinPage{}, hubErr(429, 429001, "ThrottlingException")
			}},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).QueryDevices, QueryDevicesInput{Query: "SELECT * FROM devices"})
				return err
			},
			want: []string{"calls query 200 QueryDevices=1", "calls query 429 QueryDevices=1", "throttled query QueryDevices=1"},
		},
		{
			// The activity stops the query past MaxDevices: the pages read are the calls made.
			name: "query stopped by the activity",
			hub: &fakeHub{page: pagedQuery(
				[]map[string]any{queryTwin("d1", nil), queryTwin("d2", nil)},
				[]map[string]any{queryTwin("d3", nil)})},
			run: func(env *testsuite.TestActivityEnvironment) error {
				_, err := env.ExecuteActivity((&Activities{}).QueryDevices, QueryDevicesInput{Query: "SELECT * FROM devices", MaxDevices: 1})
				if err == nil || !strings.Contains(err.Error(), ErrTooManyDevices) {
					return fmt.Errorf("want %s, got %v", ErrTooManyDevices, err)
				}
				return nil
			},
			want: []string{"calls query 200 QueryDevices=1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, scope := meteredEnv(t, tc.hub)
			_ = tc.run(env) // the activities' errors are tested elsewhere; the calls counted are the point
			assert.Equal(t, tc.want, hubCalls(scope))
		})
	}
}

// Outside an activity (the worker's check at start) a call passes through uncounted, without the
// panic activity.GetMetricsHandler would raise.
func TestMeteredHubOutsideActivity(t *testing.T) {
	hub := &fakeHub{twin: func(context.Context, int) (*iotservice.Twin, error) { return reportedTwin(1, nil), nil }}
	twin, err := MeteredHub(hub).GetDeviceTwin(context.Background(), "dev1")
	require.NoError(t, err)
	assert.NotNil(t, twin)
	assert.Equal(t, 1, hub.readCount())
}
