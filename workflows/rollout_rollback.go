package workflows

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// Rollback (policy 1 of issue 18): a firmware rollout with RolloutInput.Rollback that aborts on its
// failure threshold installs the rollback firmware on the devices it updated (and, if asked, on those
// that failed), under the rollout's own waves, concurrency, rate, hub budget, maintenance windows and
// failure threshold.
//
// How it runs, on the sharded rollout:
//
//   - Shards of such a rollout stay open once their devices finished, as long as they hold a device
//     a rollback would take (a rollback may still come); the rollout's end (Finish) closes them.
//   - On the abort the rollout tells every shard Stop, as without a rollback: no device starts any
//     more. A shard with nothing to roll back closes; the others wait, and say so in their tally
//     (RollbackTally.Ready) once their devices in flight finished, so that the set of devices to
//     roll back is final. The rollout is RolloutRollingBack from the abort on.
//   - Once every open shard is ready the rollout plans the rollback's waves over those devices,
//     canary and growth again from the first, and grants them to the shards as it grants a forward
//     wave (ShardCommand.Rollback). A shard runs each granted device through the same steps as an
//     update (InvokeMethod with the twin read first and its SkipIf on the rollback version, then
//     FollowStages), as activities <device>/firmwareUpdate#rollback and <device>/stages#rollback, with
//     the update ID RolloutRollbackUpdateID. Its rows gain a rollback part (DeviceRow.Rollback), and
//     its tallies a RollbackTally; the rollout sums them (RolloutProgress.Rollback).
//   - The rollback's threshold is the rollout's (MaxFailures, MinDevices), over the rollback's own
//     waves and devices. Past it the rollback stops: the devices in flight finish, the rest are not
//     rolled back, and the rollout ends RolloutAborted with a reason naming the stopped rollback.
//     When no maintenance window opens any more, the rollback stops the same way.
//   - Pause, resume and cancel work during the rollback as before it: a pause holds the rollback's
//     starts, a cancel cancels its devices in flight and ends the rollout RolloutCancelled. The
//     rollout continues as new during the rollback as it does before (DevicesPerRun, history
//     length), carrying the rollback's state in RolloutState.Rollback.
//
// No rollback follows a cancel, a completion, the end of the maintenance windows (nothing failed:
// ErrRolloutNoWindow) or a failure to resolve the targets (RolloutFailed: nothing failed on a device
// either); RolloutProgress.Rollback then says why it did not run.

// rollbackChange is the workflow.GetVersion change ID of rollback, asked (in Rollout and in
// RolloutShard) only when the input has a rollback.
const rollbackChange = "rollout-rollback"

// Rollout states of a rollout with a rollback, in RolloutProgress.State and DmflowRolloutState.
const (
	// RolloutRollingBack: the rollout aborted on its failure threshold and rolls its devices back
	// (or waits for its devices in flight to finish before it does). Paused and waiting for a
	// maintenance window show as RolloutPaused and RolloutWaiting, with RolloutProgress.Rollback
	// telling the rollback's phase.
	RolloutRollingBack = "rolling-back"
	// RolloutRolledBack: final. The rollout aborted on its failure threshold and its rollback ran to
	// its end within the threshold: every device to roll back was rolled back, skipped (already on
	// the rollback version) or failed (within the threshold); RolloutProgress.Rollback counts them.
	// The workflow fails with ErrRolloutAborted, as the forward run did abort, its details holding
	// the final RolloutProgress. A rollback that stopped ends RolloutAborted instead, its reason
	// saying "the rollback to <version> stopped: …".
	RolloutRolledBack = "rolled-back"
)

// DeviceRolledBack is the RollbackRow.Result of a device that installed the rollback version.
const DeviceRolledBack = "rolled back"

// Values of RolloutRollback.Include.
const (
	// RollbackIncludeUpdated rolls back the devices the rollout updated (the default). Devices
	// skipped because they already ran the target version are not rolled back.
	RollbackIncludeUpdated = "updated"
	// RollbackIncludeFailed rolls back the devices whose update failed, alone.
	RollbackIncludeFailed = "failed"
	// RollbackIncludeBoth rolls back both.
	RollbackIncludeBoth = "both"
)

