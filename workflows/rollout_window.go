package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/workflow"
)

// Maintenance windows in the Rollout workflow: the main loop asks window before it starts a device
// and, outside a window, waits on a timer until the next opens.

// windowState is WindowAt's answer at At, as the rollout records it.
type windowState struct {
	At     time.Time `json:"at"`
	Open   bool      `json:"open,omitempty"`
	Opens  time.Time `json:"opens,omitzero"`
	Closes time.Time `json:"closes,omitzero"`
	// None: no window is open at At or opens after it.
	None bool `json:"none,omitempty"`
}

// holdsAt reports whether the state still holds at t: until the open window closes, until the
// next one opens, and forever once none opens any more.
func (w windowState) holdsAt(t time.Time) bool {
	switch {
	case t.Before(w.At):
		return false
	case w.None:
		return true
	case w.Open:
		return t.Before(w.Closes)
	}
	return t.Before(w.Opens)
}

// window is the window state now. It is computed at a boundary only (an opening or a close) and
// recorded in the history with SideEffect, so that a replay takes the recorded boundaries rather
// than computing them again. Computing needs the time zone database: time.LoadLocation reads it
// from the worker's file system (the worker embeds Go's copy, time/tzdata, as a fallback), and a
// replay on a machine with other rules (a tzdata update moving a zone's clock change) would open
// the windows elsewhere in time and diverge from the history. SideEffect rather than
// MutableSideEffect: the state changes at every boundary anyway, and SideEffect does not run the
// function again on replay. Two markers per window, and none per device.
func (r *rollout) window(ctx workflow.Context) windowState {
	now := workflow.Now(ctx)
	if r.winKnown && r.win.holdsAt(now) {
		return r.win
	}
	windows := r.in.Windows
	var ws windowState
	err := workflow.SideEffect(ctx, func(workflow.Context) any {
		open, opens, closes, ok := WindowAt(windows, now)
		return windowState{At: now, Open: open, Opens: opens, Closes: closes, None: !ok}
	}).Get(&ws)
	if err != nil {
		// The value was encoded by this code a moment (or a replay) ago; decoding it cannot fail
		// but for a broken data converter. Waiting for the next opening is the safe reading.
		r.logger.Error("cannot decode the recorded maintenance window", "error", err)
		ws = windowState{At: now, Opens: now.Add(time.Minute)}
	}
	if ws.Open != r.win.Open || ws.None != r.win.None || !r.winKnown {
		switch {
		case ws.None:
			r.logger.Info("no maintenance window opens any more")
		case ws.Open:
			r.logger.Info("maintenance window open", "closes", ws.Closes)
		default:
			r.logger.Info("outside the maintenance windows", "opens", ws.Opens)
		}
	}
	r.win, r.winKnown = ws, true
	return ws
}

// waitForWindow makes the rollout wait until opens: the state waiting, and a timer.
func (r *rollout) waitForWindow(ctx workflow.Context, opens time.Time) {
	if r.waitingSince.IsZero() {
		r.waitingSince = workflow.Now(ctx)
		r.now = r.waitingSince
	}
	r.setState(ctx, RolloutWaiting)
	r.armWindowTimer(ctx, opens, "maintenance window opens")
}

// endWait ends the wait for a window in progress at now, adding it to the time waited.
func (r *rollout) endWait(now time.Time) {
	if r.waitingSince.IsZero() {
		return
	}
	r.st.WaitedFor += now.Sub(r.waitingSince)
	r.waitingSince = time.Time{}
	r.now = now
}

// armWindowTimer makes the window timer fire at at, unless it already will. The summary shows in
// the Temporal UI's timeline.
func (r *rollout) armWindowTimer(ctx workflow.Context, at time.Time, summary string) {
	if r.windowTimer != nil && r.windowTimerAt.Equal(at) {
		return
	}
	if r.windowTimer != nil {
		r.cancelWindowTimer()
	}
	// At least a millisecond: a timer of zero is ready at once without a command, and the loop
	// would ask again before the boundary passed.
	d := max(at.Sub(workflow.Now(ctx)), time.Millisecond)
	tctx, cancel := workflow.WithCancel(ctx)
	r.windowTimer = workflow.NewTimerWithOptions(tctx, d, workflow.TimerOptions{Summary: summary})
	r.windowTimerAt, r.cancelWindowTimer = at, cancel
}

// outOfWindows ends a rollout with devices left to start when no window opens any more: like an
// abort, the devices in flight finish and the rest are not started.
func (r *rollout) outOfWindows(ctx workflow.Context) {
	left := r.agg.Pending
	if r.fl == nil {
		left = 0
		for _, row := range r.st.Rows[r.next:] {
			if row.Result == DevicePending {
				left++
			}
		}
	}
	r.noWindow = true
	r.abortReason = fmt.Sprintf("no maintenance window opens after %s; %d %s not started",
		workflow.Now(ctx).UTC().Format(time.RFC3339), left, pluralDevices(left))
	r.logger.Warn("no maintenance window opens any more", "not_started", left, "running", r.running)
}

// pluralDevices is "device" or "devices" for n.
func pluralDevices(n int) string {
	if n == 1 {
		return "device"
	}
	return "devices"
}

// windowProgress fills the window fields of p: the next opening while waiting, the close while
// running inside a window with devices left to start.
func (r *rollout) windowProgress(p *RolloutProgress) {
	if !r.windowed || !r.winKnown || !r.win.holdsAt(r.now) {
		return
	}
	switch {
	case r.state == RolloutWaiting && !r.win.Open && !r.win.None:
		p.WindowOpens = r.win.Opens
	case r.state == RolloutRunning && r.win.Open && p.Pending > 0:
		p.WindowCloses = r.win.Closes
	}
}

// stateAfterResume is the state a resume leads to: waiting when the rollout is outside its
// windows by the state last recorded, else running. The main loop checks again at once.
func (r *rollout) stateAfterResume(now time.Time) string {
	if r.windowed && r.winKnown && !r.win.Open && !r.win.None && r.win.holdsAt(now) {
		return RolloutWaiting
	}
	return r.runningState() // rollback (policy 1): rolling back once it aborted
}
