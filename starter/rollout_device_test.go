package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeDevices is a rollout with per-device control: its report rows, in shards of two, and the
// updates it was sent, answered by answer (nil: every device done).
type fakeDevices struct {
	*fakeRollouts
	sent   []workflows.DeviceControlRequest
	names  []string
	answer func(update string, req workflows.DeviceControlRequest) (workflows.DeviceControlResult, error)
}

func (f *fakeDevices) FindDevices(_ context.Context, name string, ids []string) (map[string]foundDevice, error) {
	if err := f.notFound(name); err != nil {
		return nil, err
	}
	out := map[string]foundDevice{}
	for i, r := range f.rows {
		for _, id := range ids {
			if r.DeviceID == id {
				out[id] = foundDevice{Shard: i / 2, Row: r}
			}
		}
	}
	return out, nil
}

func (f *fakeDevices) ControlDevices(_ context.Context, name, update string, req workflows.DeviceControlRequest) (workflows.DeviceControlResult, error) {
	f.sent, f.names = append(f.sent, req), append(f.names, update)
	if f.answer != nil {
		return f.answer(update, req)
	}
	res := workflows.DeviceControlResult{Progress: f.progress[len(f.progress)-1]}
	for _, d := range req.Devices {
		o := workflows.DeviceControlOutcome{Device: d.ID, Shard: d.Shard, Result: workflows.ControlSkipped}
		if update == workflows.UpdateRetry {
			o.Result, o.Attempt = workflows.ControlQueued, 2
		}
		res.Devices = append(res.Devices, o)
	}
	return res, nil
}

func deviceFake() *fakeDevices {
	return &fakeDevices{fakeRollouts: &fakeRollouts{
		progress: []workflows.RolloutProgress{prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) { p.Total = 6 })},
		rows: []workflows.DeviceRow{
			{DeviceID: "d-1", Result: workflows.DeviceUpdated, Attempts: 1},
			{DeviceID: "d-2", Result: workflows.DeviceFailed, Attempts: 1, Error: "flash write failed"},
			{DeviceID: "d-3", Result: workflows.DevicePending},
			{DeviceID: "d-4", Result: workflows.DevicePending},
			{DeviceID: "d-5", Result: workflows.DeviceRunning, Attempts: 1},
			{DeviceID: "d-6", Result: workflows.DeviceSkipped, Wave: -1, Note: "already on 2.0.0 when the targets were resolved"},
		},
	}}
}

func TestRolloutSkip(t *testing.T) {
	api := deviceFake()
	code, stdout, stderr := runRolloutCLI(t, api, "", "rollout", "skip", "fw-2.0", "d-3", "d-4", "--note", "bad batch")
	require.Equal(t, 0, code, stderr)
	require.Len(t, api.sent, 1)
	assert.Equal(t, workflows.UpdateSkip, api.names[0])
	assert.Equal(t, workflows.DeviceControlRequest{Note: "bad batch",
		Devices: []workflows.DeviceRef{{ID: "d-3", Shard: 1}, {ID: "d-4", Shard: 1}}}, api.sent[0], "each device with its shard")
	assert.Contains(t, stdout, "rollout fw-2.0: 2 devices skipped\n  d-3  skipped\n  d-4  skipped\n")
	assert.Contains(t, stdout, "rollout fw-2.0: running (firmware 2.0.0)")

	code, stdout, _ = runRolloutCLI(t, api, "", "rollout", "skip", "fw-2.0", "d-3", "-o", "json")
	require.Equal(t, 0, code)
	var res workflows.DeviceControlResult
	require.NoError(t, json.Unmarshal([]byte(stdout), &res))
	assert.Equal(t, workflows.ControlSkipped, res.Devices[0].Result)
}

// Devices whose state does not allow the action are refused before anything is sent, each naming
// its state, all in one line; exit 1.
func TestRolloutSkipAndRetryRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"skip running and finished", []string{"skip", "fw-2.0", "d-5", "d-1", "d-3"}, []string{
			"cannot skip on rollout fw-2.0",
			"device d-5 is running: skip applies to devices not started; cancel the rollout or wait",
			"device d-1 is updated: skip applies to devices not started"}},
		{"skip unknown", []string{"skip", "fw-2.0", "x-9"}, []string{"device x-9 is not a target of rollout fw-2.0"}},
		{"skip failed", []string{"skip", "fw-2.0", "d-2"}, []string{"device d-2 has failed: skip applies to devices not started"}},
		{"retry updated, running, pending and skipped", []string{"retry", "fw-2.0", "d-1", "d-5", "d-3", "d-6"}, []string{
			"device d-1 is updated: retry applies to devices that failed",
			"device d-5 is running: retry applies to devices that failed; wait for it to finish",
			"device d-3 has not started yet: retry applies to devices that failed",
			"device d-6 is skipped (already on 2.0.0 when the targets were resolved): retry applies to devices that failed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := deviceFake()
			code, _, stderr := runRolloutCLI(t, api, "", append([]string{"rollout"}, tc.args...)...)
			assert.Equal(t, cli.ExitFailed, code)
			for _, w := range tc.want {
				assert.Contains(t, stderr, w)
			}
			assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one line: %q", stderr)
			assert.Empty(t, api.sent, "nothing sent")
		})
	}
}

