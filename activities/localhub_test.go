package activities

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/testlog"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/sim/device"
	"github.com/dmflow/dmflow/internal/sim/hub"
)

// These tests run the activities against a real localhub started in-process on free ports, through
// the unchanged amenzhinsky service and device clients, so the errors classify sees are the ones
// the client makes of what the hub answers. hub_test.go's fakeHub covers the answers a hub does not
// give on demand (throttling, server errors).

type localhub struct {
	*hub.Hub
	svc *hubconn.ServiceClient // iothubowner, the worker's client
}

// startLocalhub starts localhub on 127.0.0.1:0 and closes it, and its service client, when t ends.
// opts adjust the hub's options (its throttles) before it starts.
func startLocalhub(t *testing.T, opts ...func(*hub.Options)) *localhub {
	t.Helper()
	o := hub.Options{
		StateDir:  t.TempDir(),
		HostName:  "localhost",
		MQTTAddr:  "127.0.0.1:0",
		HTTPSAddr: "127.0.0.1:0",
		Logger:    testlog.Logger(t).With("component", "localhub"),
	}
	for _, opt := range opts {
		opt(&o)
	}
	h, err := hub.New(o)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, h.Start(ctx))
	t.Cleanup(func() { assert.NoError(t, h.Close()) })

	lh := &localhub{Hub: h}
	lh.svc = lh.serviceClient(t, h.ServiceConnectionString())
	return lh
}

// serviceClient builds the service client as the worker does, from a connection string.
func (h *localhub) serviceClient(t *testing.T, cs string) *hubconn.ServiceClient {
	t.Helper()
	s, err := hubconn.ParseService("IOTHUB_CONNECTION_STRING", cs)
	require.NoError(t, err)
	c, err := hubconn.NewServiceHub(s, h.CACertFile())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// provision registers id and returns its device connection string.
func (h *localhub) provision(t *testing.T, id string) hubconn.Device {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := device.Provision(ctx, h.svc.Client, id)
	require.NoError(t, err)
	return d
}

// runSimDevice registers id and runs the simulated tutorial device on it until t ends; it returns
// once the device serves rebootDevice.
func (h *localhub) runSimDevice(t *testing.T, id string, rebootDuration time.Duration) {
	t.Helper()
	h.runDevice(t, id, device.Config{RebootDuration: rebootDuration, RebootStyle: device.StyleTutorial})
}

// runDevice registers id and runs a simulated device of cfg on it (its connection, CA, broker and
// logger filled in) until t ends; it returns once the device serves its methods.
func (h *localhub) runDevice(t *testing.T, id string, cfg device.Config) *device.Device {
	t.Helper()
	cfg.ConnectionString, cfg.CAFile, cfg.Broker = h.provision(t, id), h.CACertFile(), "tls://"+h.MQTTAddr()
	cfg.Logger = testlog.Logger(t)
	d, err := device.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err, "device Run")
		case <-time.After(15 * time.Second):
			t.Error("device Run did not return after cancel")
		}
	})
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("device Run returned before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("device not ready within 30s")
	}
	return d
}

// connectRawDevice registers id and connects the plain amenzhinsky device client, which serves no
// method until the test registers one. The returned context lives until t ends: the client keeps
// the context given to RegisterMethod to publish the answers.
func (h *localhub) connectRawDevice(t *testing.T, id string) (*iotdevice.Client, context.Context) {
	t.Helper()
	c, err := hubconn.NewDeviceClient(h.provision(t, id), hubconn.DeviceOptions{
		CAFile: h.CACertFile(),
		Broker: "tls://" + h.MQTTAddr(),
		Logger: testlog.Logger(t),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		_ = c.Close()
	})
	connectCtx, connectCancel := context.WithTimeout(ctx, 15*time.Second)
	defer connectCancel()
	require.NoError(t, c.Connect(connectCtx))
	return c, ctx
}

func invokeOn(t *testing.T, svc Hub, in InvokeMethodInput) (InvokeMethodResult, error) {
	t.Helper()
	env, _ := newEnv(t, &Activities{Hub: svc})
	val, err := env.ExecuteActivity((&Activities{}).InvokeMethod, in)
	var res InvokeMethodResult
	if err == nil {
		require.NoError(t, val.Get(&res))
	}
	return res, err
}

func waitOn(t *testing.T, svc Hub, in WaitForReportedInput) (WaitForReportedResult, error) {
	t.Helper()
	env, _ := newEnv(t, &Activities{Hub: svc})
	val, err := env.ExecuteActivity((&Activities{}).WaitForReported, in)
	var res WaitForReportedResult
	if err == nil {
		require.NoError(t, val.Get(&res))
	}
	return res, err
}

// requireNonRetryable checks that err is a non-retryable ApplicationError of type typ.
func requireNonRetryable(t *testing.T, err error, typ string) *temporal.ApplicationError {
	t.Helper()
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr), "want an ApplicationError, got %T: %v", err, err)
	assert.Equal(t, typ, appErr.Type(), "error type of %v", err)
	assert.True(t, appErr.NonRetryable(), "want non-retryable: %v", err)
	return appErr
}

