package workflows

import (
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/workflow"
)

// A shard's part of the rollback (rollout_rollback.go): it keeps its devices' rows, with a rollback
// part for each device the rollback reached, stays open while a rollback may come for them, and
// rolls back the devices its rollout grants it (ShardCommand.Rollback) as it updates them: the same
// device steps, with the rollback firmware and RolloutRollbackUpdateID.

// shardRollback is a shard's rollback state.
type shardRollback struct {
	// on: the shard's rollout has a rollback (rollbackChange); in is the shard's input with the
	// rollback firmware in place of the target.
	on bool
	in ShardInput
	// ready is set once the shard was told Stop with nothing in flight: its devices to roll back
	// are final.
	ready bool
	// started and runs count the rollbacks started and finished; next is the first row that may
	// still wait for its rollback.
	started, runs, next int
}

// initRollback sets up the shard's rollback, asking its version once, when the input has one.
func (s *shard) initRollback(ctx workflow.Context) {
	rb := s.in.Rollback
	if rb == nil || s.in.Firmware == nil {
		return
	}
	s.rb.on = workflow.GetVersion(ctx, rollbackChange, workflow.DefaultVersion, 1) >= 1
	fw := *s.in.Firmware
	fw.PackageURI, fw.Version = rb.PackageURI, rb.Version
	s.rb.in = s.in
	s.rb.in.Firmware = &fw
}

// rollsBack reports whether row is one of the shard's devices to roll back.
func (s *shard) rollsBack(row DeviceRow) bool {
	return s.rb.on && s.in.Rollback.takes(row.Result)
}

// startRollbacks marks the shard ready once it was told Stop and nothing runs, and starts the
// rollbacks c allows; it returns how many it started.
func (s *shard) startRollbacks(ctx, devCtx workflow.Context, c ShardCommand) int {
	if !s.rb.on {
		return 0
	}
	if c.Stop && !s.rb.ready && s.running == 0 {
		// The rollout waits for this to plan the rollback: the next tally goes at once.
		s.rb.ready = true
		s.unreported++
	}
	started := 0
	for !c.Rollback.Stop && !c.Hold && !c.Cancel && s.rb.started < c.Rollback.Quota && s.running < c.Concurrency {
		i := s.nextRollback()
		if i < 0 {
			break
		}
		s.startRollback(ctx, devCtx, i, c.Rollback.Wave)
		started++
	}
	return started
}

// nextRollback returns the next row to roll back, or -1.
func (s *shard) nextRollback() int {
	for ; s.rb.next < len(s.rows); s.rb.next++ {
		if row := s.rows[s.rb.next]; s.rollsBack(row) && row.Rollback == nil {
			return s.rb.next
		}
	}
	return -1
}

// startRollback rolls back row i's device.
func (s *shard) startRollback(ctx, devCtx workflow.Context, i, wave int) {
	row := &s.rows[i]
	row.Rollback = &RollbackRow{Result: DeviceRunning, Wave: wave, Attempts: 1, Started: workflow.Now(ctx)}
	s.rb.started++
	s.running++
	d := device{
		rollout:  s.rb.in,
		id:       row.DeviceID,
		attempt:  1,
		updateID: RolloutRollbackUpdateID(s.in.Rollout),
		logger:   log.With(s.logger, "device", row.DeviceID, "pass", "rollback"),
		rollback: true,
	}
	workflow.Go(devCtx, func(gctx workflow.Context) {
		out := d.run(gctx)
		s.finishRollback(ctx, i, out)
	})
}

// finishRollback records a device's rollback outcome.
func (s *shard) finishRollback(ctx workflow.Context, i int, out deviceOutcome) {
	row := &s.rows[i]
	rr := row.Rollback
	if out.result == DeviceCancelled && !s.cancelledByRollout {
		out.result, out.errType = DeviceFailed, ErrDeviceCancelled
		out.errMsg = "cancelled outside the rollout (the shard workflow " + s.id + " was cancelled)"
	}
	countResult(ctx, OperationFirmware, out.result)
	if out.result == DeviceUpdated {
		out.result = DeviceRolledBack
	}
	rr.Result, rr.Error, rr.ErrorType, rr.Note = out.result, out.errMsg, out.errType, out.note
	rr.Stages, rr.HubCalls = out.stages, out.hubCalls
	rr.Duration = workflow.Now(ctx).Sub(rr.Started)
	s.running--
	s.rb.runs++
	s.unreported++
	if out.result == DeviceFailed {
		s.failedSince++
		s.logger.Warn("device failed to roll back", "device", row.DeviceID, "error_type", out.errType, "error", out.errMsg)
	}
	s.changes++
}

// rollbackClosing decides whether a shard with a rollback closes: decided is false when the
// shard's usual rule decides (nothing to roll back, no abort).
func (s *shard) rollbackClosing(c ShardCommand) (closes, decided bool) {
	if !s.rb.on {
		return false, false
	}
	if s.running > 0 {
		return false, true
	}
	if c.Cancel || c.Finish || c.Rollback.Stop {
		return true, true
	}
	devices, waiting := 0, 0
	for _, row := range s.rows {
		if s.rollsBack(row) {
			devices++
			if row.Rollback == nil {
				waiting++
			}
		}
	}
	if c.Stop {
		// Aborted: open until its devices are rolled back, or at once with none to roll back.
		return waiting == 0, true
	}
	if devices > 0 {
		// The rollout runs: a rollback may still come for these devices.
		return false, true
	}
	return false, false
}

// closeRollback marks the devices the rollback never reached, once it had begun, as not rolled back.
func (s *shard) closeRollback() {
	if !s.rb.on || !s.cmd.Rollback.Begun {
		return
	}
	note := "not rolled back: the rollback stopped first"
	switch {
	case s.cmd.Cancel:
		note = "not rolled back: the rollout was cancelled first"
	case !s.cmd.Rollback.Stop && !s.cmd.Finish:
		note = "not rolled back: the rollout " + s.in.Parent + " ended without closing its shard"
	}
	for i := range s.rows {
		if s.rollsBack(s.rows[i]) && s.rows[i].Rollback == nil {
			s.rows[i].Rollback = &RollbackRow{Result: DeviceNotStarted, Wave: -1, Note: note}
		}
	}
}

// rollbackTally counts the rollback's rows, for the shard's tally; nil without a rollback.
func (s *shard) rollbackTally() *RollbackTally {
	if !s.rb.on {
		return nil
	}
	t := &RollbackTally{Ready: s.rb.ready, Started: s.rb.started, Runs: s.rb.runs}
	for _, row := range s.rows {
		if !s.rollsBack(row) {
			continue
		}
		t.Devices++
		rr := row.Rollback
		if rr == nil {
			t.Pending++
			continue
		}
		t.HubCalls += rr.HubCalls
		switch rr.Result {
		case DeviceRolledBack:
			t.RolledBack++
		case DeviceSkipped:
			t.Skipped++
		case DeviceFailed:
			t.Failed++
		case DeviceCancelled:
			t.Cancelled++
		case DeviceNotStarted:
			t.NotStarted++
			continue
		default:
			t.Running++
			continue
		}
		var k int
		t.Waves, k = waveIn(t.Waves, rr.Wave)
		t.Waves[k].Done++
		if rr.Result == DeviceFailed {
			t.Waves[k].Failed++
		}
	}
	return t
}
