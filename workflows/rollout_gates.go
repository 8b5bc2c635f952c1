package workflows

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/workflow"
)

// Approval gates, the success condition per wave and the end time of a sharded rollout (policies 2
// and 6 of issue 18).
//
//   - Approval gates (RolloutInput.ApproveAfterWave or ApproveEachWave): when a gated wave has
//     finished and devices are left for a next one, the rollout waits in RolloutAwaitingApproval,
//     nothing in flight, until UpdateApprove. The approvals (wave, time, the caller's client
//     identity, a note) are kept in the state and the progress. Pause, resume and cancel work as
//     ever (resume returns to awaiting approval); time spent awaiting is not active time. A run may
//     continue as new while awaiting: the wait travels in RolloutState.
//   - Success condition (PauseBelow): when a wave followed by another finishes and the share of its
//     finished devices (skipped ones not counted) that succeeded is below PauseBelow, the rollout
//     pauses itself, with a reason naming the wave and its share; resume goes on. The failure
//     threshold is judged first, on every tally: an abort wins.
//   - End time (EndAt, or EndAfter the rollout's start): a durable timer in the main loop, armed
//     once a run, which fires whatever the rollout does (running, paused, waiting for a window,
//     awaiting approval). No device starts after it; with EndCancel the devices in flight are
//     cancelled too (as UpdateCancel cancels them), with EndStop they finish. The rollout ends as
//     RolloutEnded, its reason saying so and how many devices were not started.
//
// All of it is new commands (a timer, search attribute changes, a pause), asked for with
// gatesChange only when one of the fields is set, so that other rollouts keep their histories.

// gatesChange is the workflow.GetVersion change ID of approval gates, the success condition and
// the end time: a run recorded by a worker that did not know them (DefaultVersion) ignores them.
const gatesChange = "rollout-gates"

// More rollout states (see the others in rollout_api.go).
const (
	// RolloutAwaitingApproval: a wave gated by ApproveAfterWave (or ApproveEachWave) finished and
	// the rollout waits for UpdateApprove before the next one starts; no device is in flight.
	RolloutAwaitingApproval = "awaiting-approval"
	// RolloutEnded: the end time (EndAt, EndAfter) was reached before every device was started;
	// those not started were left untouched. A final state: the workflow completes with it.
	RolloutEnded = "ended"
)

// UpdateApprove lets a rollout awaiting approval start its next wave. Argument: an ApproveRequest;
// result: the RolloutProgress after it. Refused, naming the state, unless the rollout is
// RolloutAwaitingApproval.
const UpdateApprove = "approve"

// End behaviours (RolloutInput.EndBehavior).
const (
	// EndStop starts no device after the end time; those in flight finish. The default.
	EndStop = "stop"
	// EndCancel also cancels the devices in flight at the end time.
	EndCancel = "cancel"
)

// ApproveEach is how the starter and spec files write ApproveEachWave: approveAfterWave: each.
const ApproveEach = "each"

// maxIdentityLength bounds an approval's identity, which lands in the state and the report.
const maxIdentityLength = 255

// Approval is an approval a rollout was given to go on after a wave.
type Approval struct {
	// Wave is the wave (1-based) after which it was given: wave Wave+1 started on it.
	Wave int       `json:"wave"`
	At   time.Time `json:"at"`
	// Identity is the Temporal client identity of the caller, as the caller sent it (the SDK
	// does not hand it to the workflow): who approved.
	Identity string `json:"identity,omitempty"`
	Note     string `json:"note,omitempty"`
}

// ApproveRequest is the argument of UpdateApprove.
type ApproveRequest struct {
	// Note is shown with the approval in the progress and the report; optional.
	Note string `json:"note,omitempty"`
	// Identity is the caller's Temporal client identity (client.Options.Identity).
	Identity string `json:"identity,omitempty"`
}

