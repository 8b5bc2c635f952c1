package device

import (
	"context"
	"encoding/base64"
	"github.com/dmflow/dmflow/internal/testlog"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/sim/hub"
)

// These tests run the unchanged amenzhinsky device and service clients
// against a real localhub started in-process.

type testHub struct {
	*hub.Hub
	dir string
	svc *iotservice.Client
	log *testlog.Sink
}

// startHub starts localhub on dir; mqttAddr and httpsAddr "" pick free
// ports.
func startHub(t *testing.T, dir, mqttAddr, httpsAddr string) *testHub {
	t.Helper()
	if mqttAddr == "" {
		mqttAddr = "127.0.0.1:0"
	}
	if httpsAddr == "" {
		httpsAddr = "127.0.0.1:0"
	}
	log, logger := testlog.New(t, slog.LevelDebug)
	h, err := hub.New(hub.Options{StateDir: dir, HostName: "localhost", MQTTAddr: mqttAddr, HTTPSAddr: httpsAddr, Logger: logger.With("component", "localhub")})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, h.Start(ctx))
	t.Cleanup(func() { _ = h.Close() })
	s, err := hubconn.ParseService("localhub", h.ServiceConnectionString())
	require.NoError(t, err)
	svc, err := hubconn.NewServiceClient(s, h.CACertFile())
	require.NoError(t, err)
	t.Cleanup(func() { _ = svc.Close() })
	return &testHub{Hub: h, dir: dir, svc: svc, log: log}
}

// provision registers id and returns its connection string.
func (h *testHub) provision(t *testing.T, id string) hubconn.Device {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := Provision(ctx, h.svc, id)
	require.NoError(t, err)
	return d
}

type running struct {
	*Device
	log    *testlog.Sink
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned, with err set
	err    error
}

// stop cancels Run and returns its result.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		return r.err
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
		return nil
	}
}

// startDevice runs a device on h and waits until it is ready.
func startDevice(t *testing.T, h *testHub, conn hubconn.Device, style string, rebootDuration time.Duration) *running {
	t.Helper()
	r := runDevice(t, h, conn, style, rebootDuration)
	select {
	case <-r.Ready():
	case <-r.done:
		t.Fatalf("Run returned before ready: %v", r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("device not ready within 30s")
	}
	return r
}

func runDevice(t *testing.T, h *testHub, conn hubconn.Device, style string, rebootDuration time.Duration) *running {
	t.Helper()
	return runDeviceWith(t, h, conn, func(c *Config) {
		c.RebootStyle = style
		c.RebootDuration = rebootDuration
	})
}

// startDeviceWith runs a device configured by set and waits until it is
// ready.
func startDeviceWith(t *testing.T, h *testHub, conn hubconn.Device, set func(*Config)) *running {
	t.Helper()
	r := runDeviceWith(t, h, conn, set)
	select {
	case <-r.Ready():
	case <-r.done:
		t.Fatalf("Run returned before ready: %v", r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("device not ready within 30s")
	}
	return r
}

func runDeviceWith(t *testing.T, h *testHub, conn hubconn.Device, set func(*Config)) *running {
	t.Helper()
	log, logger := testlog.New(t, slog.LevelDebug)
	cfg := Config{
		ConnectionString: conn,
		CAFile:           h.CACertFile(),
		Broker:           "tls://" + h.MQTTAddr(),
		Logger:           logger,
	}
	set(&cfg)
	d, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Device: d, log: log, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = d.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return r
}

func call(t *testing.T, h *testHub, id, method string, payload map[string]any) *iotservice.MethodResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := h.svc.CallDeviceMethod(ctx, id, &iotservice.MethodCall{
		MethodName:      method,
		ResponseTimeout: 30,
		Payload:         payload,
	})
	require.NoError(t, err, "call %s on %s", method, id)
	return res
}

func reported(t require.TestingT, h *testHub, id string) map[string]any {
	helper(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tw, err := h.svc.GetDeviceTwin(ctx, id)
	require.NoError(t, err)
	if tw.Properties == nil {
		return nil
	}
	return tw.Properties.Reported
}

// helper marks the caller as a test helper when t is a *testing.T (and
// not the assert.CollectT of an EventuallyWithT).
func helper(t require.TestingT) {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
}

// rebootTime parses the twin's reported rebootTime; zero when absent.
func rebootTime(t require.TestingT, rep map[string]any) time.Time {
	helper(t)
	s, ok := rep[PropRebootTime].(string)
	if !ok {
		return time.Time{}
	}
	at, err := time.Parse(time.RFC3339Nano, s)
	require.NoError(t, err, "rebootTime %q", s)
	return at
}

// waitRebootTime polls the twin like the tutorial's service app until it
// holds a rebootTime after after.
func waitRebootTime(t *testing.T, h *testHub, id string, after time.Time, within time.Duration) map[string]any {
	t.Helper()
	var rep map[string]any
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		rep = reported(c, h, id)
		assert.True(c, rebootTime(c, rep).After(after), "reported %v", rep)
	}, within, 100*time.Millisecond, "no rebootTime after %s in the twin within %s", after.Format(TimeFormat), within)
	return rep
}

