package activities

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// scheduledAt is when the workflow of these tests scheduled InvokeMethod, and where the hub's
// clock stands before the device takes a call.
var scheduledAt = time.Date(2026, 12, 6, 18, 0, 0, 0, time.UTC)

// simDevice is a firmware-update device behind a fakeHub, on either contract: it reports
// firmwareStatus, stamped by the hub's clock, and on dmflow's contract the update's ID too. It
// counts the calls it took: the ones delivered, whatever the hub answered.
type simDevice struct {
	reportsID bool

	mu       sync.Mutex
	version  string
	status   string
	stamp    time.Time
	updateID string
	clock    time.Time
	taken    int
}

// newSimDevice is a device that ran an update an hour before the operation: version 1.0, status
// completed.
func newSimDevice(reportsID bool) *simDevice {
	return &simDevice{reportsID: reportsID, version: "1.0", status: "completed",
		stamp: scheduledAt.Add(-time.Hour), clock: scheduledAt}
}

// take is the device taking a firmwareUpdate call: it reports downloading, which the hub stamps.
func (d *simDevice) take(call hubconn.MethodCall) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.taken++
	d.clock = d.clock.Add(time.Second)
	d.status, d.stamp = "downloading", d.clock
	if d.reportsID {
		var p struct {
			UpdateID string `json:"updateId"`
		}
		_ = json.Unmarshal(call.Payload, &p)
		d.updateID = p.UpdateID
	}
}

func (d *simDevice) takenCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.taken
}

func (d *simDevice) twin() *iotservice.Twin {
	d.mu.Lock()
	defer d.mu.Unlock()
	props := map[string][2]any{
		"firmwareVersion": {d.version, hubTime(scheduledAt.Add(-2 * time.Hour))},
		"firmwareStatus":  {d.status, hubTime(d.stamp)},
	}
	if d.updateID != "" {
		props["firmwareUpdateId"] = [2]any{d.updateID, hubTime(d.stamp)}
	}
	return &iotservice.Twin{DeviceID: "dev1", Properties: &iotservice.Properties{Reported: stamped(props)}}
}

// hub puts the device behind a fakeHub: call says what becomes of the nth call (answered takes
// it, and answers 200), readErr fails the nth twin read when it returns an error.
func (d *simDevice) hub(call func(n int, d *simDevice, c hubconn.MethodCall) (hubconn.MethodAnswer, error), readErr func(n int) error) *fakeHub {
	if call == nil {
		call = answered
	}
	return &fakeHub{
		call: func(_ context.Context, n int, c hubconn.MethodCall) (hubconn.MethodAnswer, error) {
			return call(n, d, c)
		},
		twin: func(_ context.Context, n int) (*iotservice.Twin, error) {
			if readErr != nil {
				if err := readErr(n); err != nil {
					return nil, err
				}
			}
			return d.twin(), nil
		},
	}
}

// answered: the device takes the call and the hub relays its answer.
func answered(_ int, d *simDevice, c hubconn.MethodCall) (hubconn.MethodAnswer, error) {
	d.take(c)
	return hubconn.MethodAnswer{Status: 200, Payload: json.RawMessage(`{"Response":"Firmware update started"}`)}, nil
}

// firstCall makes the first call end as first does, and answers the later ones.
func firstCall(first func(d *simDevice, c hubconn.MethodCall) (hubconn.MethodAnswer, error)) func(int, *simDevice, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
	return func(n int, d *simDevice, c hubconn.MethodCall) (hubconn.MethodAnswer, error) {
		if n == 1 {
			return first(d, c)
		}
		return answered(n, d, c)
	}
}

