package main

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/testlog"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
)

// Rollouts with maintenance windows as status and watch show them. The tests' clock stands at
// 12:10 UTC on 2026-05-01, and times show in Warsaw (CEST, UTC+2).

func TestWindowText(t *testing.T) {
	warsaw := testClock.Loc()
	now := testClock.Now()
	for _, tc := range []struct {
		name string
		p    workflows.RolloutProgress
		loc  *time.Location
		want string
	}{
		{"waiting", prog(workflows.RolloutWaiting, func(p *workflows.RolloutProgress) { p.WindowOpens = t0.Add(3*time.Hour + 22*time.Minute) }),
			warsaw, "waiting for window, opens at 2026-05-01 17:22 CEST (in 3h12m)"},
		{"waiting, in UTC", prog(workflows.RolloutWaiting, func(p *workflows.RolloutProgress) { p.WindowOpens = t0.Add(3*time.Hour + 22*time.Minute) }),
			time.UTC, "waiting for window, opens at 2026-05-01 15:22 UTC (in 3h12m)"},
		{"waiting days, into winter time", prog(workflows.RolloutWaiting, func(p *workflows.RolloutProgress) {
			p.WindowOpens = time.Date(2026, 11, 29, 1, 0, 0, 0, time.UTC)
		}), warsaw, "waiting for window, opens at 2026-11-29 02:00 CET (in 211d12h)"},
		{"the opening has come", prog(workflows.RolloutWaiting, func(p *workflows.RolloutProgress) { p.WindowOpens = t0 }),
			warsaw, "waiting for window, opens at 2026-05-01 14:00 CEST (now)"},
		{"running in a window", prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) { p.WindowCloses = t0.Add(75 * time.Minute) }),
			warsaw, "window closes at 2026-05-01 15:15 CEST (in 1h05m)"},
		{"running without windows", prog(workflows.RolloutRunning, nil), warsaw, ""},
		{"paused", prog(workflows.RolloutPaused, nil), warsaw, ""},
		{"ended", prog(workflows.RolloutAborted, func(p *workflows.RolloutProgress) { p.WindowOpens = t0.Add(time.Hour) }), warsaw, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, windowText(tc.p, now, tc.loc))
		})
	}
}

// status names the opening while waiting and the close while running in a window; the speed has no
// ETA while waiting, and the time waited shows with the time active.
func TestRolloutStatusWindows(t *testing.T) {
	waiting := prog(workflows.RolloutWaiting, func(p *workflows.RolloutProgress) {
		p.Wave, p.WaveSize, p.WaveDone = 2, 4, 3
		p.Succeeded, p.Running, p.Pending = 15, 0, 105
		p.Active, p.Waited, p.Updated, p.HubCalls = 20*time.Minute, 3*time.Hour, t0.Add(3*time.Hour+20*time.Minute), 40
		p.WindowOpens = t0.Add(4 * time.Hour)
	})
	code, stdout, _ := runRolloutCLI(t, &fakeRollouts{progress: []workflows.RolloutProgress{waiting}}, "", "rollout", "status", "fw-2.0")
	assert.Equal(t, 0, code)
	assert.Equal(t, `rollout fw-2.0: waiting (firmware 2.0.0)
  window:    waiting for window, opens at 2026-05-01 18:00 CEST (in 3h50m)
  devices:   15/120 done (12%): 15 succeeded, 105 pending
  wave:      2 of 5, 3 of its 4 devices done, 0 failed
  speed:     0.8 devices/min, waiting
  limits:    max failures 10%, max concurrent 50
  started:   2026-05-01T12:00:00Z, active 20m00s, waited 3h00m for windows, 40 hub calls, 1 workflow run
  ui:        http://ui.test/rollout%2Ffw-2.0
`, stdout)

	running := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Succeeded, p.Running, p.Pending, p.Active = 20, 3, 97, 20*time.Minute
		p.WindowCloses = t0.Add(30 * time.Minute)
	})
	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{progress: []workflows.RolloutProgress{running}}, "", "rollout", "status", "fw-2.0")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "rollout fw-2.0: running (firmware 2.0.0)\n  window:    window closes at 2026-05-01 14:30 CEST (in 20m00s)\n")
	assert.Contains(t, stdout, "  speed:     1.0 devices/min, ETA 1h40m\n", "an ETA in window time")

	// --output json carries the window fields.
	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{progress: []workflows.RolloutProgress{waiting}}, "", "rollout", "status", "fw-2.0", "-o", "json")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, `"windowOpens": "2026-05-01T16:00:00Z"`)
	assert.Contains(t, stdout, `"waited": 10800000000000`)
	var got workflows.RolloutProgress
	require.NoError(t, jsonUnmarshal(stdout, &got))
	assert.Equal(t, waiting, got)
}

