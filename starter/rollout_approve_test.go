package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/cli/clitest"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeApprover is fakeRollouts that also approves, recording the requests.
type fakeApprover struct {
	*fakeRollouts
	approvals  []workflows.ApproveRequest
	approveErr error
}

func (f *fakeApprover) Approve(_ context.Context, name string, req workflows.ApproveRequest) (workflows.RolloutProgress, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.notFound(name); err != nil {
		return workflows.RolloutProgress{}, err
	}
	f.approvals = append(f.approvals, req)
	return f.controlResp, f.approveErr
}

// runGatesCLI runs the command line with the rollout commands on api and the environment env.
func runGatesCLI(t *testing.T, api rolloutAPI, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	g := &globals{getenv: func(k string) string { return env[k] }, clock: testClock}
	b := backends{rollouts: func(context.Context, *globals) (rolloutAPI, error) { return api, nil }}
	return runCLI(t, g, b, "", args...)
}

// The gate and end-time flags as they become the workflow's input, and every way to get them wrong
// (before anything is dialled).
func TestRolloutStartGates(t *testing.T) {
	base := []string{"rollout", "start", "--name", "fw-2.0", "--devices", "a,b", "--reboot"}
	for _, tc := range []struct {
		name    string
		args    []string
		check   func(t *testing.T, in workflows.RolloutInput)
		wantErr []string
	}{
		{name: "after wave 1, pause below, end after, cancel", args: []string{"--approve-after-wave", "1", "--pause-below", "95%", "--end-after", "4h", "--end-behavior", "cancel"},
			check: func(t *testing.T, in workflows.RolloutInput) {
				assert.Equal(t, 1, in.ApproveAfterWave)
				assert.False(t, in.ApproveEachWave)
				assert.Equal(t, "95%", in.PauseBelow)
				assert.Equal(t, 4*time.Hour, in.EndAfter)
				assert.Equal(t, workflows.EndCancel, in.EndBehavior)
				assert.True(t, in.EndAt.IsZero())
			}},
		{name: "each", args: []string{"--approve-after-wave", "each"}, check: func(t *testing.T, in workflows.RolloutInput) {
			assert.True(t, in.ApproveEachWave)
			assert.Zero(t, in.ApproveAfterWave)
		}},
		{name: "end at RFC 3339", args: []string{"--end-at", "2026-05-01T18:00:00+02:00"}, check: func(t *testing.T, in workflows.RolloutInput) {
			assert.True(t, in.EndAt.Equal(t0.Add(4*time.Hour)))
			assert.Empty(t, in.EndBehavior, "stop by default")
		}},
		{name: "end at a time today", args: []string{"--end-at", "23:30", "--end-behavior", "stop"}, check: func(t *testing.T, in workflows.RolloutInput) {
			// testClock: 12:10 UTC, 14:10 in Warsaw; 23:30 there is 21:30 UTC.
			assert.True(t, in.EndAt.Equal(time.Date(2026, 5, 1, 21, 30, 0, 0, time.UTC)), "%s", in.EndAt)
			assert.Equal(t, workflows.EndStop, in.EndBehavior)
		}},

		{name: "wave 0", args: []string{"--approve-after-wave", "0"}, wantErr: []string{`--approve-after-wave: approve after wave "0"`, "or each"}},
		{name: "wave all", args: []string{"--approve-after-wave", "all"}, wantErr: []string{`approve after wave "all"`}},
		{name: "share without %", args: []string{"--pause-below", "95"}, wantErr: []string{`--pause-below: success share "95"`, "e.g. 95%"}},
		{name: "end at in the past", args: []string{"--end-at", "2026-05-01T12:00:00Z"}, wantErr: []string{"--end-at 2026-05-01T12:00:00Z is in the past (now 2026-05-01T14:10:00+02:00)", "give a later end time"}},
		{name: "end at earlier today", args: []string{"--end-at", "09:00"}, wantErr: []string{"is in the past"}},
		{name: "end at not a time", args: []string{"--end-at", "tonight"}, wantErr: []string{`--end-at "tonight" is not a time`, "RFC 3339", "18:00"}},
		{name: "end at and after", args: []string{"--end-at", "23:00", "--end-after", "1h"}, wantErr: []string{"--end-at and --end-after: give the end time one way"}},
		{name: "negative end after", args: []string{"--end-after", "-1h"}, wantErr: []string{"--end-after -1h0m0s: give a positive duration"}},
		{name: "bad behavior", args: []string{"--end-after", "1h", "--end-behavior", "force"}, wantErr: []string{`--end-behavior "force": give stop`}},
		{name: "behavior without end", args: []string{"--end-behavior", "cancel"}, wantErr: []string{"--end-behavior applies at an end time: give --end-at or --end-after"}},
		{name: "problems together", args: []string{"--approve-after-wave", "x", "--pause-below", "1000%", "--end-at", "yesterday"},
			wantErr: []string{"--approve-after-wave", "--pause-below", "--end-at"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &fakeRollouts{}
			code, stdout, stderr := runRolloutCLI(t, api, "", append(append([]string{}, base...), tc.args...)...)
			if tc.wantErr != nil {
				clitest.CheckUsage(t, "starter", code, stderr, tc.wantErr...)
				assert.Empty(t, api.started)
				return
			}
			require.Equal(t, 0, code, "stderr: %s", stderr)
			require.Len(t, api.started, 1)
			tc.check(t, api.started[0])
			assert.Contains(t, stdout, "  gates:    ")
		})
	}
}

