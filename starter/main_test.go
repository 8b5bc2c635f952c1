package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/testnet"
)

func TestExecuteErrors(t *testing.T) {
	unreachable := testnet.ClosedAddr(t)
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		want     []string
		notWant  []string
	}{
		{"no device", []string{"reboot"}, cli.ExitUsage, []string{"--device is required"}, nil},
		{"unknown flag", []string{"reboot", "--device", "d", "--bogus"}, cli.ExitUsage, []string{"unknown flag: --bogus"}, nil},
		{"bad output", []string{"reboot", "--device", "d", "-o", "yaml"}, cli.ExitUsage, []string{`--output "yaml"`, "text or json"}, nil},
		{"bad device id", []string{"reboot", "--device", "dev/1"}, cli.ExitUsage, []string{"dev/1"}, nil},
		{"method timeout out of range", []string{"reboot", "--device", "d", "--method-timeout", "1s"}, cli.ExitUsage, []string{"method timeout"}, nil},
		{"unreachable temporal", []string{"reboot", "--device", "d", "--temporal-address", unreachable}, cli.ExitFailed, []string{"cannot reach Temporal", unreachable, "TEMPORAL_ADDRESS"}, nil},
		{"firmware without flags", []string{"firmware"}, cli.ExitUsage, []string{"missing --device", "--uri", "--version", "e.g. --uri https://"}, nil},
		{"firmware without version", []string{"firmware", "-d", "d", "--uri", "https://fw.example/v2.bin"}, cli.ExitUsage, []string{"missing --version (e.g. --version 2.0.0)"}, []string{"--device", "--uri"}},
		{"firmware SAS URI", []string{"firmware", "-d", "d", "--version", "2", "--uri", "https://a.blob.core.windows.net/fw.bin?sp=r&sig=SECRETsignature"}, cli.ExitUsage,
			[]string{"use a URI without credentials"}, []string{"SECRETsignature"}},
		{"firmware ftp URI", []string{"firmware", "-d", "d", "--version", "2", "--uri", "ftp://fw.example/v2.bin"}, cli.ExitUsage, []string{"absolute http or https URL"}, nil},
		{"firmware bad update ID", []string{"firmware", "-d", "d", "--version", "2", "--uri", "https://fw.example/v2.bin", "--update-id", "a/b"}, cli.ExitUsage, []string{`update ID "a/b"`}, nil},
		{"firmware stage timeout beyond the deadline", []string{"firmware", "-d", "d", "--version", "2", "--uri", "https://fw.example/v2.bin", "--stage-timeout", "10m", "--deadline", "5m"}, cli.ExitUsage,
			[]string{"stage timeout 10m0s"}, nil},
		{"firmware bad duration", []string{"firmware", "-d", "d", "--version", "2", "--uri", "https://fw.example/v2.bin", "--stage-timeout", "soon"}, cli.ExitUsage, []string{"--stage-timeout"}, nil},
		{"firmware bad output", []string{"firmware", "-d", "d", "--version", "2", "--uri", "https://fw.example/v2.bin", "-o", "yaml"}, cli.ExitUsage, []string{`--output "yaml"`}, nil},
		{"firmware unreachable temporal", []string{"firmware", "-d", "d", "--version", "2", "--uri", "https://fw.example/v2.bin", "--temporal-address", unreachable}, cli.ExitFailed,
			[]string{"cannot reach Temporal", unreachable}, nil},
		{"schedule without times", []string{"schedule", "create", "weekly", "--reboot", "--devices", "d"}, cli.ExitUsage, []string{"no times: give --cron"}, nil},
		{"schedule unreachable temporal", []string{"schedule", "list", "--temporal-address", unreachable}, cli.ExitFailed, []string{"cannot reach Temporal", unreachable}, nil},
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
			for _, w := range tc.notWant {
				if strings.Contains(stderr.String(), w) {
					t.Errorf("stderr %q contains %q", stderr.String(), w)
				}
			}
			if n := strings.Count(strings.TrimSpace(stderr.String()), "\n"); n > 0 {
				t.Errorf("want a one-line error, got:\n%s", stderr.String())
			}
		})
	}
}
