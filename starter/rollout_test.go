package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/cli/clitest"
	"github.com/dmflow/dmflow/internal/testnet"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The start flags as they become the workflow's input, and every way to get them wrong.
func TestRolloutStartInput(t *testing.T) {
	dir := t.TempDir()
	idsFile := filepath.Join(dir, "ids.txt")
	require.NoError(t, os.WriteFile(idsFile, []byte("# beta ring\ndev-b\n\ndev-a  # first\r\n"), 0o644))
	badFile := filepath.Join(dir, "bad.txt")
	require.NoError(t, os.WriteFile(badFile, []byte("dev-a\ndev/b\n"), 0o644))

	fw := []string{"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0"}
	query := []string{"--query", "SELECT * FROM devices WHERE tags.ring = 'beta'"}
	args := func(parts ...[]string) []string {
		out := []string{"rollout", "start", "--name", "fw-2.0"}
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		want  workflows.RolloutInput // Name is always fw-2.0
		// wantErr: exit 2 with all of these in the message.
		wantErr []string
	}{
		{name: "query firmware", args: args(query, fw), want: workflows.RolloutInput{
			Operation: workflows.OperationFirmware, Query: "SELECT * FROM devices WHERE tags.ring = 'beta'",
			Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"}}},
		{name: "devices firmware with reboot and timeouts", args: args([]string{"--devices", "a, b,c", "--reboot", "--stage-timeout", "1m", "--deadline", "10m"}, fw),
			want: workflows.RolloutInput{Operation: workflows.OperationFirmware, Devices: []string{"a", "b", "c"},
				Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0", Reboot: true, StageTimeout: time.Minute, Deadline: 10 * time.Minute}}},
		{name: "devices repeated flag", args: args([]string{"--devices", "a", "--devices", "b", "--reboot"}),
			want: workflows.RolloutInput{Operation: workflows.OperationReboot, Devices: []string{"a", "b"}}},
		{name: "devices file reboot", args: args([]string{"--devices-file", idsFile, "--reboot", "--method-timeout", "30s", "--deadline", "2m"}),
			want: workflows.RolloutInput{Operation: workflows.OperationReboot, Devices: []string{"dev-b", "dev-a"},
				Reboot: &workflows.RolloutReboot{MethodTimeout: 30 * time.Second, Deadline: 2 * time.Minute}}},
		{name: "devices from stdin", args: args([]string{"--devices-file", "-", "--reboot"}), stdin: "x1\nx2\n",
			want: workflows.RolloutInput{Operation: workflows.OperationReboot, Devices: []string{"x1", "x2"}}},
		{name: "waves and limits", args: args(query, fw, []string{"--canary", "5", "--growth", "1.5", "--max-concurrent", "200", "--rate", "6000/min",
			"--max-failures", "5%", "--min-devices", "20", "--retry-failed"}),
			want: workflows.RolloutInput{Operation: workflows.OperationFirmware, Query: "SELECT * FROM devices WHERE tags.ring = 'beta'",
				Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"},
				Canary:   5, Growth: 1.5, MaxConcurrent: 200, Rate: 100, MaxFailures: "5%", MinDevices: 20, RetryFailed: true}},
		{name: "rate per second, count threshold", args: args(query, fw, []string{"--rate", "25", "--max-failures", "3"}),
			want: workflows.RolloutInput{Operation: workflows.OperationFirmware, Query: "SELECT * FROM devices WHERE tags.ring = 'beta'",
				Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"}, Rate: 25, MaxFailures: "3"}},

		{name: "no name", args: []string{"rollout", "start", "--reboot", "--devices", "a"}, wantErr: []string{"--name is required"}},
		{name: "bad name", args: []string{"rollout", "start", "--name", "fw/2", "--reboot", "--devices", "a"}, wantErr: []string{`name "fw/2"`}},
		{name: "no targets", args: args(fw), wantErr: []string{"no targets", "--query", "--devices-file"}},
		{name: "two target kinds", args: args(query, fw, []string{"--devices", "a"}), wantErr: []string{"--query and --devices", "one way only"}},
		{name: "three target kinds", args: args(query, fw, []string{"--devices", "a", "--devices-file", idsFile}), wantErr: []string{"--query and --devices and --devices-file"}},
		{name: "no operation", args: args(query), wantErr: []string{"no operation", "--firmware URI --version V", "--reboot alone"}},
		{name: "firmware without version", args: args(query, []string{"--firmware", "https://fw.example/v2.bin"}), wantErr: []string{"--firmware needs --version"}},
		{name: "version without firmware", args: args(query, []string{"--reboot", "--version", "2.0.0"}), wantErr: []string{"--version and --stage-timeout belong to a firmware update"}},
		{name: "method timeout on firmware", args: args(query, fw, []string{"--method-timeout", "30s"}), wantErr: []string{"--method-timeout belongs to a reboot rollout"}},
		{name: "bad rate", args: args(query, fw, []string{"--rate", "fast"}), wantErr: []string{`--rate "fast"`, "6000/min"}},
		{name: "bad rate unit", args: args(query, fw, []string{"--rate", "5/day"}), wantErr: []string{`--rate "5/day"`}},
		{name: "negative rate", args: args(query, fw, []string{"--rate", "-1/s"}), wantErr: []string{`--rate "-1/s"`}},
		{name: "bad threshold", args: args(query, fw, []string{"--max-failures", "5 devices"}), wantErr: []string{"failure threshold"}},
		{name: "threshold over 100%", args: args(query, fw, []string{"--max-failures", "150%"}), wantErr: []string{"0% to 100%"}},
		{name: "growth below 1", args: args(query, fw, []string{"--growth", "0.5"}), wantErr: []string{"growth 0.5"}},
		{name: "too concurrent", args: args(query, fw, []string{"--max-concurrent", "5000"}), wantErr: []string{"max concurrent 5000"}},
		{name: "not a device query", args: args([]string{"--query", "SELECT deviceId FROM devices"}, fw), wantErr: []string{"must select whole twins"}},
		{name: "SAS URI", args: args(query, []string{"--firmware", "https://a.blob.core.windows.net/fw.bin?sig=SECRET", "--version", "2"}), wantErr: []string{"without credentials"}},
		{name: "bad device", args: args([]string{"--devices", "a,b/c", "--reboot"}), wantErr: []string{`--devices: device ID "b/c" holds '/': use 1 to 128`}},
		{name: "repeated device", args: args([]string{"--devices", "a,b,a", "--reboot"}), wantErr: []string{"device a is listed twice"}},
		{name: "only commas", args: args([]string{"--devices", ",", "--reboot"}), wantErr: []string{"--devices: no device IDs"}},
		{name: "bad devices file line", args: args([]string{"--devices-file", badFile, "--reboot"}), wantErr: []string{"bad.txt line 2", `"dev/b"`}},
		{name: "missing devices file", args: args([]string{"--devices-file", filepath.Join(dir, "nope.txt"), "--reboot"}), wantErr: []string{"nope.txt: no such file"}},
		{name: "empty stdin", args: args([]string{"--devices-file", "-", "--reboot"}), stdin: "# nothing\n", wantErr: []string{"--devices-file - holds no device IDs"}},
		{name: "problems together", args: []string{"rollout", "start", "--rate", "x"}, wantErr: []string{"--name is required", "no targets", "no operation", `--rate "x"`}},
		{name: "bad duration", args: args(query, fw, []string{"--deadline", "soon"}), wantErr: []string{"--deadline"}},
		{name: "positional argument", args: args(query, fw, []string{"extra"}), wantErr: []string{`starter rollout start takes no arguments, got "extra"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &fakeRollouts{}
			code, stdout, stderr := runRolloutCLI(t, api, tc.stdin, tc.args...)
			if tc.wantErr != nil {
				clitest.CheckUsage(t, "starter", code, stderr, tc.wantErr...)
				assert.Empty(t, api.started, "started despite a usage error")
				assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one-line error: %s", stderr)
				return
			}
			require.Equal(t, 0, code, "stderr: %s", stderr)
			require.Len(t, api.started, 1)
			want := tc.want
			want.Name = "fw-2.0"
			assert.Equal(t, want, api.started[0])
			assert.Equal(t, []string{workflows.TaskQueue}, api.startQueues)
			assert.Contains(t, stdout, "started rollout fw-2.0: ")
			assert.Contains(t, stdout, "starter rollout watch fw-2.0")
		})
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
		bad  bool
	}{
		{"", 0, false}, {"0", 0, false}, {"100", 100, false}, {"100/s", 100, false}, {" 100 / sec ", 100, false},
		{"6000/min", 100, false}, {"6000/MIN", 100, false}, {"30/m", 0.5, false}, {"3600/h", 1, false}, {"2.5/s", 2.5, false},
		{"fast", 0, true}, {"100/day", 0, true}, {"-5", 0, true}, {"NaN", 0, true}, {"Inf/s", 0, true}, {"/s", 0, true}, {"1/s/s", 0, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseRate(tc.in)
			if tc.bad {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.InDelta(t, tc.want, got, 1e-9)
		})
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// Usage errors of the real command line fail before Temporal is dialled.
func TestRolloutUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"unknown subcommand", []string{"rollout", "bogus"}, []string{`unknown rollout command "bogus"`, "start, status"}},
		{"status without name", []string{"rollout", "status"}, []string{"name the rollout: starter rollout status NAME", "temporal workflow list"}},
		{"watch with two names", []string{"rollout", "watch", "a", "b"}, []string{"starter rollout watch NAME"}},
		{"pause without name", []string{"rollout", "pause"}, []string{"starter rollout pause NAME"}},
		{"report bad format", []string{"rollout", "report", "fw", "--format", "xml"}, []string{`--format "xml"`, "table, json or csv"}},
		{"report format contradicts output", []string{"rollout", "report", "fw", "--format", "csv", "-o", "json"}, []string{"--format csv contradicts --output json"}},
		{"start bad output", []string{"rollout", "start", "-o", "yaml"}, []string{`--output "yaml"`}},
		{"start no name", []string{"rollout", "start", "--reboot", "--devices", "a"}, []string{"--name is required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			env := map[string]string{"TEMPORAL_CONFIG_FILE": "/nonexistent.toml"}
			code := execute(tc.args, &stdout, &stderr, func(k string) string { return env[k] })
			clitest.CheckUsage(t, "starter", code, stderr.String(), tc.want...)
		})
	}
}

// An unreachable Temporal fails with the Dial error, which names the fix.
func TestRolloutUnreachableTemporal(t *testing.T) {
	addr := testnet.ClosedAddr(t)
	for _, args := range [][]string{
		{"rollout", "status", "fw-2.0"},
		{"rollout", "start", "--name", "fw-2.0", "--reboot", "--devices", "a"},
	} {
		var stdout, stderr bytes.Buffer
		code := execute(append(args, "--temporal-address", addr), &stdout, &stderr, func(string) string { return "" })
		assert.Equal(t, cli.ExitFailed, code)
		assert.Contains(t, stderr.String(), "cannot reach Temporal at "+addr)
	}
}

func TestRolloutNotFound(t *testing.T) {
	for _, args := range [][]string{
		{"rollout", "status", "nope"},
		{"rollout", "watch", "nope"},
		{"rollout", "report", "nope"},
		{"rollout", "pause", "nope"},
	} {
		t.Run(args[1], func(t *testing.T) {
			code, _, stderr := runRolloutCLI(t, &fakeRollouts{missing: true}, "", args...)
			assert.Equal(t, cli.ExitFailed, code)
			assert.Contains(t, stderr, `rollout "nope" not found (no workflow rollout/nope in namespace default)`)
			assert.Contains(t, stderr, `temporal workflow list --query "WorkflowType = 'Rollout'"`)
		})
	}
}

func TestRolloutStartAttach(t *testing.T) {
	api := &fakeRollouts{existing: "Running"}
	code, stdout, _ := runRolloutCLI(t, api, "", "rollout", "start", "--name", "fw-2.0", "--reboot", "--devices", "a,b")
	assert.Equal(t, 0, code)
	assert.Equal(t, `already running: rollout fw-2.0: reboot on 2 devices
  workflow: rollout/fw-2.0
  ui:       http://ui.test/rollout%2Ffw-2.0
  note:     a rollout by this name was started before; it keeps its own settings, these flags were not applied
  follow:   starter rollout watch fw-2.0
`, stdout)

	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{existing: "Completed"}, "", "rollout", "start", "--name", "fw-2.0", "--reboot", "--devices", "a,b")
	assert.Equal(t, 0, code)
	assert.Equal(t, `already ran (completed): rollout fw-2.0: reboot on 2 devices
  workflow: rollout/fw-2.0
  ui:       http://ui.test/rollout%2Ffw-2.0
  note:     a rollout by this name already ran, and a name runs once: choose a new --name to roll out again
  status:   starter rollout status fw-2.0
`, stdout)

	// A failed run is found only once it rolled devices back (rolloutAPI.Start).
	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{existing: "Failed"}, "", "rollout", "start", "--name", "fw-2.0", "--reboot", "--devices", "a,b")
	assert.Equal(t, 0, code)
	assert.Equal(t, `already ran (failed): rollout fw-2.0: reboot on 2 devices
  workflow: rollout/fw-2.0
  ui:       http://ui.test/rollout%2Ffw-2.0
  note:     a rollout by this name aborted and rolled devices back, which remember its update IDs: choose a new --name to roll out again
  status:   starter rollout status fw-2.0
`, stdout)

	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{}, "", "rollout", "start", "--name", "fw-2.0", "--reboot", "--devices", "a", "-o", "json")
	assert.Equal(t, 0, code)
	assert.JSONEq(t, `{"workflowId":"rollout/fw-2.0","runId":"run-1","url":"http://ui.test/rollout%2Ffw-2.0"}`, stdout)
}

// start --wait follows like watch and exits by the outcome.
func TestRolloutStartWait(t *testing.T) {
	api := &fakeRollouts{progress: []workflows.RolloutProgress{
		prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) { p.Wave, p.Pending, p.Running = 1, 119, 1 }),
		prog(workflows.RolloutCompleted, func(p *workflows.RolloutProgress) {
			p.Wave, p.Succeeded, p.Failed, p.Active, p.Finished = 5, 119, 1, 2*time.Minute, t0.Add(2*time.Minute)
		}),
	}, rows: []workflows.DeviceRow{{DeviceID: "d1", Wave: 4, Result: workflows.DeviceFailed, Error: "offline", ErrorType: "DeviceOffline"}}}
	code, stdout, stderr := runRolloutCLI(t, api, "", "rollout", "start", "--name", "fw-2.0", "--reboot", "--devices", "a", "--wait", "--poll-interval", "1ms")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stdout, "started rollout fw-2.0: reboot on 1 device\n")
	assert.NotContains(t, stdout, "follow:")
	assert.Contains(t, stdout, "rollout fw-2.0 completed in 2m00s")
	assert.Contains(t, stdout, "    d1  wave 5  DeviceOffline: offline\n")
	assert.Contains(t, stderr, "starter: rollout fw-2.0 completed with 1 failed device (within --max-failures 10%): see starter rollout report fw-2.0")
}

func TestRolloutStatus(t *testing.T) {
	running := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Wave, p.WaveSize, p.WaveDone, p.WaveFailed = 2, 8, 6, 1
		p.Succeeded, p.Skipped, p.Failed, p.Running, p.Pending = 40, 3, 2, 10, 65
		p.Active, p.Updated, p.HubCalls, p.Rate = 3*time.Minute+45*time.Second, t0.Add(4*time.Minute), 812, 100
	})
	code, stdout, _ := runRolloutCLI(t, &fakeRollouts{progress: []workflows.RolloutProgress{running}}, "", "rollout", "status", "fw-2.0")
	assert.Equal(t, 0, code)
	// 45 finished in 3m45s: 12 devices/min; 75 left: 6m15s.
	assert.Equal(t, `rollout fw-2.0: running (firmware 2.0.0)
  devices:   45/120 done (37%): 40 succeeded, 3 skipped, 2 failed, 10 running, 65 pending
  wave:      2 of 5, 6 of its 8 devices done, 1 failed
  speed:     12.0 devices/min, ETA 6m15s
  limits:    max failures 10%, max concurrent 50, rate 100 hub calls/s
  started:   2026-05-01T12:00:00Z, active 3m45s, 812 hub calls, 1 workflow run
  ui:        http://ui.test/rollout%2Ffw-2.0
`, stdout)

	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{progress: []workflows.RolloutProgress{running}}, "", "rollout", "status", "fw-2.0", "-o", "json")
	assert.Equal(t, 0, code)
	var got workflows.RolloutProgress
	require.NoError(t, jsonUnmarshal(stdout, &got))
	assert.Equal(t, running, got)

	// A finished rollout's status exits 0 too, whatever its state.
	aborted := prog(workflows.RolloutAborted, func(p *workflows.RolloutProgress) {
		p.Reason, p.Failed, p.NotStarted, p.Succeeded = "6 of 10 devices failed in wave 2", 6, 110, 4
		p.Active, p.Finished, p.Runs = time.Minute, t0.Add(90*time.Second), 2
	})
	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{progress: []workflows.RolloutProgress{aborted}}, "", "rollout", "status", "fw-2.0")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "rollout fw-2.0: aborted (firmware 2.0.0)\n  reason:    6 of 10 devices failed in wave 2\n")
	assert.Contains(t, stdout, "  speed:     10.0 devices/min\n")
	assert.Contains(t, stdout, "  finished:  2026-05-01T12:01:30Z, after 1m30s\n")
}

// Without a worker the query goes unanswered; a finished rollout then answers from its result.
func TestRolloutStatusFromOutcome(t *testing.T) {
	done := prog(workflows.RolloutCompleted, func(p *workflows.RolloutProgress) { p.Succeeded = 120 })
	api := &fakeRollouts{progressErr: map[int]error{0: errors.New("context deadline exceeded")}, outcome: make(chan outcomeResult, 1)}
	api.outcome <- outcomeResult{p: done}
	code, stdout, _ := runRolloutCLI(t, api, "", "rollout", "status", "fw-2.0")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "rollout fw-2.0: completed")

	// Still running: Outcome would wait (here: its wait ends at once).
	api = &fakeRollouts{progressErr: map[int]error{0: errors.New("context deadline exceeded")}, outcomeErr: context.DeadlineExceeded}
	code, _, stderr := runRolloutCLI(t, api, "", "rollout", "status", "fw-2.0")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, "query the progress of rollout fw-2.0: context deadline exceeded: is a dmflow worker running?")
}

func TestRolloutControl(t *testing.T) {
	paused := prog(workflows.RolloutPaused, func(p *workflows.RolloutProgress) {
		p.Reason, p.Wave, p.Succeeded, p.Running, p.Pending, p.Active = "maintenance window", 2, 10, 5, 105, time.Minute
	})
	api := &fakeRollouts{controlResp: paused}
	code, stdout, _ := runRolloutCLI(t, api, "", "rollout", "pause", "fw-2.0", "--reason", "maintenance window")
	assert.Equal(t, 0, code)
	assert.Equal(t, []string{"pause:maintenance window"}, api.controls)
	assert.Contains(t, stdout, "rollout fw-2.0: paused (firmware 2.0.0)\n  reason:    maintenance window\n")
	assert.Contains(t, stdout, "  speed:     10.0 devices/min, paused\n")
	assert.Contains(t, stdout, "  resume:    starter rollout resume fw-2.0\n")

	api = &fakeRollouts{controlErr: refusedError{reason: "the rollout is not paused: it is running"}}
	code, stdout, stderr := runRolloutCLI(t, api, "", "rollout", "resume", "fw-2.0")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Empty(t, stdout)
	assert.Equal(t, "starter: cannot resume rollout fw-2.0: the rollout is not paused: it is running\n", stderr)

	cancelling := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) { p.Running = 3 })
	api = &fakeRollouts{controlResp: cancelling}
	code, stdout, _ = runRolloutCLI(t, api, "", "rollout", "cancel", "fw-2.0", "-o", "json")
	assert.Equal(t, 0, code)
	assert.Equal(t, []string{"cancel:"}, api.controls)
	var got workflows.RolloutProgress
	require.NoError(t, jsonUnmarshal(stdout, &got))
	assert.Equal(t, cancelling, got)
}