// The start prints the gates it set.
func TestRolloutStartPrintsGates(t *testing.T) {
	api := &fakeRollouts{}
	code, stdout, stderr := runRolloutCLI(t, api, "", "rollout", "start", "--name", "fw-2.0", "--devices", "a", "--reboot",
		"--approve-after-wave", "1", "--pause-below", "95%", "--end-at", "2026-05-01T18:00:00Z")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "  gates:    approve after wave 1, pause below 95%, ends 2026-05-01 20:00 CEST (stop)\n")
}

// The spec file's fields, checked with their lines and listed together; a flag overrides a field.
func TestRolloutSpecGates(t *testing.T) {
	_, write := specFiles(t)
	good := write("gated.yaml", "devices: [a, b]\nreboot: true\napproveAfterWave: each\npauseBelow: 90%\nendAfter: 2h\nendBehavior: cancel\n")
	api := &fakeRollouts{}
	code, _, stderr := runRolloutCLI(t, api, "", "rollout", "start", "--name", "r", "--spec", good)
	require.Equal(t, 0, code, stderr)
	in := api.started[0]
	assert.True(t, in.ApproveEachWave)
	assert.Equal(t, "90%", in.PauseBelow)
	assert.Equal(t, 2*time.Hour, in.EndAfter)
	assert.Equal(t, workflows.EndCancel, in.EndBehavior)

	api = &fakeRollouts{}
	code, _, stderr = runRolloutCLI(t, api, "", "rollout", "start", "--name", "r", "--spec", good, "--approve-after-wave", "2", "--end-behavior", "stop")
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, 2, api.started[0].ApproveAfterWave, "the flag overrides the field")
	assert.False(t, api.started[0].ApproveEachWave)
	assert.Equal(t, workflows.EndStop, api.started[0].EndBehavior)

	at := write("at.yaml", "devices: [a]\nreboot: true\nendAt: 2026-05-01T11:00:00Z\n")
	code, _, stderr = runRolloutCLI(t, &fakeRollouts{}, "", "rollout", "start", "--name", "r", "--spec", at)
	clitest.CheckUsage(t, "starter", code, stderr, "endAt in "+at+" 2026-05-01T11:00:00Z is in the past")

	bad := write("bad.yaml", "devices: [a]\nreboot: true\napproveAfterWave: never\npauseBelow: 95\nendAt: soon\nendAfter: 4 hours\nendBehavior: abort\n")
	code, _, stderr = runRolloutCLI(t, &fakeRollouts{}, "", "rollout", "start", "--name", "r", "--spec", bad)
	clitest.CheckUsage(t, "starter", code, stderr,
		"line 3, approveAfterWave: approve after wave \"never\"", "line 4, pauseBelow: success share \"95\"", `line 5, endAt: "soon" is not a time`,
		`line 6, endAfter: "4 hours" is not a duration`, `line 7, endBehavior: "abort": give stop`)
}