func TestRolloutRetry(t *testing.T) {
	api := deviceFake()
	code, stdout, stderr := runRolloutCLI(t, api, "", "rollout", "retry", "fw-2.0", "d-2")
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, []workflows.DeviceRef{{ID: "d-2", Shard: 0}}, api.sent[0].Devices)
	assert.Contains(t, stdout, "rollout fw-2.0: 1 device queued to run again\n  d-2  queued as attempt 2 (update ID rollout:fw-2.0:2)\n")

	// The shard decides: a device that started meanwhile is refused there, and said so.
	api.answer = func(_ string, req workflows.DeviceControlRequest) (workflows.DeviceControlResult, error) {
		return workflows.DeviceControlResult{Progress: api.progress[0], Devices: []workflows.DeviceControlOutcome{{
			Device: "d-2", Result: workflows.ControlRefused, State: workflows.DeviceRunning,
			Reason: workflows.DeviceControlRefusal(workflows.UpdateRetry, "fw-2.0", "d-2", workflows.DeviceRunning, "")}}}, nil
	}
	code, stdout, stderr = runRolloutCLI(t, api, "", "rollout", "retry", "fw-2.0", "d-2")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stdout, "  d-2  refused: device d-2 is running")
	assert.Contains(t, stderr, "1 of 1 device not done: device d-2 is running")

	// A refusal of the rollout's validator.
	api.answer = func(string, workflows.DeviceControlRequest) (workflows.DeviceControlResult, error) {
		return workflows.DeviceControlResult{}, refusedError{reason: "rollout fw-2.0 is being cancelled: there is nothing to retry"}
	}
	code, _, stderr = runRolloutCLI(t, api, "", "rollout", "retry", "fw-2.0", "d-2")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, "cannot retry on rollout fw-2.0: rollout fw-2.0 is being cancelled")
}

// A rollout that ended takes no retry: the refusal says what to do instead.
func TestRolloutRetryAfterTheEnd(t *testing.T) {
	api := deviceFake()
	api.progress = []workflows.RolloutProgress{prog(workflows.RolloutAborted, nil)}
	code, _, stderr := runRolloutCLI(t, api, "", "rollout", "retry", "fw-2.0", "d-2", "d-3")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, "cannot retry on rollout fw-2.0: it has ended (aborted)")
	assert.Contains(t, stderr, "starter rollout start --name fw-2.0-retry --devices d-2,d-3 --firmware URI --version V")
	code, _, stderr = runRolloutCLI(t, api, "", "rollout", "skip", "fw-2.0", "d-3")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, "cannot skip on rollout fw-2.0: it has ended (aborted), and starts no device any more")
	api.progress = []workflows.RolloutProgress{prog(workflows.RolloutResolving, nil)}
	code, _, stderr = runRolloutCLI(t, api, "", "rollout", "skip", "fw-2.0", "d-3")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, "cannot skip on rollout fw-2.0: it is resolving its targets: skip once it runs")
	assert.Empty(t, api.sent)
}

func TestRolloutSkipAndRetryBadInput(t *testing.T) {
	checkRefusals(t, []refusal{
		{"no devices", []string{"rollout", "skip", "fw-2.0"}, []string{"name the rollout and its devices: skip NAME DEVICE..."}},
		{"no name", []string{"rollout", "retry"}, []string{"name the rollout and its devices: retry NAME DEVICE..."}},
		{"bad name", []string{"rollout", "retry", "fw/2", "d-1"}, []string{`rollout name "fw/2"`}},
		{"bad device", []string{"rollout", "skip", "fw-2.0", "d 1"}, []string{"devices:", "d 1"}},
		{"twice", []string{"rollout", "retry", "fw-2.0", "d-1", "d-1"}, []string{"device d-1 is listed twice"}},
		{"long note", []string{"rollout", "skip", "fw-2.0", "d-1", "--note", strings.Repeat("x", 501)}, []string{"--note has 501 characters"}},
	})
}
