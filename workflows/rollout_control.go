package workflows

import (
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/workflow"
)

// setHandlers registers Rollout's queries and updates. The update handlers change state only; the
// main loop acts on it, so none of them blocks.
func (r *rollout) setHandlers(ctx workflow.Context) error {
	if err := workflow.SetQueryHandler(ctx, QueryProgress, func() (RolloutProgress, error) {
		return r.progress(), nil
	}); err != nil {
		return err
	}
	if err := workflow.SetQueryHandler(ctx, QueryReport, func(req ReportRequest) (ReportPage, error) {
		return r.report(req)
	}); err != nil {
		return err
	}
	if err := workflow.SetQueryHandler(ctx, QueryShards, func(req ShardsRequest) (ShardsPage, error) {
		return r.shardsPage(req)
	}); err != nil {
		return err
	}
	if err := r.setDeviceHandlers(ctx); err != nil {
		return err
	}
	handlers := []struct {
		name     string
		validate func(ControlRequest) error
		apply    func(workflow.Context, ControlRequest)
	}{
		{UpdatePause, r.validatePause, r.pause},
		{UpdateResume, r.validateResume, r.resume},
		{UpdateCancel, r.validateCancel, r.cancel},
	}
	for _, h := range handlers {
		err := workflow.SetUpdateHandlerWithOptions(ctx, h.name,
			func(ctx workflow.Context, req ControlRequest) (RolloutProgress, error) {
				h.apply(ctx, req)
				r.touch(ctx)
				return r.progress(), nil
			},
			workflow.UpdateHandlerOptions{
				Validator: func(_ workflow.Context, req ControlRequest) error { return h.validate(req) },
			})
		if err != nil {
			return err
		}
	}
	return r.setApproveHandler(ctx)
}

// maxReasonLength bounds a control request's reason, which lands in the state and the report.
const maxReasonLength = 500

// refusal says why a rollout that is ending refuses control; "" when it does not. Once it has
// ended, the server refuses updates itself.
func (r *rollout) refusal(action string) string {
	switch {
	case r.cancelRequested:
		return fmt.Sprintf("rollout %s is being cancelled: there is nothing to %s", r.in.Name, action)
	case r.endReached:
		return fmt.Sprintf("rollout %s is ending (%s): there is nothing to %s", r.in.Name, r.abortReason, action)
	case r.rollingBack(): // rollback (policy 1): control applies to the rollback until it stops
		return r.rollbackRefusal(action)
	case r.abortReason != "":
		return fmt.Sprintf("rollout %s is aborting (%s): there is nothing to %s", r.in.Name, r.abortReason, action)
	}
	return ""
}

func checkReason(req ControlRequest) error {
	if len(req.Reason) > maxReasonLength {
		return fmt.Errorf("the reason has %d characters; keep it under %d", len(req.Reason), maxReasonLength)
	}
	return nil
}

func (r *rollout) validatePause(req ControlRequest) error {
	if why := r.refusal("pause"); why != "" {
		return fmt.Errorf("%s", why)
	}
	if r.st.Paused {
		return fmt.Errorf("rollout %s is already paused (since %s): resume it with resume", r.in.Name, r.st.PausedSince.Format(time.RFC3339))
	}
	return checkReason(req)
}

func (r *rollout) validateResume(req ControlRequest) error {
	if why := r.refusal("resume"); why != "" {
		return fmt.Errorf("%s", why)
	}
	if !r.st.Paused {
		return fmt.Errorf("rollout %s is not paused: it is %s", r.in.Name, r.state)
	}
	return checkReason(req)
}

func (r *rollout) validateCancel(req ControlRequest) error {
	if why := r.refusal("cancel"); why != "" {
		return fmt.Errorf("%s", why)
	}
	return checkReason(req)
}

func (r *rollout) pause(ctx workflow.Context, req ControlRequest) {
	// A pause while waiting for a window ends the wait: the time counts as paused.
	r.endWait(workflow.Now(ctx))
	r.st.Paused = true
	r.st.PausedSince = workflow.Now(ctx)
	r.st.PauseReason = orDefault(req.Reason, "paused by an operator")
	r.reason = r.st.PauseReason
	// The main loop publishes the state as search attribute when it next runs.
	r.state = RolloutPaused
	r.logger.Info("rollout paused", "reason", r.reason, "running", r.running)
}

