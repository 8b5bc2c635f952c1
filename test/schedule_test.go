//go:build integration

package test

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
)

// Schedules end to end: `starter schedule …` on the dev server's Temporal
// Schedules, each run a Rollout named <schedule>-<scheduled time>.

// scheduleView is the part of `starter schedule describe -o json` (and of
// each entry of list) the tests read.
type scheduleView struct {
	Name   string `json:"name"`
	Timing struct {
		Cron     string `json:"cron"`
		TimeZone string `json:"timeZone"`
	} `json:"timing"`
	Paused     bool                    `json:"paused"`
	Note       string                  `json:"note"`
	Overlap    string                  `json:"overlapPolicy"`
	Catchup    string                  `json:"catchupWindow"`
	Input      *workflows.RolloutInput `json:"input"`
	NextRuns   []time.Time             `json:"nextRuns"`
	RecentRuns []struct {
		Rollout    string `json:"rollout"`
		WorkflowID string `json:"workflowId"`
		State      string `json:"state"`
	} `json:"recentRuns"`
	Running        []string `json:"running"`
	Actions        int      `json:"actions"`
	SkippedOverlap int      `json:"skippedOverlap"`
}

// triggerResult is what `starter schedule trigger -o json` prints.
type triggerResult struct {
	Started bool     `json:"started"`
	Skipped bool     `json:"skipped"`
	Rollout string   `json:"rollout"`
	Running []string `json:"running"`
}

// scheduleJSON runs a `starter schedule` command with -o json, wants exit
// code want, and decodes its output into v.
func scheduleJSON(t *testing.T, v any, want int, args ...string) string {
	t.Helper()
	stdout, stderr, code := runStarter(t, time.Minute, append(append([]string{"schedule"}, args...), "-o", "json")...)
	if code != want {
		t.Fatalf("starter schedule %v: exit %d, want %d: %s%s", args, code, want, stdout, stderr)
	}
	if v != nil {
		if err := json.Unmarshal([]byte(stdout), v); err != nil {
			t.Fatalf("starter schedule %v: output %q: %v", args, stdout, err)
		}
	}
	return stderr
}

// deleteSchedulesAtEnd deletes the schedules when the test ends, also on
// failure; the rollouts they started are the test's own and end with it.
func deleteSchedulesAtEnd(t *testing.T, c client.Client, names ...string) {
	t.Cleanup(func() {
		for _, n := range names {
			_ = c.ScheduleClient().GetHandle(context.Background(), n).Delete(context.Background())
		}
	})
}

// watchScheduledRollout follows a run's rollout with `starter rollout watch`
// by its name, as an operator would, and returns its final progress.
func watchScheduledRollout(t *testing.T, name string) workflows.RolloutProgress {
	t.Helper()
	stdout, stderr, code := runStarter(t, 3*time.Minute, "rollout", "watch", name, "-o", "json")
	var p workflows.RolloutProgress
	if err := json.Unmarshal([]byte(stdout), &p); err != nil || code != 0 {
		t.Fatalf("starter rollout watch %s: exit %d, output %q, stderr %q", name, code, stdout, stderr)
	}
	return p
}

// runName is the shape of a scheduled rollout's name: the schedule's name,
// then the run's scheduled time in UTC, as Temporal appends it to the
// action's workflow ID.
var runName = regexp.MustCompile(`^(.+)-(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$`)

