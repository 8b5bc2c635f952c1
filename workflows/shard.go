package workflows

import (
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/dmflow/dmflow/activities"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// RolloutShard runs the devices of one shard of a rollout: at most ShardSize of them, in the order
// given, as its rollout (the parent) allows through ShardCommand signals, and tells the parent how
// they fare through ShardTally signals.
//
// Each device is a short sequence of activities run directly in the shard, without a workflow of
// its own: a firmware update is InvokeMethod (which reads the twin first: the version, to skip a
// device already on the target, and the baseline its evidence is judged by) and FollowStages; a
// reboot is InvokeMethod and WaitForReported. Two activities are six history events and, at most,
// the six of the two workflow tasks they end: twelve a device, fewer when devices finish together
// and share a task (see BENCHMARKS.md). Activity IDs name the device (<device>/<method>), so a
// device's work is found in the shard's history in the Temporal UI.
//
// The shard keeps its devices' rows (answered by QueryReport, also once it has closed) and sends
// the parent cumulative tallies computed from them: after a failure at once, after a fifth of its
// concurrency finished, and when nothing runs. The parent's aggregates are the sum of the latest
// tally of every shard, so a tally lost to a crash or received twice changes nothing.
//
// It closes when every device is final and no retry can come (no failure, no RetryFailed, or the
// retry ran), or when the parent stops, cancels or finishes it; its last tally says Closed.
// Cancelled from outside the rollout (the UI's Cancel on the shard), it fails the devices in flight
// with ErrDeviceCancelled, so that they count against the threshold and are retried with the rest,
// and goes on serving the parent.
func RolloutShard(ctx workflow.Context, in ShardInput) (ShardTally, error) {
	info := workflow.GetInfo(ctx)
	logger := log.With(workflow.GetLogger(ctx), "rollout", in.Rollout, "shard", in.Index)
	if err := in.validate(); err != nil {
		logger.Error("invalid input", "error", err)
		return ShardTally{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalidInput, nil)
	}
	s := &shard{in: in, logger: logger, id: info.WorkflowExecution.ID}
	s.endChecks = workflow.GetVersion(ctx, endChecksChange, workflow.DefaultVersion, 1) == 1
	s.rt = newShardRetries(ctx, in)
	s.initRollback(ctx) // rollback (policy 1)
	s.ctl = newShardControl(ctx)
	s.rows = make([]DeviceRow, len(in.Devices))
	for i, d := range in.Devices {
		s.rows[i] = DeviceRow{DeviceID: d.ID, Result: DevicePending, FromVersion: d.FromVersion}
		if d.Skip {
			s.rows[i].Wave, s.rows[i].Result = -1, DeviceSkipped
			s.rows[i].Note = "already on " + d.FromVersion + " when the targets were resolved"
		}
	}
	s.markLookRows()
	if err := workflow.SetQueryHandler(ctx, QueryReport, func(req ReportRequest) (ReportPage, error) {
		return reportPage(s.rows, req)
	}); err != nil {
		return ShardTally{}, err
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx,
		SearchAttrRollout.ValueSet(in.Rollout),
		SearchAttrOperation.ValueSet(in.Operation),
	); err != nil {
		return ShardTally{}, err
	}
	commands := workflow.GetSignalChannel(ctx, SignalShardCommand)
	// Commands are received also after a cancellation from outside, which the shard outlives.
	rctx, _ := workflow.NewDisconnectedContext(ctx)
	s.receiveControl(rctx)
	workflow.Go(rctx, func(gctx workflow.Context) {
		for {
			var c ShardCommand
			if !commands.Receive(gctx, &c) {
				return
			}
			if c.Seq > s.cmd.Seq {
				s.cmd = c
				s.changes++
			}
		}
	})
	return s.run(ctx)
}

// ShardSize is the most devices one shard runs: at twelve events a device and as many again for a
// retry of all of them, a shard stays under Temporal's 10,240-event warning without continuing as
// new, and its rows (about 250 bytes each) make a report page of a shard, not a payload that
// grows with the fleet.
const ShardSize = 250

// Signals between a rollout and its shards.
const (
	// SignalShardCommand carries a ShardCommand from the rollout to a shard.
	SignalShardCommand = "shard-command"
	// SignalShardTally carries a ShardTally from a shard to its rollout.
	SignalShardTally = "shard-tally"
)

// ErrDeviceCancelled is the error type of a device whose shard was cancelled from outside the
// rollout while it ran: a failure, counted by the threshold and retried with the others.
const ErrDeviceCancelled = "DeviceCancelled"

// RolloutShardWorkflowID is the workflow ID of a rollout's shard n (0-based).
func RolloutShardWorkflowID(name string, n int) string {
	return RolloutWorkflowID(name) + "/shard/" + strconv.Itoa(n)
}

// ShardInput is the input of RolloutShard. It holds no credentials.
type ShardInput struct {
	// Rollout is the rollout's name, Parent its workflow ID (where tallies go), Index the shard's.
	Rollout string `json:"rollout"`
	Parent  string `json:"parent"`
	Index   int    `json:"index"`
	// ParentFirstRun is the run ID that began the rollout's chain of runs: a later rollout of the
	// same name is another chain (empty in shards begun before it was passed).
	ParentFirstRun string `json:"parentFirstRun,omitempty"`
	// Operation, Firmware and Reboot are the rollout's.
	Operation string           `json:"operation"`
	Firmware  *RolloutFirmware `json:"firmware,omitempty"`
	Reboot    *RolloutReboot   `json:"reboot,omitempty"`
	// Rate is the rollout's ceiling of hub calls (under the hub's budget).
	Rate *activities.HubRate `json:"rate,omitempty"`
	// RetryFailed keeps the shard open after its devices finished with failures, for the retry.
	RetryFailed bool `json:"retryFailed,omitempty"`
	// Devices are the shard's devices in the order they start.
	Devices []ShardDevice `json:"devices"`

	// Retries by failure type (rollout_retries.go): the rollout's RetryPolicy, nil without one.
	Retries *RetryPolicy `json:"retries,omitempty"`
	// Rollback (policy 1) is the rollout's rollback: the shard stays open for it while it holds
	// devices to roll back (shard_rollback.go).
	Rollback *RolloutRollback `json:"rollback,omitempty"`
	// Continuous targeting (policy 3): set in the shard of a look, whose devices are skipped
	// when their twin shows an update since the rollout began.
	Look *ShardLook `json:"look,omitempty"`
}

// ShardDevice is one device of a shard.
type ShardDevice struct {
	ID string `json:"id"`
	// FromVersion is the firmwareVersion the target query read; Skip marks a device already on the
	// target version then, which the shard reports as skipped without a call.
	FromVersion string `json:"v,omitempty"`
	Skip        bool   `json:"skip,omitempty"`
}

func (in ShardInput) validate() error {
	switch {
	case in.Rollout == "" || in.Parent == "":
		return errors.New("invalid shard input: the rollout's name and workflow ID are required")
	case len(in.Devices) == 0 || len(in.Devices) > ShardSize:
		return fmt.Errorf("invalid shard input: %d devices, not 1 to %d", len(in.Devices), ShardSize)
	case in.Operation == OperationFirmware && in.Firmware == nil:
		return errors.New("invalid shard input: a firmware shard needs the firmware")
	case in.Operation != OperationFirmware && in.Operation != OperationReboot:
		return fmt.Errorf("invalid shard input: operation %q", in.Operation)
	}
	return nil
}

// ShardCommand is what a rollout allows one of its shards. Each command states the whole of it,
// so that only the latest (highest Seq) counts.
type ShardCommand struct {
	Seq int `json:"seq"`
	// Wave is the wave the devices started under this command belong to.
	Wave int `json:"wave"`
	// Quota is how many of the shard's devices (first attempts, skipped ones not counted) may
	// have been started in all; Retry how many failed devices may have been started again.
	Quota int `json:"quota"`
	Retry int `json:"retry,omitempty"`
	// Concurrency bounds the shard's devices in flight.
	Concurrency int `json:"concurrency"`
	// Hold starts nothing new for now (paused, outside a maintenance window).
	Hold bool `json:"hold,omitempty"`
	// Stop starts nothing new ever: once the devices in flight finished, the rest are not started
	// and the shard closes (an abort). Cancel also cancels those in flight. Finish closes a shard
	// that waits for a retry that will not come.
	Stop   bool `json:"stop,omitempty"`
	Cancel bool `json:"cancel,omitempty"`
	Finish bool `json:"finish,omitempty"`

	// Rollback (policy 1) grants the rollback's devices (shard_rollback.go).
	Rollback ShardRollbackCommand `json:"rollback,omitzero"`
	// Per-device control (shard_control.go): Again is how many of the runs an operator asked for
	// (starter rollout retry), queued in the shard, may have been started in all.
	Again int `json:"again,omitempty"`
}

// ShardTally is a shard's account of its devices, cumulative: a later one replaces an earlier.
type ShardTally struct {
	Index int `json:"index"`
	Seq   int `json:"seq"`
	Tally
	// Started counts the first attempts started, Retried the devices started again; Runs the
	// device runs that finished, of both kinds.
	Started int `json:"started"`
	Retried int `json:"retried,omitempty"`
	Runs    int `json:"runs"`
	// Waves are the finished and failed devices of each wave the shard ran.
	Waves []WaveTally `json:"waves,omitempty"`
	// Closed is set on the shard's last tally.
	Closed bool `json:"closed,omitempty"`

	// Rollback (policy 1) counts the rollback's devices, for a rollout with a rollback.
	Rollback *RollbackTally `json:"rollback,omitempty"`
	// Per-device control (shard_control.go): Again counts the runs an operator asked for that
	// started; Control is the last ShardControl applied, and Outcomes, on the tally that answers
	// it, what became of each of its devices.
	Again    int                    `json:"again,omitempty"`
	Control  int                    `json:"control,omitempty"`
	Outcomes []DeviceControlOutcome `json:"outcomes,omitempty"`
}

// WaveTally counts a wave's finished (Done) and failed devices, and the skipped ones among the
// finished (a success share leaves them out: rollout_gates.go).
type WaveTally struct {
	Wave    int `json:"wave"`
	Done    int `json:"done"`
	Failed  int `json:"failed"`
	Skipped int `json:"skipped,omitempty"`

	// Retries by failure type (rollout_retries.go): the failed devices that timed out or were
	// offline, among Failed.
	TimedOut int `json:"timedOut,omitempty"`
	Offline  int `json:"offline,omitempty"`
}

// Tally counts devices by result, and the hub calls of the finished ones.
type Tally struct {
	Succeeded  int `json:"succeeded,omitempty"`
	Skipped    int `json:"skipped,omitempty"`
	Failed     int `json:"failed,omitempty"`
	Cancelled  int `json:"cancelled,omitempty"`
	NotStarted int `json:"notStarted,omitempty"`
	Running    int `json:"running,omitempty"`
	Pending    int `json:"pending,omitempty"`
	HubCalls   int `json:"hubCalls,omitempty"`

	// Retries by failure type (rollout_retries.go): the failed devices that timed out or were
	// offline (among Failed), the devices waiting out a backoff before a retry (among Pending), and
	// the retry attempts started.
	TimedOut      int `json:"timedOut,omitempty"`
	Offline       int `json:"offline,omitempty"`
	AwaitingRetry int `json:"awaitingRetry,omitempty"`
	Retries       int `json:"retries,omitempty"`
}

// add adds (sign 1) or subtracts (sign -1) o.
func (t *Tally) add(o Tally, sign int) {
	t.Succeeded += sign * o.Succeeded
	t.Skipped += sign * o.Skipped
	t.Failed += sign * o.Failed
	t.Cancelled += sign * o.Cancelled
	t.NotStarted += sign * o.NotStarted
	t.Running += sign * o.Running
	t.Pending += sign * o.Pending
	t.HubCalls += sign * o.HubCalls
	t.addTypes(o, sign)
}

// count adds one row.
func (t *Tally) count(row DeviceRow) {
	switch row.Result {
	case DeviceUpdated, DeviceRebooted:
		t.Succeeded++
	case DeviceSkipped:
		t.Skipped++
	case DeviceFailed:
		t.Failed++
	case DeviceCancelled:
		t.Cancelled++
	case DeviceNotStarted:
		t.NotStarted++
	case DeviceRunning:
		t.Running++
	default:
		t.Pending++
	}
	t.HubCalls += row.HubCalls
	t.countType(row)
}

// shard is the state of one RolloutShard execution.
type shard struct {
	in     ShardInput
	logger log.Logger
	id     string
	rows   []DeviceRow

	// cmd is the latest command; changes counts what the main loop waits for.
	cmd     ShardCommand
	changes int
	// running counts devices in flight; started and retried the first and second attempts
	// started; runs the device runs finished.
	running, started, retried, runs int
	// next is the first row that may still be pending, nextRetry the first that may have failed.
	next, nextRetry int
	// unreported counts runs finished since the last tally, failedSince failures among them.
	unreported, failedSince int
	seq                     int
	// seenSeq is the command the main loop last acted on.
	seenSeq int
	// cancelDevices cancels the devices in flight; cancelledByRollout is set once the rollout
	// cancelled them, outside is set when the shard itself was cancelled from outside.
	cancelDevices      workflow.CancelFunc
	cancelledByRollout bool
	outside            bool
	// endChecks is set in shards that look whether their rollout still runs (endChecksChange);
	// endCheck is the timer of the next look.
	endChecks bool
	endCheck  workflow.Future

	// rt is the shard's state of retries by failure type (shard_retries.go).
	rt *shardRetries
	// rb is the shard's rollback (policy 1).
	rb shardRollback
	// ctl is the per-device control of an operator (shard_control.go).
	ctl *shardControl
}

func (s *shard) run(ctx workflow.Context) (ShardTally, error) {
	devCtx, cancel := workflow.WithCancel(ctx)
	s.cancelDevices = cancel
	for {
		seen := s.changes
		if ctx.Err() != nil && !s.outside {
			// Cancelled from outside: the devices in flight were cancelled with ctx and fail; the
			// shard goes on, on a context of its own.
			s.outside = true
			s.logger.Warn("shard cancelled outside the rollout: its devices in flight fail", "running", s.running)
			ctx, _ = workflow.NewDisconnectedContext(ctx)
			devCtx, cancel = workflow.WithCancel(ctx)
			s.cancelDevices = cancel
		}
		c := s.cmd
		if c.Cancel && !s.cancelledByRollout {
			s.cancelledByRollout = true
			s.cancelDevices()
		}
		started := 0
		for !c.Hold && !c.Stop && !c.Cancel && s.running < c.Concurrency {
			i := s.nextToStart(c)
			if i < 0 {
				break
			}
			s.start(ctx, devCtx, i, c.Wave)
			started++
		}
		started += s.startRollbacks(ctx, devCtx, c) // rollback (policy 1)
		if s.closing(c) {
			return s.close(ctx)
		}
		if c.Seq != s.seenSeq {
			// The devices a command started are told at once: the rollout counts them running.
			s.seenSeq = c.Seq
			s.unreported += started
		}
		s.maybeReport(ctx, c)
		s.armEndCheck(ctx)
		// A cancellation from outside ends the wait; the loop's top takes it.
		_ = workflow.Await(ctx, func() bool { return s.changes != seen || s.endCheckDue() })
		if s.endCheckDue() {
			if status := s.rolloutEnded(ctx); status != "" {
				return s.closeOrphaned(ctx, status)
			}
		}
	}
}

// nextToStart returns the row to start next under c (a first attempt within the quota, else a
// retry within the retry quota), or -1.
func (s *shard) nextToStart(c ShardCommand) int {
	if i := s.rt.nextDue(s.rows); i >= 0 {
		return i
	}
	if i := s.nextAgain(c); i >= 0 {
		return i
	}
	if s.started < c.Quota {
		for ; s.next < len(s.rows); s.next++ {
			if s.rows[s.next].Result == DevicePending && s.rows[s.next].Attempts == 0 {
				return s.next
			}
		}
	}
	if s.retried < c.Retry {
		for ; s.nextRetry < len(s.rows); s.nextRetry++ {
			if r := s.rows[s.nextRetry]; r.Result == DeviceFailed && s.passMayRetry(s.nextRetry) {
				return s.nextRetry
			}
		}
	}
	return -1
}

// closing reports whether the shard is done: nothing runs, and nothing will start any more.
func (s *shard) closing(c ShardCommand) bool {
	if closes, decided := s.rollbackClosing(c); decided { // rollback (policy 1)
		return closes
	}
	if s.running > 0 {
		return false
	}
	if c.Stop || c.Cancel || c.Finish {
		return true
	}
	t := s.tally()
	if t.Pending > 0 {
		return false
	}
	// Every device is final: a retry may still come for the failed ones.
	if s.keepsOpen(t) {
		return false
	}
	return t.Failed == 0 || !s.in.RetryFailed || s.retried > 0
}

// start runs row i's device.
func (s *shard) start(ctx, devCtx workflow.Context, i, wave int) {
	row := &s.rows[i]
	switch {
	case s.takeAgain(i):
	case row.Attempts == 0:
		s.started++
	case s.rt.startRetry(row, i):
		// A retry by failure type: of the wave the device belongs to.
		wave = row.Wave
	default:
		s.retried++
	}
	row.Attempts++
	row.Wave = wave
	row.Result = DeviceRunning
	row.Started = workflow.Now(ctx)
	row.Error, row.ErrorType, row.Note, row.Stages, row.HubCalls = "", "", "", nil, 0
	s.running++
	d := device{
		rollout:  s.in,
		id:       row.DeviceID,
		attempt:  row.Attempts,
		updateID: RolloutUpdateID(s.in.Rollout, row.Attempts),
		logger:   log.With(s.logger, "device", row.DeviceID),
	}
	s.rt.prepare(s, &d, i)
	workflow.Go(devCtx, func(gctx workflow.Context) {
		out := d.run(gctx)
		s.finish(ctx, i, out)
	})
}

// finish records a device's outcome.
func (s *shard) finish(ctx workflow.Context, i int, out deviceOutcome) {
	row := &s.rows[i]
	if out.result == DeviceCancelled && !s.cancelledByRollout {
		// Not the rollout's cancel: the shard was cancelled from outside. A failure, so that the
		// threshold and the retry see it.
		out.result, out.errType = DeviceFailed, ErrDeviceCancelled
		out.errMsg = "cancelled outside the rollout (the shard workflow " + s.id + " was cancelled)"
	}
	row.Result, row.Error, row.ErrorType, row.Note = out.result, out.errMsg, out.errType, out.note
	if out.fromVersion != "" {
		row.FromVersion = out.fromVersion
	}
	row.Stages = out.stages
	row.HubCalls = out.hubCalls
	row.Duration = workflow.Now(ctx).Sub(row.Started)
	countResult(ctx, s.in.Operation, out.result)
	s.rt.afterAttempt(s, i, &out)
	s.running--
	s.runs++
	s.unreported++
	if out.result == DeviceFailed {
		s.failedSince++
		s.logger.Warn("device failed", "device", row.DeviceID, "error_type", out.errType, "error", out.errMsg)
	}
	s.changes++
}

// maybeReport sends a tally when the parent should hear of the finished runs: a failure at once
// (the threshold may be crossed), a fifth of the concurrency at a time otherwise, and all that is
// left once nothing runs. Devices started by a new command count as unreported too.
func (s *shard) maybeReport(ctx workflow.Context, c ShardCommand) {
	if s.unreported == 0 {
		return
	}
	if s.failedSince > 0 || s.running == 0 || s.unreported >= max(1, c.Concurrency/5) {
		s.report(ctx, false)
	}
}

// report signals the parent the shard's tally.
func (s *shard) report(ctx workflow.Context, closed bool) workflow.Future {
	s.seq++
	t := s.tally()
	t.Seq, t.Closed = s.seq, closed
	s.stampControl(&t)
	s.unreported, s.failedSince = 0, 0
	return workflow.SignalExternalWorkflow(ctx, s.in.Parent, "", SignalShardTally, t)
}

// tally counts the rows: the one place a shard's figures come from.
func (s *shard) tally() ShardTally {
	t := ShardTally{Index: s.in.Index, Started: s.started, Retried: s.retried, Runs: s.runs}
	for _, row := range s.rows {
		t.count(row)
		// A device never started belongs to no wave (its Wave is the zero value), and a wave's
		// finished devices are those that ran.
		if !row.Finished() || row.Wave < 0 || row.Result == DeviceNotStarted {
			continue
		}
		var k int
		t.Waves, k = waveIn(t.Waves, row.Wave)
		t.Waves[k].Done++
		if row.Result == DeviceFailed {
			t.Waves[k].Failed++
		}
		if row.Result == DeviceSkipped {
			t.Waves[k].Skipped++
		}
		t.Waves[k].countType(row)
	}
	t.Rollback = s.rollbackTally() // rollback (policy 1)
	return t
}

// close marks the devices never started and sends the last tally.
func (s *shard) close(ctx workflow.Context) (ShardTally, error) {
	s.rt.abandon(s)
	s.closeRollback() // rollback (policy 1)
	s.unqueue()
	for i := range s.rows {
		if s.rows[i].Result == DevicePending {
			s.rows[i].Result = DeviceNotStarted
		}
	}
	f := s.report(ctx, true)
	t := s.tally()
	t.Seq, t.Closed = s.seq, true
	// The rollout may have ended already; the tally then has nowhere to go.
	if err := f.Get(ctx, nil); err != nil {
		s.logger.Info("the rollout did not take the shard's last tally", "error", err)
	}
	s.logger.Info("shard closed", "succeeded", t.Succeeded, "failed", t.Failed, "not_started", t.NotStarted)
	return t, nil
}

// reportPage answers a page of rows.
func reportPage(rows []DeviceRow, req ReportRequest) (ReportPage, error) {
	if req.Offset < 0 || req.Limit < 0 {
		return ReportPage{}, fmt.Errorf("report offset and limit must not be negative")
	}
	limit := req.Limit
	if limit == 0 || limit > MaxReportPage {
		limit = MaxReportPage
	}
	total := len(rows)
	from := min(req.Offset, total)
	to := min(from+limit, total)
	page := ReportPage{Rows: slices.Clone(rows[from:to]), Total: total}
	if page.Rows == nil {
		page.Rows = []DeviceRow{}
	}
	if to < total {
		page.Next = to
	}
	return page, nil
}