// Ways a first call ends.
var (
	// takenThenTimedOut: the device took the call, but the hub gave up waiting for its answer.
	takenThenTimedOut = func(d *simDevice, c hubconn.MethodCall) (hubconn.MethodAnswer, error) {
		d.take(c)
		return hubconn.MethodAnswer{}, hubErr(504, 504101, "GatewayTimeout")
	}
	// takenThenWorkerDied: the device took the call and the worker died before the answer; the
	// panic ends the attempt without a result, as a dead worker's does.
	takenThenWorkerDied = func(d *simDevice, c hubconn.MethodCall) (hubconn.MethodAnswer, error) {
		d.take(c)
		panic("worker died during the call")
	}
	// offline: the hub refused the call, the device not being connected.
	offline = func(*simDevice, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
		return hubconn.MethodAnswer{}, hubErr(404, 404103, "DeviceNotOnline")
	}
	// hubFailed: the hub failed without passing the call on, which the worker cannot tell from a
	// failure after it did.
	hubFailed = func(*simDevice, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
		return hubconn.MethodAnswer{}, hubErr(503, 503001, "ServiceUnavailable")
	}
)

// readFirstInput is a firmwareUpdate to version 2.0 that reads first, with evidence on both
// contracts. Evidence.Before is left for the read to set.
func readFirstInput() InvokeMethodInput {
	return InvokeMethodInput{
		DeviceID: "dev1", Method: "firmwareUpdate",
		Payload:         map[string]any{"fwPackageUri": "https://example.com/fw.bin", "version": "2.0", "updateId": "u1"},
		ResponseTimeout: 5 * time.Second,
		Evidence: &Evidence{
			Property: "firmwareStatus", OneOf: []string{"downloading", "applying", "completed", "error"},
			IDProperty: "firmwareUpdateId", ID: "u1", Window: 300 * time.Millisecond,
		},
		ReadFirst: &ReadFirst{
			Properties:  []string{"firmwareVersion", "firmwareStatus", "firmwareUpdateId"},
			SkipIf:      &ReportedValue{Property: "firmwareVersion", Value: "2.0"},
			ScheduledAt: scheduledAt,
		},
	}
}

// heartbeatLoser drops the heartbeats of the attempts lose names before they reach the SDK: they
// never reach the server, as those of a worker that died with them in the SDK's batch.
type heartbeatLoser struct {
	interceptor.WorkerInterceptorBase
	lose func(attempt int32) bool
}

func (l *heartbeatLoser) InterceptActivity(_ context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	i := &loserInbound{lose: l.lose}
	i.Next = next
	return i
}

type loserInbound struct {
	interceptor.ActivityInboundInterceptorBase
	lose func(int32) bool
}

func (i *loserInbound) Init(outbound interceptor.ActivityOutboundInterceptor) error {
	o := &loserOutbound{lose: i.lose}
	o.Next = outbound
	return i.Next.Init(o)
}

type loserOutbound struct {
	interceptor.ActivityOutboundInterceptorBase
	lose func(int32) bool
}

func (o *loserOutbound) RecordHeartbeat(ctx context.Context, details ...any) {
	if o.lose(o.Next.GetInfo(ctx).Attempt) {
		return
	}
	o.Next.RecordHeartbeat(ctx, details...)
}

// invokeLosing runs InvokeMethod retried by Temporal, as the workflows do, losing the heartbeats
// of the attempts lose names (nil loses none).
func invokeLosing(t *testing.T, hub Hub, in InvokeMethodInput, lose func(attempt int32) bool) (InvokeMethodResult, error) {
	t.Helper()
	return invokeLosingWith(t, &Activities{Hub: hub}, in, lose)
}

// invokeLosingWith is invokeLosing with the worker's Activities as given.
func invokeLosingWith(t *testing.T, acts *Activities, in InvokeMethodInput, lose func(attempt int32) bool) (InvokeMethodResult, error) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	if lose != nil {
		env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{&heartbeatLoser{lose: lose}}})
	}
	env.RegisterActivity(acts)
	env.RegisterWorkflowWithOptions(func(ctx workflow.Context, in InvokeMethodInput) (InvokeMethodResult, error) {
		ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			StartToCloseTimeout: time.Minute,
			RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumAttempts: 4,
				NonRetryableErrorTypes: []string{ErrMethodFailed}},
		})
		var out InvokeMethodResult
		err := workflow.ExecuteActivity(ctx, (&Activities{}).InvokeMethod, in).Get(ctx, &out)
		return out, err
	}, workflow.RegisterOptions{Name: "invoke"})
	env.ExecuteWorkflow("invoke", in)
	require.True(t, env.IsWorkflowCompleted())
	if err := env.GetWorkflowError(); err != nil {
		return InvokeMethodResult{}, err
	}
	var out InvokeMethodResult
	require.NoError(t, env.GetWorkflowResult(&out))
	return out, nil
}

