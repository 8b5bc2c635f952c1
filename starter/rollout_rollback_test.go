package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fwTarget and rollbackFlags make a firmware rollout with a rollback.
var (
	fwTarget      = []string{"--name", "fw-2.0", "--devices", "a,b", "--firmware", "https://fw.example/v2.bin", "--version", "2.0.0"}
	rollbackFlags = []string{"--rollback-firmware", "https://fw.example/v1.bin", "--rollback-version", "1.0.0"}
)

func TestRolloutStartRollback(t *testing.T) {
	_, write := specFiles(t)
	spec := write("rb.yaml", "name: fw-2.0\ndevices: [a, b]\nfirmware: {uri: https://fw.example/v2.bin, version: 2.0.0}\n"+
		"rollback: {uri: https://fw.example/v1.bin, version: 1.0.0, include: both}\n")
	jsonSpec := write("rb.json", `{"name": "fw-2.0", "devices": ["a", "b"], "firmware": {"uri": "https://fw.example/v2.bin", "version": "2.0.0"},
		"rollback": {"uri": "https://fw.example/v1.bin", "version": "1.0.0", "include": "both"}}`)
	rollback := func(include string) *workflows.RolloutRollback {
		return &workflows.RolloutRollback{PackageURI: "https://fw.example/v1.bin", Version: "1.0.0", Include: include}
	}
	for _, tc := range []struct {
		name string
		args []string
		want *workflows.RolloutRollback
	}{
		{"flags", append(append([]string{}, fwTarget...), rollbackFlags...), rollback("")},
		{"flags with include", append(append(append([]string{}, fwTarget...), rollbackFlags...), "--rollback-include", "Failed"), rollback("failed")},
		{"spec file", []string{"--spec", spec}, rollback("both")},
		{"json spec file", []string{"--spec", jsonSpec}, rollback("both")},
		{"a flag overrides the field", []string{"--spec", spec, "--rollback-include", "updated", "--rollback-version", "1.0.1"},
			&workflows.RolloutRollback{PackageURI: "https://fw.example/v1.bin", Version: "1.0.1", Include: "updated"}},
		{"none", fwTarget, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &fakeRollouts{}
			code, stdout, stderr := runRolloutCLI(t, api, "", append([]string{"rollout", "start"}, tc.args...)...)
			require.Equal(t, 0, code, "stderr: %s", stderr)
			require.Len(t, api.started, 1)
			assert.Equal(t, tc.want, api.started[0].Rollback)
			if tc.want != nil {
				assert.Contains(t, stdout, "started rollout fw-2.0: firmware 2.0.0 on 2 devices, rolled back to "+tc.want.Version+" if it aborts")
			}
		})
	}
}

