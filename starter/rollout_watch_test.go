package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/testlog"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A rollout as watch sees it: running, paused, resumed, completed. One line per change, none for a
// repeated answer, then the summary; exit 0.
func TestWatchRunningPausedCompleted(t *testing.T) {
	p1 := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Wave, p.Running, p.Pending, p.Active, p.Updated = 1, 1, 119, 5*time.Second, t0.Add(5*time.Second)
	})
	p2 := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Wave, p.Succeeded, p.Running, p.Pending, p.Active, p.Updated = 2, 1, 2, 117, time.Minute, t0.Add(time.Minute)
	})
	p3 := prog(workflows.RolloutPaused, func(p *workflows.RolloutProgress) {
		p.Reason, p.Wave, p.Succeeded, p.Pending, p.Active, p.Updated = "maintenance", 2, 3, 117, 2*time.Minute, t0.Add(2*time.Minute)
	})
	p4 := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Wave, p.Succeeded, p.Skipped, p.Running, p.Pending, p.Active, p.Updated = 3, 40, 2, 20, 58, 6*time.Minute, t0.Add(8*time.Minute)
	})
	p5 := prog(workflows.RolloutCompleted, func(p *workflows.RolloutProgress) {
		p.Wave, p.Succeeded, p.Skipped, p.Active, p.Updated, p.Finished, p.HubCalls = 5, 118, 2, 10*time.Minute, t0.Add(12*time.Minute), t0.Add(12*time.Minute), 480
	})
	api := &fakeRollouts{progress: []workflows.RolloutProgress{p1, p1, p2, p2, p3, p3, p4, p5}}
	var out bytes.Buffer
	err := runWatch(context.Background(), api, "fw-2.0", "text", testWatch(&out))
	require.NoError(t, err)
	assert.Equal(t, `     +5s  running  wave 1/5  0/120 done (0%)  failed 0  skipped 0  running 1  pending 119  – devices/min, ETA unknown
  +1m00s  running  wave 2/5  1/120 done (0%)  failed 0  skipped 0  running 2  pending 117  1.0 devices/min, ETA 1h59m
  +2m00s  paused (maintenance)  wave 2/5  3/120 done (2%)  failed 0  skipped 0  running 0  pending 117  1.5 devices/min, paused
  +8m00s  running  wave 3/5  42/120 done (35%)  failed 0  skipped 2  running 20  pending 58  7.0 devices/min, ETA 11m09s
 +12m00s  completed  wave 5/5  120/120 done (100%)  failed 0  skipped 2  running 0  pending 0  12.0 devices/min
rollout fw-2.0 completed in 12m00s (2m00s of it paused): firmware 2.0.0 on 120 devices
  devices:   118 succeeded, 2 skipped
  hub calls: 480 in 1 workflow run
  report:    starter rollout report fw-2.0
`, out.String())
	assert.Empty(t, api.reports, "no failed device: no report query")
}

