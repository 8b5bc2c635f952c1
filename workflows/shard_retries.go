package workflows

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/protocol"
	"go.temporal.io/sdk/workflow"
)

// A shard's side of retries by failure type (rollout_retries.go): it classifies every failed
// attempt, keeps what each device's first attempt read (the baseline a retry's guard judges the
// device's reports by), and, with a RetryPolicy, puts a device whose attempt failed with a type
// the policy retries in DeviceRetrying until its backoff has passed. Such a device is not in
// flight: the shard's other devices run in its slot meanwhile. When its timer fires it is due,
// and the start loop starts it before any first attempt, under the same command (not held,
// stopped or cancelled) and concurrency as any device.

// shardRetries is a shard's state of retries.
type shardRetries struct {
	// policy is the rollout's RetryPolicy with its defaults; nil without one.
	policy *RetryPolicy
	// ctx is where the backoff timers run: disconnected, so that a cancellation of the shard
	// from outside (which fails the devices in flight) leaves the waiting devices waiting.
	ctx workflow.Context
	// first is, by row, what the device's first attempt read; due marks the rows whose backoff
	// passed; calls sums the hub calls of the attempts before the current one, which the row
	// keeps with its own (a shard's rows are where its hub calls are counted).
	first []firstAttempt
	due   []bool
	calls []int
}

// firstAttempt is what a device's first attempt knew before it called: when it started, and the
// EvidenceBefore of its read (known only when the read came back to the shard).
type firstAttempt struct {
	at     time.Time
	before string
	known  bool
}

// newShardRetries sets up the shard's retries; the version of retries by failure type is asked
// only when the rollout has a policy.
func newShardRetries(ctx workflow.Context, in ShardInput) *shardRetries {
	n := len(in.Devices)
	rt := &shardRetries{first: make([]firstAttempt, n), due: make([]bool, n), calls: make([]int, n)}
	rt.ctx, _ = workflow.NewDisconnectedContext(ctx)
	if in.Retries != nil && workflow.GetVersion(ctx, retriesChange, workflow.DefaultVersion, 1) >= 1 {
		p := in.Retries.withDefaults()
		rt.policy = &p
	}
	return rt
}

// nextDue returns the first row whose retry is due, or -1.
func (rt *shardRetries) nextDue(rows []DeviceRow) int {
	for i, due := range rt.due {
		if due && rows[i].Result == DeviceRetrying {
			return i
		}
	}
	return -1
}

// startRetry takes row i out of its wait when it is a retry by failure type, and reports whether
// it was.
func (rt *shardRetries) startRetry(row *DeviceRow, i int) bool {
	if row.Result != DeviceRetrying {
		return false
	}
	rt.due[i] = false
	rt.calls[i] = row.HubCalls
	row.RetryAt = time.Time{}
	return true
}

// prepare gives the device of row i, about to make its attempt'th attempt, what its attempt needs
// of the earlier ones: the guard against a second delivery (every attempt after the first, the
// retry of failed devices too) and, while retries on offline remain, a quick end when the device
// is not connected.
func (rt *shardRetries) prepare(s *shard, d *device, i int) {
	first := rt.first[i]
	if d.attempt > 1 && !first.at.IsZero() {
		e := &activities.Earlier{}
		for k := 1; k < d.attempt; k++ {
			id := RolloutUpdateID(s.in.Rollout, k)
			if s.in.Operation == OperationReboot {
				id = rebootRequestID(id)
			}
			e.IDs = append(e.IDs, id)
		}
		if s.in.Operation == OperationFirmware {
			e.Taken = slices.Clone(protocol.FirmwareStages)
		}
		if first.known {
			e.Before = first.before
		} else {
			e.Since = first.at
		}
		d.earlier = e
	}
	d.failOffline = rt.policy != nil && rt.policy.Retries(FailureOffline) && d.attempt <= rt.policy.Count
}