// loseAttempt1 loses the first attempt's heartbeats.
func loseAttempt1(attempt int32) bool { return attempt == 1 }

// TestInvokeMethodReadFirstReadsThenCalls: the first attempt reads the twin, records the read in
// its heartbeat details before the call, and calls; the result carries the read and the
// Evidence.Before taken from it.
func TestInvokeMethodReadFirstReadsThenCalls(t *testing.T) {
	d := newSimDevice(false)
	var rec *heartbeatRecorder
	var readBeforeCall bool
	hub := d.hub(func(n int, d *simDevice, c hubconn.MethodCall) (hubconn.MethodAnswer, error) {
		for _, details := range rec.recorded() {
			if p, ok := details[0].(InvokeProgress); ok && p.Read != nil {
				readBeforeCall = true
			}
		}
		return answered(n, d, c)
	}, nil)
	env, r := newEnv(t, &Activities{Hub: hub})
	rec = r

	val, err := env.ExecuteActivity((&Activities{}).InvokeMethod, readFirstInput())
	require.NoError(t, err)
	var res InvokeMethodResult
	require.NoError(t, val.Get(&res))

	assert.Equal(t, 1, hub.readCount())
	assert.Equal(t, 1, hub.callCount())
	assert.True(t, readBeforeCall, "the read is in the heartbeat details before the call")
	before := hubTime(scheduledAt.Add(-time.Hour))
	assert.Equal(t, &GetTwinResult{
		Reported:    map[string]any{"firmwareVersion": "1.0", "firmwareStatus": "completed"},
		LastUpdated: map[string]string{"firmwareVersion": hubTime(scheduledAt.Add(-2 * time.Hour)), "firmwareStatus": before},
		Version:     3,
		Attempt:     1,
	}, res.Read)
	assert.Equal(t, before, res.EvidenceBefore)
	assert.Equal(t, 200, res.Status)
	assert.Equal(t, 1, res.Calls)
	assert.Equal(t, 1, res.TwinReads)
	assert.False(t, res.Skipped)
	assert.False(t, res.AlreadyAccepted)
}

// TestInvokeMethodReadFirstSkips: a device that reports SkipIf is not called.
func TestInvokeMethodReadFirstSkips(t *testing.T) {
	tests := []struct {
		name      string
		version   any
		wantSkip  bool
		wantCalls int
	}{
		{name: "already on the target", version: "2.0", wantSkip: true},
		{name: "on another version", version: "1.0", wantCalls: 1},
		{name: "a number is compared as JSON", version: 2.0, wantCalls: 1},
		{name: "version not reported", version: nil, wantCalls: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newSimDevice(false)
			d.version = ""
			hub := d.hub(nil, nil)
			hub.twin = func(context.Context, int) (*iotservice.Twin, error) {
				tw := d.twin()
				delete(tw.Properties.Reported, "firmwareVersion")
				if tc.version != nil {
					tw.Properties.Reported["firmwareVersion"] = tc.version
				}
				return tw, nil
			}
			env, _ := newEnv(t, &Activities{Hub: hub})
			val, err := env.ExecuteActivity((&Activities{}).InvokeMethod, readFirstInput())
			require.NoError(t, err)
			var res InvokeMethodResult
			require.NoError(t, val.Get(&res))
			assert.Equal(t, tc.wantSkip, res.Skipped)
			assert.Equal(t, tc.wantCalls, hub.callCount())
			assert.Equal(t, tc.wantCalls, res.Calls)
			assert.Equal(t, 1, hub.readCount())
			require.NotNil(t, res.Read)
			assert.Equal(t, tc.version == nil, res.Read.Reported["firmwareVersion"] == nil)
		})
	}
}