// An aborted rollout: its summary lists the first ten failed devices, paging through the report,
// and watch exits 1 with the reason.
func TestWatchAborted(t *testing.T) {
	aborted := prog(workflows.RolloutAborted, func(p *workflows.RolloutProgress) {
		p.Reason = "12 of 30 devices failed in wave 4, more than 10% allows"
		p.Wave, p.Succeeded, p.Failed, p.NotStarted = 4, 18, 12, 90
		p.Active, p.Updated, p.Finished, p.HubCalls, p.Runs = 3*time.Minute, t0.Add(3*time.Minute), t0.Add(3*time.Minute), 150, 2
	})
	var rows []workflows.DeviceRow
	for i := range 30 {
		r := workflows.DeviceRow{DeviceID: fmt.Sprintf("dev-%03d", i), Wave: 3, Result: workflows.DeviceUpdated}
		if i%5 != 0 && i > 6 {
			r.Result, r.Error, r.ErrorType = workflows.DeviceFailed, fmt.Sprintf("device dev-%03d\ndid not answer", i), "DeviceOffline"
		}
		rows = append(rows, r)
	}
	api := &fakeRollouts{progress: []workflows.RolloutProgress{aborted}, rows: rows, pageSize: 7}
	var out bytes.Buffer
	err := runWatch(context.Background(), api, "fw-2.0", "text", testWatch(&out))
	require.Error(t, err)
	assert.Equal(t, "rollout fw-2.0 aborted: 12 of 30 devices failed in wave 4, more than 10% allows", err.Error())
	assert.Equal(t, `  +3m00s  aborted (12 of 30 devices failed in wave 4, more than 10% allows)  wave 4/5  120/120 done (100%)  failed 12  skipped 0  running 0  pending 0  not started 90  10.0 devices/min
rollout fw-2.0 aborted after 3m00s: firmware 2.0.0 on 120 devices
  devices:   18 succeeded, 12 failed, 90 not started
  reason:    12 of 30 devices failed in wave 4, more than 10% allows
  hub calls: 150 in 2 workflow runs
  failed devices (the first 10 of 12):
    dev-007  wave 4  DeviceOffline: device dev-007 did not answer
    dev-008  wave 4  DeviceOffline: device dev-008 did not answer
    dev-009  wave 4  DeviceOffline: device dev-009 did not answer
    dev-011  wave 4  DeviceOffline: device dev-011 did not answer
    dev-012  wave 4  DeviceOffline: device dev-012 did not answer
    dev-013  wave 4  DeviceOffline: device dev-013 did not answer
    dev-014  wave 4  DeviceOffline: device dev-014 did not answer
    dev-016  wave 4  DeviceOffline: device dev-016 did not answer
    dev-017  wave 4  DeviceOffline: device dev-017 did not answer
    dev-018  wave 4  DeviceOffline: device dev-018 did not answer
  report:    starter rollout report fw-2.0
`, out.String())
	// Paging stopped once ten were found: rows 0–20 in three pages.
	assert.Equal(t, []workflows.ReportRequest{{Offset: 0, Limit: 2000}, {Offset: 7, Limit: 2000}, {Offset: 14, Limit: 2000}}, api.reports)
}

func TestOutcomeError(t *testing.T) {
	for _, tc := range []struct {
		state  string
		failed int
		reason string
		want   string
	}{
		{workflows.RolloutCompleted, 0, "", ""},
		{workflows.RolloutCompleted, 2, "", "rollout fw-2.0 completed with 2 failed devices (within --max-failures 10%): see starter rollout report fw-2.0"},
		{workflows.RolloutAborted, 9, "too many failures", "rollout fw-2.0 aborted: too many failures"},
		{workflows.RolloutCancelled, 0, "bad image", "rollout fw-2.0 was cancelled: bad image"},
		{workflows.RolloutCancelled, 0, "", "rollout fw-2.0 was cancelled"},
		{workflows.RolloutFailed, 0, "query: syntax error", "rollout fw-2.0 failed: query: syntax error"},
		{workflows.RolloutRunning, 0, "", "rollout fw-2.0 has not ended: running"},
	} {
		t.Run(tc.state+tc.reason, func(t *testing.T) {
			err := outcomeError(prog(tc.state, func(p *workflows.RolloutProgress) { p.Failed, p.Reason = tc.failed, tc.reason }))
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			assert.EqualError(t, err, tc.want)
		})
	}
}

// A rollout terminated from the outside never reports a final state: the closed workflow ends the
// watch, with the error.
func TestWatchTerminated(t *testing.T) {
	running := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) { p.Wave, p.Running, p.Pending = 1, 1, 119 })
	api := &fakeRollouts{progress: []workflows.RolloutProgress{running}, outcome: make(chan outcomeResult, 1)}
	api.outcome <- outcomeResult{err: endedError{errors.New("workflow terminated by ops")}}
	var out bytes.Buffer
	_, err := watchRollout(context.Background(), api, "fw-2.0", testWatch(&out))
	require.Error(t, err)
	assert.Equal(t, "rollout fw-2.0 ended without a result: workflow terminated by ops", err.Error())
}