// A resume outside the windows answers waiting: the control prints when the window opens.
func TestRolloutResumeToWaiting(t *testing.T) {
	waiting := prog(workflows.RolloutWaiting, func(p *workflows.RolloutProgress) { p.Pending, p.WindowOpens = 120, t0.Add(time.Hour) })
	code, stdout, _ := runRolloutCLI(t, &fakeRollouts{controlResp: waiting}, "", "rollout", "resume", "fw-2.0")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "rollout fw-2.0: waiting (firmware 2.0.0)\n  window:    waiting for window, opens at 2026-05-01 15:00 CEST (in 50m00s)\n")
	assert.NotContains(t, stdout, "resume:")
}

// watch across windows: a line at each change between waiting and running, naming the opening or
// the close; the summary says how long the rollout waited for windows.
func TestWatchAcrossWindows(t *testing.T) {
	w1 := prog(workflows.RolloutWaiting, func(p *workflows.RolloutProgress) {
		p.Wave, p.Pending, p.WindowOpens = 1, 120, t0.Add(time.Hour)
	})
	r1 := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Wave, p.Running, p.Pending, p.Active, p.Waited, p.Updated = 1, 10, 110, 0, time.Hour, t0.Add(time.Hour)
		p.WindowCloses = t0.Add(90 * time.Minute)
	})
	w2 := prog(workflows.RolloutWaiting, func(p *workflows.RolloutProgress) {
		p.Wave, p.Succeeded, p.Running, p.Pending, p.Active, p.Waited, p.Updated = 2, 50, 10, 60, 30*time.Minute, time.Hour, t0.Add(90*time.Minute)
		p.WindowOpens = t0.Add(25 * time.Hour)
	})
	done := prog(workflows.RolloutCompleted, func(p *workflows.RolloutProgress) {
		p.Wave, p.Succeeded, p.Active, p.Waited = 5, 120, time.Hour, 24*time.Hour+30*time.Minute
		p.Updated, p.Finished, p.HubCalls = t0.Add(26*time.Hour+10*time.Minute), t0.Add(26*time.Hour+10*time.Minute), 480
	})
	api := &fakeRollouts{progress: []workflows.RolloutProgress{w1, w1, r1, w2, w2, done}}
	var out bytes.Buffer
	require.NoError(t, runWatch(context.Background(), api, "fw-2.0", "text", testWatch(&out)))
	assert.Equal(t, `     +0s  waiting for window, opens at 2026-05-01 15:00 CEST (in 50m00s)  wave 1/5  0/120 done (0%)  failed 0  skipped 0  running 0  pending 120  – devices/min, ETA unknown
  +1h00m  running, window closes at 2026-05-01 15:30 CEST (in 1h20m)  wave 1/5  0/120 done (0%)  failed 0  skipped 0  running 10  pending 110  – devices/min, ETA unknown
  +1h30m  waiting for window, opens at 2026-05-02 15:00 CEST (in 24h50m)  wave 2/5  50/120 done (41%)  failed 0  skipped 0  running 10  pending 60  1.7 devices/min, waiting
 +26h10m  completed  wave 5/5  120/120 done (100%)  failed 0  skipped 0  running 0  pending 0  2.0 devices/min
rollout fw-2.0 completed in 26h10m (40m00s of it paused, 24h30m waiting for maintenance windows): firmware 2.0.0 on 120 devices
  devices:   120 succeeded
  hub calls: 480 in 1 workflow run
  report:    starter rollout report fw-2.0
`, out.String())
}

