package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The policy's flags and spec fields, alone and together, as rollout start reads them.
func TestRolloutStartRetries(t *testing.T) {
	_, write := specFiles(t)
	base := "name: fw\ndevices: [a, b]\nfirmware: {uri: https://fw.example/v2.bin, version: 2.0.0}\n"
	full := write("full.yaml", base+"retries: {count: 3, on: [timed-out, failed], backoff: 2m}\nmaxTimeouts: 5%\nmaxOffline: 2\n")
	short := write("short.yaml", base+"retries: 2\n")
	fw := []string{"rollout", "start", "--name", "fw", "--devices", "a,b", "--firmware", "https://fw.example/v2.bin", "--version", "2.0.0"}
	want := func(p *workflows.RetryPolicy, maxTimeouts, maxOffline string) workflows.RolloutInput {
		return workflows.RolloutInput{Name: "fw", Operation: workflows.OperationFirmware, Devices: []string{"a", "b"},
			Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"},
			Retries:  p, MaxTimeouts: maxTimeouts, MaxOffline: maxOffline}
	}
	args := func(extra ...string) []string { return append(append([]string{}, fw...), extra...) }
	for _, tc := range []struct {
		name string
		args []string
		want workflows.RolloutInput
	}{
		{"flags", args("--retries", "3", "--retry-on", "failed,offline", "--retry-backoff", "30s", "--max-timeouts", "5", "--max-offline", "10%"),
			want(&workflows.RetryPolicy{Count: 3, On: []string{"failed", "offline"}, Backoff: 30 * time.Second}, "5", "10%")},
		{"defaults left to the workflow", args("--retries", "1"), want(&workflows.RetryPolicy{Count: 1}, "", "")},
		{"thresholds alone", args("--max-offline", "3"), want(nil, "", "3")},
		{"spec", []string{"rollout", "start", "--spec", full},
			want(&workflows.RetryPolicy{Count: 3, On: []string{"timed-out", "failed"}, Backoff: 2 * time.Minute}, "5%", "2")},
		{"spec, count alone", []string{"rollout", "start", "--spec", short}, want(&workflows.RetryPolicy{Count: 2}, "", "")},
		{"flags override the fields", []string{"rollout", "start", "--spec", full, "--retries", "5", "--retry-on", "offline", "--max-offline", "10%"},
			want(&workflows.RetryPolicy{Count: 5, On: []string{"offline"}, Backoff: 2 * time.Minute}, "5%", "10%")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &fakeRollouts{}
			code, _, stderr := runRolloutCLI(t, api, "", tc.args...)
			require.Equal(t, 0, code, "stderr: %s", stderr)
			require.Len(t, api.started, 1)
			assert.Equal(t, tc.want, api.started[0])
		})
	}
}