// Phases of a rollback, in RollbackProgress.Phase.
const (
	// RollbackArmed: the rollout runs; a rollback follows if it aborts on its threshold.
	RollbackArmed = "armed"
	// RollbackWaiting: the rollout aborted; the rollback waits for its devices in flight to finish.
	RollbackWaiting = "waiting"
	// RollbackRunning: devices are being rolled back.
	RollbackRunning = "running"
	// RollbackCompleted: every device to roll back finished its rollback.
	RollbackCompleted = "completed"
	// RollbackStopped: the rollback crossed its threshold (or ran out of maintenance windows);
	// RollbackProgress.Reason says which.
	RollbackStopped = "stopped"
	// RollbackCancelled: the rollout was cancelled during the rollback.
	RollbackCancelled = "cancelled"
	// RollbackNotRun: the rollout ended without a rollback (completed, cancelled, or aborted with
	// nothing failed); RollbackProgress.Reason says why when it aborted.
	RollbackNotRun = "not run"
)

// RolloutRollbackUpdateID is the update ID a rollout's rollback sends to each device: a new update
// for the device, which ignores a repeat of it.
func RolloutRollbackUpdateID(name string) string { return "rollout:" + name + ":rollback" }

// RolloutRollback is the rollback of a firmware rollout: the firmware the devices get when the
// rollout aborts on its failure threshold. The stage timeout, deadline and reboot are the rollout's.
type RolloutRollback struct {
	// PackageURI and Version are the rollback firmware's, checked as RolloutFirmware's; Version
	// must differ from the target version.
	PackageURI string `json:"packageUri"`
	Version    string `json:"version"`
	// Include says which devices are rolled back: RollbackIncludeUpdated (default ""),
	// RollbackIncludeFailed or RollbackIncludeBoth.
	Include string `json:"include,omitempty"`
}

// include is Include with its default.
func (rb RolloutRollback) include() string {
	if rb.Include == "" {
		return RollbackIncludeUpdated
	}
	return rb.Include
}

// takes reports whether the rollback takes a device whose forward result is result.
func (rb RolloutRollback) takes(result string) bool {
	switch result {
	case DeviceUpdated:
		return rb.include() != RollbackIncludeFailed
	case DeviceFailed:
		return rb.include() != RollbackIncludeUpdated
	}
	return false
}

// checkRollback reports what is wrong with the input's rollback, for Validate.
func (in RolloutInput) checkRollback() []string {
	rb := in.Rollback
	if rb == nil {
		return nil
	}
	if in.Operation != OperationFirmware {
		return []string{"a rollback applies to a firmware rollout: a reboot has nothing to roll back"}
	}
	var problems []string
	for _, p := range CheckFirmwarePackage(rb.PackageURI, rb.Version) {
		problems = append(problems, "rollback "+p)
	}
	if in.Firmware != nil && rb.Version != "" && rb.Version == in.Firmware.Version {
		problems = append(problems, fmt.Sprintf("rollback version %q is the target version: roll back to the version the devices ran before, e.g. 1.0.0", rb.Version))
	}
	switch rb.Include {
	case "", RollbackIncludeUpdated, RollbackIncludeFailed, RollbackIncludeBoth:
	default:
		problems = append(problems, fmt.Sprintf("rollback include %q is not %s, %s or %s", rb.Include,
			RollbackIncludeUpdated, RollbackIncludeFailed, RollbackIncludeBoth))
	}
	return problems
}

// RollbackState is the rollback's part of RolloutState, carried over continue-as-new.
type RollbackState struct {
	// Active is set once the rollout aborted and the rollback began (at Started); Reason is the
	// abort's reason.
	Active  bool      `json:"active,omitempty"`
	Started time.Time `json:"started,omitzero"`
	Reason  string    `json:"reason,omitempty"`
	// Planned is set once the devices in flight finished and the waves were planned over the
	// devices to roll back; WaveSizes, Wave and Granted are the rollback's waves as the forward's,
	// Cursor the first shard (by index) not granted all its devices yet.
	Planned   bool  `json:"planned,omitempty"`
	WaveSizes []int `json:"waveSizes,omitempty"`
	Wave      int   `json:"wave,omitempty"`
	Granted   []int `json:"granted,omitempty"`
	Cursor    int   `json:"cursor,omitempty"`
	// Closed sums the rollback tallies of the shards closed since the rollback began.
	Closed RollbackTally `json:"closed"`
	// Stopped says why the rollback stopped before its end (its threshold, no maintenance window).
	Stopped string `json:"stopped,omitempty"`
}