func (r *rollout) resume(ctx workflow.Context, req ControlRequest) {
	r.st.PausedFor += workflow.Now(ctx).Sub(r.st.PausedSince)
	r.st.Paused = false
	r.st.PausedSince = time.Time{}
	r.st.PauseReason = ""
	r.reason = ""
	r.state = r.stateAfterResume(workflow.Now(ctx))
	if r.st.AwaitingWave > 0 {
		// Paused while awaiting approval: awaiting it again.
		r.state = RolloutAwaitingApproval
	}
	r.logger.Info("rollout resumed", "reason", req.Reason)
}

func (r *rollout) cancel(_ workflow.Context, req ControlRequest) {
	r.cancelRequested = true
	r.reason = orDefault(req.Reason, "cancelled by an operator")
	if r.cancelResolve != nil {
		// Reading a page of targets: the read is not waited for.
		r.cancelResolve()
	}
	r.logger.Info("rollout cancelled by update", "reason", r.reason, "running", r.running)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// progress summarises the rollout.
func (r *rollout) progress() RolloutProgress {
	p := RolloutProgress{
		Name:          r.in.Name,
		Operation:     r.in.Operation,
		State:         r.state,
		Reason:        r.reason,
		Total:         r.total(),
		Waves:         len(r.st.WaveSizes),
		Retrying:      r.st.Retrying,
		MaxFailures:   r.threshold.String(),
		MaxConcurrent: r.in.MaxConcurrent,
		Rate:          r.in.Rate,
		Started:       r.st.Started,
		Updated:       r.now,
		Finished:      r.finishedTime,
		HubCalls:      r.st.HubCalls,
		Runs:          r.st.Runs,
	}
	if r.in.Firmware != nil {
		p.Version = r.in.Firmware.Version
	}
	if r.abortReason != "" && p.Reason == "" {
		p.Reason = r.abortReason
	}
	if len(r.st.EndedShards) > 0 {
		note := "shards ended outside the rollout, their devices in flight counted as failed: " + strings.Join(r.st.EndedShards, ", ")
		if p.Reason != "" {
			note = p.Reason + "; " + note
		}
		p.Reason = note
	}
	c := r.counts()
	p.Succeeded, p.Skipped, p.Failed, p.Cancelled = c.Succeeded, c.Skipped, c.Failed, c.Cancelled
	p.NotStarted, p.Running, p.Pending = c.NotStarted, c.Running, c.Pending
	if r.fl != nil {
		// The shards count their devices' calls; the state, those of the target resolution.
		p.HubCalls += c.HubCalls
	}
	if w := r.st.Wave; w < len(r.st.WaveSizes) {
		p.Wave = w + 1
		p.WaveSize = r.st.WaveSizes[w]
		p.WaveDone = r.waveDone[w]
		p.WaveFailed = r.waveFailed[w]
	}
	p.Waited = r.st.WaitedFor
	if !r.waitingSince.IsZero() {
		p.Waited += r.now.Sub(r.waitingSince)
	}
	p.Active = r.now.Sub(r.st.Started) - r.st.PausedFor - p.Waited
	if r.st.Paused {
		p.Active -= r.now.Sub(r.st.PausedSince)
	}
	p.Active = max(p.Active, 0)
	r.windowProgress(&p)
	r.gatesProgress(&p)
	r.retriesProgress(&p)
	r.rollbackProgress(&p) // rollback (policy 1)
	r.rateProgress(&p)
	r.continuousProgress(&p)
	return p
}

// counts counts the devices by result: a sharded rollout's from its shards' tallies, an older
// one's from its rows.
func (r *rollout) counts() Tally {
	if r.fl != nil {
		return r.agg
	}
	var t Tally
	for _, row := range r.st.Rows {
		t.count(row)
	}
	return t
}

// total is the number of target devices resolved.
func (r *rollout) total() int {
	if r.fl == nil {
		return len(r.st.Rows)
	}
	n := 0
	for _, size := range r.fl.Sizes {
		n += size
	}
	return n
}

// report answers a page of rows.
func (r *rollout) report(req ReportRequest) (ReportPage, error) {
	if r.fl != nil {
		return ReportPage{}, fmt.Errorf("rollout %s keeps its rows in its shard workflows: ask %s for them, then each shard for %s (starter rollout report does)",
			r.in.Name, QueryShards, QueryReport)
	}
	return reportPage(r.st.Rows, req)
}