// TestInvokeMethodReadFirstAcceptedByID: a device on dmflow's contract that already reports this
// update's ID took it in an earlier run of the update: no call. Another update's ID is no reason
// not to call.
func TestInvokeMethodReadFirstAcceptedByID(t *testing.T) {
	for _, tc := range []struct {
		id        string
		accepted  bool
		wantCalls int
	}{
		{id: "u1", accepted: true},
		{id: "u0", wantCalls: 1},
	} {
		t.Run(tc.id, func(t *testing.T) {
			d := newSimDevice(true)
			d.updateID, d.status = tc.id, "applying"
			hub := d.hub(nil, nil)
			env, _ := newEnv(t, &Activities{Hub: hub})
			val, err := env.ExecuteActivity((&Activities{}).InvokeMethod, readFirstInput())
			require.NoError(t, err)
			var res InvokeMethodResult
			require.NoError(t, val.Get(&res))
			assert.Equal(t, tc.wantCalls, hub.callCount())
			assert.Equal(t, tc.accepted, res.AlreadyAccepted)
			if tc.accepted {
				assert.Equal(t, "id", res.AcceptedBy)
				assert.Equal(t, 0, res.Status)
			}
			assert.Equal(t, 1, hub.readCount())
			assert.Equal(t, tc.id, res.Read.Reported["firmwareUpdateId"])
		})
	}
}

// TestInvokeMethodReadFirstRetryUsesRecordedRead: the device (tutorial contract, no ID) took the
// first attempt's call, which then ended without an answer: the hub timed out, or the worker died.
// The retry does not read again: with Before from the recorded read, the downloading the hub
// stamped after it is evidence, and there is no second call. A read made by the retry would have
// moved Before past that stamp.
func TestInvokeMethodReadFirstRetryUsesRecordedRead(t *testing.T) {
	for name, first := range map[string]func(*simDevice, hubconn.MethodCall) (hubconn.MethodAnswer, error){
		"gateway timeout":             takenThenTimedOut,
		"worker died during the call": takenThenWorkerDied,
	} {
		t.Run(name, func(t *testing.T) {
			d := newSimDevice(false)
			hub := d.hub(firstCall(first), nil)
			res, err := invokeLosing(t, hub, readFirstInput(), nil)
			require.NoError(t, err)

			assert.Equal(t, 1, hub.callCount())
			assert.Equal(t, 1, d.takenCount())
			assert.True(t, res.AlreadyAccepted)
			assert.Equal(t, "changed", res.AcceptedBy)
			assert.Equal(t, 2, res.Attempt)
			require.NotNil(t, res.Read)
			assert.Equal(t, 1, res.Read.Attempt, "the first attempt's read")
			assert.Equal(t, "completed", res.Read.Reported["firmwareStatus"])
			assert.Equal(t, hubTime(scheduledAt.Add(-time.Hour)), res.EvidenceBefore)
			assert.Equal(t, 2, hub.readCount(), "the read before the call, then one look for evidence")
			assert.Equal(t, 2, res.TwinReads)
		})
	}
}

