package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/sim/device"
	"github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/internal/testlog"
)

// simdevice given only a device ID registers it through the service
// connection string (whose HostName carries localhub's HTTPS port), connects,
// logs its ready line, serves rebootDevice and stops cleanly.
func TestRunRegistersAndServes(t *testing.T) {
	h, err := hub.New(hub.Options{StateDir: t.TempDir(), HostName: "localhost", MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	require.NoError(t, h.Start(context.Background()))
	t.Cleanup(func() { _ = h.Close() })
	require.Contains(t, h.ServiceConnectionString(), "HostName=localhost:", "the service host carries a port")

	var flags flagValues
	flags.deviceID = "dev-sim"
	flags.broker = "tls://" + h.MQTTAddr()
	flags.rebootDuration = "1s"
	flags.logFormat = "json"
	cfg, err := flags.resolve(env(envHubConnectionString, h.ServiceConnectionString(), envHubCAFile, h.CACertFile()))
	require.NoError(t, err)

	var logs testlog.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, &logs) }()
	t.Cleanup(cancel)

	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), `"msg":"simdevice ready","device":"dev-sim"`) {
		select {
		case err := <-done:
			t.Fatalf("run returned before ready: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready line within 30s:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	s, err := hubconn.ParseService("localhub", h.ServiceConnectionString())
	require.NoError(t, err)
	svc, err := hubconn.NewServiceClient(s, h.CACertFile())
	require.NoError(t, err)
	defer svc.Close()
	res, err := svc.CallDeviceMethod(context.Background(), "dev-sim", &iotservice.MethodCall{
		MethodName: device.MethodReboot, ResponseTimeout: 30, Payload: map[string]any{"method_number": "42"},
	})
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, device.TutorialResponse, res.Payload[device.FieldResponse])

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("run did not stop after cancel")
	}
	out := logs.String()
	assert.Contains(t, out, `"msg":"simdevice stopped"`)
	_, key, _ := strings.Cut(h.ServiceConnectionString(), "SharedAccessKey=")
	assert.NotContains(t, out, key)
	dcs, err := h.DeviceConnectionString(context.Background(), "dev-sim")
	require.NoError(t, err)
	_, dkey, _ := strings.Cut(dcs, "SharedAccessKey=")
	assert.NotContains(t, out, dkey)
}
