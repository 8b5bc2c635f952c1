package temporalconn

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/uber-go/tally/v4"
	sdktally "go.temporal.io/sdk/contrib/tally"
)

// fakeEnv implements envconfig.EnvLookup over a map.
type fakeEnv map[string]string

func (f fakeEnv) Environ() []string {
	var out []string
	for k, v := range f {
		out = append(out, k+"="+v)
	}
	return out
}

func (f fakeEnv) LookupEnv(k string) (string, bool) { v, ok := f[k]; return v, ok }

func TestClientOptions(t *testing.T) {
	for _, tc := range []struct {
		name             string
		cfg              Config
		wantHost, wantNS string
	}{
		{"defaults", Config{Env: fakeEnv{"TEMPORAL_CONFIG_FILE": "/nonexistent.toml"}}, "localhost:7233", "default"},
		{"env", Config{Env: fakeEnv{"TEMPORAL_CONFIG_FILE": "/nonexistent.toml", "TEMPORAL_ADDRESS": "temporal:7233", "TEMPORAL_NAMESPACE": "fleet"}}, "temporal:7233", "fleet"},
		{"flags override env", Config{Address: "10.0.0.1:7233", Namespace: "ops", Env: fakeEnv{"TEMPORAL_CONFIG_FILE": "/nonexistent.toml", "TEMPORAL_ADDRESS": "temporal:7233"}}, "10.0.0.1:7233", "ops"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := tc.cfg.ClientOptions(nil)
			if err != nil {
				t.Fatal(err)
			}
			if o.HostPort != tc.wantHost || o.Namespace != tc.wantNS {
				t.Errorf("got %s/%s, want %s/%s", o.HostPort, o.Namespace, tc.wantHost, tc.wantNS)
			}
		})
	}
}

func TestClientOptionsLoggerAndMetrics(t *testing.T) {
	env := fakeEnv{"TEMPORAL_CONFIG_FILE": "/nonexistent.toml"}
	o, err := Config{Env: env}.ClientOptions(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.Logger != nil || o.MetricsHandler != nil {
		t.Errorf("without a logger and handler: logger %v, metrics handler %v, want the SDK's defaults", o.Logger, o.MetricsHandler)
	}
	var buf bytes.Buffer
	h := sdktally.NewMetricsHandler(tally.NewTestScope("", nil))
	o, err = Config{Env: env, MetricsHandler: h}.ClientOptions(slog.New(slog.NewJSONHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if o.MetricsHandler != h {
		t.Errorf("metrics handler %v, want the one passed", o.MetricsHandler)
	}
	// The SDK's own log lines go to the same slog handler.
	o.Logger.Info("from the sdk", "Namespace", "default")
	if !strings.Contains(buf.String(), `"msg":"from the sdk","Namespace":"default"`) {
		t.Errorf("SDK log line %q did not reach the slog handler", buf.String())
	}
}

func TestDialUnreachableNamesFix(t *testing.T) {
	// A port nobody listens on: bind, note it, close.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = Config{Address: addr, Env: fakeEnv{"TEMPORAL_CONFIG_FILE": "/nonexistent.toml"}}.Dial(context.Background(), nil)
	if err == nil {
		t.Fatal("dial of a closed port succeeded")
	}
	for _, want := range []string{addr, "TEMPORAL_ADDRESS", "make up"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestWorkflowURL(t *testing.T) {
	for _, tc := range []struct{ run, want string }{
		{"", "http://localhost:8233/namespaces/default/workflows/reboot%2Fdev-001%2Fr1"},
		{"0199-abc", "http://localhost:8233/namespaces/default/workflows/reboot%2Fdev-001%2Fr1/0199-abc/history"},
	} {
		if got := WorkflowURL("http://localhost:8233/", "default", "reboot/dev-001/r1", tc.run); got != tc.want {
			t.Errorf("got %s, want %s", got, tc.want)
		}
	}
}

func TestScheduleURL(t *testing.T) {
	want := "http://localhost:8233/namespaces/default/schedules/weekly-fw"
	if got := ScheduleURL("", "default", "weekly-fw"); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