// ParseApproveAfterWave reads "N" (a wave, 1-based) or "each", as --approve-after-wave and the spec
// file's approveAfterWave take them.
func ParseApproveAfterWave(s string) (wave int, each bool, err error) {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, ApproveEach) {
		return 0, true, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, false, fmt.Errorf("approve after wave %q: give the wave after which the rollout waits for approval (1: after the canary) or each (after every wave but the last)", s)
	}
	return n, false, nil
}

// FormatApproveAfterWave writes the gate of an input as ParseApproveAfterWave reads it; "" for none.
func FormatApproveAfterWave(wave int, each bool) string {
	switch {
	case each:
		return ApproveEach
	case wave > 0:
		return strconv.Itoa(wave)
	}
	return ""
}

// ParseSuccessShare reads a success share as --pause-below takes it: a percentage above 0% up to
// 100%, e.g. 95%.
func ParseSuccessShare(s string) (float64, error) {
	s = strings.TrimSpace(s)
	p, ok := strings.CutSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
	if !ok || err != nil || !(v > 0 && v <= 100) {
		return 0, fmt.Errorf("success share %q: give a percentage above 0%% up to 100%%, e.g. 95%% (the rollout pauses when fewer of a wave's devices succeed)", s)
	}
	return v, nil
}

// checkGates reports what is wrong with the gate, success condition and end time fields.
func (in RolloutInput) checkGates() []string {
	var problems []string
	switch {
	case in.ApproveAfterWave < 0:
		problems = append(problems, fmt.Sprintf("approve after wave %d: give a wave from 1, or each", in.ApproveAfterWave))
	case in.ApproveAfterWave > 0 && in.ApproveEachWave:
		problems = append(problems, "approve after wave: give a wave or each, not both")
	}
	if in.PauseBelow != "" {
		if _, err := ParseSuccessShare(in.PauseBelow); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if !in.EndAt.IsZero() && in.EndAfter != 0 {
		problems = append(problems, "give the end time as a time (end at) or as a duration after the start (end after), not both")
	}
	if in.EndAfter < 0 {
		problems = append(problems, "end after must be a positive duration, e.g. 4h")
	}
	switch in.EndBehavior {
	case "", EndStop, EndCancel:
	default:
		problems = append(problems, fmt.Sprintf("end behavior %q is not %s (devices in flight finish) or %s (they are cancelled)", in.EndBehavior, EndStop, EndCancel))
	}
	if in.EndBehavior != "" && in.EndAt.IsZero() && in.EndAfter == 0 {
		problems = append(problems, "an end behavior applies at an end time: give end at or end after too")
	}
	return problems
}

// hasGates reports whether the input asks for a gate, a success condition or an end time.
func (in RolloutInput) hasGates() bool {
	return in.ApproveAfterWave > 0 || in.ApproveEachWave || in.PauseBelow != "" || !in.EndAt.IsZero() || in.EndAfter > 0
}

// endTime is the rollout's end time, for a rollout started at started; zero for none.
func (in RolloutInput) endTime(started time.Time) time.Time {
	switch {
	case !in.EndAt.IsZero():
		return in.EndAt
	case in.EndAfter > 0:
		return started.Add(in.EndAfter)
	}
	return time.Time{}
}

// endBehavior is EndBehavior with its default.
func (in RolloutInput) endBehavior() string {
	if in.EndBehavior == "" {
		return EndStop
	}
	return in.EndBehavior
}

// startGates sets up a run's gates: the version, and the end time's timer (or the end at once,
// when it has passed).
func (r *rollout) startGates(ctx workflow.Context) {
	if !r.in.hasGates() {
		return
	}
	r.gated = workflow.GetVersion(ctx, gatesChange, workflow.DefaultVersion, 1) >= 1
	if !r.gated {
		return
	}
	r.pauseBelow, _ = ParseSuccessShare(r.in.PauseBelow) // 0 when not set; Validate parsed it
	end := r.in.endTime(r.st.Started)
	if end.IsZero() {
		return
	}
	d := end.Sub(workflow.Now(ctx))
	if d <= 0 {
		r.reachEnd(ctx)
		return
	}
	r.endTimer = workflow.NewTimerWithOptions(ctx, d, workflow.TimerOptions{Summary: "end time"})
	// The loop waits for its own changes; the timer is one of them whatever the loop waits in.
	workflow.Go(ctx, func(gctx workflow.Context) {
		if r.endTimer.Get(gctx, nil) == nil {
			r.reachEnd(gctx)
		}
	})
}

// reachEnd ends the rollout at its end time, unless it is ending already or nothing is left to do.
// The main loop sees abortReason and winds down; windDownShards stops the shards, or cancels their
// devices in flight with EndCancel, and endAborted ends it as RolloutEnded.
func (r *rollout) reachEnd(ctx workflow.Context) {
	if r.endReached || r.cancelRequested || r.abortReason != "" || r.allDone() {
		return
	}
	r.endReached = true
	r.abortReason = "the end time " + r.in.endTime(r.st.Started).UTC().Format(time.RFC3339) + " was reached"
	r.logger.Info("end time reached", "end_behavior", r.in.endBehavior(), "running", r.agg.Running, "state", r.state)
	r.touch(ctx)
}

// endCancels reports whether the end time was reached with EndCancel.
func (r *rollout) endCancels() bool {
	return r.endReached && r.in.endBehavior() == EndCancel
}

// stopAtEndTime makes every command sent once the end time passed stop the shard (or cancel its
// devices in flight): a command planned in the same workflow task as the timer fired (the loop
// was reading a page of targets) starts no device after the end.
func (r *rollout) stopAtEndTime(ctx workflow.Context) {
	if r.endTimer != nil && r.endTimer.IsReady() {
		r.reachEnd(ctx)
	}
	if !r.endReached {
		return
	}
	cancel := r.endCancels()
	for i := range r.fl.Shards {
		r.fl.Shards[i].Want.Stop = true
		r.fl.Shards[i].Want.Cancel = r.fl.Shards[i].Want.Cancel || cancel
	}
}

// endAtEndTime ends a rollout whose end time was reached, once its shards closed.
func (r *rollout) endAtEndTime(ctx workflow.Context) (RolloutProgress, error) {
	c := r.counts()
	reason := fmt.Sprintf("%s (end behavior %s): %d %s not started", r.abortReason, r.in.endBehavior(), c.NotStarted, pluralDevices(c.NotStarted))
	if c.Cancelled > 0 {
		reason += fmt.Sprintf(", %d in flight cancelled", c.Cancelled)
	}
	if !r.fl.Resolved {
		reason += "; the rest of the target query was not read"
	}
	r.reason = reason
	r.end(ctx, RolloutEnded)
	p := r.progress()
	r.logger.Info("rollout ended at its end time", "succeeded", p.Succeeded, "not_started", p.NotStarted, "cancelled", p.Cancelled)
	return p, nil
}

// judgeWaveEnd looks, at the top of the main loop, whether the current wave has finished with
// devices left for a next one: then it judges the wave's success share (once) and, when the wave
// is gated and not approved yet, makes the rollout await approval.
func (r *rollout) judgeWaveEnd(ctx workflow.Context) {
	if !r.gated || r.st.Retrying || r.st.Wave >= len(r.st.WaveSizes) {
		return
	}
	w := r.st.Wave
	size := r.st.WaveSizes[w]
	if size == 0 || r.grantedIn(w) < size || r.waveDone[w] < size || !r.moreToStart() {
		return
	}
	n := w + 1
	if r.pauseBelow > 0 && r.st.JudgedWave < n {
		r.st.JudgedWave = n
		r.judgeShare(ctx, w)
	}
	gate := r.in.ApproveEachWave || r.in.ApproveAfterWave == n
	if gate && r.st.AwaitingWave != n && !slices.ContainsFunc(r.st.Approvals, func(a Approval) bool { return a.Wave == n }) {
		r.st.AwaitingWave = n
		r.logger.Info("wave finished: awaiting approval", "wave", n)
		r.touch(ctx)
	}
}

// moreToStart reports whether devices are left for a wave after the current one: in pages not read
// yet, or in shards not granted all their devices.
func (r *rollout) moreToStart() bool {
	if !r.fl.Resolved {
		return true
	}
	for _, sh := range r.fl.Shards {
		if sh.Index >= r.fl.Cursor && sh.Work > sh.Want.Quota {
			return true
		}
	}
	return false
}

// judgeShare pauses the rollout when wave w's success share is below PauseBelow: the devices that
// succeeded of those finished, skipped ones not counted.
func (r *rollout) judgeShare(ctx workflow.Context, w int) {
	finished := r.waveDone[w] - r.waveSkipped(w)
	if finished <= 0 {
		return
	}
	succeeded := finished - r.waveFailed[w]
	if float64(succeeded)*100 >= r.pauseBelow*float64(finished)-1e-9 {
		return
	}
	share := strconv.FormatFloat(float64(succeeded)*100/float64(finished), 'f', 1, 64)
	share = strings.TrimSuffix(share, ".0") + "%"
	reason := fmt.Sprintf("wave %d: %d of its %d devices finished succeeded (%s, skipped ones not counted), below the %s required: see the failures in the report, then resume",
		w+1, succeeded, finished, share, formatShare(r.pauseBelow))
	r.logger.Warn("wave below its success share: pausing", "wave", w+1, "succeeded", succeeded, "finished", finished)
	if r.st.Paused {
		// Paused by an operator meanwhile: the pause stays, its reason says both.
		r.st.PauseReason += "; " + reason
		r.reason = r.st.PauseReason
	} else {
		r.pause(ctx, ControlRequest{Reason: reason})
	}
	r.touch(ctx)
}

// formatShare writes a success share as ParseSuccessShare reads it.
func formatShare(v float64) string {
	return strconv.FormatFloat(v, 'f', -1, 64) + "%"
}

// waveSkipped counts wave w's skipped devices, from the shards' tallies.
func (r *rollout) waveSkipped(w int) int {
	n := 0
	count := func(waves []WaveTally) {
		for _, t := range waves {
			if t.Wave == w {
				n += t.Skipped
			}
		}
	}
	count(r.fl.ClosedWaves)
	for _, sh := range r.fl.Shards {
		count(sh.Last.Waves)
	}
	return n
}

// awaitApproval holds the rollout in RolloutAwaitingApproval; the wait's clock runs while it does.
func (r *rollout) awaitApproval(ctx workflow.Context) {
	if r.st.AwaitingSince.IsZero() {
		r.st.AwaitingSince = workflow.Now(ctx)
		r.now = r.st.AwaitingSince
	}
	r.setState(ctx, RolloutAwaitingApproval)
}

// endAwait stops the clock of the wait for approval at now (setState calls it for every other
// state: a pause stops it, a resume starts it again).
func (r *rollout) endAwait(now time.Time) {
	if r.st.AwaitingSince.IsZero() {
		return
	}
	r.st.AwaitedFor += now.Sub(r.st.AwaitingSince)
	r.st.AwaitingSince = time.Time{}
	r.now = now
}

// setApproveHandler registers UpdateApprove.
func (r *rollout) setApproveHandler(ctx workflow.Context) error {
	return workflow.SetUpdateHandlerWithOptions(ctx, UpdateApprove,
		func(ctx workflow.Context, req ApproveRequest) (RolloutProgress, error) {
			r.approve(ctx, req)
			r.touch(ctx)
			return r.progress(), nil
		},
		workflow.UpdateHandlerOptions{
			Validator: func(_ workflow.Context, req ApproveRequest) error { return r.validateApprove(req) },
		})
}

// validateApprove refuses an approval unless the rollout awaits one, naming the state it is in.
func (r *rollout) validateApprove(req ApproveRequest) error {
	if why := r.refusal("approve"); why != "" {
		return errors.New(why)
	}
	name := r.in.Name
	switch {
	case r.st.Paused && r.st.AwaitingWave > 0:
		return fmt.Errorf("rollout %s is paused, not awaiting approval: resume it first (starter rollout resume %s); it then awaits approval to start wave %d",
			name, name, r.st.AwaitingWave+1)
	case r.st.AwaitingWave > 0:
	case r.in.ApproveAfterWave == 0 && !r.in.ApproveEachWave:
		return fmt.Errorf("rollout %s is %s, not awaiting approval: it has no approval gate (a rollout started with --approve-after-wave has)", name, r.state)
	case r.in.ApproveEachWave:
		return fmt.Errorf("rollout %s is %s, not awaiting approval: it awaits approval once wave %d has finished", name, r.state, r.st.Wave+1)
	case r.st.Wave+1 > r.in.ApproveAfterWave:
		return fmt.Errorf("rollout %s is %s, not awaiting approval: wave %d was approved already", name, r.state, r.in.ApproveAfterWave)
	default:
		return fmt.Errorf("rollout %s is %s, not awaiting approval: it awaits approval once wave %d has finished", name, r.state, r.in.ApproveAfterWave)
	}
	if len(req.Note) > maxReasonLength {
		return fmt.Errorf("the note has %d characters; keep it under %d", len(req.Note), maxReasonLength)
	}
	if len(req.Identity) > maxIdentityLength {
		return fmt.Errorf("the identity has %d characters; keep it under %d", len(req.Identity), maxIdentityLength)
	}
	return nil
}

// approve records the approval; the main loop starts the next wave (or waits for a window).
func (r *rollout) approve(ctx workflow.Context, req ApproveRequest) {
	now := workflow.Now(ctx)
	r.endAwait(now)
	a := Approval{Wave: r.st.AwaitingWave, At: now, Identity: req.Identity, Note: req.Note}
	r.st.Approvals = append(r.st.Approvals, a)
	r.st.AwaitingWave = 0
	// The main loop publishes the state as search attribute when it next runs, and looks at the
	// windows: the one open when the wave finished may have closed since.
	r.state = r.stateAfterResume(now)
	if r.windowed && r.winKnown && r.win.Open && !r.win.holdsAt(now) {
		r.state = RolloutWaiting
	}
	r.logger.Info("rollout approved", "wave", a.Wave, "identity", a.Identity)
}

// gatesProgress fills the gate fields of p, and leaves the time awaiting approval out of Active.
func (r *rollout) gatesProgress(p *RolloutProgress) {
	in := r.in
	p.ApproveAfterWave = FormatApproveAfterWave(in.ApproveAfterWave, in.ApproveEachWave)
	p.Approvals = slices.Clone(r.st.Approvals)
	if v, err := ParseSuccessShare(in.PauseBelow); err == nil {
		p.PauseBelow = formatShare(v)
	}
	if end := in.endTime(r.st.Started); !end.IsZero() {
		p.EndAt, p.EndBehavior = end, in.endBehavior()
	}
	p.Awaited = r.st.AwaitedFor
	if !r.st.AwaitingSince.IsZero() {
		p.AwaitingSince = r.st.AwaitingSince
		p.Awaited += max(r.now.Sub(r.st.AwaitingSince), 0)
	}
	p.Active = max(p.Active-p.Awaited, 0)
	if p.State == RolloutAwaitingApproval && p.Reason == "" {
		p.Reason = fmt.Sprintf("wave %d finished; approve to start wave %d: starter rollout approve %s",
			r.st.AwaitingWave, r.st.AwaitingWave+1, in.Name)
	}
}