// RollbackRow is a device's rollback, in DeviceRow.Rollback: set once the rollback reached it.
type RollbackRow struct {
	// Result is DeviceRunning, DeviceRolledBack, DeviceSkipped (already on the rollback version:
	// no call), DeviceFailed, DeviceCancelled or DeviceNotStarted (the rollback stopped first).
	Result string `json:"result"`
	// Wave is the rollback's wave (0-based); Attempts how often it ran (1).
	Wave     int `json:"wave"`
	Attempts int `json:"attempts,omitempty"`
	// Stages, Started, Duration, HubCalls, Error, ErrorType and Note as in DeviceRow.
	Stages    []string      `json:"stages,omitempty"`
	Started   time.Time     `json:"started,omitzero"`
	Duration  time.Duration `json:"duration,omitempty"`
	HubCalls  int           `json:"hubCalls,omitempty"`
	Error     string        `json:"error,omitempty"`
	ErrorType string        `json:"errorType,omitempty"`
	Note      string        `json:"note,omitempty"`
}

// RollbackTally is a shard's account of its rollback, cumulative as ShardTally, or the sum of them.
// Devices = RolledBack + Skipped + Failed + Cancelled + NotStarted + Running + Pending.
type RollbackTally struct {
	// Devices counts the devices to roll back: those whose forward result the rollback takes.
	Devices    int `json:"devices,omitempty"`
	RolledBack int `json:"rolledBack,omitempty"`
	Skipped    int `json:"skipped,omitempty"`
	Failed     int `json:"failed,omitempty"`
	Cancelled  int `json:"cancelled,omitempty"`
	NotStarted int `json:"notStarted,omitempty"`
	Running    int `json:"running,omitempty"`
	Pending    int `json:"pending,omitempty"`
	HubCalls   int `json:"hubCalls,omitempty"`
	// Started counts the rollbacks started, Runs those finished.
	Started int `json:"started,omitempty"`
	Runs    int `json:"runs,omitempty"`
	// Waves are the finished and failed rollbacks of each rollback wave.
	Waves []WaveTally `json:"waves,omitempty"`
	// Ready is set once the shard was told Stop and its devices in flight finished: Devices is final.
	Ready bool `json:"ready,omitempty"`
}

// add adds o.
func (t *RollbackTally) add(o RollbackTally) {
	t.Devices += o.Devices
	t.RolledBack += o.RolledBack
	t.Skipped += o.Skipped
	t.Failed += o.Failed
	t.Cancelled += o.Cancelled
	t.NotStarted += o.NotStarted
	t.Running += o.Running
	t.Pending += o.Pending
	t.HubCalls += o.HubCalls
	t.Started += o.Started
	t.Runs += o.Runs
	t.Waves = addWaves(slices.Clone(t.Waves), o.Waves)
}

// ShardRollbackCommand is the rollback's part of a ShardCommand.
type ShardRollbackCommand struct {
	// Begun is set (with ShardCommand.Stop) once the rollout aborted and rolls back: the shard
	// waits for its grants, and marks the devices it never reached as not rolled back when it closes.
	Begun bool `json:"begun,omitempty"`
	// Quota is how many of the shard's devices to roll back may have been started in all; Wave is
	// the rollback wave of those started under this command.
	Quota int `json:"quota,omitempty"`
	Wave  int `json:"wave,omitempty"`
	// Stop: the rollback stopped, or none follows the abort (no maintenance window, a failed
	// resolution); nothing more starts in it, and the shard closes once its devices in flight
	// finished.
	Stop bool `json:"stop,omitempty"`
}