// schedule create takes --end-after, and refuses --end-at: one point in time for rollouts that
// recur. schedule describe shows the fields, and they read back.
func TestScheduleGates(t *testing.T) {
	api := newFakeSchedules()
	code, _, stderr := runScheduleCLI(t, api, "", "schedule", "create", "nightly", "--cron", "@daily", "--reboot", "--devices", "a,b",
		"--approve-after-wave", "1", "--pause-below", "95%", "--end-after", "4h")
	require.Equal(t, 0, code, stderr)
	in := api.created[0].Input
	assert.Equal(t, 1, in.ApproveAfterWave)
	assert.Equal(t, 4*time.Hour, in.EndAfter)

	code, _, stderr = runScheduleCLI(t, newFakeSchedules(), "", "schedule", "create", "nightly", "--cron", "@daily", "--reboot", "--devices", "a",
		"--end-at", "2030-01-01T00:00:00Z")
	clitest.CheckUsage(t, "starter", code, stderr, "--end-at is one point in time", "give --end-after")

	spec := string(formatSpec(in, 10))
	assert.Contains(t, spec, "approveAfterWave: \"1\"\npauseBelow: 95%\nendAfter: 4h\n")
	doc, err := parseSpec([]byte(spec), "describe.yaml")
	require.NoError(t, err)
	f := doc.v
	f.fromFile = doc.set
	got, err := f.input(strings.NewReader(""), func(string) bool { return false }, "nightly")
	require.NoError(t, err)
	assert.Equal(t, in, got)
}

// approve sends the note and the identity: --identity, else DMFLOW_IDENTITY, else pid@host; prints
// the progress after it; a refusal exits 1 with the rollout's reason.
func TestRolloutApprove(t *testing.T) {
	after := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Wave, p.ApproveAfterWave = 2, "1"
		p.Approvals = []workflows.Approval{{Wave: 1, At: t0.Add(5 * time.Minute), Identity: "alice@ops", Note: "canary fine"}}
	})
	api := &fakeApprover{fakeRollouts: &fakeRollouts{controlResp: after}}
	code, stdout, stderr := runGatesCLI(t, api, map[string]string{"DMFLOW_IDENTITY": "alice@ops"}, "rollout", "approve", "fw-2.0", "--note", "canary fine")
	require.Equal(t, 0, code, stderr)
	require.Len(t, api.approvals, 1)
	assert.Equal(t, workflows.ApproveRequest{Note: "canary fine", Identity: "alice@ops"}, api.approvals[0])
	assert.Contains(t, stdout, "rollout fw-2.0: running (firmware 2.0.0)\n")
	assert.Contains(t, stdout, "  gates:     approve after wave 1\n")
	assert.Contains(t, stdout, "  approved:  wave 1, 2026-05-01 14:05 CEST, by alice@ops: canary fine\n")

	code, _, stderr = runGatesCLI(t, api, map[string]string{"DMFLOW_IDENTITY": "alice@ops"}, "rollout", "approve", "fw-2.0", "--identity", "bob@ops")
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, "bob@ops", api.approvals[1].Identity, "the flag over the environment")
	code, _, stderr = runGatesCLI(t, api, nil, "rollout", "approve", "fw-2.0")
	require.Equal(t, 0, code, stderr)
	host, _ := os.Hostname()
	assert.Equal(t, strings.Split(api.approvals[2].Identity, "@")[1], host)
	assert.Regexp(t, `^\d+@`, api.approvals[2].Identity, "pid@host")

	api.approveErr = refusedError{reason: "rollout fw-2.0 is running, not awaiting approval: wave 1 was approved already"}
	code, _, stderr = runGatesCLI(t, api, nil, "rollout", "approve", "fw-2.0")
	assert.Equal(t, 1, code)
	assert.Equal(t, "starter: cannot approve rollout fw-2.0: rollout fw-2.0 is running, not awaiting approval: wave 1 was approved already\n", stderr)

	code, _, stderr = runGatesCLI(t, api, nil, "rollout", "approve", "fw-2.0", "-o", "json")
	assert.Equal(t, 1, code, stderr)
	api.approveErr = nil
	code, stdout, _ = runGatesCLI(t, api, nil, "rollout", "approve", "fw-2.0", "-o", "json")
	require.Equal(t, 0, code)
	var p workflows.RolloutProgress
	require.NoError(t, json.Unmarshal([]byte(stdout), &p))
	assert.Equal(t, after.Approvals, p.Approvals)
}

