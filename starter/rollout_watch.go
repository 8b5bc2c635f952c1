package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/cwriter"
	"github.com/vbauerster/mpb/v8/decor"
)

// watchOptions configures how watch and start --wait follow a rollout.
type watchOptions struct {
	// out gets the progress bar and the summary; lines the plain progress lines.
	out, lines io.Writer
	// bar draws a progress bar redrawn in place (out is a terminal) instead of plain lines.
	bar bool
	// poll is the time between progress queries, pollTimeout the most one may take.
	poll, pollTimeout time.Duration
	// minGap is the least time between two plain lines that differ only in their counts; a
	// change of state is printed at once.
	minGap time.Duration
	// now is time.Now outside tests.
	now func() time.Time
	// loc is the time zone maintenance windows are shown in: time.Local outside tests.
	loc *time.Location
}

// quietPolls is how many progress queries in a row may fail before watch says so: a rollout
// not yet picked up by a worker, or continuing as new, cannot answer for a moment.
const quietPolls = 10

// progressView shows the progress as it changes.
type progressView interface {
	update(p workflows.RolloutProgress)
	// note prints a remark between the updates.
	note(text string)
	// close ends the view; the output is free for the summary afterwards.
	close()
}

// watchRollout follows the rollout until it ends and returns its final progress. It asks the
// progress query every o.poll and meanwhile waits for the workflow to close, so that a rollout that
// ends without a final progress (terminated, timed out) ends the watch too.
func watchRollout(ctx context.Context, api rolloutAPI, name string, o watchOptions) (workflows.RolloutProgress, error) {
	if o.now == nil {
		o.now = time.Now
	}
	if o.loc == nil {
		o.loc = time.Local
	}
	var view progressView
	if o.bar {
		view = newBarView(o.out, name, o.now, o.loc)
	} else {
		view = &lineView{w: o.lines, minGap: o.minGap, now: o.now, loc: o.loc}
	}
	p, err := follow(ctx, api, name, o, view)
	view.close()
	return p, err
}

type outcomeResult struct {
	p   workflows.RolloutProgress
	err error
}

// follow is followLoop for a rollout: it polls the progress query, showing each answer in view,
// while Outcome waits for the workflow to close, and returns the final progress from whichever
// tells it first.
func follow(ctx context.Context, api rolloutAPI, name string, o watchOptions, view progressView) (workflows.RolloutProgress, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	closed := make(chan outcomeResult, 1)
	waitOutcome := func(delay time.Duration) {
		go func() {
			select {
			case <-time.After(delay):
			case <-wctx.Done():
				return
			}
			p, err := api.Outcome(wctx, name)
			closed <- outcomeResult{p, err}
		}()
	}
	waitOutcome(0)
	poll := func() (workflows.RolloutProgress, error) {
		pctx, cancel := context.WithTimeout(ctx, o.pollTimeout)
		defer cancel()
		return api.Progress(pctx, name)
	}

	var last, final workflows.RolloutProgress
	var ferr error
	end := func(p workflows.RolloutProgress, err error) bool {
		final, ferr = p, err
		return true
	}
	var nf notFoundError
	failures := 0
	showProgress := func() bool {
		p, err := poll()
		switch {
		case err == nil:
			failures = 0
			last = p
			view.update(p)
			if p.Done() {
				return end(p, nil)
			}
		case errors.As(err, &nf):
			return end(last, err)
		case ctx.Err() == nil:
			if failures++; failures == quietPolls {
				view.note(fmt.Sprintf("no progress for %d polls (%v): is a dmflow worker running? it answers the progress query", failures, err))
			}
		}
		return false
	}
	onOutcome := func(oc outcomeResult) bool {
		var ended endedError
		switch {
		case oc.err == nil:
			view.update(oc.p)
			return end(oc.p, nil)
		case errors.As(oc.err, &ended):
			// A failed resolution still answers the query with its reason.
			if q, err := poll(); err == nil && q.Done() {
				view.update(q)
				return end(q, nil)
			}
			return end(last, fmt.Errorf("rollout %s ended without a result: %w", name, oc.err))
		case errors.As(oc.err, &nf):
			return end(last, oc.err)
		}
		// Says nothing about the rollout (the server unreachable for a moment): ask again.
		waitOutcome(5 * o.poll)
		return false
	}
	if followLoop(ctx, o.poll, showProgress, closed, onOutcome) != nil {
		return last, fmt.Errorf("stopped watching rollout %s, which goes on: starter rollout watch %s", name, name)
	}
	return final, ferr
}