// The terminal view counts down to the opening on its second line and prints the change above.
func TestBarViewWaiting(t *testing.T) {
	var out testlog.Buffer
	v := newBarView(&out, "fw-2.0", testClock.Now, testClock.Loc())
	v.update(prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Wave, p.Succeeded, p.Running, p.Pending, p.Active, p.WindowCloses = 1, 10, 5, 105, 5*time.Minute, t0.Add(20*time.Minute)
	}))
	waitForScreen(t, &out, "window closes at 2026-05-01 14:20 CEST (in 10m00s)\n")
	v.update(prog(workflows.RolloutWaiting, func(p *workflows.RolloutProgress) {
		p.Wave, p.Succeeded, p.Pending, p.Active, p.Updated, p.WindowOpens = 1, 15, 105, 5*time.Minute, t0.Add(10*time.Minute), t0.Add(time.Hour)
	}))
	waitForScreen(t, &out, "3.0 devices/min, waiting · waiting for window, opens at 2026-05-01 15:00 CEST (in 50m00s)\n")
	v.close()
	screen := ansi.ReplaceAllString(out.String(), "")
	assert.Contains(t, screen, "  failed 0 · skipped 0 · running 5 · pending 105 · 2.0 devices/min, ETA 55m00s · window closes at 2026-05-01 14:20 CEST (in 10m00s)\n")
	assert.Contains(t, screen, "+10m00s  waiting for window, opens at 2026-05-01 15:00 CEST (in 50m00s)\n")
	assert.Contains(t, screen, "fw-2.0 waiting  wave 1/5 [")
	assert.Contains(t, screen, "  failed 0 · skipped 0 · running 0 · pending 105 · 3.0 devices/min, waiting · waiting for window, opens at 2026-05-01 15:00 CEST (in 50m00s)\n")
}

// A rollout out of windows fails with RolloutNoWindow: watch takes its final progress from the
// error's details, as for an abort, and exits 1 with the reason.
func TestWatchOutOfWindows(t *testing.T) {
	final := prog(workflows.RolloutAborted, func(p *workflows.RolloutProgress) {
		p.Reason = "no maintenance window opens after 2026-05-01T13:00:00Z; 70 devices not started"
		p.Wave, p.Succeeded, p.NotStarted, p.Active, p.Finished = 3, 50, 70, time.Hour, t0.Add(time.Hour)
	})
	p, ok := abortedProgress(temporal.NewNonRetryableApplicationError("rollout fw-2.0 aborted: "+final.Reason, workflows.ErrRolloutNoWindow, nil, final))
	require.True(t, ok)
	assert.Equal(t, final, p)
	_, ok = abortedProgress(temporal.NewNonRetryableApplicationError("bad input", workflows.ErrInvalidInput, nil, final))
	assert.False(t, ok, "only an aborted rollout's failure carries its progress")

	api := &fakeRollouts{outcome: make(chan outcomeResult, 1)}
	api.outcome <- outcomeResult{p: final}
	var out bytes.Buffer
	err := runWatch(context.Background(), api, "fw-2.0", "text", testWatch(&out))
	assert.EqualError(t, err, "rollout fw-2.0 aborted: no maintenance window opens after 2026-05-01T13:00:00Z; 70 devices not started")
	assert.Contains(t, out.String(), "rollout fw-2.0 aborted after 1h00m: firmware 2.0.0 on 120 devices\n  devices:   50 succeeded, 70 not started\n")
	assert.False(t, errors.Is(err, context.Canceled))
}

// start prints the windows of a rollout it started: outside them the rollout starts no device.
func TestRolloutStartWithWindows(t *testing.T) {
	in := workflows.RolloutInput{Name: "fw-2.0", Operation: workflows.OperationReboot, Devices: []string{"a", "b"},
		Windows: []workflows.Window{
			{Cron: "0 2 * * SUN", Duration: 4 * time.Hour, TimeZone: "Europe/Warsaw"},
			{Start: time.Date(2026, 11, 29, 2, 0, 0, 0, time.UTC), End: time.Date(2026, 11, 29, 6, 0, 0, 0, time.UTC)},
		}}
	require.NoError(t, in.Validate())
	var out bytes.Buffer
	wo := testWatch(&out)
	require.NoError(t, runStart(context.Background(), &fakeRollouts{}, in, startFlags{}, "text", wo))
	assert.Equal(t, `started rollout fw-2.0: reboot on 2 devices, in 2 maintenance windows
  workflow: rollout/fw-2.0
  ui:       http://ui.test/rollout%2Ffw-2.0
  windows:  0 2 * * SUN for 4h in Europe/Warsaw; 2026-11-29T02:00:00Z/2026-11-29T06:00:00Z
  follow:   starter rollout watch fw-2.0
`, out.String())

	// Attached to a running rollout, whose own windows may differ: not repeated.
	out.Reset()
	require.NoError(t, runStart(context.Background(), &fakeRollouts{existing: "Running"}, in, startFlags{}, "text", wo))
	assert.NotContains(t, out.String(), "windows:")
}
