package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/cli/clitest"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The create flags as they become the schedule, and every way to get them wrong.
func TestScheduleCreateRequest(t *testing.T) {
	dir := t.TempDir()
	spec := filepath.Join(dir, "weekly.yaml")
	require.NoError(t, os.WriteFile(spec, []byte("reconcile: true\nfirmware: {uri: https://fw.example/v2.1.bin, version: 2.1.0}\nwindows: [0 2 * * SUN for 4h in Europe/Warsaw]\n"), 0o644))
	named := filepath.Join(dir, "named.yaml")
	require.NoError(t, os.WriteFile(named, []byte("name: fw\nreconcile: true\nfirmware: {uri: https://fw.example/v2.1.bin, version: 2.1.0}\n"), 0o644))

	weekly := []string{"--cron", "0 2 * * SUN", "--timezone", "Europe/Warsaw"}
	fw := []string{"--reconcile", "--firmware", "https://fw.example/v2.1.bin", "--version", "2.1.0"}
	reconcile := workflows.RolloutInput{Operation: workflows.OperationFirmware, Reconcile: true, Schedule: "weekly-fw",
		Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.1.bin", Version: "2.1.0"}}
	withWindow := reconcile
	withWindow.Windows = []workflows.Window{warsawSunday}
	args := func(parts ...[]string) []string {
		out := []string{"schedule", "create", "weekly-fw"}
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		args    []string
		want    scheduleRequest // Name weekly-fw and TaskQueue dmflow unless set
		wantErr []string
	}{
		{name: "weekly reconcile with a window", args: args(weekly, fw, []string{"--window", "0 2 * * SUN for 4h in Europe/Warsaw"}),
			want: scheduleRequest{Timing: scheduleTiming{Cron: "0 2 * * SUN", TimeZone: "Europe/Warsaw"}, Input: withWindow, CatchupWindow: time.Hour}},
		{name: "from a spec file", args: args(weekly, []string{"--spec", spec}),
			want: scheduleRequest{Timing: scheduleTiming{Cron: "0 2 * * SUN", TimeZone: "Europe/Warsaw"}, Input: withWindow, CatchupWindow: time.Hour}},
		{name: "interval, paused, note, catch-up, queue", args: args(fw, []string{"--interval", "24h", "--offset", "2h", "--paused", "--note", "from Monday",
			"--catchup-window", "6h", "--task-queue", "q2"}),
			want: scheduleRequest{Timing: scheduleTiming{Interval: textDuration(24 * time.Hour), Offset: textDuration(2 * time.Hour)}, Input: reconcile,
				CatchupWindow: 6 * time.Hour, Paused: true, Note: "from Monday", TaskQueue: "q2"}},
		{name: "descriptor", args: args([]string{"--cron", "@weekly"}, fw),
			want: scheduleRequest{Timing: scheduleTiming{Cron: "@weekly"}, Input: reconcile, CatchupWindow: time.Hour}},

		{name: "no times", args: args(fw), wantErr: []string{"no times", "--cron", "--interval"}},
		{name: "cron and interval", args: args(weekly, fw, []string{"--interval", "1h"}), wantErr: []string{"--cron and --interval: give one"}},
		{name: "bad cron", args: args([]string{"--cron", "0 2 * SUN"}, fw), wantErr: []string{`--cron "0 2 * SUN"`, "five fields"}},
		{name: "cron with a time zone inside", args: args([]string{"--cron", "TZ=Europe/Warsaw 0 2 * * SUN"}, fw), wantErr: []string{"--timezone, not in the expression"}},
		{name: "cron @every", args: args([]string{"--cron", "@every 1h"}, fw), wantErr: []string{"use --interval"}},
		{name: "cron unknown shorthand", args: args([]string{"--cron", "@midnight"}, fw), wantErr: []string{"the shorthands are @yearly"}},
		{name: "unknown time zone", args: args([]string{"--cron", "0 2 * * SUN", "--timezone", "Mars/Olympus"}, fw), wantErr: []string{`--timezone "Mars/Olympus": unknown time zone`}},
		{name: "time zone with interval", args: args([]string{"--interval", "1h", "--timezone", "UTC"}, fw), wantErr: []string{"--timezone belongs to --cron"}},
		{name: "offset with cron", args: args(weekly, fw, []string{"--offset", "1h"}), wantErr: []string{"--offset belongs to --interval"}},
		{name: "interval too short", args: args([]string{"--interval", "10s"}, fw), wantErr: []string{"--interval 10s: at least 1m (each run queries the hub"}},
		{name: "offset past the interval", args: args([]string{"--interval", "1h", "--offset", "1h"}, fw), wantErr: []string{"--offset 1h0m0s: from 0 up to the interval"}},
		{name: "catch-up window too long", args: args(weekly, fw, []string{"--catchup-window", "48h"}), wantErr: []string{"--catchup-window 48h0m0s: give 1m to 24h"}},
		{name: "name too long", args: []string{"schedule", "create", strings.Repeat("w", 44), "--cron", "@daily", "--reboot", "--devices", "a"},
			wantErr: []string{"schedule name", "up to 43", "at most 64"}},
		{name: "name with a slash", args: []string{"schedule", "create", "a/b", "--cron", "@daily", "--reboot", "--devices", "a"}, wantErr: []string{`schedule name "a/b"`}},
		{name: "no name", args: []string{"schedule", "create", "--cron", "@daily"}, wantErr: []string{"name the schedule: starter schedule create NAME"}},
		{name: "spec names the rollout", args: args(weekly, []string{"--spec", named}), wantErr: []string{"name: a schedule's rollouts are named <schedule>-<time>"}},
		{name: "no name flag", args: args(weekly, fw, []string{"--name", "x"}), wantErr: []string{"unknown flag: --name"}},
		{name: "reconcile reboot", args: args(weekly, []string{"--reconcile", "--reboot", "--devices", "a"}), wantErr: []string{"--reconcile belongs to a firmware update"}},
		{name: "bad window", args: args(weekly, fw, []string{"--window", "0 2 * * SUN for 4h in Nowhere"}), wantErr: []string{"--window: window", `unknown time zone "Nowhere"`}},
		{name: "problems together", args: args([]string{"--cron", "bad", "--catchup-window", "1s", "--reboot"}),
			wantErr: []string{`--cron "bad"`, "--catchup-window 1s", "no targets"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := newFakeSchedules()
			code, stdout, stderr := runScheduleCLI(t, api, "", tc.args...)
			if tc.wantErr != nil {
				clitest.CheckUsage(t, "starter", code, stderr, tc.wantErr...)
				assert.Empty(t, api.created, "created despite a usage error")
				assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one-line error: %s", stderr)
				return
			}
			require.Equal(t, 0, code, "stderr: %s", stderr)
			require.Len(t, api.created, 1)
			want := tc.want
			want.Name = "weekly-fw"
			if want.TaskQueue == "" {
				want.TaskQueue = workflows.TaskQueue
			}
			assert.Equal(t, want, api.created[0])
			assert.Empty(t, api.created[0].Input.Name, "each run names itself")
			assert.Contains(t, stdout, "created schedule weekly-fw: firmware 2.1.0 on every device not on 2.1.0")
			assert.Contains(t, stdout, "named weekly-fw-<scheduled time, UTC>, e.g. weekly-fw-2026-11-29T01:00:00Z")
			assert.Contains(t, stdout, "starter schedule trigger weekly-fw")
		})
	}
}

func TestScheduleCreateShowsNextRunsInItsZone(t *testing.T) {
	api := newFakeSchedules()
	code, stdout, stderr := runScheduleCLI(t, api, "", "schedule", "create", "weekly-fw", "--cron", "0 2 * * SUN", "--timezone", "Europe/Warsaw",
		"--reconcile", "--firmware", "https://fw.example/v2.1.bin", "--version", "2.1.0", "--paused")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, `when:      cron "0 2 * * SUN" in Europe/Warsaw`)
	assert.Contains(t, stdout, "next runs: Sun 2026-11-29 02:00 CET, Sun 2026-12-06 02:00 CET")
	assert.Contains(t, stdout, "paused:    no run starts until starter schedule unpause weekly-fw")

	// The name is taken now.
	code, _, stderr = runScheduleCLI(t, api, "", "schedule", "create", "weekly-fw", "--cron", "@daily", "--reboot", "--devices", "a")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, `schedule "weekly-fw" exists: choose another name, or delete it first with starter schedule delete weekly-fw`)

	code, stdout, _ = runScheduleCLI(t, newFakeSchedules(), "", "schedule", "create", "nightly", "--interval", "24h", "--reboot", "--devices", "a", "-o", "json")
	require.Equal(t, 0, code)
	var info scheduleInfo
	require.NoError(t, json.Unmarshal([]byte(stdout), &info))
	assert.Equal(t, "every 24h", info.When)
	assert.Equal(t, textDuration(24*time.Hour), info.Timing.Interval)
	assert.Contains(t, stdout, `"interval": "24h0m0s"`)
}