// approve's bad input: exit 2 before Temporal is dialled.
func TestRolloutApproveBadInput(t *testing.T) {
	checkRefusals(t, []refusal{
		{"no name", []string{"rollout", "approve"}, []string{"name the rollout", "starter rollout approve NAME"}},
		{"bad name", []string{"rollout", "approve", "fw/2"}, []string{`rollout name "fw/2"`}},
		{"long note", []string{"rollout", "approve", "fw-2", "--note", strings.Repeat("n", 501)}, []string{"--note has 501 characters: keep it under 500"}},
		{"end behavior without end", []string{"rollout", "start", "--name", "r", "--devices", "a", "--reboot", "--end-behavior", "stop"}, []string{"--end-behavior applies at an end time"}},
		{"end at in the past", []string{"rollout", "start", "--name", "r", "--devices", "a", "--reboot", "--end-at", "2020-01-01T00:00:00Z"}, []string{"is in the past", "give a later end time"}},
		{"schedule end at", []string{"schedule", "create", "nightly", "--cron", "@daily", "--reboot", "--devices", "a", "--end-at", "2030-01-01T00:00:00Z"}, []string{"give --end-after"}},
	})
}

// status shows the gates, the approvals, the end time and, while awaiting approval, the command.
func TestStatusShowsGates(t *testing.T) {
	p := prog(workflows.RolloutAwaitingApproval, func(p *workflows.RolloutProgress) {
		p.Reason = "wave 1 finished; approve to start wave 2: starter rollout approve fw-2.0"
		p.Wave, p.WaveSize, p.WaveDone, p.Succeeded, p.Pending = 1, 2, 2, 2, 118
		p.ApproveAfterWave, p.PauseBelow = "each", "95%"
		p.EndAt, p.EndBehavior = t0.Add(3*time.Hour), workflows.EndCancel
		p.Active, p.Updated = time.Minute, t0.Add(10*time.Minute)
	})
	var out bytes.Buffer
	printStatus(&out, p, "http://ui", testClock.Now(), testClock.Loc())
	s := out.String()
	assert.Contains(t, s, "rollout fw-2.0: awaiting-approval (firmware 2.0.0)\n  reason:    wave 1 finished; approve to start wave 2")
	assert.Contains(t, s, "  gates:     approve after each wave, pause below 95%\n")
	assert.Contains(t, s, "  ends:      2026-05-01 17:00 CEST (in 2h50m), the devices in flight then cancelled\n")
	assert.Contains(t, s, "  approve:   starter rollout approve fw-2.0 --note TEXT\n")
	assert.Contains(t, s, "2.0 devices/min, awaiting-approval", "no ETA while awaiting approval")
	line := rolloutLine(p, testClock.Now(), testClock.Loc())
	assert.Contains(t, line, "awaiting-approval (wave 1 finished; approve to start wave 2")
}