// Bad values of the policy are refused before Temporal is dialled, in one line naming the flag or
// field and the fix, exit 2, together with the spec's other problems.
func TestRolloutStartRetriesRefused(t *testing.T) {
	dir, write := specFiles(t)
	base := "name: fw\ndevices: [a]\nreboot: true\n"
	fw := func(extra ...string) []string {
		return append([]string{"rollout", "start", "--name", "fw", "--devices", "a", "--reboot"}, extra...)
	}
	checkRefusals(t, []refusal{
		{"too many", fw("--retries", "11"), []string{"--retries 11: retry a device 1 to 10 times"}},
		{"zero", fw("--retries", "0"), []string{"--retries 0: retry a device 1 to 10 times"}},
		{"unknown type", fw("--retries", "2", "--retry-on", "timeout"), []string{`--retry-on: retry on "timeout": the failure types are failed, timed-out, offline`}},
		{"retry-on alone", fw("--retry-on", "failed"), []string{"--retry-on needs --retries N", "e.g. --retries 3"}},
		{"backoff alone", fw("--retry-backoff", "1m"), []string{"--retry-backoff needs --retries N"}},
		{"backoff too long", fw("--retries", "2", "--retry-backoff", "2h"), []string{"--retry-backoff 2h0m0s: give a wait from 1s to 1h, e.g. 1m"}},
		{"with retry-failed", fw("--retries", "2", "--retry-failed"), []string{"--retries and --retry-failed both run failed devices again", "--retry-on failed"}},
		{"bad thresholds, together", fw("--max-timeouts", "lots", "--max-offline", "120%"),
			[]string{`--max-timeouts: failure threshold "lots"`, `--max-offline: failure threshold "120%"`}},
		{"spec: no count", []string{"rollout", "start", "--spec", write("nocount.yaml", base+"retries: {on: [offline]}\n")},
			[]string{"nocount.yaml line 4, retries: no count", "retries.count, e.g. 3"}},
		{"spec: unknown type, misspelt field", []string{"rollout", "start", "--spec", write("bad.yaml", base+"retries: {count: 2, on: [late], backof: 1m}\nmaxOffline: x\n")},
			[]string{`line 4, retries.on: retry on "late"`, "line 4, retries.backof: unknown field", `line 5, maxOffline: failure threshold "x"`}},
		{"spec: count out of range, named", []string{"rollout", "start", "--spec", write("many.yaml", base+"retries: {count: 20}\n")},
			[]string{"retries.count in " + filepath.Join(dir, "many.yaml") + " 20: retry a device 1 to 10 times"}},
		{"spec: with retryFailed", []string{"rollout", "start", "--spec", write("both.yaml", base+"retries: 2\nretryFailed: true\n")},
			[]string{"retries in ", "and retryFailed in ", "both run failed devices again"}},
		{"schedule create", []string{"schedule", "create", "weekly", "--cron", "@daily", "--reboot", "--devices", "a", "--retries", "12"},
			[]string{"--retries 12: retry a device 1 to 10 times"}},
	})
}

// A schedule's rollouts carry the policy, and describe shows it in the spec it prints, which
// --spec reads back.
func TestScheduleCarriesRetries(t *testing.T) {
	api := newFakeSchedules()
	code, _, stderr := runScheduleCLI(t, api, "", "schedule", "create", "weekly", "--cron", "@weekly", "--reboot", "--devices", "a",
		"--retries", "4", "--retry-on", "offline", "--retry-backoff", "5m", "--max-offline", "10%")
	require.Equal(t, 0, code, stderr)
	require.Len(t, api.created, 1)
	in := api.created[0].Input
	assert.Equal(t, &workflows.RetryPolicy{Count: 4, On: []string{"offline"}, Backoff: 5 * time.Minute}, in.Retries)
	assert.Equal(t, "10%", in.MaxOffline)

	spec := string(formatSpec(in, 10))
	assert.Contains(t, spec, "retries:\n  count: 4\n  \"on\": [offline]\n  backoff: 5m\nmaxOffline: 10%\n", "yaml quotes on, which YAML 1.1 reads as true")
	doc, err := parseSpec([]byte(spec), "describe.yaml")
	require.NoError(t, err)
	f := doc.v
	f.fromFile, f.name = doc.set, "x"
	got, err := f.input(strings.NewReader(""), func(string) bool { return false }, "")
	require.NoError(t, err)
	assert.Equal(t, in.Retries, got.Retries)
	assert.Equal(t, in.MaxOffline, got.MaxOffline)
}

func retriesProgress() workflows.RolloutProgress {
	return prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Wave, p.Succeeded, p.Failed, p.TimedOut, p.Offline, p.Running, p.Pending, p.AwaitingRetry = 2, 40, 4, 2, 1, 10, 66, 3
		p.RetriesStarted, p.MaxTimeouts, p.MaxOffline = 7, "5", "10%"
		p.RetryPolicy = &workflows.RetryPolicy{Count: 3, On: []string{"timed-out", "offline"}, Backoff: time.Minute}
		p.Active, p.Updated = 4*time.Minute, t0.Add(4*time.Minute)
	})
}