func TestScheduleDescribe(t *testing.T) {
	api := newFakeSchedules(weeklyFw())
	code, stdout, stderr := runScheduleCLI(t, api, "", "schedule", "describe", "weekly-fw")
	require.Equal(t, 0, code, stderr)
	for _, want := range []string{
		"schedule weekly-fw: firmware 2.1.0 on every device not on 2.1.0, in 1 maintenance window",
		`when:        cron "0 2 * * SUN" in Europe/Warsaw`,
		"state:       active",
		"next runs:   Sun 2026-11-29 02:00 CET  (2026-11-29T01:00:00Z)",
		"             Sun 2026-12-06 02:00 CET  (2026-12-06T01:00:00Z)",
		"recent runs: weekly-fw-2026-11-22T01:00:00Z  started Sun 2026-11-22 02:00 CET  running",
		"             weekly-fw-2026-11-15T01:00:00Z  started Sun 2026-11-15 02:00 CET  completed",
		"running:     weekly-fw-2026-11-22T01:00:00Z: the next run is skipped while it runs",
		"runs:        2 started, 1 skipped (a rollout still ran), 0 missed (later than the catch-up window 1h)",
		"follow:      starter rollout status weekly-fw-2026-11-22T01:00:00Z",
		"rollout spec (as --spec reads it):",
		"    firmware:\n      uri: https://fw.example/v2.1.bin\n      version: 2.1.0\n",
		"    rate: 50/s\n",
		"    reconcile: true\n",
		"    windows:\n      - 0 2 * * SUN for 4h in Europe/Warsaw\n",
	} {
		assert.Contains(t, stdout, want)
	}

	code, stdout, _ = runScheduleCLI(t, api, "", "schedule", "describe", "weekly-fw", "-o", "json")
	require.Equal(t, 0, code)
	var info scheduleInfo
	require.NoError(t, json.Unmarshal([]byte(stdout), &info))
	assert.Equal(t, weeklyFw(), info)

	code, _, stderr = runScheduleCLI(t, api, "", "schedule", "describe", "nope")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, `schedule "nope" not found in namespace default: list schedules with starter schedule list`)
	code, _, stderr = runScheduleCLI(t, api, "", "schedule", "describe")
	clitest.CheckUsage(t, "starter", code, stderr, "name the schedule")
}