func TestTutorialReboot(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	conn := h.provision(t, "dev-tutorial")
	assert.Equal(t, "localhost", conn.HostName, "the device host has no port")
	d := startDevice(t, h, conn, StyleTutorial, time.Second)

	begin := time.Now()
	res := call(t, h, "dev-tutorial", MethodReboot, map[string]any{"method_number": "42"})
	took := time.Since(begin)
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, map[string]any{FieldResponse: TutorialResponse}, res.Payload)
	assert.GreaterOrEqual(t, took, time.Second, "the tutorial device answers after its reboot")

	// The tutorial reports before it answers: the twin holds rebootTime now.
	rep := reported(t, h, "dev-tutorial")
	assert.True(t, rebootTime(t, rep).After(begin), "rebootTime %v not after the call at %s", rep[PropRebootTime], begin.Format(TimeFormat))
	assert.NotContains(t, rep, PropLastRebootRequestID, "no request ID, nothing but the tutorial's rebootTime")

	assert.EqualValues(t, 1, d.Reboots())
	assert.EqualValues(t, 1, d.MethodCalls())
	assert.Equal(t, 1, h.MethodInvocations("dev-tutorial")[MethodReboot])

	// Without a request ID every call reboots, as in the tutorial.
	second := time.Now()
	res = call(t, h, "dev-tutorial", MethodReboot, map[string]any{"method_number": "42"})
	assert.Equal(t, http.StatusOK, res.Status)
	assert.True(t, rebootTime(t, reported(t, h, "dev-tutorial")).After(second))
	assert.EqualValues(t, 2, d.Reboots())

	require.NoError(t, d.stop(t))
	logs := d.log.String()
	assert.Contains(t, logs, "device=dev-tutorial")
	assert.Contains(t, logs, "method="+MethodReboot)
	_, key, _ := strings.Cut(conn.String(), "SharedAccessKey=")
	assert.NotContains(t, logs, key, "the key is never logged")
	assert.NotContains(t, logs, "SharedAccessSignature")
}

