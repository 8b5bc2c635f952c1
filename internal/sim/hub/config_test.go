package hub

import (
	"context"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/hubquota"
)

func TestConfigFromEnv(t *testing.T) {
	c, err := ConfigFromEnv(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	want := Config{StateDir: ".dmflow/localhub", Host: "localhost", MQTTAddr: ":8883", HTTPSAddr: ":8443", LogFormat: "text", Tier: "S1", Units: 1,
		StandInStage: DefaultStandInStage}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults = %+v", c)
	}
	env := map[string]string{
		EnvStateDir: "/tmp/s", EnvHost: "hub.local", EnvMQTTAddr: ":1883", EnvHTTPSAddr: "127.0.0.1:9443",
		EnvLogFormat: "json", EnvTier: "S3", EnvUnits: "2", EnvQuotas: "methods=500/s, queries=60/min,telemetry=off",
		EnvNoThrottle: "true", EnvStandIns: "big-", EnvStandInStage: "250ms",
	}
	c, err = ConfigFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	want = Config{StateDir: "/tmp/s", Host: "hub.local", MQTTAddr: ":1883", HTTPSAddr: "127.0.0.1:9443", LogFormat: "json",
		Tier: "S3", Units: 2, Quotas: map[hubquota.Op]float64{hubquota.Methods: 500, hubquota.Queries: 1, hubquota.Telemetry: math.Inf(1)}, NoThrottle: true,
		StandIns: "big-", StandInStage: 250 * time.Millisecond}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("from env = %+v", c)
	}
	for k, v := range map[string]string{EnvUnits: "two", EnvQuotas: "methods=fast", EnvNoThrottle: "maybe", EnvStandInStage: "soon"} {
		bad := map[string]string{k: v}
		if _, err := ConfigFromEnv(func(k string) string { return bad[k] }); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: error = %v", k, v, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{StateDir: "s", Host: "localhost", MQTTAddr: ":8883", HTTPSAddr: "127.0.0.1:0", LogFormat: "text", Tier: "S1", Units: 1,
		StandInStage: time.Second}
	tests := []struct {
		name    string
		change  func(*Config)
		wantErr string
	}{
		{name: "good", change: func(*Config) {}},
		{name: "json logs", change: func(c *Config) { c.LogFormat = "json" }},
		{name: "empty state dir", change: func(c *Config) { c.StateDir = " " }, wantErr: "--state-dir"},
		{name: "host with port", change: func(c *Config) { c.Host = "localhost:8443" }, wantErr: "--host"},
		{name: "host with scheme", change: func(c *Config) { c.Host = "https://hub" }, wantErr: EnvHost},
		{name: "empty host", change: func(c *Config) { c.Host = "" }, wantErr: "--host"},
		{name: "mqtt addr without port", change: func(c *Config) { c.MQTTAddr = "localhost" }, wantErr: "--mqtt-addr"},
		{name: "https port out of range", change: func(c *Config) { c.HTTPSAddr = ":70000" }, wantErr: EnvHTTPSAddr},
		{name: "log format", change: func(c *Config) { c.LogFormat = "xml" }, wantErr: "--log-format"},
		{name: "free tier", change: func(c *Config) { c.Tier = "f1" }},
		{name: "unknown tier", change: func(c *Config) { c.Tier = "S4" }, wantErr: "--tier"},
		{name: "zero units", change: func(c *Config) { c.Units = 0 }, wantErr: EnvUnits},
		{name: "stand-ins", change: func(c *Config) { c.StandIns = "big-" }},
		{name: "stand-in stage", change: func(c *Config) { c.StandInStage = 0 }, wantErr: "--stand-in-stage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.change(&c)
			err := c.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("Validate = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Validate = %v, want an error naming %s", err, tc.wantErr)
			}
		})
	}
}

func TestConfigConnectionStrings(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := Config{StateDir: dir, Host: "localhost", MQTTAddr: ":0", HTTPSAddr: ":8443", LogFormat: "text"}

	if _, err := cfg.ServiceConnectionString(); err == nil || !strings.Contains(err.Error(), "start localhub once") {
		t.Errorf("ServiceConnectionString without state = %v", err)
	}
	if _, err := cfg.DeviceConnectionString(ctx, "d1", true); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("DeviceConnectionString without a hub = %v", err)
	}

	h := startHub(t, dir)
	cs, err := cfg.ServiceConnectionString()
	if err != nil || cs != h.ServiceConnectionString() {
		t.Errorf("ServiceConnectionString = %q, %v; want %q", cs, err, h.ServiceConnectionString())
	}

	// Another policy's connection string works with the SDK, within the
	// policy's permissions.
	if _, err := cfg.PolicyConnectionString("owner"); err == nil || !strings.Contains(err.Error(), "registryReadWrite") {
		t.Errorf("unknown policy = %v, want the policies listed", err)
	}
	rr, err := cfg.PolicyConnectionString("registryRead")
	if want, herr := h.PolicyConnectionString("registryRead"); err != nil || herr != nil || rr != want ||
		!strings.Contains(rr, ";SharedAccessKeyName=registryRead;") {
		t.Fatalf("PolicyConnectionString(registryRead) = %q, %v; hub says %q, %v", rr, err, want, herr)
	}
	if _, err := serviceClient(t, h, rr).ListDevices(ctx); err != nil {
		t.Errorf("registryRead lists devices: %v", err)
	}
	_, err = serviceClient(t, h, rr).GetDeviceTwin(ctx, "d1")
	if code, _ := requestError(t, err); code != http.StatusUnauthorized {
		t.Errorf("registryRead reading a twin, which needs ServiceConnect = %d, want 401", code)
	}

	if _, err := cfg.DeviceConnectionString(ctx, "d1", false); err == nil || !strings.Contains(err.Error(), "--create") {
		t.Errorf("unknown device without --create = %v", err)
	}
	created, err := cfg.DeviceConnectionString(ctx, "d1", true)
	if err != nil {
		t.Fatalf("DeviceConnectionString(create): %v", err)
	}
	want, err := h.DeviceConnectionString(ctx, "d1")
	if err != nil || created != want {
		t.Errorf("created = %q, hub says %q (%v)", created, want, err)
	}
	if !strings.HasPrefix(created, "HostName=localhost;DeviceId=d1;SharedAccessKey=") {
		t.Errorf("device connection string = %q", created)
	}
	again, err := cfg.DeviceConnectionString(ctx, "d1", true)
	if err != nil || again != created {
		t.Errorf("existing device = %q, %v", again, err)
	}
	if _, err := cfg.DeviceConnectionString(ctx, "bad id", true); err == nil || !strings.Contains(err.Error(), "--device") {
		t.Errorf("bad device ID = %v", err)
	}
	// The device connection string works with the SDK.
	connectDevice(t, h, created)

	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.DeviceConnectionString(ctx, "d1", false); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("DeviceConnectionString after Close = %v", err)
	}
	// The key stays readable after the hub stopped; the port falls back to
	// the configured one.
	cs, err = cfg.ServiceConnectionString()
	if err != nil || !strings.HasPrefix(cs, "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=") {
		t.Errorf("ServiceConnectionString after Close = %q, %v", cs, err)
	}
}