// afterAttempt records what an attempt of row i came to, after the shard recorded its outcome:
// the first attempt's read, the failure type, and a failure the policy retries, which turns into
// a wait (out.result becomes DeviceRetrying).
func (rt *shardRetries) afterAttempt(s *shard, i int, out *deviceOutcome) {
	row := &s.rows[i]
	row.HubCalls += rt.calls[i]
	if row.Attempts == 1 {
		rt.first[i] = firstAttempt{at: row.Started}
		if out.evidence != nil {
			rt.first[i].before, rt.first[i].known = *out.evidence, true
		}
	}
	row.FailureType = ""
	if out.result != DeviceFailed {
		return
	}
	row.FailureType = FailureType(out.errType, out.errMsg)
	p := rt.policy
	if p == nil || !p.Retries(row.FailureType) || row.Attempts > p.Count || s.cmd.Stop || s.cmd.Cancel || s.cancelledByRollout {
		return
	}
	delay := p.Delay(row.Attempts)
	now := workflow.Now(rt.ctx)
	row.Result, out.result = DeviceRetrying, DeviceRetrying
	row.RetriedOn = append(row.RetriedOn, row.FailureType)
	row.RetryAt = now.Add(delay)
	s.logger.Info("device attempt failed: retrying after the backoff", "device", row.DeviceID, "attempt", row.Attempts,
		"failure_type", row.FailureType, "error_type", out.errType, "retry_in", delay)
	summary := fmt.Sprintf("%s: retry %d of %d after %s", row.DeviceID, row.Attempts, p.Count, row.FailureType)
	workflow.Go(rt.ctx, func(gctx workflow.Context) {
		_ = workflow.NewTimerWithOptions(gctx, delay, workflow.TimerOptions{Summary: summary}).Get(gctx, nil)
		if s.rows[i].Result != DeviceRetrying {
			return
		}
		rt.due[i] = true
		s.changes++
	})
}

// abandon ends the waits of a shard that closes before they did (the rollout aborted, was
// cancelled or ended): the device's last attempt failed and no retry comes. Cancelled with the
// rollout, it is cancelled; otherwise it failed, with its last attempt's error.
func (rt *shardRetries) abandon(s *shard) {
	for i := range s.rows {
		row := &s.rows[i]
		if row.Result != DeviceRetrying {
			continue
		}
		next := "attempt " + strconv.Itoa(row.Attempts+1)
		row.RetriedOn = row.RetriedOn[:len(row.RetriedOn)-1]
		row.RetryAt = time.Time{}
		rt.due[i] = false
		if s.cancelledByRollout {
			row.Result = DeviceCancelled
			row.Note = "cancelled with the rollout while waiting to retry: " + next + " not started"
			continue
		}
		row.Result = DeviceFailed
		row.Note = "the rollout stopped while the device waited to retry: " + next + " not started"
	}
}

// rebootGuard is what restart passes InvokeMethod of the device's guard: a reboot rollout's, not
// that of the reboot after a firmware update (whose earlier requests are firmware updates).
func (d *device) rebootGuard() (*activities.Earlier, bool) {
	if d.rollout.Operation != OperationReboot {
		return nil, false
	}
	return d.earlier, d.failOffline
}

// noteRead keeps the EvidenceBefore of the attempt's read before its call, the baseline of the
// device's first attempt for the guard of its retries; a result without a read, or one that
// followed an earlier request, has none of its own.
func (d *device) noteRead(inv activities.InvokeMethodResult) {
	if inv.Read == nil || inv.Earlier != nil || d.out.evidence != nil {
		return
	}
	before := inv.EvidenceBefore
	d.out.evidence = &before
}

// followID is the update FollowStages follows: this attempt's, or the earlier request the device
// took (the ID it reports, or from a device that reports none the first, since stages without an
// ID count by the hub's times alone).
func (d *device) followID(inv activities.InvokeMethodResult) string {
	switch {
	case inv.Earlier == nil:
		return d.updateID
	case inv.Earlier.ID != "":
		return inv.Earlier.ID
	}
	return d.earlier.IDs[0]
}

// waitID is the reboot request WaitForReported waits for: this attempt's, or the earlier one the
// device took.
func (d *device) waitID(inv activities.InvokeMethodResult, requestID string) string {
	if inv.Earlier == nil {
		return requestID
	}
	if inv.Earlier.ID != "" {
		return inv.Earlier.ID
	}
	return d.earlier.IDs[0]
}

// noteEarlier adds to the note of an attempt that followed an earlier request instead of calling.
func (d *device) noteEarlier(inv activities.InvokeMethodResult) {
	if inv.Earlier == nil {
		return
	}
	what := "an earlier attempt's update"
	if inv.Earlier.ID != "" {
		what = "the update " + inv.Earlier.ID
	}
	note := fmt.Sprintf("no second call: the device was at %s (%s), which attempt %d followed to the end", what,
		inv.Earlier.Value, d.attempt)
	if d.rollout.Operation == OperationReboot {
		note = fmt.Sprintf("no second call: the device had rebooted for an earlier attempt (%s), which attempt %d confirmed", inv.Earlier.By, d.attempt)
	}
	if d.out.note != "" {
		note = d.out.note + "; " + note
	}
	d.out.note = note
}