// lineView prints a plain line whenever the progress changes: at once for a change of state, at
// most every minGap for changed counts.
type lineView struct {
	w      io.Writer
	minGap time.Duration
	now    func() time.Time
	loc    *time.Location

	printed   bool
	lastKey   string
	lastState string
	lastAt    time.Time
}

func (v *lineView) update(p workflows.RolloutProgress) {
	key := progressKey(p)
	if v.printed && key == v.lastKey {
		return
	}
	now := v.now()
	if v.printed && p.State == v.lastState && !p.Done() && now.Sub(v.lastAt) < v.minGap {
		return
	}
	fmt.Fprintln(v.w, rolloutLine(p, now, v.loc))
	v.printed, v.lastKey, v.lastState, v.lastAt = true, key, p.State, now
}

func (v *lineView) note(text string) { fmt.Fprintln(v.w, "  note: "+text) }
func (v *lineView) close()           {}

// progressKey is what makes a new line: state, reason, window, wave and counts, not the speed and
// ETA.
func progressKey(p workflows.RolloutProgress) string {
	return fmt.Sprintf("%s|%s|%d %d|%d/%d|%v|%d %d %d %d %d %d %d", p.State, p.Reason, p.WindowOpens.Unix(), p.WindowCloses.Unix(),
		p.Wave, p.Waves, p.Retrying, p.Succeeded, p.Skipped, p.Failed, p.Cancelled, p.NotStarted, p.Running, p.Pending) +
		rollbackKey(p) + looksShort(p) // rollback (policy 1), continuous targeting (policy 3)
}

// doneCount is the devices the rollout has finished with: every result but running and pending.
func doneCount(p workflows.RolloutProgress) int {
	return p.Succeeded + p.Skipped + p.Failed + p.Cancelled + p.NotStarted
}

// devicesPerMinute is the rollout's speed: devices finished (succeeded, skipped, failed) per minute
// of time not paused. ok is false before the first one finished.
func devicesPerMinute(p workflows.RolloutProgress) (rate float64, ok bool) {
	n := p.Succeeded + p.Skipped + p.Failed
	if n == 0 || p.Active <= 0 {
		return 0, false
	}
	return float64(n) / p.Active.Minutes(), true
}

// rolloutETA estimates the time left: the devices running or pending at the current speed. ok is
// false when there is nothing to estimate: ended, paused, waiting for a maintenance window (the
// time left is then time inside windows, which the window line tells better), or no speed yet.
func rolloutETA(p workflows.RolloutProgress) (time.Duration, bool) {
	rate, ok := devicesPerMinute(p)
	if !ok || p.Done() || holdsStarts(p) {
		return 0, false
	}
	return time.Duration(float64(p.Running+p.Pending) / rate * float64(time.Minute)), true
}

// speedText is "12.5 devices/min, ETA 6m15s", shortened to what is known.
func speedText(p workflows.RolloutProgress) string {
	rate, ok := devicesPerMinute(p)
	if !ok {
		if p.Done() {
			return "no device finished"
		}
		return "– devices/min, ETA unknown"
	}
	s := fmt.Sprintf("%.1f devices/min", rate)
	if eta, ok := rolloutETA(p); ok {
		s += ", ETA " + durationText(eta, false)
	} else if holdsStarts(p) {
		s += ", " + p.State
	}
	return s
}

// stateText is the state with its reason: "paused (change freeze)".
func stateText(p workflows.RolloutProgress) string {
	if p.Reason != "" {
		return p.State + " (" + p.Reason + ")"
	}
	return p.State
}