// checkRunName checks that Temporal started the run as workflow
// rollout/<schedule>-<time> (the action's ID plus "-" and the scheduled time,
// RFC 3339 in UTC), at a time between from and to, and marked it as the
// schedule's.
func checkRunName(t *testing.T, c client.Client, schedule, rollout string, from, to time.Time) {
	t.Helper()
	m := runName.FindStringSubmatch(rollout)
	if m == nil || m[1] != schedule {
		t.Fatalf("rollout %q is not named %s-<RFC 3339 time>", rollout, schedule)
	}
	at, _ := time.Parse(time.RFC3339, m[2])
	if at.Before(from.Truncate(time.Second)) || at.After(to) {
		t.Errorf("rollout %s: scheduled time %s outside the trigger's %s–%s", rollout, at, from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	desc, err := c.DescribeWorkflowExecution(context.Background(), workflows.RolloutWorkflowID(rollout), "")
	if err != nil {
		t.Fatalf("describe workflow %s: %v", workflows.RolloutWorkflowID(rollout), err)
	}
	info := desc.GetWorkflowExecutionInfo()
	if typ := info.GetType().GetName(); typ != "Rollout" {
		t.Errorf("workflow %s is a %s, want Rollout", workflows.RolloutWorkflowID(rollout), typ)
	}
	var by string
	if p := info.GetSearchAttributes().GetIndexedFields()["TemporalScheduledById"]; p == nil || converter.GetDefaultDataConverter().FromPayload(p, &by) != nil || by != schedule {
		t.Errorf("workflow %s: TemporalScheduledById %q, want %q", workflows.RolloutWorkflowID(rollout), by, schedule)
	}
}

// A weekly reconcile schedule over a fleet where some devices already run
// the target version: a triggered run updates only the others (the compliant
// ones get no method call), a trigger while it runs is skipped, a run after
// it finds nothing to do, and a device that joined since is the only target
// of the next. describe, list, pause, unpause and delete work on it.
func TestScheduleReconcile(t *testing.T) {
	const (
		schedule = "weekly-sc"
		version  = "2.0.0"
	)
	queue := "it-schedule"
	startWorker(t, queue)
	c := temporalClient(t)
	deleteSchedulesAtEnd(t, c, schedule)

	compliant := startRolloutFleet(t, "sco-", 3, 1, 0, "--stage-duration", "200ms", "--tags", "ring=sched", "--firmware-version", version)
	drifted := startRolloutFleet(t, "scd-", 3, 1, 0, "--stage-duration", "200ms", "--tags", "ring=sched")
	all := append(compliant.ids(), drifted.ids()...)

	var created scheduleView
	scheduleJSON(t, &created, 0, "create", schedule, "--cron", "0 2 * * SUN", "--timezone", "Europe/Warsaw",
		"--reconcile", "--query", "SELECT * FROM devices WHERE tags.ring = 'sched'",
		"--firmware", "https://fw.example/v2.bin", "--version", version, "--max-failures", "0", "--task-queue", queue)
	if created.Name != schedule || created.Overlap != "skip" || created.Catchup != "1h0m0s" || created.Input == nil || !created.Input.Reconcile || created.Input.Schedule != schedule || created.Input.Name != "" {
		t.Fatalf("created %+v: want a reconcile schedule with overlap skip, catch-up 1h, runs named by the schedule", created)
	}
	// The name is taken now.
	if _, stderr, code := runStarter(t, time.Minute, "schedule", "create", schedule, "--cron", "@daily", "--reboot", "--devices", "x"); code != 1 || !strings.Contains(stderr, "exists: choose another name, or delete it first") {
		t.Errorf("second create: exit %d, %q: want 1 and the name taken", code, stderr)
	}

	// Run 1: the drifted devices only.
	before := stats(t)
	from := time.Now()
	var run1 triggerResult
	scheduleJSON(t, &run1, 0, "trigger", schedule)
	if !run1.Started {
		t.Fatalf("trigger: %+v: want a run started", run1)
	}
	checkRunName(t, c, schedule, run1.Rollout, from, time.Now().Add(time.Second))
	// While it runs, a second trigger is skipped (one rollout of a schedule
	// at a time), and says which rollout runs. The rollout takes seconds:
	// every device's stages are polled from 2 s on.
	var skipped triggerResult
	stderr := scheduleJSON(t, &skipped, 1, "trigger", schedule)
	if !skipped.Skipped || !slices.Equal(skipped.Running, []string{run1.Rollout}) || !strings.Contains(stderr, "overlap policy skip") {
		t.Errorf("trigger while %s runs: %+v, stderr %q: want skipped, naming it", run1.Rollout, skipped, stderr)
	}
	p := watchScheduledRollout(t, run1.Rollout)
	t.Logf("run 1, %s: %d devices in %s", run1.Rollout, p.Total, p.Finished.Sub(p.Started).Round(100*time.Millisecond))
	if p.State != workflows.RolloutCompleted || p.Total != len(drifted.ids()) || p.Succeeded != len(drifted.ids()) {
		t.Errorf("run 1: %+v: want the %d drifted devices updated", p, len(drifted.ids()))
	}
	var got []string
	for _, r := range rolloutReport(t, run1.Rollout) {
		got = append(got, r.Device)
		if r.Result != workflows.DeviceUpdated {
			t.Errorf("run 1: %s %s %s", r.Device, r.Result, r.Error)
		}
	}
	if !slices.Equal(got, drifted.ids()) {
		t.Errorf("run 1 targeted %v, want the drifted devices %v", got, drifted.ids())
	}
	calls := invoked(stats(t), all)
	for id, n := range invoked(before, all) {
		calls[id] -= n
	}
	for _, id := range compliant.ids() {
		if calls[id] != 0 {
			t.Errorf("compliant %s got %d firmwareUpdate calls", id, calls[id])
		}
	}
	for _, id := range drifted.ids() {
		if calls[id] != 1 {
			t.Errorf("drifted %s got %d firmwareUpdate calls, want 1", id, calls[id])
		}
	}

	// describe shows the run and its state (from the rollout's search
	// attribute), the skipped trigger, and the next Sundays.
	var desc scheduleView
	scheduleJSON(t, &desc, 0, "describe", schedule)
	if desc.Actions != 1 || desc.SkippedOverlap != 1 || len(desc.RecentRuns) != 1 || desc.RecentRuns[0].Rollout != run1.Rollout ||
		desc.RecentRuns[0].WorkflowID != workflows.RolloutWorkflowID(run1.Rollout) || desc.RecentRuns[0].State != workflows.RolloutCompleted || len(desc.Running) != 0 {
		t.Errorf("describe after run 1: %+v", desc)
	}
	text, _, _ := runStarter(t, time.Minute, "schedule", "describe", schedule)
	if !strings.Contains(text, "recent runs: "+run1.Rollout) || !strings.Contains(text, "completed") || !strings.Contains(text, "reconcile: true") {
		t.Errorf("describe text lacks the run or the spec:\n%s", text)
	}

	// Run 2: every device reports the version: no targets, done at once.
	before = stats(t)
	var run2 triggerResult
	from = time.Now()
	scheduleJSON(t, &run2, 0, "trigger", schedule)
	if !run2.Started || run2.Rollout == run1.Rollout {
		t.Fatalf("second trigger: %+v: want a new run", run2)
	}
	checkRunName(t, c, schedule, run2.Rollout, from, time.Now().Add(time.Second))
	p = watchScheduledRollout(t, run2.Rollout)
	if p.State != workflows.RolloutCompleted || p.Total != 0 || !strings.Contains(p.Reason, "already reports "+version) {
		t.Errorf("run 2: %+v: want completed with no targets", p)
	}
	if n := callCount(invoked(stats(t), all)) - callCount(invoked(before, all)); n != 0 {
		t.Errorf("run 2 made %d firmwareUpdate calls, want none", n)
	}

	// Run 3: a device that joined since is the only target.
	joined := startRolloutFleet(t, "scj-", 1, 1, 0, "--stage-duration", "200ms", "--tags", "ring=sched")
	var run3 triggerResult
	scheduleJSON(t, &run3, 0, "trigger", schedule)
	p = watchScheduledRollout(t, run3.Rollout)
	if p.State != workflows.RolloutCompleted || p.Total != 1 || p.Succeeded != 1 {
		t.Errorf("run 3: %+v: want the joined device updated", p)
	}
	if rows := rolloutReport(t, run3.Rollout); len(rows) != 1 || rows[0].Device != joined.ids()[0] {
		t.Errorf("run 3 report %+v: want only %s", rows, joined.ids()[0])
	}

	// pause, unpause.
	var paused scheduleView
	scheduleJSON(t, &paused, 0, "pause", schedule, "--note", "release freeze")
	if !paused.Paused || paused.Note != "release freeze" {
		t.Errorf("after pause: paused %v, note %q", paused.Paused, paused.Note)
	}
	text, _, _ = runStarter(t, time.Minute, "schedule", "describe", schedule)
	if !strings.Contains(text, "state:       paused (release freeze)") {
		t.Errorf("describe of the paused schedule:\n%s", text)
	}
	var active scheduleView
	scheduleJSON(t, &active, 0, "unpause", schedule)
	if active.Paused {
		t.Errorf("after unpause: still paused")
	}

	// list shows it (visibility lags a create a little).
	deadline := time.Now().Add(30 * time.Second)
	for {
		var list []scheduleView
		scheduleJSON(t, &list, 0, "list")
		i := slices.IndexFunc(list, func(s scheduleView) bool { return s.Name == schedule })
		if i >= 0 && len(list[i].RecentRuns) > 0 && list[i].RecentRuns[0].Rollout == run3.Rollout && list[i].RecentRuns[0].State == workflows.RolloutCompleted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("list does not show %s with its last run %s: %+v", schedule, run3.Rollout, list)
		}
		time.Sleep(time.Second)
	}
	if out, _, _ := runStarter(t, time.Minute, "schedule", "list"); !regexp.MustCompile(`(?m)^` + schedule + ` +cron "0 2 \* \* SUN" in Europe/Warsaw +Sun `).MatchString(out) {
		t.Errorf("list table:\n%s", out)
	}

	// delete: the schedule is gone; the rollouts it started stay.
	var del struct {
		Deleted bool `json:"deleted"`
	}
	scheduleJSON(t, &del, 0, "delete", schedule)
	if _, stderr, code := runStarter(t, time.Minute, "schedule", "describe", schedule); code != 1 || !strings.Contains(stderr, "not found") {
		t.Errorf("describe after delete: exit %d, %q: want 1, not found", code, stderr)
	}
	if _, _, code := runStarter(t, time.Minute, "rollout", "status", run1.Rollout); code != 0 {
		t.Errorf("rollout status %s after the schedule's delete: exit %d", run1.Rollout, code)
	}
}

// A schedule created with --cron, --timezone and a maintenance window runs
// at the cron's times in that zone: describe shows the next runs there, and
// the window in the rollout spec. A schedule that starts another workflow is
// left alone.
func TestScheduleCronInTimeZone(t *testing.T) {
	const schedule = "sundays-waw"
	c := temporalClient(t)
	deleteSchedulesAtEnd(t, c, schedule)
	warsaw, err := time.LoadLocation("Europe/Warsaw")
	if err != nil {
		t.Fatal(err)
	}
	window := "0 2 * * SUN for 4h in Europe/Warsaw"
	var created scheduleView
	scheduleJSON(t, &created, 0, "create", schedule, "--cron", "0 2 * * SUN", "--timezone", "Europe/Warsaw",
		"--reconcile", "--firmware", "https://fw.example/v2.bin", "--version", "2.1.0", "--window", window, "--note", "weekly")

	var desc scheduleView
	scheduleJSON(t, &desc, 0, "describe", schedule)
	if len(desc.NextRuns) < 5 {
		t.Fatalf("describe: %d next runs, want at least 5", len(desc.NextRuns))
	}
	for _, at := range desc.NextRuns {
		local := at.In(warsaw)
		if local.Weekday() != time.Sunday || local.Hour() != 2 || local.Minute() != 0 {
			t.Errorf("next run %s is %s in Warsaw, want Sunday 02:00", at.UTC().Format(time.RFC3339), local.Format("Mon 15:04 MST"))
		}
	}
	if desc.Timing.Cron != "0 2 * * SUN" || desc.Timing.TimeZone != "Europe/Warsaw" || desc.Paused || desc.Note != "weekly" {
		t.Errorf("describe: %+v", desc)
	}
	w, _ := workflows.ParseWindow(window)
	if desc.Input == nil || len(desc.Input.Windows) != 1 || desc.Input.Windows[0] != w {
		t.Errorf("the rollout spec's windows: %+v, want [%v]", desc.Input, w)
	}
	text, _, _ := runStarter(t, time.Minute, "schedule", "describe", schedule)
	first := desc.NextRuns[0].In(warsaw)
	want := fmt.Sprintf("next runs:   %s  (%s)", first.Format("Mon 2006-01-02 15:04 MST"), desc.NextRuns[0].UTC().Format(time.RFC3339))
	if !strings.Contains(text, want) || !strings.Contains(text, "- 0 2 * * SUN for 4h in Europe/Warsaw") {
		t.Errorf("describe text lacks %q or the window:\n%s", want, text)
	}

	// A schedule that starts another workflow is not dmflow's: refused by name, not listed.
	const other = "not-a-rollout"
	deleteSchedulesAtEnd(t, c, other)
	_, err = c.ScheduleClient().Create(context.Background(), client.ScheduleOptions{ID: other, Paused: true,
		Spec:   client.ScheduleSpec{CronExpressions: []string{"@daily"}},
		Action: &client.ScheduleWorkflowAction{ID: "other", Workflow: "Reboot", TaskQueue: "nobody"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"describe", "delete", "trigger"} {
		if _, stderr, code := runStarter(t, time.Minute, "schedule", cmd, other); code != 1 || !strings.Contains(stderr, "is not a dmflow rollout schedule (its action starts workflow Reboot)") {
			t.Errorf("schedule %s %s: exit %d, %q: want 1, not a rollout schedule", cmd, other, code, stderr)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var list []scheduleView
		scheduleJSON(t, &list, 0, "list")
		if slices.ContainsFunc(list, func(s scheduleView) bool { return s.Name == other }) {
			t.Fatalf("list shows %s, which starts no rollout", other)
		}
		if slices.ContainsFunc(list, func(s scheduleView) bool { return s.Name == schedule }) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
}
