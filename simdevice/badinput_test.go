package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmflow/dmflow/internal/cli/clitest"
	"github.com/dmflow/dmflow/internal/testnet"
)

// Every command (the default, run, fleet) given bad flags, environment or
// files: one line naming the fix, exit 2, the hub not contacted.
func TestBadInputStartsNothing(t *testing.T) {
	hub, accepted := testnet.CountingListener(t)
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	svc := "HostName=" + hub + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey
	dev := "HostName=127.0.0.1;DeviceId=dev-1;SharedAccessKey=" + testKey
	tests := []struct {
		name string
		args []string
		env  func(string) string
		want []string
	}{
		{"unknown command", []string{"fly"}, env(), []string{`unknown command "fly"`, "simdevice --help"}},
		{"unknown flag", []string{"--bogus"}, env(envDeviceConnectionString, dev), []string{"unknown flag: --bogus", "simdevice --help"}},
		{"no device", nil, env(), []string{envDeviceConnectionString, "export the device connection string"}},
		{"run: device ID without service string", []string{"run", "--device-id", "dev-1"}, env(), []string{envHubConnectionString + " is not set"}},
		{"run: bad device ID", []string{"run", "--device-id", "dev 1"}, env(envHubConnectionString, svc), []string{`--device-id (DMFLOW_DEVICE_ID): device ID "dev 1"`, "ASCII letters"}},
		{"run: malformed device string", []string{"run"}, env(envDeviceConnectionString, "HostName=h;DeviceId=d"), []string{envDeviceConnectionString, "SharedAccessKey"}},
		{"run: missing CA file", []string{"run", "--ca-file", "/nonexistent/ca.pem"}, env(envDeviceConnectionString, dev), []string{"--ca-file", "localhub's ca.pem"}},
		{"run: CA file without a certificate", []string{"run"}, env(envDeviceConnectionString, dev, envHubCAFile, notPEM), []string{"holds no PEM certificate", "localhub's ca.pem"}},
		{"run: bad broker", []string{"run", "--broker", "127.0.0.1:8883"}, env(envDeviceConnectionString, dev), []string{"--broker", "e.g. tls://127.0.0.1:8883"}},
		{"run: bad duration", []string{"run", "--reboot-duration", "soon"}, env(envDeviceConnectionString, dev), []string{"--reboot-duration", "such as 20s"}},
		{"run: bad stage", []string{"run", "--fail-stage", "flashing"}, env(envDeviceConnectionString, dev), []string{"--fail-stage", "downloading"}},
		{"run: bad contract", []string{"run", "--contract", "azure"}, env(envDeviceConnectionString, dev), []string{"--contract", "dmflow|tutorial"}},
		{"run: bad answer", []string{"run", "--contract", "tutorial", "--answer", "text"}, env(envDeviceConnectionString, dev), []string{"--answer", "object|string"}},
		{"run: string answer on dmflow", []string{"run", "--answer", "string"}, env(envDeviceConnectionString, dev), []string{"--answer", "--contract tutorial"}},
		{"run: tutorial with fail stage", []string{"run", "--contract", "tutorial", "--fail-stage", "applying"}, env(envDeviceConnectionString, dev), []string{"--fail-stage", "no error state"}},
		{"run: an argument", []string{"run", "dev-1"}, env(envDeviceConnectionString, dev), []string{`unknown command "dev-1"`, "simdevice --help"}},
		{"fleet: no count", []string{"fleet"}, env(envHubConnectionString, svc), []string{"--count"}},
		{"fleet: no service string", []string{"fleet", "--count", "3"}, env(), []string{envHubConnectionString}},
		{"fleet: fractions over 1", []string{"fleet", "--count", "3", "--offline", "0.6", "--failing", "0.6"}, env(envHubConnectionString, svc), []string{"add up to 1.2", "at most 1"}},
		{"fleet: bad tutorial share", []string{"fleet", "--count", "3", "--tutorial", "50"}, env(envHubConnectionString, svc), []string{"--tutorial", "50%"}},
		{"fleet: tutorial and failing over 1", []string{"fleet", "--count", "3", "--tutorial", "60%", "--failing", "0.5"}, env(envHubConnectionString, svc), []string{"tutorial share", "no error state"}},
		{"fleet: contract flag", []string{"fleet", "--count", "3", "--contract", "tutorial"}, env(envHubConnectionString, svc), []string{"--contract", "--tutorial"}},
		{"run: broker list", []string{"run", "--broker", "tls://127.0.0.1:8883,tls://127.0.0.2:8883"}, env(envDeviceConnectionString, dev), []string{"--broker", "one device dials one broker"}},
		{"fleet: bad broker in a list", []string{"fleet", "--count", "3", "--broker", "tls://127.0.0.1:8883,tls://127.0.0.2"}, env(envHubConnectionString, svc), []string{"--broker", "URL 2 of 2", "e.g. tls://127.0.0.1:8883,tls://127.0.0.2:8883"}},
		{"fleet: bad tags", []string{"fleet", "--count", "3", "--tags", "ring"}, env(envHubConnectionString, svc), []string{"--tags"}},
		{"fleet: bad log level", []string{"fleet", "--count", "3", "--device-log-level", "loud"}, env(envHubConnectionString, svc), []string{"--device-log-level"}},
		{"fleet: an argument", []string{"fleet", "--count", "3", "extra"}, env(envHubConnectionString, svc), []string{`unknown command "extra"`, "simdevice --help"}},
		{"fleet: unknown flag", []string{"fleet", "--count", "3", "--bogus"}, env(envHubConnectionString, svc), []string{"unknown flag: --bogus", "simdevice fleet --help"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			// A device that got past the checks would dial the stand-in.
			getenv := func(k string) string {
				if k == envBroker {
					return "tls://" + hub
				}
				return tc.env(k)
			}
			code := execute(tc.args, getenv, &stderr)
			line := stderr.String()
			clitest.CheckUsage(t, "simdevice", code, line, tc.want...)
			if strings.Contains(line, testKey) {
				t.Errorf("stderr %q repeats the key", line)
			}
			if n := accepted(); n != 0 {
				t.Errorf("the hub was contacted %d times", n)
			}
		})
	}
}
