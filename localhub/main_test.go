package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/testlog"
)

func noEnv(string) string { return "" }

// run executes the command line as execute does and returns the command's error.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	root := newCommand(getenv, stdout, stderr, func() {})
	root.SetArgs(args)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}

// runCmd runs a short command and returns its output.
func runCmd(t *testing.T, env func(string) string, args ...string) (string, error) {
	t.Helper()
	var out, errOut testlog.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, args, env, &out, &errOut)
	return out.String(), err
}

func TestServeAndConnectionStrings(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	env := map[string]string{"DMFLOW_LOCALHUB_STATE_DIR": dir, "DMFLOW_LOCALHUB_QUOTAS": "queries=off", "DMFLOW_LOCALHUB_UNITS": "2"}
	getenv := func(k string) string { return env[k] }

	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut testlog.Buffer
	finished := make(chan struct{})
	var serveErr error
	go func() {
		defer close(finished)
		serveErr = run(ctx, []string{"--mqtt-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0", "--log-format", "json",
			"--tier", "S2", "--quota", "methods=500/s", "--quota", "twinReads=1000/s"}, getenv, &out, &errOut)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop")
		}
	})

	ready := regexp.MustCompile(`localhub ready host=localhost mqtt=127\.0\.0\.1:\d+ https=127\.0\.0\.1:(\d+) ca=(\S+)`)
	var m []string
	deadline := time.Now().Add(15 * time.Second)
	for m = ready.FindStringSubmatch(out.String()); m == nil; m = ready.FindStringSubmatch(out.String()) {
		select {
		case <-finished:
			t.Fatalf("serve ended: %v\n%s", serveErr, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready line; stdout %q stderr %q", out.String(), errOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// --quota replaces DMFLOW_LOCALHUB_QUOTAS and repeats add up.
	if want := `"msg":"throttling as IoT Hub","tier":"S2","units":2,"quotas":"methods=500/s,twinReads=1000/s"`; !strings.Contains(errOut.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, errOut.String())
	}
	if m[2] != filepath.Join(dir, "ca.pem") {
		t.Errorf("ready line names CA %s", m[2])
	}
	if !strings.Contains(errOut.String(), `"msg":"localhub listening"`) {
		t.Errorf("no JSON log on stderr: %q", errOut.String())
	}

	svc, err := runCmd(t, getenv, "connection-string")
	if err != nil {
		t.Fatalf("connection-string: %v", err)
	}
	if !regexp.MustCompile(`^HostName=localhost:` + m[1] + `;SharedAccessKeyName=iothubowner;SharedAccessKey=[A-Za-z0-9+/]{43}=\n$`).MatchString(svc) {
		t.Errorf("service connection string = %q", svc)
	}

	if _, err := runCmd(t, getenv, "connection-string", "--device", "d1"); err == nil || !strings.Contains(err.Error(), "--create") {
		t.Errorf("unknown device without --create = %v", err)
	}
	dev, err := runCmd(t, getenv, "connection-string", "--device", "d1", "--create")
	if err != nil {
		t.Fatalf("connection-string --device --create: %v", err)
	}
	if !regexp.MustCompile(`^HostName=localhost;DeviceId=d1;SharedAccessKey=[A-Za-z0-9+/]{43}=\n$`).MatchString(dev) {
		t.Errorf("device connection string = %q", dev)
	}
	again, err := runCmd(t, getenv, "--state-dir", dir, "connection-string", "--device", "d1")
	if err != nil || again != dev {
		t.Errorf("second read = %q, %v; want %q", again, err, dev)
	}

	// A second server on the same state dir explains itself.
	_, err = runCmd(t, getenv, "--mqtt-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), "in use by another localhub") {
		t.Errorf("second server = %v", err)
	}

	cancel()
	select {
	case <-finished:
		if serveErr != nil {
			t.Errorf("serve returned %v after cancel", serveErr)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop on cancel")
	}
	if _, err := os.Stat(filepath.Join(dir, "localhub.json")); !os.IsNotExist(err) {
		t.Errorf("runtime file left after shutdown: %v", err)
	}
	if _, err := runCmd(t, getenv, "connection-string", "--device", "d1"); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("device connection string after shutdown = %v", err)
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string
	}{
		{name: "bad log format", args: []string{"--state-dir", dir, "--log-format", "xml"}, wantErr: "--log-format"},
		{name: "bad env address", env: map[string]string{"DMFLOW_LOCALHUB_MQTT_ADDR": "8883"}, args: []string{"--state-dir", dir}, wantErr: "DMFLOW_LOCALHUB_MQTT_ADDR"},
		{name: "bad env quotas", env: map[string]string{"DMFLOW_LOCALHUB_QUOTAS": "methods=lots"}, wantErr: "DMFLOW_LOCALHUB_QUOTAS"},
		{name: "bad quota flag", args: []string{"--state-dir", dir, "--quota", "nope=1/s"}, wantErr: "--quota"},
		{name: "bad tier", args: []string{"--state-dir", dir, "--tier", "S9"}, wantErr: "--tier"},
		{name: "host with port", args: []string{"--state-dir", dir, "--host", "localhost:8443"}, wantErr: "--host"},
		{name: "create without device", args: []string{"connection-string", "--state-dir", dir, "--create"}, wantErr: "--create needs --device"},
		{name: "no state yet", args: []string{"connection-string", "--state-dir", filepath.Join(dir, "none")}, wantErr: "start localhub once"},
		{name: "hub not running", args: []string{"connection-string", "--state-dir", dir, "--device", "d"}, wantErr: "not running"},
		{name: "unknown flag", args: []string{"--nope"}, wantErr: "unknown flag"},
		{name: "stray argument", args: []string{"serve"}, wantErr: "unknown command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runCmd(t, func(k string) string { return tc.env[k] }, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = runCmd(t, noEnv, "--state-dir", t.TempDir(), "--mqtt-addr", "127.0.0.1:0", "--https-addr", ln.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "--https-addr") {
		t.Errorf("busy port = %v, want a hint at --https-addr", err)
	}
}