// requireRetryable checks that err is one Temporal retries: the activity returned a plain error,
// which reaches the caller as a retryable ApplicationError of none of the Err* types.
func requireRetryable(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		assert.False(t, appErr.NonRetryable(), "want retryable: %v", err)
		for _, typ := range []string{ErrDeviceNotFound, ErrUnauthorized, ErrBadRequest, ErrMethodFailed, ErrDeadlineExceeded, ErrStageTimeout, ErrDeviceError} {
			assert.NotEqual(t, typ, appErr.Type(), "want a plain error, got type %s: %v", typ, err)
		}
	}
}

// otherKey returns a random base64 key, the size IoT Hub generates, that the hub does not know.
func otherKey(t *testing.T) string {
	b := make([]byte, 32)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(b)
}

func TestActivitiesOnLocalhub(t *testing.T) {
	h := startLocalhub(t)

	// The subtests run in parallel on the one hub, each on its own device, so that the waits for
	// the hub's timeouts (5 s for the gateway timeout, 2 s for the deadline) overlap.

	t.Run("tutorial reboot", func(t *testing.T) {
		t.Parallel()
		const id = "dev-tutorial"
		h.runSimDevice(t, id, time.Second)

		begin := time.Now()
		res, err := invokeOn(t, h.svc, InvokeMethodInput{
			DeviceID:        id,
			Method:          device.MethodReboot,
			Payload:         map[string]any{device.FieldRequestID: "t1"},
			ResponseTimeout: 30 * time.Second,
		})
		require.NoError(t, err)
		assert.Equal(t, 200, res.Status)
		assert.JSONEq(t, `{"`+device.FieldResponse+`":"`+device.TutorialResponse+`"}`, string(res.Payload))
		assert.Equal(t, 1, res.Attempt)
		assert.GreaterOrEqual(t, time.Since(begin), time.Second, "the tutorial device answers after its reboot")

		w, err := waitOn(t, h.svc, WaitForReportedInput{
			DeviceID:        id,
			Property:        device.PropRebootTime,
			After:           begin,
			Deadline:        time.Now().Add(30 * time.Second),
			InitialInterval: 100 * time.Millisecond,
			MaxInterval:     time.Second,
		})
		require.NoError(t, err)
		s, ok := w.Value.(string)
		require.True(t, ok, "rebootTime is a string, got %T %v", w.Value, w.Value)
		at, err := time.Parse(time.RFC3339Nano, s)
		require.NoError(t, err, "rebootTime %q is RFC 3339", s)
		assert.True(t, at.After(begin), "rebootTime %s is after the call at %s", s, begin.Format(time.RFC3339Nano))
		assert.GreaterOrEqual(t, w.Polls, 1)
		assert.Positive(t, w.Version)

		assert.Equal(t, 1, h.MethodInvocations(id)[device.MethodReboot], "delivered once")
	})

	t.Run("registered device offline", func(t *testing.T) {
		t.Parallel()
		const id = "dev-offline"
		h.provision(t, id)

		_, err := invokeOn(t, h.svc, InvokeMethodInput{DeviceID: id, Method: device.MethodReboot, ResponseTimeout: 5 * time.Second})
		requireRetryable(t, err)
		assert.Contains(t, err.Error(), "invoke rebootDevice on "+id)
		assert.Contains(t, err.Error(), "DeviceNotOnline")
		assert.Contains(t, err.Error(), "404103")
		assert.Empty(t, h.MethodInvocations(id))
	})

	t.Run("unknown device", func(t *testing.T) {
		t.Parallel()
		const id = "dev-never-registered"

		_, err := invokeOn(t, h.svc, InvokeMethodInput{DeviceID: id, Method: device.MethodReboot})
		requireNonRetryable(t, err, ErrDeviceNotFound)
		assert.Contains(t, err.Error(), `device "`+id+`" is not registered`)

		_, err = waitOn(t, h.svc, WaitForReportedInput{
			DeviceID: id, Property: device.PropRebootTime, Deadline: time.Now().Add(10 * time.Second),
			InitialInterval: 100 * time.Millisecond,
		})
		requireNonRetryable(t, err, ErrDeviceNotFound)
		assert.Contains(t, err.Error(), id)
	})

	t.Run("wrong service key", func(t *testing.T) {
		t.Parallel()
		const id = "dev-wrong-key"
		h.provision(t, id)
		good, err := hubconn.ParseService("localhub", h.ServiceConnectionString())
		require.NoError(t, err)
		key := otherKey(t)
		bad := h.serviceClient(t, "HostName="+good.HostName+";SharedAccessKeyName="+good.KeyName+";SharedAccessKey="+key)
		_, realKey, _ := strings.Cut(h.ServiceConnectionString(), "SharedAccessKey=")

		_, err = invokeOn(t, bad, InvokeMethodInput{DeviceID: id, Method: device.MethodReboot})
		requireNonRetryable(t, err, ErrUnauthorized)
		assert.Contains(t, err.Error(), "IOTHUB_CONNECTION_STRING")
		assert.Contains(t, err.Error(), "HTTP 401")
		assert.NotContains(t, err.Error(), key)
		assert.NotContains(t, err.Error(), realKey)

		_, err = waitOn(t, bad, WaitForReportedInput{
			DeviceID: id, Property: device.PropRebootTime, Deadline: time.Now().Add(10 * time.Second),
			InitialInterval: 100 * time.Millisecond,
		})
		requireNonRetryable(t, err, ErrUnauthorized)
		assert.NotContains(t, err.Error(), key)
		assert.Empty(t, h.MethodInvocations(id))
	})

	t.Run("device never answers", func(t *testing.T) {
		t.Parallel()
		const id = "dev-silent"
		h.connectRawDevice(t, id) // connected, but subscribed to no method

		begin := time.Now()
		_, err := invokeOn(t, h.svc, InvokeMethodInput{DeviceID: id, Method: device.MethodReboot, ResponseTimeout: 5 * time.Second})
		requireRetryable(t, err)
		assert.Contains(t, err.Error(), "invoke rebootDevice on "+id)
		assert.Contains(t, err.Error(), "GatewayTimeout")
		assert.Contains(t, err.Error(), "504101")
		assert.GreaterOrEqual(t, time.Since(begin), 5*time.Second, "the hub waits the response timeout")
	})

	t.Run("device answers 500", func(t *testing.T) {
		t.Parallel()
		const id = "dev-boom"
		c, ctx := h.connectRawDevice(t, id)
		require.NoError(t, c.RegisterMethod(ctx, device.MethodReboot,
			func(map[string]any) (int, map[string]any, error) {
				return 500, map[string]any{"error": "boom"}, nil
			}))

		_, err := invokeOn(t, h.svc, InvokeMethodInput{DeviceID: id, Method: device.MethodReboot, ResponseTimeout: 10 * time.Second})
		appErr := requireNonRetryable(t, err, ErrMethodFailed)
		assert.Contains(t, err.Error(), "status 500")
		assert.Contains(t, err.Error(), "boom")
		var answer InvokeMethodResult
		require.NoError(t, appErr.Details(&answer), "the device's answer is in the details")
		assert.Equal(t, InvokeMethodResult{Status: 500, Payload: json.RawMessage(`{"error":"boom"}`), Attempt: 1, Calls: 1}, answer)
		assert.Equal(t, 1, h.MethodInvocations(id)[device.MethodReboot])
	})

	t.Run("reported property never comes", func(t *testing.T) {
		t.Parallel()
		const id = "dev-mute"
		h.provision(t, id)

		begin := time.Now()
		deadline := begin.Add(2 * time.Second)
		_, err := waitOn(t, h.svc, WaitForReportedInput{
			DeviceID:        id,
			Property:        device.PropRebootTime,
			After:           begin,
			Deadline:        deadline,
			InitialInterval: 100 * time.Millisecond,
			MaxInterval:     500 * time.Millisecond,
		})
		appErr := requireNonRetryable(t, err, ErrDeadlineExceeded)
		assert.Contains(t, err.Error(), "none (property not reported)")
		assert.False(t, time.Now().Before(deadline), "gave up before the deadline")
		assert.Less(t, time.Since(begin), 5*time.Second, "gave up soon after the deadline")
		var p WaitForReportedProgress
		require.NoError(t, appErr.Details(&p))
		assert.GreaterOrEqual(t, p.Polls, 3, "polled until the deadline")
		assert.Nil(t, p.LastValue)
	})

	t.Run("bad request", func(t *testing.T) {
		t.Parallel()
		const id = "dev-bad-request"
		h.provision(t, id)

		// Refused by the activity before any call: the device is not even registered, so a call
		// would have failed with DeviceNotFound.
		_, err := invokeOn(t, h.svc, InvokeMethodInput{DeviceID: "dev-not-registered", Method: device.MethodReboot, ResponseTimeout: time.Second})
		requireNonRetryable(t, err, ErrBadRequest)
		assert.Contains(t, err.Error(), "response timeout 1s is outside")

		_, err = invokeOn(t, h.svc, InvokeMethodInput{DeviceID: "dev-not-registered", Method: ""})
		requireNonRetryable(t, err, ErrBadRequest)
		assert.Contains(t, err.Error(), "method name is empty")

		// Passed by the activity, refused by the hub with 400: a method name becomes an MQTT topic
		// level, so the hub rejects '/'.
		_, err = invokeOn(t, h.svc, InvokeMethodInput{DeviceID: id, Method: "reboot/now"})
		requireNonRetryable(t, err, ErrBadRequest)
		assert.Contains(t, err.Error(), "HTTP 400")
		assert.Contains(t, err.Error(), "ArgumentInvalid")
		assert.Empty(t, h.MethodInvocations(id))
	})
}