// TestInvokeMethodReadFirstFallback: the first attempt read, called and died with its heartbeats
// in the SDK's batch, so the retry finds no details. It reads again, takes as evidence what the
// hub stamped after ScheduledAt less the slack, and calls only when the twin shows nothing.
func TestInvokeMethodReadFirstFallback(t *testing.T) {
	t.Run("the device took the call", func(t *testing.T) {
		d := newSimDevice(false)
		hub := d.hub(firstCall(takenThenWorkerDied), nil)
		res, err := invokeLosing(t, hub, readFirstInput(), loseAttempt1)
		require.NoError(t, err)

		assert.Equal(t, 1, hub.callCount())
		assert.True(t, res.AlreadyAccepted)
		assert.Equal(t, "changed", res.AcceptedBy)
		assert.Equal(t, hubTime(scheduledAt.Add(-readFirstSlack)), res.EvidenceBefore)
		assert.Equal(t, "2026-12-06T17:59:30.0000000Z", res.EvidenceBefore, "the hub's time format")
		require.NotNil(t, res.Read)
		assert.Equal(t, 2, res.Read.Attempt, "read again")
		assert.Equal(t, "downloading", res.Read.Reported["firmwareStatus"])
		assert.Equal(t, 3, hub.readCount(), "the first attempt's read, the retry's, one look for evidence")
	})
	t.Run("the device did not take the call", func(t *testing.T) {
		d := newSimDevice(false)
		hub := d.hub(firstCall(func(d *simDevice, c hubconn.MethodCall) (hubconn.MethodAnswer, error) {
			panic("worker died before the request left")
		}), nil)
		res, err := invokeLosing(t, hub, readFirstInput(), loseAttempt1)
		require.NoError(t, err)

		assert.Equal(t, 2, hub.callCount(), "the twin showed nothing within the window")
		assert.Equal(t, 1, d.takenCount())
		assert.False(t, res.AlreadyAccepted)
		assert.Equal(t, 200, res.Status)
		assert.Equal(t, hubTime(scheduledAt.Add(-readFirstSlack)), res.EvidenceBefore)
	})
	t.Run("the fallback's own read fails", func(t *testing.T) {
		// Attempt 2 is the fallback and its read is throttled: attempt 3 must be one too, not
		// take the failed read for the first attempt's and call at once.
		d := newSimDevice(false)
		hub := d.hub(firstCall(takenThenWorkerDied), func(n int) error {
			if n == 2 {
				return hubErr(429, 429001, "ThrottlingException")
			}
			return nil
		})
		res, err := invokeLosing(t, hub, readFirstInput(), loseAttempt1)
		require.NoError(t, err)

		assert.Equal(t, 1, hub.callCount())
		assert.Equal(t, 3, res.Attempt)
		assert.True(t, res.AlreadyAccepted)
		assert.Equal(t, hubTime(scheduledAt.Add(-readFirstSlack)), res.EvidenceBefore)
	})
}

// TestInvokeMethodReadFirstRetriesNotDeliveredAtOnce: after a call the hub refused before the
// device, the retry calls at once, on the recorded read, without reading again.
func TestInvokeMethodReadFirstRetriesNotDeliveredAtOnce(t *testing.T) {
	d := newSimDevice(false)
	hub := d.hub(firstCall(offline), nil)
	res, err := invokeLosing(t, hub, readFirstInput(), nil)
	require.NoError(t, err)

	assert.Equal(t, 2, hub.callCount())
	assert.Equal(t, 1, hub.readCount())
	assert.Equal(t, 2, res.Attempt)
	assert.Equal(t, 1, res.Read.Attempt)
	assert.Equal(t, hubTime(scheduledAt.Add(-time.Hour)), res.EvidenceBefore)
	assert.False(t, res.AlreadyAccepted)
	assert.Equal(t, 200, res.Status)
}

// TestInvokeMethodReadFirstReadFails: a read the hub refused for now is retried as the first
// attempt's (its Before from the new read, the call at once, no look); one it refused for good
// fails the operation without a call, classified as GetTwin's.
func TestInvokeMethodReadFirstReadFails(t *testing.T) {
	t.Run("throttled", func(t *testing.T) {
		d := newSimDevice(false)
		hub := d.hub(nil, func(n int) error {
			if n == 1 {
				return hubErr(429, 429001, "ThrottlingException")
			}
			return nil
		})
		res, err := invokeLosing(t, hub, readFirstInput(), nil)
		require.NoError(t, err)
		assert.Equal(t, 1, hub.callCount())
		assert.Equal(t, 2, hub.readCount(), "no look for evidence")
		assert.Equal(t, 2, res.Read.Attempt)
		assert.Equal(t, hubTime(scheduledAt.Add(-time.Hour)), res.EvidenceBefore)
		assert.Equal(t, 2, res.TwinReads)
	})
	t.Run("unknown device", func(t *testing.T) {
		d := newSimDevice(false)
		hub := d.hub(nil, func(int) error { return hubErr(404, 404001, "DeviceNotFound") })
		_, err := invokeLosing(t, hub, readFirstInput(), nil)
		var appErr *temporal.ApplicationError
		require.True(t, errors.As(err, &appErr), "%v", err)
		assert.Equal(t, ErrDeviceNotFound, appErr.Type())
		assert.Equal(t, 0, hub.callCount())
		assert.Equal(t, 1, hub.readCount())
	})
}