// RollbackProgress is the rollback's part of RolloutProgress, set for a rollout with a rollback.
type RollbackProgress struct {
	Version string `json:"version"`
	Include string `json:"include"`
	// Phase is one of the Rollback* phases; Reason says why it stopped, or why it did not run.
	Phase  string `json:"phase"`
	Reason string `json:"reason,omitempty"`
	// Devices counts the devices to roll back (known once the rollout aborted):
	// RolledBack + Skipped + Failed + Cancelled + NotStarted + Running + Pending.
	Devices    int `json:"devices"`
	RolledBack int `json:"rolledBack"`
	Skipped    int `json:"skipped"`
	Failed     int `json:"failed"`
	Cancelled  int `json:"cancelled"`
	NotStarted int `json:"notStarted"`
	Running    int `json:"running"`
	Pending    int `json:"pending"`
	// Wave (1-based) of Waves, and its size, finished and failed devices, as RolloutProgress's.
	Wave       int `json:"wave"`
	Waves      int `json:"waves"`
	WaveSize   int `json:"waveSize"`
	WaveDone   int `json:"waveDone"`
	WaveFailed int `json:"waveFailed"`
	// HubCalls are the rollback's (also counted in RolloutProgress.HubCalls); Started is the abort.
	HubCalls int       `json:"hubCalls"`
	Started  time.Time `json:"started,omitzero"`
}

// rollbackRun is what a Rollout run keeps of its rollback beside RolloutState.Rollback.
type rollbackRun struct {
	// on: the input has a rollback and the run runs it (rollbackChange).
	on bool
	// agg sums the shards' rollback tallies; waveDone and waveFailed by rollback wave, done and
	// failed over all of them.
	agg                  RollbackTally
	waveDone, waveFailed []int
	done, failed         int
	// ending is set once the rollback winds down to its end.
	ending bool
}

// askRollbackVersion asks the rollback's version once per run, when the input has a rollback.
func (r *rollout) askRollbackVersion(ctx workflow.Context) {
	if r.in.Rollback != nil && r.in.Operation == OperationFirmware {
		r.rb.on = workflow.GetVersion(ctx, rollbackChange, workflow.DefaultVersion, 1) >= 1
	}
}

// shardRollback is the rollback a new shard is told of.
func (r *rollout) shardRollback() *RolloutRollback {
	if !r.rb.on {
		return nil
	}
	return r.in.Rollback
}

// rollingBack reports whether the rollout is rolling back (or ending its rollback).
func (r *rollout) rollingBack() bool {
	return r.st.Rollback != nil && r.st.Rollback.Active
}

// skipRollback tells the shards, with the wind-down's command, that no rollback follows (the
// rollout ends for another reason than its threshold): those waiting for one close.
func (r *rollout) skipRollback() {
	if !r.rb.on || r.fl == nil {
		return
	}
	for i := range r.fl.Shards {
		r.fl.Shards[i].Want.Rollback.Stop = true
	}
}

// rollbackDue reports whether an aborting rollout rolls back: it aborted on its threshold (not on
// a cancel, the end of its windows or a failed resolution).
func (r *rollout) rollbackDue() bool {
	return r.rb.on && r.fl != nil && r.abortReason != "" && !r.cancelRequested && !r.noWindow && r.resolveErr == nil &&
		!r.endReached // the end time is no failure: nothing to undo
}

// runningState is the state of a rollout that runs: rolling back once it aborted with a rollback.
func (r *rollout) runningState() string {
	if r.rollingBack() {
		return RolloutRollingBack
	}
	return RolloutRunning
}

// rollbackRefusal says why a rolling-back rollout refuses control, "" when it does not: pause,
// resume and cancel apply to the rollback until it stops or ends.
func (r *rollout) rollbackRefusal(action string) string {
	switch {
	case r.st.Rollback.Stopped != "":
		return fmt.Sprintf("rollout %s is stopping its rollback (%s): there is nothing to %s", r.in.Name, r.st.Rollback.Stopped, action)
	case r.rb.ending:
		return fmt.Sprintf("rollout %s has rolled back and is ending: there is nothing to %s", r.in.Name, action)
	}
	return ""
}

// runRollback runs the rollback: at the abort of the run's main loop, or in a run continued
// during the rollback.
func (r *rollout) runRollback(ctx workflow.Context) (RolloutProgress, error) {
	rb := r.beginRollback(ctx)
	var err error
	for err == nil && !r.cancelRequested && rb.Stopped == "" {
		seen := r.changes
		if r.windowTimer != nil && r.windowTimer.IsReady() {
			r.windowTimer = nil
		}
		hold, ok := r.holdStarts(ctx, false, r.rollbackHasWork, r.rollbackOutOfWindows)
		if !ok {
			continue
		}
		// Planned as soon as the devices in flight finished, held or not: the progress then
		// counts the devices to roll back.
		planned := r.planRollback(ctx)
		if !hold {
			r.setState(ctx, RolloutRollingBack)
			if planned {
				r.grantRollback(ctx)
				if r.rollbackDone() {
					break
				}
			}
		}
		r.command(ctx, func(c *ShardCommand) { c.Hold = hold })
		if r.historyIsLong(ctx) || r.startedThisRun >= r.in.DevicesPerRun && r.rollbackMoreToGrant() {
			return r.continueShardsAsNew(ctx)
		}
		r.armShardsCheck(ctx)
		if err = r.awaitChange(ctx, seen); err == nil && r.shardsCheckDue() {
			r.checkShardsEnded(ctx)
		}
	}
	return r.endRollback(ctx, err)
}