// windowText says where a rollout with maintenance windows stands with them, at now and in loc:
// "waiting for window, opens at 2026-11-29 02:00 CET (in 3h12m)" while waiting, "window closes
// at 2026-11-29 06:00 CET (in 1h05m)" while running in one; "" otherwise.
func windowText(p workflows.RolloutProgress, now time.Time, loc *time.Location) string {
	switch {
	case p.Done():
		return ""
	case p.State == workflows.RolloutWaiting && !p.WindowOpens.IsZero():
		return "waiting for window, opens at " + whenText(p.WindowOpens, now, loc)
	case p.State == workflows.RolloutRunning && !p.WindowCloses.IsZero():
		return "window closes at " + whenText(p.WindowCloses, now, loc)
	}
	return ""
}

// stateWindowText is the state with its reason or, with windows, where it stands with them.
func stateWindowText(p workflows.RolloutProgress, now time.Time, loc *time.Location) string {
	w := windowText(p, now, loc)
	switch {
	case w == "":
		return stateText(p)
	case p.State == workflows.RolloutWaiting:
		return w
	}
	return p.State + ", " + w
}

// waveText is "wave 2/5", "wave 6/6 retry".
func waveText(p workflows.RolloutProgress) string {
	s := fmt.Sprintf("wave %d/%d", p.Wave, p.Waves)
	if p.Retrying {
		s += " retry"
	}
	return s
}

// countsText is the counts of the live view, those of the end only once they occur.
func countsText(p workflows.RolloutProgress, sep string) string {
	parts := []string{
		failedText(p), fmt.Sprintf("skipped %d", p.Skipped),
		fmt.Sprintf("running %d", p.Running), fmt.Sprintf("pending %d", p.Pending),
	}
	if s := awaitingText(p); s != "" {
		parts = append(parts, s)
	}
	if p.Cancelled > 0 {
		parts = append(parts, fmt.Sprintf("cancelled %d", p.Cancelled))
	}
	if p.NotStarted > 0 {
		parts = append(parts, fmt.Sprintf("not started %d", p.NotStarted))
	}
	return strings.Join(parts, sep)
}

// percent is done of total in whole percent, rounded down: 100% only when all are done.
func percent(done, total int) int {
	if total <= 0 {
		return 0
	}
	return done * 100 / total
}

// rolloutLine is one plain line of the live view, at now, with maintenance windows shown in loc:
//
//	+3m45s  running  wave 2/5  45/120 done (37%)  failed 2  skipped 3  running 10  pending 65  12.0 devices/min, ETA 6m15s
//	+1h00m  waiting for window, opens at 2026-11-29 02:00 CET (in 3h12m)  wave 2/5  …
func rolloutLine(p workflows.RolloutProgress, now time.Time, loc *time.Location) string {
	elapsed := "+" + durationText(elapsedOf(p), false)
	if p.State == workflows.RolloutResolving || (p.Total == 0 && !p.Done()) {
		return fmt.Sprintf(" %7s  %s  resolving the targets", elapsed, stateText(p))
	}
	done := doneCount(p)
	return fmt.Sprintf(" %7s  %s  %s  %d/%d done (%d%%)  %s  %s%s", elapsed, stateWindowText(p, now, loc), waveText(p),
		done, p.Total, percent(done, p.Total), countsText(p, "  "), speedText(p), startRateSuffix(p, "  ")) +
		rollbackLine(p) + looksShort(p) // rollback (policy 1), continuous targeting (policy 3)
}

// elapsedOf is the rollout's age at its last change (or end), pauses included.
func elapsedOf(p workflows.RolloutProgress) time.Duration {
	end := p.Updated
	if !p.Finished.IsZero() {
		end = p.Finished
	}
	if p.Started.IsZero() || end.Before(p.Started) {
		return 0
	}
	return end.Sub(p.Started)
}

