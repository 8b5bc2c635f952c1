package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmflow/dmflow/internal/cli/clitest"
	"github.com/dmflow/dmflow/internal/testnet"
)

// Bad flags, environment or files: one line naming the fix, exit 2, and
// nothing started: IoT Hub and Temporal not contacted, no metrics port
// bound.
func TestBadInputStartsNothing(t *testing.T) {
	hubAddr, hubConns := testnet.CountingListener(t)
	temporalAddr, temporalConns := testnet.CountingListener(t)
	// The metrics address is taken: a worker that bound it before checking
	// the rest would fail with "address already in use" instead.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	cs := "HostName=" + hubAddr + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + base64.StdEncoding.EncodeToString([]byte(rand.Text()))
	good := map[string]string{envHubConnectionString: cs, "TEMPORAL_CONFIG_FILE": filepath.Join(dir, "none.toml")}
	with := func(kv ...string) map[string]string {
		env := map[string]string{}
		for k, v := range good {
			env[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return env
	}
	common := []string{"--temporal-address", temporalAddr, "--metrics-address", taken.Addr().String()}

	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"unknown flag", []string{"--bogus"}, good, []string{"unknown flag: --bogus", "worker --help"}},
		{"an argument", []string{"start"}, good, []string{`takes no arguments, got "start"`, "worker --help"}},
		{"no connection string", nil, with(envHubConnectionString, ""), []string{"IOTHUB_CONNECTION_STRING is not set", "SharedAccessKey="}},
		{"malformed connection string", nil, with(envHubConnectionString, "HostName=h;SharedAccessKey=c2VjcmV0"), []string{"IOTHUB_CONNECTION_STRING is malformed", "SharedAccessKeyName"}},
		{"missing CA file", []string{"--ca-file", filepath.Join(dir, "none.pem")}, good, []string{"no such file", "localhub's ca.pem"}},
		{"CA file without a certificate", nil, with(envHubCAFile, notPEM), []string{"holds no PEM certificate", "localhub's ca.pem"}},
		{"bad log format", []string{"--log-format", "xml"}, good, []string{`--log-format "xml"`, "text|json"}},
		{"bad metrics address", []string{"--metrics-address", "9464"}, good, []string{`--metrics-address "9464" is not host:port`, "e.g. 127.0.0.1:9464"}},
		{"bad limit", []string{"--max-concurrent-activities", "many"}, good, []string{`--max-concurrent-activities "many"`, "whole number"}},
		{"one workflow poller", nil, with("DMFLOW_WORKFLOW_POLLERS", "1"), []string{"DMFLOW_WORKFLOW_POLLERS", "at least 2"}},
		{"missing Temporal TLS file", nil, with("TEMPORAL_TLS_CLIENT_CERT_PATH", filepath.Join(dir, "none.crt"), "TEMPORAL_TLS_CLIENT_KEY_PATH", filepath.Join(dir, "none.key")),
			[]string{"temporal client configuration", "TEMPORAL_"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				if strings.HasPrefix(k, "TEMPORAL_") {
					t.Setenv(k, v) // the Temporal SDK reads the process environment
				}
			}
			var stderr bytes.Buffer
			code := execute(append(append([]string{}, common...), tc.args...), func(k string) string { return tc.env[k] }, &stderr)
			line := stderr.String()
			clitest.CheckUsage(t, "worker", code, line, tc.want...)
			if strings.Contains(line, "c2VjcmV0") || strings.Contains(line, "address already in use") {
				t.Errorf("stderr %q repeats the key or bound the metrics port", line)
			}
			if h, tp := hubConns(), temporalConns(); h != 0 || tp != 0 {
				t.Errorf("contacted IoT Hub %d and Temporal %d times", h, tp)
			}
		})
	}
}