// beginRollback starts the rollback at the abort (once), or takes it over in a continued run.
func (r *rollout) beginRollback(ctx workflow.Context) *RollbackState {
	rb := r.st.Rollback
	if rb == nil {
		rb = &RollbackState{}
		r.st.Rollback = rb
	}
	if !rb.Active {
		rb.Active, rb.Started, rb.Reason = true, workflow.Now(ctx), r.abortReason
		r.logger.Warn("rollout aborting: rolling back once the devices in flight finished",
			"reason", r.abortReason, "running", r.agg.Running, "rollback_version", r.in.Rollback.Version)
		// No device of the forward run starts any more; a shard with nothing to roll back closes.
		r.command(ctx, func(c *ShardCommand) { c.Stop, c.Rollback.Begun = true, true })
		r.sumRollback()
		r.touch(ctx)
	}
	r.abortReason = rb.Reason
	return rb
}

// planRollback plans the rollback's waves once every open shard is ready (its devices in flight
// finished, so that the devices to roll back are known), and reports whether it is planned.
func (r *rollout) planRollback(ctx workflow.Context) bool {
	rb := r.st.Rollback
	if rb.Planned {
		return true
	}
	n := 0
	for _, sh := range r.fl.Shards {
		t := sh.Last.Rollback
		if t == nil || !t.Ready {
			return false
		}
		n += t.Devices
	}
	rb.Planned = true
	rb.WaveSizes = PlanWaves(n, r.in.Canary, r.in.Growth)
	rb.Granted = make([]int, len(rb.WaveSizes))
	r.sumRollback()
	r.logger.Info("rollback starts", "devices", n, "waves", rb.WaveSizes, "version", r.in.Rollback.Version)
	r.touch(ctx)
	return true
}

// grantRollback hands the rollback's current wave to the shards, moving to the next wave when it
// finished, and shares the concurrency among the shards rolling back.
func (r *rollout) grantRollback(ctx workflow.Context) {
	rb := r.st.Rollback
	if len(rb.WaveSizes) == 0 {
		return
	}
	w := rb.Wave
	if rb.Granted[w] >= rb.WaveSizes[w] && r.rb.waveDone[w] >= rb.WaveSizes[w] && w+1 < len(rb.WaveSizes) {
		// The wave finished within the threshold (checkRollbackThreshold would have stopped it).
		w++
		rb.Wave = w
		r.logger.Info("rollback wave starts", "wave", w+1, "size", rb.WaveSizes[w])
	}
	for need := min(rb.WaveSizes[w]-rb.Granted[w], r.in.DevicesPerRun-r.startedThisRun); need > 0; {
		i := slices.IndexFunc(r.fl.Shards, func(s ShardRecord) bool { return s.Index >= rb.Cursor })
		if i < 0 {
			// The shards left ended outside the rollout: the wave is what it was given, and none
			// follows.
			rb.WaveSizes[w] = rb.Granted[w]
			rb.WaveSizes, rb.Granted = rb.WaveSizes[:w+1], rb.Granted[:w+1]
			break
		}
		sh := &r.fl.Shards[i]
		devices := 0
		if sh.Last.Rollback != nil {
			devices = sh.Last.Rollback.Devices
		}
		if d := min(need, devices-sh.Want.Rollback.Quota); d > 0 {
			sh.Want.Rollback.Quota += d
			sh.Want.Rollback.Wave = w
			rb.Granted[w] += d
			r.startedThisRun += d
			need -= d
		}
		if sh.Want.Rollback.Quota >= devices {
			rb.Cursor = sh.Index + 1
		}
	}
	r.shareRollbackConcurrency()
	r.flushCommands(ctx)
}

