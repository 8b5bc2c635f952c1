package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/deviceid"
)

// Keys in these tests are base64 and must never show up in an error.
const (
	testKey   = "c2VjcmV0LWtleS1uZXZlci1sb2dnZWQ="
	deviceCS  = "HostName=hub.azure-devices.net;DeviceId=dev-1;SharedAccessKey=" + testKey
	serviceCS = "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

// testCAFile writes a self-signed CA certificate, as PEM, and returns its path.
func testCAFile(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return path
}

func TestResolve(t *testing.T) {
	caFile := testCAFile(t)

	for _, tc := range []struct {
		name    string
		flags   flagValues
		env     func(string) string
		want    func(t *testing.T, c Config)
		wantErr []string // substrings of the error
	}{
		{
			name: "device connection string from env, defaults",
			env:  env(envDeviceConnectionString, deviceCS),
			want: func(t *testing.T, c Config) {
				assert.Equal(t, deviceCS, c.ConnectionString)
				assert.Equal(t, 20*time.Second, c.RebootDuration)
				assert.Equal(t, 15*time.Second, c.StageDuration)
				assert.Equal(t, "1.0.0", c.FirmwareVersion)
				assert.Equal(t, "tutorial", c.RebootStyle)
				assert.Equal(t, "text", c.LogFormat)
				assert.Empty(t, c.Broker)
				assert.Equal(t, "dmflow", c.Contract)
				assert.Equal(t, "object", c.Answer)
			},
		},
		{
			name:  "device connection string from flag",
			flags: flagValues{connectionString: deviceCS},
			env:   env(),
			want:  func(t *testing.T, c Config) { assert.Equal(t, deviceCS, c.ConnectionString) },
		},
		{
			name:  "flags override env",
			flags: flagValues{caFile: caFile, broker: "tls://127.0.0.1:18883", rebootDuration: "2s", rebootStyle: "realistic", logFormat: "json"},
			env: env(envDeviceConnectionString, deviceCS, envHubCAFile, "/nonexistent/ca.pem", envBroker, "tls://other:1",
				envRebootDuration, "1h", envRebootStyle, "tutorial", envLogFormat, "text"),
			want: func(t *testing.T, c Config) {
				assert.Equal(t, caFile, c.CAFile)
				assert.Equal(t, "tls://127.0.0.1:18883", c.Broker)
				assert.Equal(t, 2*time.Second, c.RebootDuration)
				assert.Equal(t, "realistic", c.RebootStyle)
				assert.Equal(t, "json", c.LogFormat)
			},
		},
		{
			name: "env fallbacks",
			env: env(envDeviceConnectionString, deviceCS, envHubCAFile, caFile, envBroker, "tls://127.0.0.1:8883",
				envRebootDuration, "1m30s", envRebootStyle, "realistic", envLogFormat, "json"),
			want: func(t *testing.T, c Config) {
				assert.Equal(t, caFile, c.CAFile)
				assert.Equal(t, "tls://127.0.0.1:8883", c.Broker)
				assert.Equal(t, 90*time.Second, c.RebootDuration)
				assert.Equal(t, "realistic", c.RebootStyle)
				assert.Equal(t, "json", c.LogFormat)
			},
		},
		{
			name:  "device ID with service connection string",
			flags: flagValues{deviceID: "dev-2"},
			env:   env(envHubConnectionString, serviceCS),
			want: func(t *testing.T, c Config) {
				assert.Equal(t, "dev-2", c.DeviceID)
				assert.Equal(t, serviceCS, c.ServiceConnectionString)
				assert.Empty(t, c.ConnectionString)
			},
		},
		{
			name: "device ID from env",
			env:  env(envDeviceID, "dev-3", envHubConnectionString, serviceCS),
			want: func(t *testing.T, c Config) { assert.Equal(t, "dev-3", c.DeviceID) },
		},
		{
			name:  "matching device ID next to device connection string",
			flags: flagValues{deviceID: "dev-1"},
			env:   env(envDeviceConnectionString, deviceCS),
			want:  func(t *testing.T, c Config) { assert.Equal(t, "dev-1", c.DeviceID) },
		},
		{
			name:    "nothing set",
			env:     env(),
			wantErr: []string{envDeviceConnectionString, "is not set", "HostName=", "--device-id", envHubConnectionString},
		},
		{
			name:    "device ID without service connection string",
			flags:   flagValues{deviceID: "dev-2"},
			env:     env(),
			wantErr: []string{envHubConnectionString, "is not set", "SharedAccessKeyName="},
		},
		{
			name:    "device ID with device connection string in the service variable",
			flags:   flagValues{deviceID: "dev-2"},
			env:     env(envHubConnectionString, deviceCS),
			wantErr: []string{envHubConnectionString, "SharedAccessKeyName missing"},
		},
		{
			name:    "bad device ID",
			flags:   flagValues{deviceID: "dev/1"},
			env:     env(envHubConnectionString, serviceCS),
			wantErr: []string{"--device-id", envDeviceID, `'/'`},
		},
		{
			name:    "too long device ID",
			flags:   flagValues{deviceID: strings.Repeat("a", 129)},
			env:     env(envHubConnectionString, serviceCS),
			wantErr: []string{"--device-id", "128"},
		},
		{
			name:    "device ID differs from connection string",
			flags:   flagValues{deviceID: "dev-9"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--device-id", "dev-9", "dev-1", envDeviceConnectionString},
		},
		{
			name:    "malformed device connection string",
			env:     env(envDeviceConnectionString, "HostName=hub;SharedAccessKey="+testKey),
			wantErr: []string{envDeviceConnectionString, "DeviceId missing", "expected HostName="},
		},
		{
			name:    "key not base64",
			env:     env(envDeviceConnectionString, "HostName=hub;DeviceId=d;SharedAccessKey=s3cr3t!!"),
			wantErr: []string{envDeviceConnectionString, "not base64"},
		},
		{
			name:    "missing CA file",
			flags:   flagValues{caFile: "/nonexistent/ca.pem"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--ca-file", envHubCAFile, "/nonexistent/ca.pem"},
		},
		{
			name:    "broker without port",
			flags:   flagValues{broker: "tls://127.0.0.1"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--broker", envBroker, "host:port", "tls://127.0.0.1:8883"},
		},
		{
			name:    "broker without scheme",
			env:     env(envDeviceConnectionString, deviceCS, envBroker, "127.0.0.1:8883"),
			wantErr: []string{"--broker", envBroker, "tls://"},
		},
		{
			name:    "broker list for one device",
			flags:   flagValues{broker: "tls://127.0.0.1:8883,tls://127.0.0.2:8883"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--broker", envBroker, "is a list", "one device dials one broker", "simdevice fleet"},
		},
		{
			name:    "unparsable duration",
			flags:   flagValues{rebootDuration: "20"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--reboot-duration", envRebootDuration, `"20"`, "20s"},
		},
		{
			name:    "negative duration",
			env:     env(envDeviceConnectionString, deviceCS, envRebootDuration, "-1s"),
			wantErr: []string{"--reboot-duration", "not positive"},
		},
		{
			name:    "zero duration",
			flags:   flagValues{rebootDuration: "0s"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--reboot-duration", "not positive"},
		},
		{
			name:    "unknown style",
			flags:   flagValues{rebootStyle: "fast"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--reboot-style", envRebootStyle, `"fast"`, "tutorial|realistic"},
		},
		{
			name:  "firmware settings from flags",
			flags: flagValues{stageDuration: "2s", firmwareVersion: "1.4.2", failStage: "applying"},
			env:   env(envDeviceConnectionString, deviceCS, envStageDuration, "1m", envFirmwareVersion, "9", envFailStage, "downloading"),
			want: func(t *testing.T, c Config) {
				assert.Equal(t, 2*time.Second, c.StageDuration)
				assert.Equal(t, "1.4.2", c.FirmwareVersion)
				assert.Equal(t, "applying", c.FailStage)
			},
		},
		{
			name: "firmware settings from env and defaults",
			env:  env(envDeviceConnectionString, deviceCS, envStageDuration, "1m"),
			want: func(t *testing.T, c Config) {
				assert.Equal(t, time.Minute, c.StageDuration)
				assert.Equal(t, "1.0.0", c.FirmwareVersion)
				assert.Empty(t, c.FailStage)
			},
		},
		{
			name:    "zero stage duration",
			flags:   flagValues{stageDuration: "0s"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--stage-duration", envStageDuration, "not positive"},
		},
		{
			name:    "unparsable stage duration",
			env:     env(envDeviceConnectionString, deviceCS, envStageDuration, "15"),
			wantErr: []string{"--stage-duration", envStageDuration, `"15"`},
		},
		{
			name:    "unknown fail stage",
			flags:   flagValues{failStage: "completed"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--fail-stage", envFailStage, "downloading|applying"},
		},
		{
			name:    "unprintable firmware version",
			flags:   flagValues{firmwareVersion: "1\x00"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--firmware-version", envFirmwareVersion},
		},
		{
			name:  "tutorial contract from flags",
			flags: flagValues{contract: "tutorial", answer: "string"},
			env:   env(envDeviceConnectionString, deviceCS, envContract, "dmflow", envAnswer, "object"),
			want: func(t *testing.T, c Config) {
				assert.Equal(t, "tutorial", c.Contract)
				assert.Equal(t, "string", c.Answer)
			},
		},
		{
			name: "tutorial contract from env",
			env:  env(envDeviceConnectionString, deviceCS, envContract, "tutorial"),
			want: func(t *testing.T, c Config) {
				assert.Equal(t, "tutorial", c.Contract)
				assert.Equal(t, "object", c.Answer)
			},
		},
		{
			name:    "unknown contract",
			flags:   flagValues{contract: "azure"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--contract", envContract, `"azure"`, "dmflow|tutorial"},
		},
		{
			name:    "unknown answer",
			env:     env(envDeviceConnectionString, deviceCS, envContract, "tutorial", envAnswer, "text"),
			wantErr: []string{"--answer", envAnswer, `"text"`, "object|string"},
		},
		{
			name:    "string answer without the tutorial contract",
			flags:   flagValues{answer: "string"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--answer", "needs --contract tutorial"},
		},
		{
			name:    "tutorial contract with realistic reboots",
			flags:   flagValues{contract: "tutorial", rebootStyle: "realistic"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--reboot-style", "does not go with --contract tutorial"},
		},
		{
			name:    "tutorial contract with a fail stage",
			flags:   flagValues{contract: "tutorial", failStage: "applying"},
			env:     env(envDeviceConnectionString, deviceCS),
			wantErr: []string{"--fail-stage", "no error state"},
		},
		{
			name:    "unknown log format",
			env:     env(envDeviceConnectionString, deviceCS, envLogFormat, "yaml"),
			wantErr: []string{"--log-format", envLogFormat, "text|json"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.flags.resolve(tc.env)
			if tc.wantErr != nil {
				require.Error(t, err)
				for _, s := range tc.wantErr {
					assert.Contains(t, err.Error(), s)
				}
				assert.NotContains(t, err.Error(), testKey)
				assert.NotContains(t, err.Error(), "s3cr3t")
				return
			}
			require.NoError(t, err)
			tc.want(t, c)
		})
	}
}

func TestCheckDeviceID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"dev-001", true},
		{"Dev.1_a:b@c$d'e(f)!g*h?i,j=k+l%m#n", true},
		{strings.Repeat("x", 128), true},
		{strings.Repeat("x", 129), false},
		{"dev 1", false},
		{"dev/1", false},
		{"dév", false},
	} {
		t.Run(tc.id, func(t *testing.T) {
			assert.Equal(t, tc.ok, deviceid.Check(tc.id) == nil)
		})
	}
}

// Bad input ends with one line naming the setting, exit status 2, and no
// key in the output.
func TestExecuteBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  func(string) string
		want string
	}{
		{"no device", nil, env(), envDeviceConnectionString},
		{"run without device", []string{"run"}, env(), envDeviceConnectionString},
		{"bad key", []string{"run"}, env(envDeviceConnectionString, "HostName=h;DeviceId=d;SharedAccessKey=s3cr3t!!"), "not base64"},
		{"unknown flag", []string{"--bogus"}, env(), "unknown flag: --bogus"},
		{"unknown command", []string{"fly"}, env(), `unknown command "fly"`},
		{"bad style", []string{"run", "--reboot-style", "x"}, env(envDeviceConnectionString, deviceCS), "--reboot-style"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := execute(tc.args, tc.env, &stderr)
			assert.Equal(t, 2, code)
			out := stderr.String()
			assert.Contains(t, out, tc.want)
			assert.Equal(t, 1, strings.Count(out, "\n"), "one line: %q", out)
			assert.True(t, strings.HasPrefix(out, "simdevice: "), out)
			assert.NotContains(t, out, "s3cr3t")
			assert.NotContains(t, out, testKey)
			assert.NotContains(t, out, "goroutine")
		})
	}
}

// FuzzResolve checks that no input panics and that accepted settings are
// usable.
func FuzzResolve(f *testing.F) {
	f.Add(deviceCS, "", "", "20s", "tutorial")
	f.Add("", "dev-1", "tls://127.0.0.1:8883", "1m", "realistic")
	f.Add("HostName=;DeviceId=;SharedAccessKey==", "dev 1", "tls://[::1", "-1s", "")
	f.Fuzz(func(t *testing.T, cs, deviceID, broker, duration, style string) {
		fv := flagValues{connectionString: cs, deviceID: deviceID, broker: broker, rebootDuration: duration, rebootStyle: style}
		c, err := fv.resolve(env(envHubConnectionString, serviceCS))
		if err != nil {
			return
		}
		if c.RebootDuration <= 0 {
			t.Errorf("accepted duration %s", c.RebootDuration)
		}
		if c.ConnectionString == "" && deviceid.Check(c.DeviceID) != nil {
			t.Errorf("accepted device ID %q", c.DeviceID)
		}
	})
}

func TestParseBrokers(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
		wantErr  []string
	}{
		{name: "none", in: ""},
		{name: "one", in: "tls://127.0.0.1:8883", want: []string{"tls://127.0.0.1:8883"}},
		{name: "list", in: "tls://127.0.0.1:8883,tls://127.0.0.2:8883", want: []string{"tls://127.0.0.1:8883", "tls://127.0.0.2:8883"}},
		{name: "spaces", in: " tls://127.0.0.1:8883 , mqtts://127.0.0.2:8883 ", want: []string{"tls://127.0.0.1:8883", "mqtts://127.0.0.2:8883"}},
		{name: "one without port", in: "tls://127.0.0.1", wantErr: []string{"--broker", envBroker, `"tls://127.0.0.1" has no host:port`, "e.g. tls://127.0.0.1:8883"}},
		{name: "blank", in: " ", wantErr: []string{"--broker", `" " is empty`}},
		{name: "trailing comma", in: "tls://127.0.0.1:8883,", wantErr: []string{"--broker", `URL 2 of 2 "" is empty`, "comma-separated"}},
		{name: "empty in between", in: "tls://127.0.0.1:8883,,tls://127.0.0.3:8883", wantErr: []string{"URL 2 of 3"}},
		{name: "not a URL in a list", in: "tls://127.0.0.1:8883,127.0.0.2:8883", wantErr: []string{`URL 2 of 2 "127.0.0.2:8883" is not a URL`, "e.g. tls://127.0.0.1:8883,tls://127.0.0.2:8883"}},
		{name: "unknown scheme in a list", in: "tls://127.0.0.1:8883,http://127.0.0.2:8883", wantErr: []string{`URL 2 of 2 "http://127.0.0.2:8883" has no known scheme`}},
		{name: "no port in a list", in: "tls://127.0.0.1:8883,tls://127.0.0.2", wantErr: []string{`URL 2 of 2 "tls://127.0.0.2" has no host:port`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseBrokers(tc.in)
			if tc.wantErr != nil {
				require.Error(t, err)
				for _, s := range tc.wantErr {
					assert.Contains(t, err.Error(), s)
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}
