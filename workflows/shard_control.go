package workflows

import (
	"strconv"

	"go.temporal.io/sdk/workflow"
)

// Per-device control in a shard: the rows an operator skips or runs again (rollout_device.go
// says how a request reaches the shard).
//
//   - Skip: a row not started yet (pending, no attempt) becomes final, skipped with the
//     operator's note, outside every wave (Wave -1, as a device skipped at resolution). The shard
//     starts its other devices under the quota it has.
//   - Retry: a failed row is queued: pending again, with its attempts, until the rollout grants
//     it as one of ShardCommand.Again's runs; it then runs under the command's wave as its next
//     attempt (RolloutUpdateID with the attempt number). If the shard closes first (the rollout
//     was stopped or cancelled), the queued rows are failed again, as they were.
//   - Never twice: such a run is an attempt after the first, and the shard guards every one of
//     them (shardRetries.prepare): the read before its call looks for the earlier attempts'
//     updates (ReadFirst.Earlier: their update IDs, and the first attempt's read or, not known,
//     the time it was scheduled). When the device took one (its update completed late, or still
//     runs; its reboot happened), the run follows it instead of calling again.
//   - Kept open: a shard begun with this change (deviceControlChange) stays open while it has
//     failed devices, until its rollout finishes, stops or cancels it, so that a failed device can
//     always be run again while the rollout runs. The rollout keeps its record meanwhile: one per
//     shard with failures, as --retry-failed always did.
//
// Each control is answered by a tally (ShardTally.Control, Outcomes) sent at once.

// deviceControlChange is the workflow.GetVersion change ID of shards that stay open for per-device
// retries; shards begun before it close once every device is final, as they did.
const deviceControlChange = "rollout-device-control"

// shardControl is a shard's per-device control state. It lives in the shard's memory only, rebuilt
// by replay: a shard never continues as new.
type shardControl struct {
	keepOpen bool
	// applied is the last ShardControl applied; outcomes its answer, sent with the next tally.
	applied  int
	outcomes []DeviceControlOutcome
	// queued are the rows queued for an operator's run, in the order asked; prevNote their notes
	// before. again counts the operator's runs started, opRuns those of each row.
	queued   []int
	prevNote map[int]string
	again    int
	opRuns   map[int]int
	// skipped are the rows an operator skipped.
	skipped map[int]bool
	// rowOf finds a device's row.
	rowOf map[string]int
}

// newShardControl asks deviceControlChange and sets up the control state.
func newShardControl(ctx workflow.Context) *shardControl {
	return &shardControl{
		keepOpen: workflow.GetVersion(ctx, deviceControlChange, workflow.DefaultVersion, 1) >= 1,
		prevNote: map[int]string{}, opRuns: map[int]int{}, skipped: map[int]bool{},
	}
}

// receiveControl applies the rollout's ShardControl signals as they come, each once.
func (s *shard) receiveControl(ctx workflow.Context) {
	ch := workflow.GetSignalChannel(ctx, SignalShardControl)
	workflow.Go(ctx, func(gctx workflow.Context) {
		for {
			var c ShardControl
			if !ch.Receive(gctx, &c) {
				return
			}
			if c.Seq > s.ctl.applied {
				s.applyControl(gctx, c)
			}
		}
	})
}

// applyControl skips or queues the devices of c and answers with a tally.
func (s *shard) applyControl(ctx workflow.Context, c ShardControl) {
	if s.ctl.rowOf == nil {
		s.ctl.rowOf = make(map[string]int, len(s.rows))
		for i, row := range s.rows {
			s.ctl.rowOf[row.DeviceID] = i
		}
	}
	s.ctl.applied = c.Seq
	var outcomes []DeviceControlOutcome
	for _, id := range c.Skip {
		outcomes = append(outcomes, s.skipRow(id, c.Note))
	}
	for _, id := range c.Retry {
		outcomes = append(outcomes, s.queueRow(id))
	}
	s.ctl.outcomes = outcomes
	s.logger.Info("per-device control applied", "control", c.Seq, "outcomes", outcomes)
	s.report(ctx, false)
	s.changes++
}

