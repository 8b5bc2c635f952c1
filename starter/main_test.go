package main

import (
	"bytes"
	"net"
	"strings"
	"testing"
)

// closedPort returns a loopback address nobody listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestExecuteErrors(t *testing.T) {
	unreachable := closedPort(t)
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		want     []string
	}{
		{"no device", []string{"reboot"}, exitUsage, []string{"--device is required"}},
		{"unknown flag", []string{"reboot", "--device", "d", "--bogus"}, exitUsage, []string{"unknown flag: --bogus"}},
		{"bad output", []string{"reboot", "--device", "d", "-o", "yaml"}, exitUsage, []string{`--output "yaml"`, "text or json"}},
		{"bad device id", []string{"reboot", "--device", "dev/1"}, exitUsage, []string{"dev/1"}},
		{"method timeout out of range", []string{"reboot", "--device", "d", "--method-timeout", "1s"}, exitUsage, []string{"method timeout"}},
		{"unreachable temporal", []string{"reboot", "--device", "d", "--temporal-address", unreachable}, exitFailed, []string{"cannot reach Temporal", unreachable, "TEMPORAL_ADDRESS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			env := map[string]string{"TEMPORAL_CONFIG_FILE": "/nonexistent.toml"}
			code := execute(tc.args, &stdout, &stderr, func(k string) string { return env[k] })
			if code != tc.wantCode {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.wantCode, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(strings.ToLower(stderr.String()), strings.ToLower(w)) {
					t.Errorf("stderr %q lacks %q", stderr.String(), w)
				}
			}
			if n := strings.Count(strings.TrimSpace(stderr.String()), "\n"); n > 0 {
				t.Errorf("want a one-line error, got:\n%s", stderr.String())
			}
		})
	}
}