// TestInvokeMethodReadFirstDeliversOnce: whatever becomes of the calls, the read and the
// heartbeats, on either contract, the device takes the update exactly once.
func TestInvokeMethodReadFirstDeliversOnce(t *testing.T) {
	throttledOnce := func(n int) error {
		if n == 1 {
			return hubErr(429, 429001, "ThrottlingException")
		}
		return nil
	}
	tests := []struct {
		name      string
		call      func(int, *simDevice, hubconn.MethodCall) (hubconn.MethodAnswer, error)
		readErr   func(int) error
		lose      func(int32) bool
		wantCalls int
	}{
		{name: "answered", call: answered, wantCalls: 1},
		{name: "gateway timeout after the device took it", call: firstCall(takenThenTimedOut), wantCalls: 1},
		{name: "worker died during the call", call: firstCall(takenThenWorkerDied), wantCalls: 1},
		{name: "worker died with its heartbeats", call: firstCall(takenThenWorkerDied), lose: loseAttempt1, wantCalls: 1},
		{name: "device offline first", call: firstCall(offline), wantCalls: 2},
		{name: "hub failed before the device", call: firstCall(hubFailed), wantCalls: 2},
		{name: "read throttled first", call: answered, readErr: throttledOnce, wantCalls: 1},
		{name: "read throttled, then a gateway timeout", call: firstCall(takenThenTimedOut), readErr: throttledOnce, wantCalls: 1},
	}
	for _, tc := range tests {
		for _, reportsID := range []bool{false, true} {
			contract := "tutorial device"
			if reportsID {
				contract = "dmflow device"
			}
			t.Run(tc.name+", "+contract, func(t *testing.T) {
				d := newSimDevice(reportsID)
				hub := d.hub(tc.call, tc.readErr)
				res, err := invokeLosing(t, hub, readFirstInput(), tc.lose)
				require.NoError(t, err)
				assert.Equal(t, 1, d.takenCount(), "delivered exactly once")
				assert.Equal(t, tc.wantCalls, hub.callCount())
				if tc.lose == nil {
					// Lost details lose the count of the calls they recorded too.
					assert.Equal(t, tc.wantCalls, res.Calls)
				}
			})
		}
	}
}

// TestReadFallback: an attempt whose predecessors' details hold no read falls back, unless it is
// the first or the one right before it recorded that its read failed.
func TestReadFallback(t *testing.T) {
	for _, tc := range []struct {
		name    string
		attempt int
		prev    *InvokeProgress
		want    bool
	}{
		{"first attempt", 1, nil, false},
		{"no details: the last attempt died before they left", 2, nil, true},
		{"details from before the read", 2, &InvokeProgress{Attempt: 1, Outcome: OutcomeLooking}, true},
		{"the last attempt's read failed", 2, &InvokeProgress{Attempt: 1, Outcome: notDelivered.String()}, false},
		{"an older attempt's read failed", 3, &InvokeProgress{Attempt: 1, Outcome: notDelivered.String()}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, readFallback(tc.attempt, tc.prev))
		})
	}
}