// skipRow skips the device id when it has not started.
func (s *shard) skipRow(id, note string) DeviceControlOutcome {
	out := DeviceControlOutcome{Device: id, Shard: s.in.Index}
	i, ok := s.ctl.rowOf[id]
	if !ok {
		return out.refused(ControlStateUnknown)
	}
	row := &s.rows[i]
	switch {
	case s.ctl.skipped[i]:
		// Asked again: already done.
		out.Result, out.State = ControlSkipped, ControlStateAlready
	case row.Result == DevicePending && row.Attempts == 0:
		row.Result, row.Wave, row.Note = DeviceSkipped, -1, orDefault(note, DefaultSkipNote)
		s.ctl.skipped[i] = true
		out.Result = ControlSkipped
	default:
		return out.refused(s.controlState(i))
	}
	return out
}

// queueRow queues the device id for an operator's run when it failed.
func (s *shard) queueRow(id string) DeviceControlOutcome {
	out := DeviceControlOutcome{Device: id, Shard: s.in.Index}
	i, ok := s.ctl.rowOf[id]
	if !ok {
		return out.refused(ControlStateUnknown)
	}
	row := &s.rows[i]
	if row.Result != DeviceFailed {
		return out.refused(s.controlState(i))
	}
	out.Result, out.Attempt, out.Wave = ControlQueued, row.Attempts+1, row.Wave
	s.ctl.prevNote[i] = row.Note
	row.Result, row.Note = DevicePending, "retry queued by an operator, as attempt "+strconv.Itoa(out.Attempt)
	s.ctl.queued = append(s.ctl.queued, i)
	return out
}

// controlState is the state of row i a refusal names: its result, or ControlStateQueued.
func (s *shard) controlState(i int) string {
	for _, q := range s.ctl.queued {
		if q == i {
			return ControlStateQueued
		}
	}
	return s.rows[i].Result
}

// nextAgain is the queued row to start next under c, or -1.
func (s *shard) nextAgain(c ShardCommand) int {
	if s.ctl == nil || len(s.ctl.queued) == 0 || s.ctl.again >= c.Again {
		return -1
	}
	return s.ctl.queued[0]
}

// takeAgain reports whether row i, about to start, is an operator's run, and counts it.
func (s *shard) takeAgain(i int) bool {
	if s.ctl == nil || len(s.ctl.queued) == 0 || s.ctl.queued[0] != i {
		return false
	}
	s.ctl.queued = s.ctl.queued[1:]
	s.ctl.again++
	s.ctl.opRuns[i]++
	delete(s.ctl.prevNote, i)
	return true
}

// passMayRetry reports whether the --retry-failed pass may run failed row i: once, on top of the
// runs an operator asked for.
func (s *shard) passMayRetry(i int) bool {
	return s.rows[i].Attempts-s.ctl.opRuns[i] == 1
}

// keepsOpen reports whether a shard whose devices are all final stays open: with failed devices,
// which an operator may run again, until the rollout closes it.
func (s *shard) keepsOpen(t ShardTally) bool {
	return s.ctl.keepOpen && t.Failed > 0
}

// unqueue fails the queued rows again, as they were, when the shard closes before running them.
func (s *shard) unqueue() {
	for _, i := range s.ctl.queued {
		s.rows[i].Result, s.rows[i].Note = DeviceFailed, s.ctl.prevNote[i]
	}
	s.ctl.queued = nil
}

// stampControl adds the control state to a tally the shard sends: the last control applied and its
// answer, on every tally until the next control. Signals from a shard can reach the rollout out of
// order (each is a command of its own task), and the rollout keeps only the tally of the highest
// Seq: an answer sent on one tally alone was lost when a later tally overtook it.
func (s *shard) stampControl(t *ShardTally) {
	t.Again, t.Control, t.Outcomes = s.ctl.again, s.ctl.applied, s.ctl.outcomes
}
