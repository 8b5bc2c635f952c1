package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
)

// fakeSchedules is scheduleAPI over schedules held in memory, as Temporal would keep them.
type fakeSchedules struct {
	mu        sync.Mutex
	schedules map[string]*scheduleInfo
	created   []scheduleRequest
	calls     []string // "pause:weekly:note", "trigger:weekly", …

	// onTrigger changes the schedule as the run of a trigger would (started, skipped); nil
	// leaves it unchanged, as a run not seen yet. It runs on the describe after the trigger.
	onTrigger func(s *scheduleInfo)
	triggered bool
}

func newFakeSchedules(list ...scheduleInfo) *fakeSchedules {
	f := &fakeSchedules{schedules: map[string]*scheduleInfo{}}
	for i := range list {
		f.schedules[list[i].Name] = &list[i]
	}
	return f
}

func (f *fakeSchedules) Close()                         {}
func (f *fakeSchedules) ScheduleURL(name string) string { return "http://ui.test/schedules/" + name }

func (f *fakeSchedules) get(name string) (*scheduleInfo, error) {
	s, ok := f.schedules[name]
	if !ok {
		return nil, scheduleNotFoundError{name: name, namespace: "default"}
	}
	return s, nil
}

func (f *fakeSchedules) Create(_ context.Context, req scheduleRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.schedules[req.Name]; ok {
		return scheduleExistsError{name: req.Name}
	}
	f.created = append(f.created, req)
	in := req.Input
	// Next Sundays at 02:00 in Warsaw (01:00 UTC in winter), as Temporal would compute them.
	next := []time.Time{time.Date(2026, 11, 29, 1, 0, 0, 0, time.UTC), time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC),
		time.Date(2026, 12, 13, 1, 0, 0, 0, time.UTC)}
	f.schedules[req.Name] = &scheduleInfo{Name: req.Name, Timing: req.Timing, When: describeTiming(req.Timing), Rollout: describeInput(in),
		Input: &in, TaskQueue: req.TaskQueue, Paused: req.Paused, Note: req.Note, Overlap: "skip",
		CatchupWindow: textDuration(req.CatchupWindow), NextRuns: next, URL: f.ScheduleURL(req.Name)}
	return nil
}

func (f *fakeSchedules) Describe(_ context.Context, name string, runStates int) (scheduleInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.get(name)
	if err != nil {
		return scheduleInfo{}, err
	}
	if f.triggered && f.onTrigger != nil {
		f.onTrigger(s)
		f.triggered = false
	}
	out := *s
	out.RecentRuns = append([]scheduledRun(nil), s.RecentRuns...)
	for i := range out.RecentRuns {
		if i >= runStates {
			out.RecentRuns[i].State = ""
		}
	}
	return out, nil
}

func (f *fakeSchedules) List(context.Context) ([]scheduleInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []scheduleInfo
	for _, name := range []string{"daily-reboot", "nightly", "weekly-fw"} {
		if s, ok := f.schedules[name]; ok {
			c := *s
			c.Input = nil
			out = append(out, c)
		}
	}
	return out, nil
}

func (f *fakeSchedules) call(op, name, note string) (*scheduleInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.get(name)
	if err != nil {
		return nil, err
	}
	f.calls = append(f.calls, strings.TrimSuffix(op+":"+name+":"+note, ":"))
	return s, nil
}

func (f *fakeSchedules) Pause(_ context.Context, name, note string) error {
	s, err := f.call("pause", name, note)
	if err == nil {
		s.Paused, s.Note = true, note
	}
	return err
}

func (f *fakeSchedules) Unpause(_ context.Context, name, note string) error {
	s, err := f.call("unpause", name, note)
	if err == nil {
		s.Paused, s.Note = false, note
	}
	return err
}

func (f *fakeSchedules) Trigger(_ context.Context, name string) error {
	_, err := f.call("trigger", name, "")
	f.mu.Lock()
	f.triggered = err == nil
	f.mu.Unlock()
	return err
}

func (f *fakeSchedules) Delete(_ context.Context, name string) error {
	_, err := f.call("delete", name, "")
	if err == nil {
		f.mu.Lock()
		delete(f.schedules, name)
		f.mu.Unlock()
	}
	return err
}

// runScheduleCLI runs the starter's command line with the schedule commands on api; trigger
// looks for its run for at most a few milliseconds.
func runScheduleCLI(t *testing.T, api scheduleAPI, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	g := &globals{getenv: func(string) string { return "" }}
	b := backends{
		schedules:   func(context.Context, *globals) (scheduleAPI, error) { return api, nil },
		triggerWait: 50 * time.Millisecond, triggerPoll: time.Millisecond,
	}
	return runCLI(t, g, b, stdin, args...)
}

// weeklyFw is a schedule with two runs, the newest still running.
func weeklyFw() scheduleInfo {
	in := workflows.RolloutInput{Operation: workflows.OperationFirmware, Reconcile: true, Schedule: "weekly-fw",
		Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.1.bin", Version: "2.1.0"},
		Windows:  []workflows.Window{warsawSunday}, Rate: 50, MaxFailures: "10%"}
	timing := scheduleTiming{Cron: "0 2 * * SUN", TimeZone: "Europe/Warsaw"}
	return scheduleInfo{
		Name: "weekly-fw", Timing: timing, When: describeTiming(timing), Rollout: describeInput(in), Input: &in, TaskQueue: "dmflow",
		Overlap: "skip", CatchupWindow: textDuration(time.Hour),
		NextRuns: []time.Time{time.Date(2026, 11, 29, 1, 0, 0, 0, time.UTC), time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC)},
		RecentRuns: []scheduledRun{
			{Rollout: "weekly-fw-2026-11-22T01:00:00Z", WorkflowID: "rollout/weekly-fw-2026-11-22T01:00:00Z",
				ScheduledAt: time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC), StartedAt: time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC), State: workflows.RolloutRunning},
			{Rollout: "weekly-fw-2026-11-15T01:00:00Z", WorkflowID: "rollout/weekly-fw-2026-11-15T01:00:00Z",
				ScheduledAt: time.Date(2026, 11, 15, 1, 0, 0, 0, time.UTC), StartedAt: time.Date(2026, 11, 15, 1, 0, 1, 0, time.UTC), State: workflows.RolloutCompleted},
		},
		Running: []string{"weekly-fw-2026-11-22T01:00:00Z"}, Actions: 2, SkippedOverlap: 1,
		URL: "http://ui.test/schedules/weekly-fw",
	}
}