func TestReadFirstValidation(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*InvokeMethodInput)
		want   string // "" when the input is valid
	}{
		{name: "valid", modify: func(*InvokeMethodInput) {}},
		{name: "no evidence, no scheduledAt", modify: func(in *InvokeMethodInput) { in.Evidence, in.ReadFirst.ScheduledAt = nil, time.Time{} }},
		{name: "no skipIf", modify: func(in *InvokeMethodInput) { in.ReadFirst.SkipIf = nil }},
		{name: "no properties", modify: func(in *InvokeMethodInput) { in.ReadFirst.Properties = nil }, want: "readFirst: ask for 1 to 32 reported properties, not 0"},
		{name: "too many properties", modify: func(in *InvokeMethodInput) { in.ReadFirst.Properties = make([]string, 33) }, want: "not 33"},
		{name: "bad path", modify: func(in *InvokeMethodInput) { in.ReadFirst.Properties[0] = "firmware..version" }, want: `property path "firmware..version"`},
		{name: "skipIf not read", modify: func(in *InvokeMethodInput) { in.ReadFirst.SkipIf.Property = "fwVersion" }, want: `"fwVersion" is not among the properties read`},
		{name: "skipIf without property", modify: func(in *InvokeMethodInput) { in.ReadFirst.SkipIf.Property = "" }, want: "skipIf names no property"},
		{name: "evidence property not read", modify: func(in *InvokeMethodInput) { in.ReadFirst.Properties = []string{"firmwareVersion", "firmwareUpdateId"} },
			want: `"firmwareStatus" is not among the properties read`},
		{name: "evidence ID property not read", modify: func(in *InvokeMethodInput) { in.ReadFirst.Properties = []string{"firmwareVersion", "firmwareStatus"} },
			want: `"firmwareUpdateId" is not among the properties read`},
		{name: "no scheduledAt with evidence", modify: func(in *InvokeMethodInput) { in.ReadFirst.ScheduledAt = time.Time{} }, want: "scheduledAt is not set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := readFirstInput()
			tc.modify(&in)
			_, _, err := in.methodCall()
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			requireNonRetryable(t, err, ErrBadRequest)
			assert.Contains(t, err.Error(), tc.want)
		})
	}

	// Through the activity: refused before the hub is read or called.
	hub := newSimDevice(false).hub(nil, nil)
	env, _ := newEnv(t, &Activities{Hub: hub})
	in := readFirstInput()
	in.ReadFirst.Properties = nil
	_, err := env.ExecuteActivity((&Activities{}).InvokeMethod, in)
	requireNonRetryable(t, err, ErrBadRequest)
	assert.Equal(t, 0, hub.readCount())
	assert.Equal(t, 0, hub.callCount())
}

// syncRecorder plays the worker's client recording heartbeats: it fails for the attempts fail
// names, as a worker that died while recording (or could not reach the server) never called.
type syncRecorder struct {
	mu       sync.Mutex
	recorded int
	fail     func(details InvokeProgress) bool
}

func (r *syncRecorder) RecordActivityHeartbeat(_ context.Context, _ []byte, details ...any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, _ := details[0].(InvokeProgress)
	if r.fail != nil && r.fail(p) {
		return errors.New("connection refused")
	}
	r.recorded++
	return nil
}

// With the read recorded synchronously before every call, an attempt that finds no read knows its
// predecessor never called: it reads and calls at once, without the fallback's look.
func TestInvokeMethodReadFirstRecordedSynchronously(t *testing.T) {
	d := newSimDevice(false)
	hub := d.hub(answered, nil)
	rec := &syncRecorder{fail: func(p InvokeProgress) bool { return p.Attempt == 1 }}
	res, err := invokeLosingWith(t, &Activities{Hub: hub, Heartbeats: rec}, readFirstInput(), loseAttempt1)
	require.NoError(t, err)

	assert.Equal(t, 1, hub.callCount(), "attempt 1 could not record its read, so it did not call")
	assert.Equal(t, 1, d.takenCount())
	assert.Equal(t, 2, res.Attempt)
	assert.Equal(t, 2, hub.readCount(), "a read each, no look for evidence")
	require.NotNil(t, res.Read)
	assert.Equal(t, 2, res.Read.Attempt)
	assert.NotEqual(t, hubTime(scheduledAt.Add(-readFirstSlack)), res.EvidenceBefore, "the read's own time, not the fallback's")
	assert.Equal(t, 1, rec.recorded)
}