// watch ends on ended: exit 1 when devices were left out, 0 when none was; the summary says so and
// lists the approvals and the time spent awaiting them.
func TestWatchEnded(t *testing.T) {
	ended := prog(workflows.RolloutEnded, func(p *workflows.RolloutProgress) {
		p.Reason = "the end time 2026-05-01T13:00:00Z was reached (end behavior stop): 70 devices not started"
		p.Succeeded, p.NotStarted = 50, 70
		p.Finished, p.Active, p.Awaited = t0.Add(time.Hour), 20*time.Minute, 40*time.Minute
		p.Approvals = []workflows.Approval{{Wave: 1, At: t0.Add(25 * time.Minute), Identity: "alice@ops"}}
	})
	api := &fakeRollouts{progress: []workflows.RolloutProgress{ended}}
	code, stdout, stderr := runRolloutCLI(t, api, "", "rollout", "watch", "fw-2.0")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "rollout fw-2.0 ended at its end time: the end time 2026-05-01T13:00:00Z was reached")
	assert.Contains(t, stdout, "rollout fw-2.0 ended at its end time after 1h00m (40m00s awaiting approval): firmware 2.0.0 on 120 devices\n")
	assert.Contains(t, stdout, "  approved:  wave 1, 2026-05-01 12:25 UTC, by alice@ops\n")

	all := ended
	all.Succeeded, all.NotStarted = 120, 0
	assert.NoError(t, outcomeError(all), "nothing left out")
	assert.True(t, all.Done())
}

// The report lists the approvals below the table, and each JSON row names the approval its wave
// started on.
func TestReportShowsApprovals(t *testing.T) {
	approvals := []workflows.Approval{{Wave: 1, At: t0.Add(time.Hour), Identity: "alice@ops", Note: "canary fine"}}
	rows := []workflows.DeviceRow{
		{DeviceID: "a", Wave: 0, Result: workflows.DeviceUpdated, Started: t0, Attempts: 1},
		{DeviceID: "b", Wave: 1, Result: workflows.DeviceUpdated, Started: t0.Add(time.Hour), Attempts: 1},
		{DeviceID: "c", Wave: 0, Result: workflows.DeviceNotStarted},
	}
	api := &fakeRollouts{rows: rows, progress: []workflows.RolloutProgress{prog(workflows.RolloutCompleted, func(p *workflows.RolloutProgress) {
		p.Approvals = approvals
	})}}
	code, stdout, stderr := runRolloutCLI(t, api, "", "rollout", "report", "fw-2.0")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "3 devices: 2 updated, 1 not started\napproved after wave 1  2026-05-01T13:00:00Z  by alice@ops  canary fine\n")

	code, stdout, stderr = runRolloutCLI(t, api, "", "rollout", "report", "fw-2.0", "--format", "json")
	require.Equal(t, 0, code, stderr)
	var got []reportRow
	require.NoError(t, json.Unmarshal([]byte(stdout), &got))
	assert.Nil(t, got[0].Approval, "wave 1 needed none")
	require.NotNil(t, got[1].Approval)
	assert.Equal(t, reportApproval{Wave: 1, At: t0.Add(time.Hour), Identity: "alice@ops", Note: "canary fine"}, *got[1].Approval)
	assert.Nil(t, got[2].Approval, "not started")

	code, stdout, _ = runRolloutCLI(t, api, "", "rollout", "report", "fw-2.0", "--format", "csv")
	require.Equal(t, 0, code)
	assert.NotContains(t, stdout, "alice", "CSV keeps its columns")
}

// examples/rollout-policies.yaml's block of these policies reads as documented.
func TestExamplePoliciesSpec(t *testing.T) {
	f := specFlags{spec: "../examples/rollout-policies.yaml", name: "fw-2.1.0"}
	in, err := f.input(strings.NewReader(""), func(flag string) bool { return flag == "name" }, "")
	require.NoError(t, err)
	assert.Equal(t, 1, in.ApproveAfterWave)
	assert.Equal(t, "95%", in.PauseBelow)
	assert.Equal(t, 6*time.Hour, in.EndAfter)
	assert.Equal(t, workflows.EndStop, in.EndBehavior)
}