// A failed resolution fails the workflow; the query then tells why.
func TestWatchResolutionFailed(t *testing.T) {
	failed := prog(workflows.RolloutFailed, func(p *workflows.RolloutProgress) {
		p.Total, p.Reason = 0, "resolve the targets: hub query: 400 bad query"
	})
	api := &fakeRollouts{progress: []workflows.RolloutProgress{prog(workflows.RolloutResolving, func(p *workflows.RolloutProgress) { p.Total = 0 }), failed},
		outcome: make(chan outcomeResult, 1)}
	api.outcome <- outcomeResult{err: endedError{errors.New("activity error")}}
	var out bytes.Buffer
	err := runWatch(context.Background(), api, "fw-2.0", "text", testWatch(&out))
	assert.EqualError(t, err, "rollout fw-2.0 failed: resolve the targets: hub query: 400 bad query")
	assert.Contains(t, out.String(), "     +0s  resolving  resolving the targets\n")
	assert.Contains(t, out.String(), "rollout fw-2.0 failed after 0s: firmware 2.0.0 on 0 devices\n")
	assert.NotContains(t, out.String(), "report:")
}

// No worker answers the query, but the workflow's result arrives: watch says so once and ends with
// the result.
func TestWatchFromOutcomeWithoutQueries(t *testing.T) {
	done := prog(workflows.RolloutCompleted, func(p *workflows.RolloutProgress) { p.Succeeded, p.Wave, p.Active = 120, 5, time.Minute })
	api := &fakeRollouts{outcome: make(chan outcomeResult)}
	go func() {
		// The result arrives once watch has polled in vain long enough to say so.
		assert.Eventually(t, func() bool {
			api.mu.Lock()
			defer api.mu.Unlock()
			return api.polls >= quietPolls
		}, 5*time.Second, time.Millisecond)
		api.outcome <- outcomeResult{p: done}
	}()
	var out bytes.Buffer
	p, err := watchRollout(context.Background(), api, "fw-2.0", testWatch(&out))
	require.NoError(t, err)
	assert.Equal(t, done, p)
	assert.Equal(t, 1, strings.Count(out.String(), "note: no progress for 10 polls (no progress scripted): is a dmflow worker running?"), out.String())
	assert.Contains(t, out.String(), "completed  wave 5/5  120/120 done (100%)")
}

func TestWatchNotFound(t *testing.T) {
	var out bytes.Buffer
	_, err := watchRollout(context.Background(), &fakeRollouts{missing: true}, "nope", testWatch(&out))
	var nf notFoundError
	assert.ErrorAs(t, err, &nf)
	assert.Empty(t, out.String())
}

// Ctrl-C stops the watch, not the rollout.
func TestWatchInterrupted(t *testing.T) {
	running := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) { p.Wave, p.Running, p.Pending = 1, 1, 119 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	_, err := watchRollout(ctx, &fakeRollouts{progress: []workflows.RolloutProgress{running}}, "fw-2.0", testWatch(&out))
	assert.EqualError(t, err, "stopped watching rollout fw-2.0, which goes on: starter rollout watch fw-2.0")
	assert.Equal(t, 1, strings.Count(out.String(), "\n"), "one line for an unchanged progress: %q", out.String())
}

// With --output json standard output holds the final progress alone; the lines go to stderr.
func TestWatchJSON(t *testing.T) {
	done := prog(workflows.RolloutCompleted, func(p *workflows.RolloutProgress) { p.Succeeded, p.Wave, p.Active = 120, 5, time.Minute })
	api := &fakeRollouts{progress: []workflows.RolloutProgress{prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) { p.Pending = 120 }), done}}
	code, stdout, stderr := runRolloutCLI(t, api, "", "rollout", "watch", "fw-2.0", "-o", "json", "--poll-interval", "1ms")
	assert.Equal(t, 0, code)
	var got workflows.RolloutProgress
	require.NoError(t, jsonUnmarshal(stdout, &got))
	assert.Equal(t, done, got)
	assert.Contains(t, stderr, "running  wave 0/5  0/120 done (0%)")
	assert.Contains(t, stderr, "completed  wave 5/5  120/120 done (100%)")
}