func TestScheduleList(t *testing.T) {
	paused := weeklyFw()
	paused.Name, paused.Paused, paused.Note, paused.RecentRuns, paused.Running = "nightly", true, "freeze", nil, nil
	api := newFakeSchedules(weeklyFw(), paused)
	code, stdout, stderr := runScheduleCLI(t, api, "", "schedule", "list")
	require.Equal(t, 0, code, stderr)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 3)
	assert.Regexp(t, `^NAME +WHEN +NEXT RUN +LAST RUN +STATE +PAUSED +ROLLOUT$`, lines[0])
	assert.Regexp(t, `^nightly +cron "0 2 \* \* SUN" in Europe/Warsaw +- +- +- +yes: freeze +firmware 2.1.0`, lines[1])
	assert.Regexp(t, `^weekly-fw +cron "0 2 \* \* SUN" in Europe/Warsaw +Sun 2026-11-29 02:00 CET +weekly-fw-2026-11-22T01:00:00Z +running +no +firmware 2.1.0 on every device not on 2.1.0`, lines[2])

	code, stdout, _ = runScheduleCLI(t, api, "", "schedule", "list", "-o", "json")
	require.Equal(t, 0, code)
	var list []scheduleInfo
	require.NoError(t, json.Unmarshal([]byte(stdout), &list))
	require.Len(t, list, 2)
	assert.Equal(t, "weekly-fw", list[1].Name)

	code, stdout, _ = runScheduleCLI(t, newFakeSchedules(), "", "schedule", "list", "-o", "json")
	require.Equal(t, 0, code)
	assert.Equal(t, "[]\n", stdout)
	_, stdout, _ = runScheduleCLI(t, newFakeSchedules(), "", "schedule", "list")
	assert.Contains(t, stdout, "no rollout schedules: create one with starter schedule create")
}