// Bad rollback flags and fields: one line naming the fix, exit 2, all problems together, and no
// Temporal dialled.
func TestRolloutStartRollbackRefusals(t *testing.T) {
	_, write := specFiles(t)
	badSpec := write("bad.yaml", "name: fw\ndevices: [a]\nfirmware: {uri: https://fw.example/v2.bin, version: 2.0.0}\n"+
		"rollback: {uri: https://fw.example/v1.bin, version: 1.0.0, include: all, when: always}\ncanary: x\n")
	noURI := write("nouri.yaml", "name: fw\ndevices: [a]\nfirmware: {uri: https://fw.example/v2.bin, version: 2.0.0}\nrollback: {version: 1.0.0}\n")
	reboot := []string{"--name", "r", "--devices", "a", "--reboot"}
	with := func(parts ...[]string) []string {
		out := []string{"rollout", "start"}
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	checkRefusals(t, []refusal{
		{"on a reboot rollout", with(reboot, rollbackFlags), []string{"--rollback-firmware belongs to a firmware update", "a reboot rollout has nothing to roll back"}},
		{"the target version", with(fwTarget, []string{"--rollback-firmware", "https://fw.example/v1.bin", "--rollback-version", "2.0.0"}),
			[]string{"--rollback-version 2.0.0 is the target version (--version)", "roll back to the version the devices ran before"}},
		{"no version", with(fwTarget, []string{"--rollback-firmware", "https://fw.example/v1.bin"}), []string{"--rollback-firmware needs --rollback-version"}},
		{"no URI", with(fwTarget, []string{"--rollback-version", "1.0.0"}), []string{"--rollback-version needs --rollback-firmware"}},
		{"include alone", with(fwTarget, []string{"--rollback-include", "both"}), []string{"--rollback-include needs --rollback-firmware and --rollback-version"}},
		{"bad include", with(fwTarget, rollbackFlags, []string{"--rollback-include", "all"}), []string{`--rollback-include "all" is not known: use updated, failed or both`}},
		{"URI with credentials", with(fwTarget, []string{"--rollback-firmware", "https://a.blob.core.windows.net/v1.bin?sv=2020&sig=SECRET", "--rollback-version", "1.0.0"}),
			[]string{"rollback package URI", "without credentials"}},
		{"spec file problems together", with([]string{"--spec", badSpec}),
			[]string{"bad.yaml line 4, rollback.include: \"all\" is not known: use updated, failed or both", "rollback.when: unknown field", "canary: want a whole number"}},
		{"spec file without uri", with([]string{"--spec", noURI}), []string{"nouri.yaml line 4, rollback: no uri", "rollback.uri"}},
	})
}

// schedule create carries the rollback to every run, and describe shows it in the spec.
func TestScheduleCreateRollback(t *testing.T) {
	api := newFakeSchedules()
	code, stdout, stderr := runScheduleCLI(t, api, "", append([]string{"schedule", "create", "weekly-fw", "--cron", "0 2 * * SUN", "--reconcile",
		"--firmware", "https://fw.example/v2.1.bin", "--version", "2.1.0", "--rollback-include", "both"}, rollbackFlags...)...)
	require.Equal(t, 0, code, stderr)
	require.Len(t, api.created, 1)
	assert.Equal(t, &workflows.RolloutRollback{PackageURI: "https://fw.example/v1.bin", Version: "1.0.0", Include: "both"}, api.created[0].Input.Rollback)
	assert.Contains(t, stdout, "rolled back to 1.0.0 if it aborts")

	spec := string(formatSpec(api.created[0].Input, 10))
	assert.Contains(t, spec, "rollback:\n  uri: https://fw.example/v1.bin\n  version: 1.0.0\n  include: both\n")
	doc, err := parseSpec([]byte(spec), "describe.yaml")
	require.NoError(t, err)
	f := doc.v
	f.fromFile = doc.set
	got, err := f.input(strings.NewReader(""), func(string) bool { return false }, "weekly-fw")
	require.NoError(t, err)
	assert.Equal(t, api.created[0].Input, got, "the spec reads back as the same rollout")
}

// rolledBack is a rollout that aborted and rolled back.
func rolledBack(mod func(p *workflows.RolloutProgress)) workflows.RolloutProgress {
	return prog(workflows.RolloutRolledBack, func(p *workflows.RolloutProgress) {
		p.Reason = "3 of the 10 devices of wave 2 failed, more than the 10% allowed (1); rolled back 6 devices to 1.0.0 (1 skipped, already on it)"
		p.Wave, p.Succeeded, p.Failed, p.NotStarted = 2, 7, 3, 110
		p.Active, p.Updated, p.Finished, p.HubCalls = 4*time.Minute, t0.Add(4*time.Minute), t0.Add(4*time.Minute), 150
		p.Rollback = &workflows.RollbackProgress{Version: "1.0.0", Include: "updated", Phase: workflows.RollbackCompleted, Devices: 7,
			RolledBack: 6, Skipped: 1, Wave: 2, Waves: 2, WaveSize: 6, WaveDone: 6, HubCalls: 50, Started: t0.Add(2 * time.Minute)}
		if mod != nil {
			mod(p)
		}
	})
}

func TestRolloutStatusRollback(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    workflows.RolloutProgress
		want string
	}{
		{"armed", prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
			p.Rollback = &workflows.RollbackProgress{Version: "1.0.0", Include: "both", Phase: workflows.RollbackArmed}
		}), "  rollback:  to 1.0.0 if the rollout aborts: the devices it updated and those whose update failed\n"},
		{"waiting", prog(workflows.RolloutRollingBack, func(p *workflows.RolloutProgress) {
			p.Running = 3
			p.Rollback = &workflows.RollbackProgress{Version: "1.0.0", Phase: workflows.RollbackWaiting, Devices: 5, Pending: 5}
		}), "  rollback:  to 1.0.0, of 5 devices, once the 3 in flight finished\n"},
		{"running", prog(workflows.RolloutRollingBack, func(p *workflows.RolloutProgress) {
			p.Rollback = &workflows.RollbackProgress{Version: "1.0.0", Phase: workflows.RollbackRunning, Devices: 7, RolledBack: 2,
				Running: 2, Pending: 3, Wave: 2, Waves: 3, WaveSize: 2, WaveDone: 0}
		}), "  rollback:  running, to 1.0.0: 2/7 done (28%): 2 rolled back, 2 running, 3 pending\n  rb wave:   2 of 3, 0 of its 2 devices done, 0 failed\n"},
		{"stopped", prog(workflows.RolloutAborted, func(p *workflows.RolloutProgress) {
			p.Rollback = &workflows.RollbackProgress{Version: "1.0.0", Phase: workflows.RollbackStopped, Reason: "3 of the 4 devices of its wave 1 failed",
				Devices: 7, RolledBack: 1, Failed: 3, NotStarted: 3, Wave: 1, Waves: 2, WaveSize: 4, WaveDone: 4, WaveFailed: 3}
		}), "  rollback:  stopped (3 of the 4 devices of its wave 1 failed), to 1.0.0: 7/7 done (100%): 1 rolled back, 3 failed, 3 not rolled back\n"},
		{"not run", prog(workflows.RolloutAborted, func(p *workflows.RolloutProgress) {
			p.Rollback = &workflows.RollbackProgress{Version: "1.0.0", Phase: workflows.RollbackNotRun, Reason: "the rollout ran out of maintenance windows: nothing failed"}
		}), "  rollback:  not run (the rollout ran out of maintenance windows: nothing failed)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			printStatus(&out, tc.p, "http://ui", testClock.Now(), testClock.Loc())
			assert.Contains(t, out.String(), tc.want)
		})
	}
	var out bytes.Buffer
	printStatus(&out, prog(workflows.RolloutRunning, nil), "http://ui", testClock.Now(), testClock.Loc())
	assert.NotContains(t, out.String(), "rollback", "no rollback, no line")
}

