package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

func TestTelemetryAndStats(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	dc := connectDevice(t, h, registerDevice(t, h, svc, "tele"))
	for i := 0; i < 3; i++ {
		if err := dc.SendEvent(context.Background(), []byte(`{"t":21}`), iotdevice.WithSendProperty("k", "v")); err != nil {
			t.Fatalf("SendEvent: %v", err)
		}
	}
	if err := dc.RegisterMethod(context.Background(), "m", func(map[string]interface{}) (int, map[string]interface{}, error) {
		return 200, nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CallDeviceMethod(context.Background(), "tele", &iotservice.MethodCall{MethodName: "m"}); err != nil {
		t.Fatalf("CallDeviceMethod: %v", err)
	}

	res, raw := rawRequest(t, h, http.MethodGet, "/_localhub/stats", serviceToken(t, h, time.Now().Add(time.Hour)), nil)
	var st Stats
	if res.StatusCode != http.StatusOK || json.Unmarshal(raw, &st) != nil {
		t.Fatalf("stats = %d %s", res.StatusCode, raw)
	}
	for op, want := range map[string]int64{"telemetry": 3, "methods": 1, "connections": 1, "registry": 1} {
		if got := st.PerSecond[op]; got.Total != want || got.Peak < 1 {
			t.Errorf("stats perSecond[%s] = %+v, want a total of %d", op, got, want)
		}
	}
	st.PerSecond = nil // checked above; its seconds depend on the clock
	want := Stats{ConnectedDevices: 1, TelemetryMessages: 3, MethodInvocations: map[string]map[string]int{"tele": {"m": 1}},
		ServiceTwinReads: map[string]int{}, Throttled: map[string]int{}}
	if !reflect.DeepEqual(st, want) {
		t.Errorf("stats = %+v, want %+v", st, want)
	}
	if res, _ := rawRequest(t, h, http.MethodGet, "/_localhub/stats", "", nil); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("stats without auth = %d, want 401", res.StatusCode)
	}
	ss, err := svc.ServiceStats(context.Background())
	if err != nil || ss.ConnectedDeviceCount != 1 {
		t.Errorf("ServiceStats = %+v, %v", ss, err)
	}

	d, err := svc.GetDevice(context.Background(), "tele")
	if err != nil {
		t.Fatal(err)
	}
	if d.ConnectionState != iotservice.Connected || d.LastActivityTime == nil || time.Since(d.LastActivityTime.Time) > time.Minute {
		t.Errorf("device = state %s, last activity %v", d.ConnectionState, d.LastActivityTime)
	}
	_ = dc.Close()
	require.Eventually(t, func() bool {
		d, err := svc.GetDevice(context.Background(), "tele")
		return err == nil && d.ConnectionState == iotservice.Disconnected
	}, 5*time.Second, 20*time.Millisecond, "waiting for Disconnected")
}

func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	h1, err := New(Options{StateDir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h1.Close() }) // Close is idempotent; this covers early failures
	if err := h1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	svc := serviceClient(t, h1, "")
	cs := registerDevice(t, h1, svc, "keep")
	dc := connectDevice(t, h1, cs)
	if _, err := dc.UpdateTwinState(ctx, iotdevice.TwinState{"firmwareStatus": "applying", "big": json.Number("9007199254740993")}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.UpdateDeviceTwin(ctx, &iotservice.Twin{DeviceID: "keep", Tags: map[string]interface{}{"ring": "canary"},
		Properties: &iotservice.Properties{Desired: map[string]interface{}{"fw": "3.1"}}}); err != nil {
		t.Fatal(err)
	}
	before, err := svc.GetDeviceTwin(ctx, "keep")
	if err != nil {
		t.Fatal(err)
	}
	serviceCS := h1.ServiceConnectionString()
	ca, _ := os.ReadFile(h1.CACertFile())
	_ = dc.Close()
	if err := h1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	h2 := startHub(t, dir)
	ca2, _ := os.ReadFile(h2.CACertFile())
	if !bytes.Equal(ca, ca2) {
		t.Error("the CA changed across a restart")
	}
	if got := h2.ServiceConnectionString(); strings.Split(got, ";")[2] != strings.Split(serviceCS, ";")[2] {
		t.Error("the iothubowner key changed across a restart")
	}
	cs2, err := h2.DeviceConnectionString(ctx, "keep")
	if err != nil || cs2 != cs {
		t.Errorf("DeviceConnectionString after restart = %q, %v; want %q", cs2, err, cs)
	}
	svc2 := serviceClient(t, h2, "")
	after, err := svc2.GetDeviceTwin(ctx, "keep")
	if err != nil {
		t.Fatal(err)
	}
	if after.ETag != before.ETag || after.Version != before.Version || after.Tags["ring"] != "canary" ||
		after.Properties.Desired["fw"] != "3.1" || after.Properties.Reported["firmwareStatus"] != "applying" ||
		after.Properties.Reported["$version"] != before.Properties.Reported["$version"] {
		t.Errorf("twin after restart = %+v, before %+v", after, before)
	}
	if after.ConnectionState != iotservice.Disconnected {
		t.Errorf("connection state after restart = %s", after.ConnectionState)
	}
	if len(h2.MethodInvocations("keep")) != 0 {
		t.Error("invocation counts survived the restart")
	}
	// The raw number survives byte for byte.
	res, raw := rawRequest(t, h2, http.MethodGet, "/twins/keep?api-version=2020-09-30", serviceToken(t, h2, time.Now().Add(time.Hour)), nil)
	if res.StatusCode != http.StatusOK || !bytes.Contains(raw, []byte(`"big":9007199254740993`)) {
		t.Errorf("twin JSON lost the big number: %s", raw)
	}
	dc2 := connectDevice(t, h2, cs)
	_, reported, err := dc2.RetrieveTwinState(ctx)
	if err != nil || reported["firmwareStatus"] != "applying" {
		t.Errorf("device view after restart = %v, %v", reported, err)
	}
}

func TestCloseEndsWaitingCalls(t *testing.T) {
	h, err := New(Options{StateDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc := serviceClient(t, h, "")
	registerDevice(t, h, svc, "w")
	errc := make(chan error, 1)
	go func() {
		_, err := svc.CallDeviceMethod(context.Background(), "w", &iotservice.MethodCall{MethodName: "x", ConnectTimeout: 60})
		errc <- err
	}()
	require.Eventually(t, func() bool { return h.conns.waiters("w") == 1 }, 10*time.Second, 10*time.Millisecond,
		"the call never waited for the device")
	start := time.Now()
	if err := h.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v with a waiting call", d)
	}
	select {
	case err := <-errc:
		var re *iotservice.RequestError
		if !errors.As(err, &re) || re.Code != http.StatusServiceUnavailable {
			t.Errorf("waiting call ended with %v, want 503", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiting call did not end")
	}
	if _, err := os.Stat(h.opts.StateDir + "/" + runtimeFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runtime file left behind: %v", err)
	}
}

func TestAddresses(t *testing.T) {
	for in, want := range map[string]string{
		"[::]:8883":      "127.0.0.1:8883",
		"0.0.0.0:8883":   "127.0.0.1:8883",
		":8883":          "127.0.0.1:8883",
		"127.0.0.1:1234": "127.0.0.1:1234",
		"[::1]:1234":     "[::1]:1234",
	} {
		if got := dialable(in); got != want {
			t.Errorf("dialable(%q) = %q, want %q", in, got, want)
		}
	}
	for _, tc := range []struct{ host, addr, want string }{
		{"localhost", "127.0.0.1:8443", "localhost:8443"},
		{"myhub.example", "127.0.0.1:443", "myhub.example"},
		{"localhost", "", "localhost"},
	} {
		if got := hostPort(tc.host, tc.addr); got != tc.want {
			t.Errorf("hostPort(%q, %q) = %q, want %q", tc.host, tc.addr, got, tc.want)
		}
	}
}

// TestTimestampsParseInGoSDK checks msTime against the Go SDK's
// MicrosoftTime, which accepts only a few layouts.
func TestTimestampsParseInGoSDK(t *testing.T) {
	for _, ts := range []time.Time{{}, time.Date(2024, 2, 29, 23, 59, 58, 123456789, time.FixedZone("X", 3600))} {
		s := msTime(ts)
		if !strings.HasSuffix(s, "Z") {
			t.Errorf("msTime = %q, want a trailing Z", s)
		}
		var mt iotservice.MicrosoftTime
		if err := json.Unmarshal([]byte(`"`+s+`"`), &mt); err != nil {
			t.Fatalf("MicrosoftTime rejects %q: %v", s, err)
		}
		if d := mt.Time.Sub(ts); !ts.IsZero() && (d > time.Microsecond || d < -time.Microsecond) {
			t.Errorf("%q parsed as %v, want %v", s, mt.Time, ts)
		}
		if _, err := time.Parse(time.RFC3339, s); err != nil {
			t.Errorf("%q is not RFC 3339: %v", s, err)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{StateDir: "x"}
	if err := o.fill(); err != nil {
		t.Fatal(err)
	}
	if o.HostName != "localhost" || o.MQTTAddr != ":8883" || o.HTTPSAddr != ":8443" || o.Logger == nil ||
		o.Tier != "S1" || o.Units != 1 || o.MaxQueueDelay != time.Second || o.Unlimited {
		t.Errorf("filled options = %+v", o)
	}
	if err := (&Options{}).fill(); err == nil {
		t.Error("fill accepted an empty StateDir")
	}
	if err := (&Options{StateDir: "x", MaxQueueDelay: -1}).fill(); err == nil {
		t.Error("fill accepted a negative queue delay")
	}
}

func TestStartTwiceAndAfterClose(t *testing.T) {
	h := startHub(t, "")
	if err := h.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	h2, err := New(Options{StateDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.Close(); err != nil {
		t.Fatalf("Close before Start: %v", err)
	}
	if err := h2.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
	if err := h2.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestSecondHubOnSameStateDirFails(t *testing.T) {
	h := startHub(t, "")
	h2, err := New(Options{StateDir: h.opts.StateDir, Logger: testLogger(t)})
	if err == nil {
		_ = h2.Close()
	}
	if !errors.Is(err, store.ErrLocked) {
		t.Errorf("New on a state dir in use = %v, want store.ErrLocked", err)
	}
}

func TestBrokerLogHandler(t *testing.T) {
	var buf bytes.Buffer
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		buf.Reset()
		log := slog.New(brokerLogHandler{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level})}).With("component", "mqtt")
		log.Warn("", "error", "EOF")
		log.Warn("client store quota reached")
		out := buf.String()
		if !strings.Contains(out, "level=WARN msg=\"client store quota reached\" component=mqtt") {
			t.Errorf("level %v: real warning lost: %q", level, out)
		}
		if got := strings.Contains(out, "level=DEBUG msg=\"mqtt connection ended\" component=mqtt error=EOF"); got != (level == slog.LevelDebug) {
			t.Errorf("level %v: demoted record shown = %v: %q", level, got, out)
		}
		if strings.Contains(out, "level=WARN msg=\"\"") {
			t.Errorf("level %v: empty warning not demoted: %q", level, out)
		}
	}
}

// TestOnlineOnceConnected checks a device is online for the service as soon as its client has
// the CONNACK: a method call or a registry read made right then must not find it offline.
func TestOnlineOnceConnected(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	for i := range 30 {
		id := fmt.Sprintf("quick-%02d", i)
		connectDevice(t, h, registerDevice(t, h, svc, id))
		d, err := svc.GetDevice(ctx, id)
		if err != nil {
			t.Fatalf("GetDevice(%s): %v", id, err)
		}
		if d.ConnectionState != iotservice.Connected {
			t.Fatalf("%s right after its CONNACK: connection state %s, want Connected", id, d.ConnectionState)
		}
	}
}