func TestSchedulePauseUnpause(t *testing.T) {
	api := newFakeSchedules(weeklyFw())
	code, stdout, stderr := runScheduleCLI(t, api, "", "schedule", "pause", "weekly-fw", "--note", "release freeze")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "paused schedule weekly-fw: no run starts until starter schedule unpause weekly-fw")
	assert.Contains(t, stdout, "weekly-fw-2026-11-22T01:00:00Z keeps running (starter rollout pause weekly-fw-2026-11-22T01:00:00Z holds it too)")
	_, stdout, _ = runScheduleCLI(t, api, "", "schedule", "pause", "weekly-fw")
	assert.Contains(t, stdout, "was paused already")
	code, stdout, _ = runScheduleCLI(t, api, "", "schedule", "unpause", "weekly-fw")
	require.Equal(t, 0, code)
	assert.Contains(t, stdout, "unpaused schedule weekly-fw\n  next run:  Sun 2026-11-29 02:00 CET")
	_, stdout, _ = runScheduleCLI(t, api, "", "schedule", "unpause", "weekly-fw", "-o", "json")
	var info scheduleInfo
	require.NoError(t, json.Unmarshal([]byte(stdout), &info))
	assert.False(t, info.Paused)
	assert.Equal(t, []string{"pause:weekly-fw:release freeze", "pause:weekly-fw:paused with starter schedule pause",
		"unpause:weekly-fw:unpaused with starter schedule unpause", "unpause:weekly-fw:unpaused with starter schedule unpause"}, api.calls)

	code, _, stderr = runScheduleCLI(t, api, "", "schedule", "pause", "nope")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, `schedule "nope" not found`)
}

func TestScheduleTrigger(t *testing.T) {
	idle := weeklyFw()
	idle.Running = nil
	idle.RecentRuns[0].State = workflows.RolloutCompleted
	started := func(s *scheduleInfo) {
		s.Actions++
		s.RecentRuns = append([]scheduledRun{{Rollout: "weekly-fw-2026-11-23T10:00:00Z", WorkflowID: "rollout/weekly-fw-2026-11-23T10:00:00Z"}}, s.RecentRuns...)
	}
	skipped := func(s *scheduleInfo) { s.SkippedOverlap++ }

	api := newFakeSchedules(idle)
	api.onTrigger = started
	code, stdout, stderr := runScheduleCLI(t, api, "", "schedule", "trigger", "weekly-fw")
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, "triggered schedule weekly-fw: started rollout weekly-fw-2026-11-23T10:00:00Z\n"+
		"  workflow: rollout/weekly-fw-2026-11-23T10:00:00Z\n  follow:   starter rollout watch weekly-fw-2026-11-23T10:00:00Z\n", stdout)

	api = newFakeSchedules(idle)
	api.onTrigger = started
	code, stdout, _ = runScheduleCLI(t, api, "", "schedule", "trigger", "weekly-fw", "-o", "json")
	require.Equal(t, 0, code)
	var res triggerOutput
	require.NoError(t, json.Unmarshal([]byte(stdout), &res))
	assert.Equal(t, triggerOutput{Schedule: "weekly-fw", Started: true, Rollout: "weekly-fw-2026-11-23T10:00:00Z", WorkflowID: "rollout/weekly-fw-2026-11-23T10:00:00Z"}, res)

	// A rollout of the schedule still runs: the run is skipped, and trigger says so.
	api = newFakeSchedules(weeklyFw())
	api.onTrigger = skipped
	code, _, stderr = runScheduleCLI(t, api, "", "schedule", "trigger", "weekly-fw")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, "schedule weekly-fw skipped the run: rollout weekly-fw-2026-11-22T01:00:00Z still runs, and a schedule runs one rollout at a time (overlap policy skip)")
	assert.Contains(t, stderr, "starter rollout cancel weekly-fw-2026-11-22T01:00:00Z")
	api = newFakeSchedules(weeklyFw())
	api.onTrigger = skipped
	code, stdout, _ = runScheduleCLI(t, api, "", "schedule", "trigger", "weekly-fw", "-o", "json")
	assert.Equal(t, cli.ExitFailed, code)
	require.NoError(t, json.Unmarshal([]byte(stdout), &res))
	assert.True(t, res.Skipped)
	assert.Equal(t, []string{"weekly-fw-2026-11-22T01:00:00Z"}, res.Running)

	// The run does not show in time: said, exit 0 (the trigger was accepted).
	api = newFakeSchedules(idle)
	code, stdout, _ = runScheduleCLI(t, api, "", "schedule", "trigger", "weekly-fw")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "triggered schedule weekly-fw; its run did not show within 50ms: see starter schedule describe weekly-fw")
	assert.Equal(t, []string{"trigger:weekly-fw"}, api.calls)

	code, _, stderr = runScheduleCLI(t, api, "", "schedule", "trigger", "nope")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, `schedule "nope" not found`)
}