func TestRealisticReboot(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	d := startDevice(t, h, h.provision(t, "dev-real"), StyleRealistic, 2*time.Second)
	connections := d.Connections()

	begin := time.Now()
	res := call(t, h, "dev-real", MethodReboot, map[string]any{"method_number": "42", FieldRequestID: "r1"})
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, map[string]any{FieldResponse: RebootingResponse}, res.Payload)
	assert.Less(t, time.Since(begin), 2*time.Second, "the realistic device answers before it reboots")
	assert.True(t, rebootTime(t, reported(t, h, "dev-real")).IsZero(), "no rebootTime before the reboot")

	// Offline while rebooting: IoT Hub answers DeviceNotOnline.
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		dev, err := h.svc.GetDevice(ctx, "dev-real")
		return err == nil && dev.ConnectionState == iotservice.Disconnected
	}, 5*time.Second, 50*time.Millisecond, "device offline")

	rep := waitRebootTime(t, h, "dev-real", begin, 20*time.Second)
	assert.Equal(t, "r1", rep[PropLastRebootRequestID])
	assert.GreaterOrEqual(t, rebootTime(t, rep).Sub(begin), 2*time.Second, "reported after the reboot")
	assert.EqualValues(t, 1, d.Reboots())
	assert.Greater(t, d.Connections(), connections, "a new connection after the reboot")

	// Back online: the same request is recognised, a new one reboots again.
	res = call(t, h, "dev-real", MethodReboot, map[string]any{FieldRequestID: "r1"})
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, "Reboot r1 already done", res.Payload[FieldResponse])
	assert.Equal(t, rep[PropRebootTime], res.Payload[PropRebootTime])
	assert.EqualValues(t, 1, d.Reboots())

	second := time.Now()
	res = call(t, h, "dev-real", MethodReboot, map[string]any{FieldRequestID: "r2"})
	assert.Equal(t, RebootingResponse, res.Payload[FieldResponse])
	rep = waitRebootTime(t, h, "dev-real", second, 20*time.Second)
	assert.Equal(t, "r2", rep[PropLastRebootRequestID])
	assert.EqualValues(t, 2, d.Reboots())
	assert.Equal(t, 3, h.MethodInvocations("dev-real")[MethodReboot])
	require.NoError(t, d.stop(t))
}

func TestRepeatedRequestID(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	conn := h.provision(t, "dev-repeat")
	d := startDevice(t, h, conn, StyleTutorial, 2*time.Second)

	// A repeat while the first call still reboots answers at once.
	first := make(chan *iotservice.MethodResult, 1)
	begin := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res, err := h.svc.CallDeviceMethod(ctx, "dev-repeat", &iotservice.MethodCall{
			MethodName: MethodReboot, ResponseTimeout: 30, Payload: map[string]any{FieldRequestID: "r1"},
		})
		if err != nil {
			t.Errorf("first call: %v", err)
		}
		first <- res
	}()
	require.Eventually(t, func() bool { return d.MethodCalls() == 1 }, 5*time.Second, 50*time.Millisecond, "first call received")
	res := call(t, h, "dev-repeat", MethodReboot, map[string]any{FieldRequestID: "r1"})
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, "Reboot r1 already in progress", res.Payload[FieldResponse])
	assert.Less(t, time.Since(begin), 2*time.Second, "the repeat does not wait for the reboot")

	res = <-first
	require.NotNil(t, res)
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, TutorialResponse, res.Payload[FieldResponse])
	rep := reported(t, h, "dev-repeat")
	assert.Equal(t, "r1", rep[PropLastRebootRequestID])

	// A repeat after completion reports the reboot's state.
	res = call(t, h, "dev-repeat", MethodReboot, map[string]any{FieldRequestID: "r1"})
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, "Reboot r1 already done", res.Payload[FieldResponse])
	assert.Equal(t, rep[PropRebootTime], res.Payload[PropRebootTime])
	assert.EqualValues(t, 1, d.Reboots())
	assert.EqualValues(t, 3, d.MethodCalls())
	require.NoError(t, d.stop(t))

	// A new process knows the last request from the twin.
	d2 := startDevice(t, h, conn, StyleTutorial, 2*time.Second)
	res = call(t, h, "dev-repeat", MethodReboot, map[string]any{FieldRequestID: "r1"})
	assert.Equal(t, "Reboot r1 already done", res.Payload[FieldResponse])
	assert.Equal(t, rep[PropRebootTime], res.Payload[PropRebootTime])
	assert.EqualValues(t, 0, d2.Reboots())
}

func TestUnknownMethodAnswered(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	d := startDevice(t, h, h.provision(t, "dev-unknown"), StyleTutorial, time.Second)
	begin := time.Now()
	res := call(t, h, "dev-unknown", "selfDestruct", map[string]any{"now": true})
	assert.Equal(t, http.StatusNotFound, res.Status)
	assert.Equal(t, map[string]any{"error": "method selfDestruct is not supported by this device"}, res.Payload)
	assert.Less(t, time.Since(begin), 5*time.Second, "answered, not timed out")
	assert.EqualValues(t, 0, d.Reboots())
	assert.EqualValues(t, 1, d.MethodCalls())
	assert.Contains(t, d.log.String(), "method=selfDestruct")
}

