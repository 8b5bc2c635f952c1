package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/cli/clitest"
	"github.com/dmflow/dmflow/internal/testlog"
	"github.com/dmflow/dmflow/internal/testnet"
)

// Every command given bad flags, environment or arguments: one line naming
// the fix, exit 2, and nothing started: no state directory created, no
// port bound.
func TestBadInputStartsNothing(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"unknown command", nil, []string{"serve"}, []string{`unknown command "serve"`, "localhub --help"}},
		{"unknown flag", nil, []string{"--nope"}, []string{"unknown flag: --nope", "localhub --help"}},
		{"bad log format", nil, []string{"--log-format", "xml"}, []string{`--log-format "xml"`, "text or json"}},
		{"bad tier", nil, []string{"--tier", "S9"}, []string{"--tier", "S1"}},
		{"zero units", nil, []string{"--units", "0"}, []string{"--units 0", "at least 1"}},
		{"bad units flag", nil, []string{"--units", "two"}, []string{`invalid argument "two" for "--units"`, "localhub --help"}},
		{"bad quota", nil, []string{"--quota", "methods=lots"}, []string{"--quota", "methods=lots"}},
		{"host with a scheme", nil, []string{"--host", "https://hub"}, []string{"--host", "bare host name"}},
		{"address without port", nil, []string{"--mqtt-addr", "localhost"}, []string{"--mqtt-addr", "e.g. :8883"}},
		{"state dir is a file", nil, []string{"--state-dir", file}, []string{"is a file", "to a directory"}},
		{"bad env units", map[string]string{"DMFLOW_LOCALHUB_UNITS": "two"}, nil, []string{"DMFLOW_LOCALHUB_UNITS", "whole number"}},
		{"bad env throttle switch", map[string]string{"DMFLOW_LOCALHUB_NO_THROTTLE": "maybe"}, nil, []string{"DMFLOW_LOCALHUB_NO_THROTTLE", "true or false"}},
		{"connection-string: an argument", nil, []string{"connection-string", "d1"}, []string{`unknown command "d1"`, "localhub --help"}},
		{"connection-string: create without device", nil, []string{"connection-string", "--create"}, []string{"--create needs --device", "name the device"}},
		{"connection-string: bad device ID", nil, []string{"connection-string", "--device", "d 1"}, []string{"--device:", "use 1 to 128 ASCII letters"}},
		{"connection-string: unknown policy", nil, []string{"connection-string", "--policy", "owner"}, []string{`--policy "owner"`, "registryReadWrite"}},
		{"connection-string: policy and device", nil, []string{"connection-string", "--policy", "service", "--device", "d1"}, []string{"--policy and --device exclude each other"}},
		{"connection-string: bad host", nil, []string{"connection-string", "--host", "h:1"}, []string{"--host"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stateDir := filepath.Join(base, strings.ReplaceAll(tc.name, " ", "-"))
			mqttAddr, httpsAddr := testnet.ClosedAddr(t), testnet.ClosedAddr(t)
			env := map[string]string{"DMFLOW_LOCALHUB_STATE_DIR": stateDir, "DMFLOW_LOCALHUB_MQTT_ADDR": mqttAddr, "DMFLOW_LOCALHUB_HTTPS_ADDR": httpsAddr}
			for k, v := range tc.env {
				env[k] = v
			}
			// A command that got past the checks would serve until this ends.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var stdout, stderr testlog.Buffer
			code := execute(ctx, tc.args, func(k string) string { return env[k] }, &stdout, &stderr)
			line := stderr.String()
			clitest.CheckUsage(t, "localhub", code, line, tc.want...)
			if stdout.String() != "" {
				t.Errorf("stdout %q", stdout.String())
			}
			if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
				t.Errorf("state dir created: %v", err)
			}
			for _, addr := range []string{mqttAddr, httpsAddr} {
				l, err := net.Listen("tcp", addr)
				if err != nil {
					t.Errorf("%s was bound: %v", addr, err)
					continue
				}
				l.Close()
			}
		})
	}
}