func TestScheduleDelete(t *testing.T) {
	api := newFakeSchedules(weeklyFw())
	code, stdout, stderr := runScheduleCLI(t, api, "", "schedule", "delete", "weekly-fw")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "deleted schedule weekly-fw: no run starts any more; the rollouts it started keep their history")
	assert.Contains(t, stdout, "weekly-fw-2026-11-22T01:00:00Z keeps running (starter rollout cancel weekly-fw-2026-11-22T01:00:00Z stops it)")
	assert.Empty(t, api.schedules)
	code, _, stderr = runScheduleCLI(t, api, "", "schedule", "delete", "weekly-fw")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, "not found")
}

func TestScheduleUnknownCommand(t *testing.T) {
	code, _, stderr := runScheduleCLI(t, newFakeSchedules(), "", "schedule", "frobnicate")
	clitest.CheckUsage(t, "starter", code, stderr, `unknown schedule command "frobnicate": use create, list, describe, pause, unpause, trigger or delete`)
}

// describe's spec reads back as the same rollout.
func TestFormatSpecRoundTrip(t *testing.T) {
	for _, in := range []workflows.RolloutInput{
		specWant(),
		{Operation: workflows.OperationReboot, Devices: []string{"a", "b"}, Reboot: &workflows.RolloutReboot{MethodTimeout: 30 * time.Second}},
		{Operation: workflows.OperationReboot, Query: "SELECT * FROM devices", Rate: 0.5},
		{Operation: workflows.OperationFirmware, Reconcile: true, Firmware: &workflows.RolloutFirmware{PackageURI: "https://a/b", Version: "1.0"}},
	} {
		doc, err := parseSpec(formatSpec(in, 10), "describe.yaml")
		require.NoError(t, err, "%s", formatSpec(in, 10))
		f := doc.v
		f.fromFile = doc.set
		f.name = in.Name
		if f.name == "" {
			f.name = "x"
			in.Name = "x"
		}
		got, err := f.input(strings.NewReader(""), func(string) bool { return false }, "")
		require.NoError(t, err)
		assert.Equal(t, in, got)
	}
	many := workflows.RolloutInput{Operation: workflows.OperationReboot, Devices: []string{"a", "b", "c"}}
	assert.Equal(t, "reboot: true\n# devices: 3 device IDs (--output json lists them)\n", string(formatSpec(many, 2)))
}

func TestDescribeTiming(t *testing.T) {
	assert.Equal(t, `cron "0 2 * * SUN" in UTC`, describeTiming(scheduleTiming{Cron: "0 2 * * SUN"}))
	assert.Equal(t, "every 1h30m (offset 15m)", describeTiming(scheduleTiming{Interval: textDuration(90 * time.Minute), Offset: textDuration(15 * time.Minute)}))
	assert.Equal(t, "Sun 2026-03-29 03:00 CEST", timeText(time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC), zoneLoc("Europe/Warsaw"), true))
}