// Plain lines: a change of counts at most every minGap, a change of state at once.
func TestLineViewRateLimit(t *testing.T) {
	now := t0
	var out bytes.Buffer
	v := &lineView{w: &out, minGap: time.Second, now: func() time.Time { return now }}
	step := func(d time.Duration, p workflows.RolloutProgress) {
		now = now.Add(d)
		v.update(p)
	}
	running := func(done int) workflows.RolloutProgress {
		return prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) { p.Wave, p.Succeeded, p.Pending = 1, done, 120-done })
	}
	step(0, running(0))                                                                                                                          // printed
	step(300*time.Millisecond, running(1))                                                                                                       // too soon
	step(300*time.Millisecond, running(2))                                                                                                       // too soon
	step(500*time.Millisecond, running(3))                                                                                                       // 1.1 s after the last line: printed
	step(100*time.Millisecond, running(3))                                                                                                       // unchanged
	step(100*time.Millisecond, running(4))                                                                                                       // too soon
	step(100*time.Millisecond, prog(workflows.RolloutPaused, func(p *workflows.RolloutProgress) { p.Wave, p.Succeeded, p.Pending = 1, 4, 116 })) // state: at once
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		got = append(got, strings.Fields(l)[1]+" "+strings.Fields(l)[4])
	}
	assert.Equal(t, []string{"running 0/120", "running 3/120", "paused 4/120"}, got)
}

func TestRolloutLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    workflows.RolloutProgress
		want string
	}{
		{"resolving", prog(workflows.RolloutResolving, func(p *workflows.RolloutProgress) { p.Total = 0 }),
			"     +0s  resolving  resolving the targets"},
		{"no device finished yet", prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
			p.Wave, p.Running, p.Pending, p.Active, p.Updated = 1, 1, 119, 30*time.Second, t0.Add(30*time.Second)
		}), "    +30s  running  wave 1/5  0/120 done (0%)  failed 0  skipped 0  running 1  pending 119  – devices/min, ETA unknown"},
		{"running", prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
			p.Wave, p.Succeeded, p.Skipped, p.Failed, p.Running, p.Pending = 2, 40, 3, 2, 10, 65
			p.Active, p.Updated = 3*time.Minute+45*time.Second, t0.Add(3*time.Minute+45*time.Second)
		}), "  +3m45s  running  wave 2/5  45/120 done (37%)  failed 2  skipped 3  running 10  pending 65  12.0 devices/min, ETA 6m15s"},
		{"retrying, hours", prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
			p.Total, p.Wave, p.Waves, p.Retrying, p.Succeeded, p.Running, p.Pending = 5000, 9, 9, true, 4000, 10, 990
			p.Active, p.Updated = 4*time.Hour, t0.Add(5*time.Hour+3*time.Minute)
		}), "  +5h03m  running  wave 9/9 retry  4000/5000 done (80%)  failed 0  skipped 0  running 10  pending 990  16.7 devices/min, ETA 1h00m"},
		{"cancelled", prog(workflows.RolloutCancelled, func(p *workflows.RolloutProgress) {
			p.Reason, p.Wave, p.Succeeded, p.Cancelled, p.NotStarted = "wrong image", 3, 20, 5, 95
			p.Active, p.Updated, p.Finished = 2*time.Minute, t0.Add(time.Minute), t0.Add(2*time.Minute)
		}), "  +2m00s  cancelled (wrong image)  wave 3/5  120/120 done (100%)  failed 0  skipped 0  running 0  pending 0  cancelled 5  not started 95  10.0 devices/min"},
		{"ended with none finished", prog(workflows.RolloutCancelled, func(p *workflows.RolloutProgress) { p.NotStarted = 120 }),
			"     +0s  cancelled  wave 0/5  120/120 done (100%)  failed 0  skipped 0  running 0  pending 0  not started 120  no device finished"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, rolloutLine(tc.p, t0, time.UTC))
		})
	}
}