// shareRollbackConcurrency shares MaxConcurrent among the open shards in index order, by the
// rollbacks each was granted and has not finished.
func (r *rollout) shareRollbackConcurrency() {
	left := r.in.MaxConcurrent
	for i := range r.fl.Shards {
		sh := &r.fl.Shards[i]
		runs := 0
		if sh.Last.Rollback != nil {
			runs = sh.Last.Rollback.Runs
		}
		c := min(max(sh.Want.Rollback.Quota-runs, 0), left)
		sh.Want.Concurrency = c
		left -= c
	}
}

// rollbackHasWork reports whether devices are still to be rolled back (or may be, before the
// plan), which is when maintenance windows matter.
func (r *rollout) rollbackHasWork() bool {
	return !r.st.Rollback.Planned || r.rb.agg.Pending > 0
}

// rollbackMoreToGrant reports whether rollbacks are still to be granted to shards: a run that
// granted its DevicesPerRun continues as new only then.
func (r *rollout) rollbackMoreToGrant() bool {
	rb := r.st.Rollback
	if !rb.Planned || len(rb.WaveSizes) == 0 {
		return false
	}
	w := rb.Wave
	return w+1 < len(rb.WaveSizes) || rb.Granted[w] < rb.WaveSizes[w]
}

// rollbackDone reports whether every wave of the rollback was granted and finished.
func (r *rollout) rollbackDone() bool {
	rb := r.st.Rollback
	if !rb.Planned {
		return false
	}
	if len(rb.WaveSizes) == 0 {
		return true
	}
	w := rb.Wave
	return w+1 == len(rb.WaveSizes) && rb.Granted[w] >= rb.WaveSizes[w] && r.rb.waveDone[w] >= rb.WaveSizes[w] && r.rb.agg.Running == 0
}

// rollbackOutOfWindows stops the rollback when no maintenance window opens any more.
func (r *rollout) rollbackOutOfWindows(ctx workflow.Context) {
	rb := r.st.Rollback
	rb.Stopped = fmt.Sprintf("no maintenance window opens after %s", workflow.Now(ctx).UTC().Format(time.RFC3339))
	r.logger.Warn("rollback out of maintenance windows: stopping it", "pending", r.rb.agg.Pending, "running", r.rb.agg.Running)
	r.touch(ctx)
}

// sumRollback derives the rollback's figures from the shards' tallies, as sumShards the forward
// run's (which calls it).
func (r *rollout) sumRollback() {
	rb := r.st.Rollback
	if rb == nil || !rb.Active || r.fl == nil {
		r.rb.agg, r.rb.waveDone, r.rb.waveFailed, r.rb.done, r.rb.failed = RollbackTally{}, nil, nil, 0, 0
		return
	}
	agg := rb.Closed
	agg.Waves = slices.Clone(agg.Waves)
	for _, sh := range r.fl.Shards {
		if sh.Last.Rollback != nil {
			agg.add(*sh.Last.Rollback)
		}
	}
	agg.Ready = false
	r.rb.agg = agg
	n := len(rb.WaveSizes)
	for _, w := range agg.Waves {
		n = max(n, w.Wave+1)
	}
	r.rb.waveDone, r.rb.waveFailed = make([]int, n), make([]int, n)
	r.rb.done, r.rb.failed = 0, 0
	for _, w := range agg.Waves {
		r.rb.waveDone[w.Wave], r.rb.waveFailed[w.Wave] = w.Done, w.Failed
		r.rb.done += w.Done
		r.rb.failed += w.Failed
	}
}

// takeRollbackTally takes the rollback part of a shard's tally t (prev is the shard's part
// before): a closed shard's goes into the closed sum, and the rollback waves whose devices
// finished since are judged against the threshold.
func (r *rollout) takeRollbackTally(prev *RollbackTally, t ShardTally) {
	rb := r.st.Rollback
	if rb == nil || !rb.Active || t.Rollback == nil {
		return
	}
	if t.Closed {
		rb.Closed.add(*t.Rollback)
		r.sumRollback()
	}
	var before []WaveTally
	if prev != nil {
		before = prev.Waves
	}
	for _, w := range t.Rollback.Waves {
		if !slices.Contains(before, w) {
			r.checkRollbackThreshold(w.Wave, r.rb.waveFailed[w.Wave] > 0)
		}
	}
}