// watch follows the rollback: a line whenever its counts change, the summary, exit 1 with the
// reason.
func TestWatchRollback(t *testing.T) {
	aborting := prog(workflows.RolloutRollingBack, func(p *workflows.RolloutProgress) {
		p.Reason = "3 of the 10 devices of wave 2 failed, more than the 10% allowed (1)"
		p.Wave, p.Succeeded, p.Failed, p.NotStarted, p.Active, p.Updated = 2, 7, 3, 110, 2*time.Minute, t0.Add(2*time.Minute)
		p.Rollback = &workflows.RollbackProgress{Version: "1.0.0", Phase: workflows.RollbackRunning, Devices: 7, Running: 1, Pending: 6, Wave: 1, Waves: 2}
	})
	later := aborting
	later.Updated = t0.Add(3 * time.Minute)
	later.Rollback = &workflows.RollbackProgress{Version: "1.0.0", Phase: workflows.RollbackRunning, Devices: 7, RolledBack: 1, Running: 6, Wave: 2, Waves: 2}
	api := &fakeRollouts{progress: []workflows.RolloutProgress{aborting, aborting, later, rolledBack(nil)}}
	var out bytes.Buffer
	err := runWatch(context.Background(), api, "fw-2.0", "text", testWatch(&out))
	require.Error(t, err)
	assert.Equal(t, "rollout fw-2.0 aborted and was rolled back: 3 of the 10 devices of wave 2 failed, more than the 10% allowed (1); rolled back 6 devices to 1.0.0 (1 skipped, already on it)", err.Error())
	lines := strings.Split(out.String(), "\n")
	require.GreaterOrEqual(t, len(lines), 4)
	assert.Contains(t, lines[0], "rolling-back (3 of the 10 devices")
	assert.True(t, strings.HasSuffix(lines[0], "  rollback to 1.0.0 0/7 done, failed 0, running 1, pending 6, wave 1/2"), lines[0])
	assert.True(t, strings.HasSuffix(lines[1], "  rollback to 1.0.0 1/7 done, failed 0, running 6, pending 0, wave 2/2"), lines[1])
	assert.True(t, strings.HasSuffix(lines[2], "  rollback to 1.0.0 7/7 done, failed 0, running 0, pending 0, wave 2/2"), lines[2])
	assert.Contains(t, out.String(), `rollout fw-2.0 aborted and rolled back after 4m00s: firmware 2.0.0 on 120 devices
  devices:   7 succeeded, 3 failed, 110 not started
  reason:    3 of the 10 devices of wave 2 failed, more than the 10% allowed (1); rolled back 6 devices to 1.0.0 (1 skipped, already on it)
  rollback:  completed to 1.0.0: 6 rolled back, 1 skipped (already on it)
  hub calls: 150 in 1 workflow run
`)
}