// barView draws the progress on a terminal with mpb, redrawn in place:
//
//	fw-2.0 running  wave 2/5 [==========>-------------------] 45/120 37%
//	  failed 2 · skipped 3 · running 10 · pending 65 · 12.0 devices/min, ETA 6m15s
//
// With maintenance windows the second line ends with where the rollout stands with them (the
// time to the next opening or the close counting down). Changes of state and notes are printed
// above the bar.
type barView struct {
	progress *mpb.Progress
	bar      *mpb.Bar
	details  *mpb.Bar
	now      func() time.Time
	loc      *time.Location

	mu        sync.Mutex
	cur       workflows.RolloutProgress
	seen      bool
	lastState string
}

func newBarView(out io.Writer, name string, now func() time.Time, loc *time.Location) *barView {
	v := &barView{cur: workflows.RolloutProgress{Name: name, State: workflows.RolloutResolving}, now: now, loc: loc}
	// Auto refresh: out is a terminal here, but the test of this view writes to a buffer. A
	// terminal's lines are as wide as the terminal (mpb shortens them with …); the width is for
	// anything else.
	v.progress = mpb.New(mpb.WithOutput(out), mpb.WithWidth(160), mpb.WithRefreshRate(200*time.Millisecond), mpb.WithAutoRefresh())
	text := func(f func(p workflows.RolloutProgress) string) decor.Decorator {
		return decor.Any(func(decor.Statistics) string {
			v.mu.Lock()
			defer v.mu.Unlock()
			return f(v.cur)
		})
	}
	v.bar = v.progress.New(0, mpb.BarStyle(), mpb.BarWidth(32),
		mpb.PrependDecorators(text(func(p workflows.RolloutProgress) string {
			if p.Total == 0 && !p.Done() {
				return p.Name + " " + p.State
			}
			return fmt.Sprintf("%s %s  %s", p.Name, p.State, waveText(p))
		})),
		mpb.AppendDecorators(text(func(p workflows.RolloutProgress) string {
			done := doneCount(p)
			return fmt.Sprintf("%d/%d %d%%", done, p.Total, percent(done, p.Total))
		})))
	v.details = v.progress.New(0, mpb.NopStyle(), mpb.BarFillerTrim(), mpb.PrependDecorators(text(func(p workflows.RolloutProgress) string {
		if p.Total == 0 && !p.Done() {
			return "  resolving the targets"
		}
		s := "  " + countsText(p, " · ") + " · " + speedText(p) + startRateSuffix(p, " · ")
		if w := windowText(p, v.now(), v.loc); w != "" {
			s += " · " + w
		}
		return s + rollbackLine(p) + looksShort(p) // rollback (policy 1), continuous targeting (policy 3)
	})))
	return v
}

func (v *barView) update(p workflows.RolloutProgress) {
	v.mu.Lock()
	v.cur = p
	changed := v.seen && (p.State != v.lastState)
	v.seen, v.lastState = true, p.State
	v.mu.Unlock()
	if changed && !p.Done() {
		fmt.Fprintf(v.progress, "%s  %s\n", "+"+durationText(elapsedOf(p), false), stateWindowText(p, v.now(), v.loc))
	}
	v.bar.SetTotal(int64(p.Total), false)
	v.bar.SetCurrent(int64(doneCount(p)))
}

func (v *barView) note(text string) { fmt.Fprintln(v.progress, "note: "+text) }

// close draws the bar a last time and leaves it on the screen: full for an ended rollout, where it
// stood when the watch stopped before the end.
func (v *barView) close() {
	v.mu.Lock()
	done := v.cur.Done()
	v.mu.Unlock()
	for _, b := range []*mpb.Bar{v.bar, v.details} {
		if done {
			b.SetTotal(-1, true)
		} else {
			b.Abort(false)
		}
	}
	v.progress.Wait()
}

// isTerminal reports whether w is a terminal, where the progress bar can be redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && cwriter.IsTerminal(int(f.Fd()))
}

// operationText is "firmware 2.0.0" or "reboot".
func operationText(p workflows.RolloutProgress) string {
	if p.Operation == workflows.OperationFirmware && p.Version != "" {
		return "firmware " + p.Version
	}
	return p.Operation
}

