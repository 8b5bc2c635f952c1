package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/sim/fleet"
	"github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/internal/testlog"
)

func fleetArgs(kv ...string) fleetFlags {
	ff := fleetFlags{}
	for _, d := range fleetFlagDefs {
		ff[d.name] = new(string)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		*ff[kv[i]] = kv[i+1]
	}
	return ff
}

func TestResolveFleet(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flags   flagValues
		ff      fleetFlags
		env     func(string) string
		want    func(t *testing.T, c FleetConfig)
		wantErr []string
	}{
		{
			name: "defaults",
			ff:   fleetArgs("count", "100"),
			env:  env(envHubConnectionString, serviceCS),
			want: func(t *testing.T, c FleetConfig) {
				assert.Equal(t, 100, c.Count)
				assert.Equal(t, "dev-", c.Prefix)
				assert.EqualValues(t, 1, c.Seed)
				assert.Equal(t, 10*time.Second, c.SummaryInterval)
				assert.Equal(t, fleet.DefaultConnectConcurrency, c.ConnectConcurrency)
				assert.Equal(t, fleet.Faults{SlowFactor: 3, FlapInterval: 30 * time.Second}, c.Faults)
				assert.Equal(t, 15*time.Second, c.StageDuration)
				assert.Equal(t, 20*time.Second, c.RebootDuration)
				assert.Equal(t, "1.0.0", c.FirmwareVersion)
				assert.Equal(t, "WARN", c.DeviceLogLevel.String())
			},
		},
		{
			name:  "flags",
			flags: flagValues{stageDuration: "200ms", rebootDuration: "1s", rebootStyle: "realistic", firmwareVersion: "0.9"},
			ff: fleetArgs("count", "10000", "prefix", "sim-", "seed", "-3", "summary-interval", "0", "connect-concurrency", "8",
				"offline", "0.1", "flapping", "0.05", "flap-interval", "5s", "slow", "0.2", "slow-factor", "2.5",
				"failing", "0.1", "unresponsive", "0.01", "device-log-level", "info"),
			env: env(envHubConnectionString, serviceCS, "DMFLOW_FLEET_COUNT", "7"),
			want: func(t *testing.T, c FleetConfig) {
				assert.Equal(t, 10000, c.Count)
				assert.Equal(t, "sim-", c.Prefix)
				assert.EqualValues(t, -3, c.Seed)
				assert.Zero(t, c.SummaryInterval)
				assert.Equal(t, 8, c.ConnectConcurrency)
				assert.Equal(t, fleet.Faults{Offline: 0.1, Flapping: 0.05, Slow: 0.2, Failing: 0.1, Unresponsive: 0.01,
					SlowFactor: 2.5, FlapInterval: 5 * time.Second}, c.Faults)
				assert.Equal(t, 200*time.Millisecond, c.StageDuration)
				assert.Equal(t, "realistic", c.RebootStyle)
				assert.Equal(t, "0.9", c.FirmwareVersion)
				assert.Equal(t, "INFO", c.DeviceLogLevel.String())
			},
		},
		{
			name: "env fallbacks",
			ff:   fleetArgs(),
			env: env(envHubConnectionString, serviceCS, "DMFLOW_FLEET_COUNT", "50", "DMFLOW_FLEET_OFFLINE", "0.5",
				"DMFLOW_FLEET_FLAP_INTERVAL", "1m", envStageDuration, "1s"),
			want: func(t *testing.T, c FleetConfig) {
				assert.Equal(t, 50, c.Count)
				assert.Equal(t, 0.5, c.Faults.Offline)
				assert.Equal(t, time.Minute, c.Faults.FlapInterval)
				assert.Equal(t, time.Second, c.StageDuration)
			},
		},
		{name: "no count", ff: fleetArgs(), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--count", "DMFLOW_FLEET_COUNT", "is not set"}},
		{name: "zero count", ff: fleetArgs("count", "0"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--count", `"0"`}},
		{name: "bad fraction", ff: fleetArgs("count", "5", "failing", "5%"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--failing", "DMFLOW_FLEET_FAILING", "fraction"}},
		{name: "fraction over 1", ff: fleetArgs("count", "5", "slow", "1.5"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--slow", "fraction"}},
		{name: "fractions add up over 1", ff: fleetArgs("count", "5", "slow", "0.6", "offline", "0.6"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"add up to 1.2"}},
		{
			name: "tutorial share as a percentage",
			ff:   fleetArgs("count", "10", "tutorial", "50%"),
			env:  env(envHubConnectionString, serviceCS, "DMFLOW_FLEET_TUTORIAL", "0.1"),
			want: func(t *testing.T, c FleetConfig) { assert.Equal(t, 0.5, c.Faults.Tutorial) },
		},
		{
			name: "tutorial share from env",
			ff:   fleetArgs("count", "10"),
			env:  env(envHubConnectionString, serviceCS, "DMFLOW_FLEET_TUTORIAL", "0.25"),
			want: func(t *testing.T, c FleetConfig) { assert.Equal(t, 0.25, c.Faults.Tutorial) },
		},
		{name: "bad tutorial share", ff: fleetArgs("count", "5", "tutorial", "half"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--tutorial", "DMFLOW_FLEET_TUTORIAL", `"half"`, "0.5", "50%"}},
		{name: "tutorial share over 1", ff: fleetArgs("count", "5", "tutorial", "150%"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--tutorial", "100%"}},
		{name: "tutorial and failing over 1", ff: fleetArgs("count", "5", "tutorial", "0.8", "failing", "0.3"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"tutorial share 0.8", "failing fraction 0.3"}},
		{name: "contract flag", flags: flagValues{contract: "tutorial"}, ff: fleetArgs("count", "5"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--contract", "--tutorial"}},
		{name: "answer flag", flags: flagValues{answer: "string"}, ff: fleetArgs("count", "5"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--answer", "--tutorial"}},
		{
			name: "tags",
			ff:   fleetArgs("count", "5", "tags", "ring=beta:10%,ring=prod"),
			env:  env(envHubConnectionString, serviceCS, "DMFLOW_FLEET_TAGS", "x=y"),
			want: func(t *testing.T, c FleetConfig) {
				assert.Equal(t, []fleet.TagRule{{Path: []string{"ring"}, Value: "beta", Percent: 10}, {Path: []string{"ring"}, Value: "prod", All: true}}, c.Tags)
			},
		},
		{
			name: "tags from env",
			ff:   fleetArgs("count", "5"),
			env:  env(envHubConnectionString, serviceCS, "DMFLOW_FLEET_TAGS", "site.city=Oslo"),
			want: func(t *testing.T, c FleetConfig) {
				assert.Equal(t, []fleet.TagRule{{Path: []string{"site", "city"}, Value: "Oslo", All: true}}, c.Tags)
			},
		},
		{name: "bad tags", ff: fleetArgs("count", "5", "tags", "ring:10%"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--tags", "DMFLOW_FLEET_TAGS", "key=value[:N%]"}},
		{
			name:  "broker list",
			flags: flagValues{broker: "tls://127.0.0.1:18883, tls://127.0.0.2:18883"},
			ff:    fleetArgs("count", "5"),
			env:   env(envHubConnectionString, serviceCS, envBroker, "tls://127.0.0.9:8883"),
			want: func(t *testing.T, c FleetConfig) {
				assert.Equal(t, []string{"tls://127.0.0.1:18883", "tls://127.0.0.2:18883"}, c.Brokers)
			},
		},
		{
			name: "broker list from env",
			ff:   fleetArgs("count", "5"),
			env:  env(envHubConnectionString, serviceCS, envBroker, "tls://127.0.0.1:8883,tls://127.0.0.2:8883,tls://127.0.0.3:8883"),
			want: func(t *testing.T, c FleetConfig) { assert.Len(t, c.Brokers, 3) },
		},
		{
			name: "one broker",
			ff:   fleetArgs("count", "5"),
			env:  env(envHubConnectionString, serviceCS, envBroker, "tls://127.0.0.1:8883"),
			want: func(t *testing.T, c FleetConfig) { assert.Equal(t, []string{"tls://127.0.0.1:8883"}, c.Brokers) },
		},
		{
			name: "no broker",
			ff:   fleetArgs("count", "5"),
			env:  env(envHubConnectionString, serviceCS),
			want: func(t *testing.T, c FleetConfig) { assert.Empty(t, c.Brokers) },
		},
		{
			name:    "bad broker in a list",
			flags:   flagValues{broker: "tls://127.0.0.1:8883,127.0.0.2:8883"},
			ff:      fleetArgs("count", "5"),
			env:     env(envHubConnectionString, serviceCS),
			wantErr: []string{"--broker", envBroker, `URL 2 of 2 "127.0.0.2:8883" is not a URL`, "tls://127.0.0.1:8883,tls://127.0.0.2:8883"},
		},
		{name: "bad seed", ff: fleetArgs("count", "5", "seed", "x"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--seed", "integer"}},
		{name: "bad slow factor", ff: fleetArgs("count", "5", "slow-factor", "0.5"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--slow-factor"}},
		{name: "bad flap interval", ff: fleetArgs("count", "5", "flap-interval", "0s"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--flap-interval"}},
		{name: "bad log level", ff: fleetArgs("count", "5", "device-log-level", "loud"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--device-log-level"}},
		{name: "bad prefix", ff: fleetArgs("count", "5", "prefix", "a/b"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"prefix", `'/'`}},
		{name: "no service", ff: fleetArgs("count", "5"), env: env(envDeviceConnectionString, deviceCS), wantErr: []string{envHubConnectionString, "is not set", "SharedAccessKeyName="}},
		{name: "device connection string", ff: fleetArgs("count", "5"), env: env(envHubConnectionString, deviceCS), wantErr: []string{envHubConnectionString, "SharedAccessKeyName missing"}},
		{name: "device ID", flags: flagValues{deviceID: "dev-1"}, ff: fleetArgs("count", "5"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--device-id", "--prefix"}},
		{name: "fail stage", flags: flagValues{failStage: "applying"}, ff: fleetArgs("count", "5"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--fail-stage", "--failing"}},
		{name: "bad stage duration", flags: flagValues{stageDuration: "-1s"}, ff: fleetArgs("count", "5"), env: env(envHubConnectionString, serviceCS), wantErr: []string{"--stage-duration", "not positive"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := resolveFleet(tc.flags, tc.ff, tc.env)
			if tc.wantErr != nil {
				require.Error(t, err)
				for _, s := range tc.wantErr {
					assert.Contains(t, err.Error(), s)
				}
				assert.NotContains(t, err.Error(), testKey)
				return
			}
			require.NoError(t, err)
			tc.want(t, c)
		})
	}
}

func TestExecuteFleetBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no count", []string{"fleet"}, "--count"},
		{"unknown flag", []string{"fleet", "--count", "3", "--bogus"}, "unknown flag: --bogus"},
		{"argument", []string{"fleet", "--count", "3", "extra"}, `unknown command "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := execute(tc.args, env(envHubConnectionString, serviceCS), &stderr)
			assert.Equal(t, 2, code)
			out := stderr.String()
			assert.Contains(t, out, tc.want)
			assert.Equal(t, 1, strings.Count(out, "\n"), "one line: %q", out)
			assert.NotContains(t, out, testKey)
		})
	}
}

// simdevice fleet registers and connects its devices, logs its profiles
// and summaries, and stops cleanly.
func TestRunFleet(t *testing.T) {
	h, err := hub.New(hub.Options{StateDir: t.TempDir(), HostName: "localhost", MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	require.NoError(t, h.Start(context.Background()))
	t.Cleanup(func() { _ = h.Close() })

	cfg, err := resolveFleet(flagValues{broker: "tls://" + h.MQTTAddr(), stageDuration: "100ms", logFormat: "json"},
		fleetArgs("count", "12", "offline", "0.25", "summary-interval", "100ms", "seed", "3", "tutorial", "50%"),
		env(envHubConnectionString, h.ServiceConnectionString(), envHubCAFile, h.CACertFile()))
	require.NoError(t, err)

	var logs testlog.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runFleet(ctx, cfg, &logs) }()
	t.Cleanup(cancel)
	// runFleet returning early ends the wait; its error is reported below.
	// (Eventually runs one check at a time and returns after the last, so
	// reading returned and early afterwards is safe.)
	var returned bool
	var early error
	summary := func() bool {
		select {
		case early = <-done:
			returned = true
			return true
		default:
		}
		return strings.Contains(logs.String(), `"msg":"fleet summary","devices":12,"running":9,"connected":9`)
	}
	if !assert.Eventually(t, summary, 30*time.Second, 50*time.Millisecond) {
		t.Fatalf("no summary with 9 connected devices within 30s:\n%s", logs.String())
	}
	if returned {
		t.Fatalf("runFleet returned: %v\n%s", early, logs.String())
	}
	assert.Equal(t, 9, h.Stats().ConnectedDevices)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("runFleet did not stop")
	}
	out := logs.String()
	assert.Contains(t, out, `"msg":"fleet profile","profile":"offline","count":3`)
	assert.Contains(t, out, `"msg":"fleet contract","contract":"dmflow","count":6`)
	assert.Contains(t, out, `"msg":"fleet contract","contract":"tutorial","answer":"object","count":3`)
	assert.Contains(t, out, `"msg":"fleet contract","contract":"tutorial","answer":"string","count":3`)
	assert.Contains(t, out, `"tutorial":0.5`)
	assert.Contains(t, out, `"msg":"fleet registered","devices":12,"created":12`)
	assert.Contains(t, out, `"msg":"simdevice fleet stopped"`)
	_, key, _ := strings.Cut(h.ServiceConnectionString(), "SharedAccessKey=")
	assert.NotContains(t, out, key)
}

// FuzzResolveFleet checks that no flag values panic and that accepted ones
// make a fleet.
func FuzzResolveFleet(f *testing.F) {
	f.Add("100", "dev-", "1", "0.1", "0.2", "3", "30s", "15s")
	f.Add("0", "", "x", "NaN", "-1", "Inf", "-5s", "1ns")
	f.Add("1000000", "a/b", "9223372036854775807", "1", "0", "1e308", "1h", "0")
	f.Fuzz(func(t *testing.T, count, prefix, seed, offline, failing, slowFactor, flapInterval, stage string) {
		ff := fleetArgs("count", count, "prefix", prefix, "seed", seed, "offline", offline, "failing", failing,
			"slow-factor", slowFactor, "flap-interval", flapInterval)
		c, err := resolveFleet(flagValues{stageDuration: stage}, ff, env(envHubConnectionString, serviceCS))
		if err != nil {
			return
		}
		if c.Count < 1 || c.Count > fleet.MaxCount || c.Faults.Offline+c.Faults.Failing > 1+1e-9 || c.StageDuration <= 0 {
			t.Errorf("accepted %+v", c)
		}
	})
}