// rollbackRows are a rolled-back device, one whose rollback failed, and one the rollback did not
// take.
var rollbackRows = []workflows.DeviceRow{
	{DeviceID: "dev-001", Wave: 0, Result: workflows.DeviceUpdated, Attempts: 1, FromVersion: "1.0.0", Stages: []string{"downloading", "applying", "completed"},
		Started: t0.Add(time.Second), Duration: time.Minute, HubCalls: 8,
		Rollback: &workflows.RollbackRow{Result: workflows.DeviceRolledBack, Wave: 0, Attempts: 1, Stages: []string{"downloading", "applying", "completed"},
			Started: t0.Add(3 * time.Minute), Duration: 50 * time.Second, HubCalls: 8}},
	{DeviceID: "dev-002", Wave: 0, Result: workflows.DeviceUpdated, Attempts: 1, FromVersion: "1.0.0", Stages: []string{"downloading", "applying", "completed"},
		Started: t0.Add(time.Second), Duration: time.Minute, HubCalls: 8,
		Rollback: &workflows.RollbackRow{Result: workflows.DeviceFailed, Wave: 1, Attempts: 1, Stages: []string{"downloading"},
			Started: t0.Add(4 * time.Minute), Duration: 20 * time.Second, HubCalls: 4, ErrorType: "DeviceError", Error: "image not found"}},
	{DeviceID: "dev-003", Wave: 1, Result: workflows.DeviceFailed, Attempts: 1, FromVersion: "1.0.0", Stages: []string{"downloading"},
		Started: t0.Add(2 * time.Minute), Duration: 30 * time.Second, HubCalls: 6, ErrorType: "DeviceError", Error: "flash write failed"},
}

func TestReportRollbackColumns(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, writeReport(&out, formatTable, rollbackRows))
	assert.Equal(t, `DEVICE   WAVE  RESULT   TYPE  ATTEMPTS  FROM   STAGES                          STARTED               DURATION  HUB CALLS  ERROR OR NOTE                    ROLLBACK     RB WAVE  RB STAGES                       RB DURATION  RB ERROR OR NOTE
dev-001  1     updated  -     1         1.0.0  downloading,applying,completed  2026-05-01T12:00:01Z  1m00s     8          -                                rolled back  1        downloading,applying,completed  50.0s        -
dev-002  1     updated  -     1         1.0.0  downloading,applying,completed  2026-05-01T12:00:01Z  1m00s     8          -                                failed       2        downloading                     20.0s        DeviceError: image not found
dev-003  2     failed   -     1         1.0.0  downloading                     2026-05-01T12:02:00Z  30.0s     6          DeviceError: flash write failed  -            -        -                               -            -
3 devices: 2 updated, 1 failed; rollback: 1 rolled back, 1 failed
`, out.String())

	out.Reset()
	require.NoError(t, writeReport(&out, formatCSV, rollbackRows))
	recs, err := csv.NewReader(&out).ReadAll()
	require.NoError(t, err)
	require.Len(t, recs, 4)
	assert.Equal(t, []string{"rollback_result", "rollback_wave", "rollback_attempts", "rollback_stages", "rollback_started",
		"rollback_duration_seconds", "rollback_hub_calls", "rollback_error_type", "rollback_error", "rollback_note"}, recs[0][15:])
	assert.Equal(t, []string{"failed", "2", "1", "downloading", "2026-05-01T12:04:00Z", "20", "4", "DeviceError", "image not found", ""}, recs[2][15:])
	assert.Equal(t, make([]string, 10), recs[3][15:], "no rollback: empty cells")

	out.Reset()
	require.NoError(t, writeReport(&out, formatJSON, rollbackRows[1:]))
	assert.JSONEq(t, `[
	  {"device": "dev-002", "wave": 1, "result": "updated", "attempts": 1, "fromVersion": "1.0.0", "stages": ["downloading", "applying", "completed"],
	   "started": "2026-05-01T12:00:01Z", "durationSeconds": 60, "hubCalls": 8,
	   "rollback": {"result": "failed", "wave": 2, "attempts": 1, "stages": ["downloading"], "started": "2026-05-01T12:04:00Z",
	                "durationSeconds": 20, "hubCalls": 4, "errorType": "DeviceError", "error": "image not found"}},
	  {"device": "dev-003", "wave": 2, "result": "failed", "attempts": 1, "fromVersion": "1.0.0", "stages": ["downloading"],
	   "started": "2026-05-01T12:02:00Z", "durationSeconds": 30, "hubCalls": 6, "errorType": "DeviceError", "error": "flash write failed"}
	]`, out.String())

	// Without a rollback part the report keeps its columns.
	out.Reset()
	require.NoError(t, writeReport(&out, formatCSV, rollbackRows[2:]))
	assert.True(t, strings.HasPrefix(out.String(), strings.Join(csvHeader, ",")+"\n"))
}

// examples/rollout-policies.yaml's rollback block parses into the rollback it documents.
func TestExamplePoliciesRollback(t *testing.T) {
	f := specFlags{spec: "../examples/rollout-policies.yaml", name: "fw-2.1.0"}
	in, err := f.input(strings.NewReader(""), func(flag string) bool { return flag == "name" }, "")
	require.NoError(t, err)
	assert.Equal(t, &workflows.RolloutRollback{PackageURI: "https://fw.example/v2.0.bin", Version: "2.0.0", Include: "updated"}, in.Rollback)
}