// resultCounts lists the final counts that are not zero, succeeded first.
func resultCounts(p workflows.RolloutProgress) string {
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{{p.Succeeded, "succeeded"}, {p.Skipped, "skipped"}, {p.Failed, "failed"}, {p.Cancelled, "cancelled"},
		{p.NotStarted, "not started"}, {p.Running, "running"}, {p.Pending, "pending"}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// printStatus prints the progress for status, pause, resume and cancel; maintenance windows at now,
// in loc.
func printStatus(out io.Writer, p workflows.RolloutProgress, url string, now time.Time, loc *time.Location) {
	fmt.Fprintf(out, "rollout %s: %s (%s)\n", p.Name, p.State, operationText(p))
	if p.Reason != "" {
		fmt.Fprintf(out, "  reason:    %s\n", p.Reason)
	}
	if w := windowText(p, now, loc); w != "" {
		fmt.Fprintf(out, "  window:    %s\n", w)
	}
	if p.Total == 0 && !p.Done() {
		fmt.Fprintf(out, "  devices:   resolving the targets\n")
	} else {
		done := doneCount(p)
		fmt.Fprintf(out, "  devices:   %d/%d done (%d%%): %s\n", done, p.Total, percent(done, p.Total), resultCounts(p))
		wave := fmt.Sprintf("%d of %d, %d of its %d devices done, %d failed", p.Wave, p.Waves, p.WaveDone, p.WaveSize, p.WaveFailed)
		if p.Retrying {
			wave += " (retrying the failed devices)"
		}
		fmt.Fprintf(out, "  wave:      %s\n", wave)
		printRetries(out, p)
		fmt.Fprintf(out, "  speed:     %s\n", speedText(p))
	}
	printRollbackStatus(out, p) // rollback (policy 1)
	limits := fmt.Sprintf("max failures %s, max concurrent %d", p.MaxFailures, p.MaxConcurrent) + retryLimits(p)
	if p.Rate > 0 {
		limits += fmt.Sprintf(", rate %g hub calls/s", p.Rate)
	}
	fmt.Fprintf(out, "  limits:    %s\n", limits)
	printGates(out, p, now, loc)
	printStartRate(out, p)
	printLooks(out, p, now, loc)
	if !p.Started.IsZero() {
		waited := ""
		if p.Waited > 0 {
			waited = ", waited " + durationText(p.Waited, false) + " for windows"
		}
		fmt.Fprintf(out, "  started:   %s, active %s%s, %d hub calls, %d %s\n", p.Started.UTC().Format(time.RFC3339),
			durationText(p.Active, false), waited, p.HubCalls, p.Runs, plural(p.Runs, "workflow run", "workflow runs"))
	}
	if !p.Finished.IsZero() {
		fmt.Fprintf(out, "  finished:  %s, after %s\n", p.Finished.UTC().Format(time.RFC3339), durationText(elapsedOf(p), false))
	}
	fmt.Fprintf(out, "  ui:        %s\n", url)
}

// maxFailedShown is how many failed devices the summary lists; the report has them all.
const maxFailedShown = 10

// printSummary prints how the rollout ended, with its first failed devices from the report.
func printSummary(ctx context.Context, out io.Writer, api rolloutAPI, p workflows.RolloutProgress) {
	var failed []workflows.DeviceRow
	var ferr error
	if p.Failed > 0 {
		failed, ferr = firstFailed(ctx, api, p.Name, maxFailedShown)
	}
	writeSummary(out, p, failed, ferr)
}

// writeSummary prints the end of a rollout: state and duration, counts, reason, hub calls, and the
// failed devices given.
func writeSummary(out io.Writer, p workflows.RolloutProgress, failed []workflows.DeviceRow, failedErr error) {
	verb := map[string]string{
		workflows.RolloutCompleted: "completed in",
		workflows.RolloutAborted:   "aborted after",
		workflows.RolloutCancelled: "was cancelled after",
		workflows.RolloutFailed:    "failed after",
		workflows.RolloutEnded:     "ended at its end time after",
		// rollback (policy 1)
		workflows.RolloutRolledBack: "aborted and rolled back after",
	}[p.State]
	if verb == "" {
		verb = p.State + " after"
	}
	var idle []string
	if d := (elapsedOf(p) - p.Active - p.Waited - p.Awaited).Round(time.Second); p.Active > 0 && d > 0 {
		idle = append(idle, durationText(d, false)+" of it paused")
	}
	if d := p.Waited.Round(time.Second); d > 0 {
		idle = append(idle, durationText(d, false)+" waiting for maintenance windows")
	}
	idle = append(idle, idleGates(p)...)
	paused := ""
	if len(idle) > 0 {
		paused = " (" + strings.Join(idle, ", ") + ")"
	}
	fmt.Fprintf(out, "rollout %s %s %s%s: %s on %d %s\n", p.Name, verb, durationText(elapsedOf(p), false), paused,
		operationText(p), p.Total, plural(p.Total, "device", "devices"))
	fmt.Fprintf(out, "  devices:   %s\n", resultCounts(p))
	writeFailureTypes(out, p)
	if p.Reason != "" {
		fmt.Fprintf(out, "  reason:    %s\n", p.Reason)
	}
	writeRollbackSummary(out, p) // rollback (policy 1)
	summaryLooks(out, p)
	fmt.Fprintf(out, "  hub calls: %d in %d %s\n", p.HubCalls, p.Runs, plural(p.Runs, "workflow run", "workflow runs"))
	summaryGates(out, p, time.UTC)
	if p.Failed > 0 {
		switch {
		case failedErr != nil:
			fmt.Fprintf(out, "  failed devices: cannot list them: %v\n", failedErr)
		case len(failed) < p.Failed:
			fmt.Fprintf(out, "  failed devices (the first %d of %d):\n", len(failed), p.Failed)
		default:
			fmt.Fprintf(out, "  failed devices:\n")
		}
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		for _, r := range failed {
			fmt.Fprintf(tw, "    %s\twave %s\t%s\n", r.DeviceID, waveCell(r.Wave), rowError(r))
		}
		tw.Flush()
	}
	if p.Total > 0 {
		fmt.Fprintf(out, "  report:    starter rollout report %s\n", p.Name)
	}
}

// firstFailed pages through the report until it has n failed devices.
func firstFailed(ctx context.Context, api rolloutAPI, name string, n int) ([]workflows.DeviceRow, error) {
	var failed []workflows.DeviceRow
	err := pageReport(ctx, api, name, func(rows []workflows.DeviceRow) bool {
		for _, r := range rows {
			if r.Result == workflows.DeviceFailed {
				failed = append(failed, r)
				if len(failed) == n {
					return false
				}
			}
		}
		return true
	})
	return failed, err
}

// outcomeError is the error, and so the exit code, of a rollout's end: nil only for a rollout that
// completed with no failed device.
func outcomeError(p workflows.RolloutProgress) error {
	why := ""
	if p.Reason != "" {
		why = ": " + p.Reason
	}
	switch p.State {
	case workflows.RolloutCompleted:
		if p.Failed == 0 {
			return nil
		}
		return fmt.Errorf("rollout %s completed with %d failed %s (within --max-failures %s): see starter rollout report %s",
			p.Name, p.Failed, plural(p.Failed, "device", "devices"), p.MaxFailures, p.Name)
	case workflows.RolloutAborted:
		return fmt.Errorf("rollout %s aborted%s", p.Name, why)
	case workflows.RolloutRolledBack: // rollback (policy 1)
		return fmt.Errorf("rollout %s aborted and was rolled back%s", p.Name, why)
	case workflows.RolloutCancelled:
		return fmt.Errorf("rollout %s was cancelled%s", p.Name, why)
	case workflows.RolloutFailed:
		return fmt.Errorf("rollout %s failed%s", p.Name, why)
	case workflows.RolloutEnded:
		if p.NotStarted+p.Cancelled+p.Failed == 0 {
			return nil
		}
		return fmt.Errorf("rollout %s ended at its end time%s", p.Name, why)
	}
	return fmt.Errorf("rollout %s has not ended: %s", p.Name, p.State)
}