// checkRollbackThreshold stops the rollback when the failures of its wave w, or of all its devices
// finished, exceed the rollout's threshold, as checkThreshold judges the forward run's.
func (r *rollout) checkRollbackThreshold(w int, failed bool) {
	rb := r.st.Rollback
	if rb.Stopped != "" || r.cancelRequested || !rb.Planned || w >= len(rb.WaveSizes) {
		return
	}
	size := rb.WaveSizes[w]
	if allowed := r.threshold.Allowed(size); failed && r.rb.waveFailed[w] > allowed {
		rb.Stopped = fmt.Sprintf("%d of the %d devices of its wave %d failed, more than the %s allowed (%d)",
			r.rb.waveFailed[w], size, w+1, r.threshold, allowed)
		return
	}
	if !r.threshold.IsPct {
		if r.rb.failed > r.threshold.Count {
			rb.Stopped = fmt.Sprintf("%d devices failed to roll back, more than the %d allowed", r.rb.failed, r.threshold.Count)
		}
		return
	}
	if r.rb.waveDone[w] < size || r.rb.done < r.in.MinDevices {
		return
	}
	if allowed := r.threshold.Allowed(r.rb.done); r.rb.failed > allowed {
		rb.Stopped = fmt.Sprintf("%d of the %d devices finished failed to roll back, more than the %s allowed (%d)",
			r.rb.failed, r.rb.done, r.threshold, allowed)
	}
}

// rollbackShardEnded is the rollback part of the last tally the rollout makes for a shard that
// ended outside it (shardEnded): its rollbacks in flight, and those granted but not started,
// failed in the current rollback wave; the rest are not rolled back.
func (r *rollout) rollbackShardEnded(sh *ShardRecord) *RollbackTally {
	last := sh.Last.Rollback
	if last == nil {
		return nil
	}
	t := *last
	t.Waves = slices.Clone(last.Waves)
	notStarted := min(max(sh.Sent.Rollback.Quota-t.Started, 0), t.Pending)
	lost := t.Running + notStarted
	t.Failed += lost
	t.NotStarted += t.Pending - notStarted
	t.Pending, t.Running = 0, 0
	if rb := r.st.Rollback; lost > 0 && rb != nil && rb.Planned {
		t.Waves = addWaves(t.Waves, []WaveTally{{Wave: rb.Wave, Done: lost, Failed: lost}})
	}
	return &t
}

// endRollback ends the rollback: it stops (or cancels, or finishes) the shards, waits for their
// last tallies and ends the rollout rolled back, aborted (the rollback stopped) or cancelled.
func (r *rollout) endRollback(ctx workflow.Context, err error) (RolloutProgress, error) {
	rb := r.st.Rollback
	r.rb.ending = true
	cancelled := err != nil
	if cancelled {
		ctx, _ = workflow.NewDisconnectedContext(ctx)
		r.cancelRequested = true
		if r.reason == "" {
			r.reason = "the workflow was cancelled in Temporal"
		}
	}
	switch {
	case r.cancelRequested:
		r.command(ctx, func(c *ShardCommand) { c.Cancel = true })
	case rb.Stopped != "":
		r.logger.Warn("rollback stopping: letting the devices in flight finish", "reason", rb.Stopped, "running", r.rb.agg.Running)
		r.command(ctx, func(c *ShardCommand) { c.Rollback.Stop = true })
	default:
		r.command(ctx, func(c *ShardCommand) { c.Finish = true })
	}
	if err := r.awaitShardsClosed(ctx); err != nil {
		return r.progress(), err
	}
	a := r.rb.agg
	version := r.in.Rollback.Version
	switch {
	case r.cancelRequested:
		r.reason += fmt.Sprintf("; cancelled while rolling back to %s (%s) after the abort: %s", version, rollbackCounts(a), rb.Reason)
		return r.endCancelled(ctx, cancelled)
	case rb.Stopped != "":
		r.reason = fmt.Sprintf("%s; the rollback to %s stopped: %s; %s", rb.Reason, version, rb.Stopped, rollbackCounts(a))
		return r.endAborted(ctx)
	}
	r.reason = rb.Reason + "; " + rolledBackText(version, a)
	r.end(ctx, RolloutRolledBack)
	p := r.progress()
	r.logger.Warn("rollout aborted and rolled back", "reason", r.reason, "rolled_back", a.RolledBack, "failed", a.Failed)
	return p, temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("rollout %s aborted and rolled back: %s", r.in.Name, r.reason), ErrRolloutAborted, nil, p)
}