func TestStatusWatchAndSummaryShowRetries(t *testing.T) {
	p := retriesProgress()
	var out bytes.Buffer
	printStatus(&out, p, "http://ui", t0, time.UTC)
	assert.Contains(t, out.String(), "  failures:  2 timed-out, 1 offline, 1 failed\n")
	assert.Contains(t, out.String(), "  retries:   up to 3 per device on timed-out,offline, backoff 1m doubling; 7 started, 3 devices waiting to retry\n")
	assert.Contains(t, out.String(), "  limits:    max failures 10%, max concurrent 50, max timeouts 5, max offline 10%\n")

	assert.Equal(t, "  +4m00s  running  wave 2/5  44/120 done (36%)  failed 4 (2 timed-out, 1 offline, 1 failed)  skipped 0  running 10  pending 66  waiting to retry 3  11.0 devices/min, ETA 6m55s",
		rolloutLine(p, t0, time.UTC))

	p.State, p.Reason, p.Finished = workflows.RolloutAborted, "3 devices were offline, more than the 2 allowed by max-offline", t0.Add(4*time.Minute)
	out.Reset()
	writeSummary(&out, p, nil, nil)
	assert.Contains(t, out.String(), "  devices:   40 succeeded, 4 failed, 10 running, 66 pending\n  failures:  2 timed-out, 1 offline, 1 failed\n  retries:   7 started\n  reason:    3 devices were offline")

	// A rollout without the policy shows none of it.
	out.Reset()
	printStatus(&out, prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) { p.Failed = 2 }), "http://ui", t0, time.UTC)
	assert.NotContains(t, out.String(), "failures:")
	assert.NotContains(t, out.String(), "retries:")
}

func TestReportShowsFailureTypes(t *testing.T) {
	rows := []workflows.DeviceRow{
		{DeviceID: "dev-001", Wave: 0, Result: workflows.DeviceUpdated, Attempts: 3, RetriedOn: []string{"offline", "offline"}, HubCalls: 9},
		{DeviceID: "dev-002", Wave: 0, Result: workflows.DeviceFailed, Attempts: 1, FailureType: "failed", ErrorType: "DeviceError", Error: "flash write failed"},
		{DeviceID: "dev-003", Wave: 0, Result: workflows.DeviceRetrying, Attempts: 1, FailureType: "timed-out", RetriedOn: []string{"timed-out"},
			RetryAt: t0.Add(time.Minute), ErrorType: "StageTimeout", Error: "stuck in downloading"},
	}
	var out bytes.Buffer
	require.NoError(t, writeReport(&out, formatTable, rows))
	assert.Equal(t, `DEVICE   WAVE  RESULT    TYPE       ATTEMPTS  FROM  STAGES  STARTED  DURATION  HUB CALLS  ERROR OR NOTE
dev-001  1     updated   -          3         -     -       -        -         9          retried after offline, offline
dev-002  1     failed    failed     1         -     -       -        -         0          DeviceError: flash write failed
dev-003  1     retrying  timed-out  1         -     -       -        -         0          StageTimeout: stuck in downloading (next attempt at 2026-05-01T12:01:00Z)
3 devices: 1 updated, 1 failed, 1 retrying
`, out.String())

	out.Reset()
	require.NoError(t, writeReport(&out, formatCSV, rows[2:]))
	assert.Contains(t, out.String(), ",timed-out,timed-out,2026-05-01T12:01:00Z\n")

	out.Reset()
	require.NoError(t, writeReport(&out, formatJSON, rows[:1]))
	var got []map[string]any
	require.NoError(t, json.Unmarshal(out.Bytes(), &got))
	assert.Equal(t, []any{"offline", "offline"}, got[0]["retriedOn"])
	assert.NotContains(t, got[0], "retryAt")
	assert.NotContains(t, got[0], "failureType")
}

// examples/rollout-policies.yaml's block of retries by failure type reads as documented.
func TestExamplePoliciesRetries(t *testing.T) {
	f := specFlags{spec: "../examples/rollout-policies.yaml", name: "fw-2.2.0"}
	in, err := f.input(strings.NewReader(""), func(flag string) bool { return flag == "name" }, "")
	require.NoError(t, err)
	assert.Equal(t, &workflows.RetryPolicy{Count: 3, On: []string{"timed-out", "offline"}, Backoff: time.Minute}, in.Retries)
	assert.Equal(t, "5%", in.MaxTimeouts)
	assert.Equal(t, "10", in.MaxOffline)
}