func TestSpeedAndETA(t *testing.T) {
	p := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Succeeded, p.Skipped, p.Failed, p.Running, p.Pending, p.Active = 20, 5, 5, 10, 80, 3*time.Minute
	})
	rate, ok := devicesPerMinute(p)
	assert.True(t, ok)
	assert.InDelta(t, 10.0, rate, 1e-9)
	eta, ok := rolloutETA(p)
	assert.True(t, ok)
	assert.Equal(t, 9*time.Minute, eta)

	p.State = workflows.RolloutPaused
	_, ok = rolloutETA(p)
	assert.False(t, ok, "no ETA while paused")
	p.Active = 0
	_, ok = devicesPerMinute(p)
	assert.False(t, ok)
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                    "0s",
		0:                               "0s",
		1499 * time.Millisecond:         "1s",
		59 * time.Second:                "59s",
		time.Minute:                     "1m00s",
		6*time.Minute + 5*time.Second:   "6m05s",
		59*time.Minute + 59*time.Second: "59m59s",
		time.Hour:                       "1h00m",
		47*time.Hour + 59*time.Minute:   "47h59m",
		75 * time.Hour:                  "3d03h",
	} {
		assert.Equal(t, want, durationText(d, false), "%v", d)
	}
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// waitForScreen waits until the terminal view has drawn want.
func waitForScreen(t *testing.T, out *testlog.Buffer, want string) {
	t.Helper()
	require.Eventually(t, func() bool { return strings.Contains(ansi.ReplaceAllString(out.String(), ""), want) }, 5*time.Second, 10*time.Millisecond,
		"the view did not draw %q", want)
}

// The terminal view: the bar with its counts, state changes printed above it, the final frame left
// on the screen.
func TestBarView(t *testing.T) {
	var out testlog.Buffer
	v := newBarView(&out, "fw-2.0", time.Now, time.UTC)
	v.update(prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Wave, p.Succeeded, p.Failed, p.Running, p.Pending, p.Active = 2, 40, 1, 10, 69, 4*time.Minute
	}))
	waitForScreen(t, &out, "fw-2.0 running  wave 2/5 [")
	v.update(prog(workflows.RolloutPaused, func(p *workflows.RolloutProgress) {
		p.Reason, p.Wave, p.Succeeded, p.Failed, p.Pending, p.Active, p.Updated = "maintenance", 2, 50, 1, 69, 5*time.Minute, t0.Add(6*time.Minute)
	}))
	waitForScreen(t, &out, "+6m00s  paused (maintenance)\n")
	v.note("a remark")
	v.update(prog(workflows.RolloutCompleted, func(p *workflows.RolloutProgress) {
		p.Wave, p.Succeeded, p.Failed, p.Skipped, p.Active = 5, 117, 1, 2, 10*time.Minute
	}))
	v.close()
	screen := ansi.ReplaceAllString(out.String(), "")
	assert.Contains(t, screen, "fw-2.0 running  wave 2/5 [=========>--------------------] 41/120 34%\n")
	assert.Contains(t, screen, "  failed 1 · skipped 0 · running 10 · pending 69 · 10.2 devices/min, ETA 7m42s\n")
	assert.Contains(t, screen, "+6m00s  paused (maintenance)\n")
	assert.Contains(t, screen, "note: a remark\n")
	// The last frame.
	assert.Contains(t, screen, "fw-2.0 completed  wave 5/5 [==============================] 120/120 100%\n")
	assert.Contains(t, screen, "  failed 1 · skipped 2 · running 0 · pending 0 · 12.0 devices/min\n")
}

// A watch stopped before the end leaves the bar where it stood.
func TestBarViewInterrupted(t *testing.T) {
	var out testlog.Buffer
	v := newBarView(&out, "fw-2.0", time.Now, time.UTC)
	v.update(prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) { p.Wave, p.Succeeded, p.Pending = 1, 30, 90 }))
	v.close()
	screen := ansi.ReplaceAllString(out.String(), "")
	assert.Contains(t, screen, "] 30/120 25%\n")
	assert.NotContains(t, screen, "100%")
}