// rollbackCounts is "1 rolled back, 3 failed, 3 not rolled back": how far a rollback that ended
// early came.
func rollbackCounts(a RollbackTally) string {
	parts := []string{fmt.Sprintf("%d rolled back", a.RolledBack)}
	if a.Skipped > 0 {
		parts = append(parts, fmt.Sprintf("%d skipped", a.Skipped))
	}
	if a.Failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", a.Failed))
	}
	return strings.Join(append(parts, fmt.Sprintf("%d not rolled back", a.NotStarted+a.Cancelled+a.Pending+a.Running)), ", ")
}

// rolledBackText says how a completed rollback went: "rolled back 5 devices to 1.0.0 (1 skipped,
// already on it; 1 failed)".
func rolledBackText(version string, a RollbackTally) string {
	if a.Devices == 0 {
		return "nothing to roll back to " + version + ": no device was updated"
	}
	s := "rolled back " + strconv.Itoa(a.RolledBack) + " " + pluralDevices(a.RolledBack) + " to " + version
	var more []string
	if a.Skipped > 0 {
		more = append(more, fmt.Sprintf("%d skipped, already on it", a.Skipped))
	}
	if a.Failed > 0 {
		more = append(more, fmt.Sprintf("%d failed", a.Failed))
	}
	if n := a.NotStarted + a.Cancelled; n > 0 {
		more = append(more, fmt.Sprintf("%d not rolled back", n))
	}
	for i, m := range more {
		if i == 0 {
			s += " ("
		} else {
			s += "; "
		}
		s += m
	}
	if len(more) > 0 {
		s += ")"
	}
	return s
}

// rollbackProgress fills p.Rollback for a rollout with a rollback, and adds the rollback's hub
// calls to p's.
func (r *rollout) rollbackProgress(p *RolloutProgress) {
	if r.in.Rollback == nil || !r.rb.on && r.st.Rollback == nil {
		return
	}
	rp := &RollbackProgress{Version: r.in.Rollback.Version, Include: r.in.Rollback.include()}
	p.Rollback = rp
	rb := r.st.Rollback
	if rb == nil || !rb.Active {
		rp.Phase = RollbackArmed
		if p.Done() {
			rp.Phase = RollbackNotRun
			switch {
			case r.noWindow:
				rp.Reason = "the rollout ran out of maintenance windows: nothing failed"
			case r.resolveErr != nil:
				rp.Reason = "the rollout could not resolve its targets: nothing failed"
			case r.endReached:
				rp.Reason = "the rollout reached its end time: nothing failed"
			}
		}
		return
	}
	a := r.rb.agg
	rp.Devices, rp.RolledBack, rp.Skipped, rp.Failed = a.Devices, a.RolledBack, a.Skipped, a.Failed
	rp.Cancelled, rp.NotStarted, rp.Running, rp.Pending = a.Cancelled, a.NotStarted, a.Running, a.Pending
	rp.HubCalls, rp.Started, rp.Reason = a.HubCalls, rb.Started, rb.Stopped
	p.HubCalls += a.HubCalls
	switch {
	case rb.Stopped != "":
		rp.Phase = RollbackStopped
	case r.cancelRequested || p.State == RolloutCancelled:
		rp.Phase = RollbackCancelled
	case p.State == RolloutRolledBack:
		rp.Phase = RollbackCompleted
	case !rb.Planned:
		rp.Phase = RollbackWaiting
	default:
		rp.Phase = RollbackRunning
	}
	rp.Waves = len(rb.WaveSizes)
	if w := rb.Wave; w < len(rb.WaveSizes) {
		rp.Wave, rp.WaveSize = w+1, rb.WaveSizes[w]
		if w < len(r.rb.waveDone) {
			rp.WaveDone, rp.WaveFailed = r.rb.waveDone[w], r.rb.waveFailed[w]
		}
	}
	if r.windowed && r.winKnown && r.win.Open && r.win.holdsAt(r.now) && p.State == RolloutRollingBack && a.Pending > 0 {
		p.WindowCloses = r.win.Closes
	}
}