func TestReconnectAfterHubRestart(t *testing.T) {
	dir := t.TempDir()
	h := startHub(t, dir, "", "")
	conn := h.provision(t, "dev-restart")
	d := startDevice(t, h, conn, StyleTutorial, time.Second)
	require.Eventually(t, func() bool { return d.Connections() == 1 }, 5*time.Second, 50*time.Millisecond, "first connection")

	mqttAddr, httpsAddr := h.MQTTAddr(), h.HTTPSAddr()
	require.NoError(t, h.Close())
	require.Eventually(t, func() bool { return strings.Contains(d.log.String(), "connection lost") }, 10*time.Second, 50*time.Millisecond, "connection lost logged")

	h2 := startHub(t, dir, mqttAddr, httpsAddr)
	// A reconnect attempt that reached the first hub while it closed hangs
	// until the client's 30 s connect timeout before the next one.
	require.Eventually(t, func() bool { return d.Connections() >= 2 }, 60*time.Second, 50*time.Millisecond, "reconnect")
	assert.Contains(t, d.log.String(), "connection restored")

	begin := time.Now()
	res := call(t, h2, "dev-restart", MethodReboot, map[string]any{FieldRequestID: "after-restart"})
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, TutorialResponse, res.Payload[FieldResponse])
	assert.True(t, rebootTime(t, reported(t, h2, "dev-restart")).After(begin))
	assert.EqualValues(t, 1, d.Reboots())
	require.NoError(t, d.stop(t))
}

func TestRefusedKeyIsFatal(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	h.provision(t, "dev-badkey")
	conn, err := hubconn.ParseDevice("test", "HostName=localhost;DeviceId=dev-badkey;SharedAccessKey="+
		base64.StdEncoding.EncodeToString([]byte("wrong-key-wrong-key")))
	require.NoError(t, err)
	r := runDevice(t, h, conn, StyleTutorial, time.Second)
	select {
	case <-r.done:
		require.ErrorIs(t, r.err, ErrRefused)
		assert.Contains(t, r.err.Error(), "IOTHUB_DEVICE_CONNECTION_STRING")
		assert.NotContains(t, r.err.Error(), "d3Jvbmcta2V5")
	case <-time.After(15 * time.Second):
		t.Fatal("a refused key must end Run, not be retried")
	}
}

func TestUntrustedHubIsFatal(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	conn := h.provision(t, "dev-noca")
	_, logger := testlog.New(t, slog.LevelDebug)
	d, err := New(Config{ConnectionString: conn, Broker: "tls://" + h.MQTTAddr(), RebootDuration: time.Second, Logger: logger})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err = d.Run(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "DMFLOW_HUB_CA_FILE")
}

// The first connect is retried until the hub is there.
func TestFirstConnectWaitsForHub(t *testing.T) {
	dir := t.TempDir()
	h := startHub(t, dir, "", "")
	conn := h.provision(t, "dev-late")
	mqttAddr, httpsAddr := h.MQTTAddr(), h.HTTPSAddr()
	require.NoError(t, h.Close())

	r := runDevice(t, h, conn, StyleTutorial, time.Second)
	require.Eventually(t, func() bool { return strings.Contains(r.log.String(), "connect failed: retrying") }, 10*time.Second, 50*time.Millisecond, "a failed attempt")
	select {
	case <-r.done:
		t.Fatalf("Run gave up while the hub was down: %v", r.err)
	default:
	}
	startHub(t, dir, mqttAddr, httpsAddr)
	select {
	case <-r.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("not ready after the hub came up")
	}
	require.NoError(t, r.stop(t))
}

func TestProvision(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	ctx := context.Background()
	a, err := Provision(ctx, h.svc, "dev-prov")
	require.NoError(t, err)
	assert.Equal(t, "localhost", a.HostName)
	assert.Equal(t, "dev-prov", a.DeviceID)
	b, err := Provision(ctx, h.svc, "dev-prov")
	require.NoError(t, err)
	assert.Equal(t, a.String(), b.String(), "an existing device keeps its keys")
	cs, err := h.DeviceConnectionString(ctx, "dev-prov")
	require.NoError(t, err)
	assert.Equal(t, cs, a.String())
}
