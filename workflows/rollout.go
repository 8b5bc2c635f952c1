package workflows

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/protocol"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// maxErrorLength keeps a device's error short in the rollout's state, which travels through
// continue-as-new for every device.
const maxErrorLength = 300

// windowsChange is the workflow.GetVersion change ID of maintenance windows: runs recorded before
// it (DefaultVersion) ignore in.Windows, as the code then did, so their histories replay.
const windowsChange = "maintenance-windows"

// Rollout runs FirmwareUpdate or Reboot on many devices, in waves, under limits:
//
//   - Targets: in.Query is resolved once through QueryDevices (a firmware rollout also reads each
//     device's reported firmwareVersion, and devices already on the target version are skipped
//     without any call), in.Devices are taken as given; either way the targets are kept sorted by
//     device ID, so the set does not drift while the rollout runs.
//   - Waves: a canary wave of in.Canary devices, then waves growing by in.Growth. A wave starts
//     only when every device of the previous one has finished and its failures stayed within the
//     threshold.
//   - Devices: each runs as a child workflow with the ID RolloutDeviceWorkflowID, at most
//     in.MaxConcurrent at a time, its hub calls drawing from one token bucket of in.Rate per
//     second for the whole rollout (activities.HubRate). A device workflow that already completed
//     under that ID (in an earlier run of a rollout of the same name) is not started again.
//   - Threshold: in.MaxFailures, a count or a percentage. More failures in a wave than it allows of
//     the wave's size, or among all devices finished (once in.MinDevices have), abort the rollout:
//     no device starts any more, those in flight finish, and the workflow fails with
//     ErrRolloutAborted carrying the final RolloutProgress.
//   - Control: the updates UpdatePause, UpdateResume and UpdateCancel, with validators that refuse
//     a transition the state does not allow; QueryProgress and QueryReport. Cancelling the
//     workflow in Temporal (the UI's Cancel) works as UpdateCancel, ending as cancelled.
//   - Retry: with in.RetryFailed, the devices that failed run once more at the end, with a new
//     update ID (RolloutUpdateID), unless the rollout aborted or was cancelled.
//   - Scale: after in.DevicesPerRun device starts the workflow stops starting, lets the devices in
//     flight finish and continues as new, carrying the rows in in.State.
//   - Maintenance windows: with in.Windows, a device starts only while a window is open
//     (WindowAt). Outside one the rollout is RolloutWaiting: a durable timer waits for the next
//     opening (RolloutProgress.WindowOpens) while queries and updates are answered; cancel ends
//     the rollout at once, pause holds it, resume returns to waiting. Inside one, a timer at the
//     close (RolloutProgress.WindowCloses) stops the starts even if no device finishes: devices in
//     flight finish, and the wave goes on in the next window. When no window opens any more and
//     devices are left to start, the rollout ends as RolloutAborted with ErrRolloutNoWindow. Time
//     spent waiting does not count as active (devices per minute are those inside windows).
//   - Rollback: with in.Rollback, an abort on the threshold installs the rollback firmware on the
//     devices the rollout updated, under the same waves, limits, windows and threshold, in state
//     RolloutRollingBack, ending RolloutRolledBack (or RolloutAborted when the rollback stopped);
//     see rollout_rollback.go.
//   - Continuous targeting: with in.Continuous (a firmware rollout by query), once its targets
//     finished the rollout looks every Continuous.Every for devices that came to match since, with
//     one query narrowed to the twins changed since the last look and not yet touched by it, and
//     runs them in the next waves, until Continuous.Until or a cancel (rollout_continuous.go).
//
// It completes with the final RolloutProgress (State RolloutCompleted or RolloutCancelled); it
// fails with ErrInvalidInput for invalid input, ErrRolloutAborted past the threshold,
// ErrRolloutNoWindow when its windows end before its devices were started, and with the
// activity's error when the targets cannot be resolved.
//
// Search attributes: DmflowRollout, DmflowOperation, DmflowTargetVersion (firmware) and
// DmflowRolloutState, kept current; every device workflow carries DmflowRollout too.
func Rollout(ctx workflow.Context, in RolloutInput) (RolloutProgress, error) {
	info := workflow.GetInfo(ctx)
	if in.Schedule != "" && in.Name == "" {
		// Started by a schedule: every run of the schedule is a rollout of its own.
		in.Name = ScheduledRolloutName(info.WorkflowExecution.ID)
	}
	logger := log.With(workflow.GetLogger(ctx), "rollout", in.Name, "workflow_id", info.WorkflowExecution.ID)
	if err := in.Validate(); err != nil {
		logger.Error("invalid input", "error", err)
		return RolloutProgress{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalidInput, nil)
	}
	in = in.withDefaults()
	threshold, _ := ParseThreshold(in.MaxFailures) // Validate parsed it

	r := &rollout{
		in:        in,
		threshold: threshold,
		logger:    logger,
		now:       workflow.Now(ctx),
	}
	if in.Rate > 0 {
		r.rate = &activities.HubRate{Key: info.WorkflowExecution.ID, PerSecond: in.Rate}
	}
	if in.State != nil {
		if err := r.restore(in.State); err != nil {
			return RolloutProgress{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalidInput, nil)
		}
	} else {
		r.st = &RolloutState{Started: r.now, Runs: 1}
		r.state = RolloutResolving
		if workflow.GetVersion(ctx, shardsChange, workflow.DefaultVersion, 1) >= 1 {
			r.startFleet()
		}
	}
	if err := r.setHandlers(ctx); err != nil {
		return RolloutProgress{}, err
	}
	if len(in.Windows) > 0 {
		// Asked only when windows are given: a rollout without them keeps its command sequence.
		r.windowed = workflow.GetVersion(ctx, windowsChange, workflow.DefaultVersion, 1) >= 1
	}
	r.retries = newRolloutRetries(ctx, in)
	r.askRollbackVersion(ctx) // rollback (policy 1)
	attrs := []temporal.SearchAttributeUpdate{
		SearchAttrRollout.ValueSet(in.Name),
		SearchAttrOperation.ValueSet(in.Operation),
		SearchAttrRolloutState.ValueSet(r.state),
	}
	if in.Firmware != nil {
		attrs = append(attrs, SearchAttrTargetVersion.ValueSet(in.Firmware.Version))
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, attrs...); err != nil {
		return RolloutProgress{}, err
	}
	r.publishedState = r.state

	if r.fl != nil {
		return r.runFleet(ctx, in.State == nil)
	}
	if in.State == nil {
		if err := r.resolve(ctx); err != nil {
			r.reason = fmt.Sprintf("resolving the targets failed: %v", err)
			r.end(ctx, RolloutFailed)
			logger.Error("resolving the targets failed", "error", err)
			return r.progress(), err
		}
		if !r.windowed {
			// With windows the main loop sets the state at once: running, or waiting.
			r.setState(ctx, RolloutRunning)
			if r.st.Paused {
				r.setState(ctx, RolloutPaused)
			}
		}
	}
	return r.run(ctx)
}

// rollout is the state of one Rollout run.
type rollout struct {
	in        RolloutInput
	threshold Threshold
	logger    log.Logger
	rate      *activities.HubRate
	st        *RolloutState

	// state is the Rollout* state; publishedState the one last upserted as search attribute.
	state, publishedState string
	// reason explains a pause, an abort, a cancellation or a failure.
	reason string
	// abortReason is set when the threshold was exceeded, or no maintenance window opens any more
	// (noWindow); cancelRequested when a cancel was asked for.
	abortReason     string
	noWindow        bool
	cancelRequested bool
	// now is the workflow time of the last change, finishedTime the end.
	now, finishedTime time.Time

	// running counts the device workflows in flight; startedThisRun those started in this run.
	running, startedThisRun int
	// next is the index of the first row that may still be pending.
	next int
	// waveDone and waveFailed count the finished and failed devices per wave; failed and
	// finished those of the whole rollout.
	waveDone, waveFailed []int
	failed, finished     int
	// changes counts every event the main loop waits for: a device finishing, an update.
	changes int
	// cancelChildren cancels every device workflow in flight.
	cancelChildren workflow.CancelFunc
	// metrics is what observe last emitted (metrics.go).
	metrics rolloutMetrics

	// fl is the state of a sharded rollout (nil for one that began before shards); agg its
	// devices' counts, summed from the shards' tallies (sumShards).
	fl  *fleet
	agg Tally
	// cancelResolve cancels the read of a page of targets in progress; resolveErr is the error
	// that ended the resolution.
	cancelResolve workflow.CancelFunc
	resolveErr    error
	// signals are the commands sent to shards and not yet known delivered.
	signals []workflow.Future
	// endChecks is set in rollouts that look for shards ended outside them (endChecksChange);
	// shardsCheck is the timer of the next look.
	endChecks      bool
	shardsCheck    workflow.Future
	checkingShards bool

	// windowed is set when the rollout starts devices only in its maintenance windows.
	windowed bool
	// win is the window state last recorded, known once winKnown; it holds until its boundary.
	win      windowState
	winKnown bool
	// windowTimer fires at windowTimerAt, the window boundary the main loop waits for;
	// cancelWindowTimer cancels it.
	windowTimer       workflow.Future
	windowTimerAt     time.Time
	cancelWindowTimer workflow.CancelFunc
	// waitingSince is when the wait for a window in progress began; zero when not waiting.
	waitingSince time.Time

	// Approval gates, success condition and end time (rollout_gates.go): gated is set when the
	// run follows them (gatesChange); endTimer fires at the end time, endReached once it did.
	gated      bool
	pauseBelow float64
	endTimer   workflow.Future
	endReached bool
	// retries is the state of retries and thresholds by failure type (rollout_retries.go); nil
	// without them.
	retries *rolloutRetries
	// rb is the run's part of the rollback (policy 1); its state is in st.Rollback.
	rb rollbackRun
	// pace paces the device starts (rollout_rate.go); answers holds the shards' answers to
	// per-device control for the updates waiting for them (rollout_device.go).
	pace    startPace
	answers map[controlKey][]DeviceControlOutcome
	// cont is the state of the looks of a continuous rollout (rollout_continuous.go); nil for another.
	cont *continuous
}

// restore takes over the state carried by continue-as-new.
func (r *rollout) restore(st *RolloutState) error {
	if st.Sharded {
		r.fl = &fleet{}
		if err := unpackJSON(st.PackedFleet, r.fl); err != nil {
			return err
		}
		st.PackedFleet = nil
	}
	if st.PackedRows != nil {
		rows, err := unpackRows(st.PackedRows)
		if err != nil {
			return err
		}
		st.Rows, st.PackedRows = rows, nil
	}
	r.st = st
	r.st.Runs++
	r.state = RolloutRunning
	r.state = r.runningState() // rollback (policy 1): rolling back once it aborted
	if st.Paused {
		r.state = RolloutPaused
		r.reason = st.PauseReason
	} else if st.AwaitingWave > 0 {
		r.state = RolloutAwaitingApproval
	}
	if r.fl != nil {
		r.sumShards()
	} else {
		r.countRows()
	}
	r.logger.Info("rollout continues", "run", st.Runs, "finished", r.finished, "total", r.total())
	return nil
}

// packRows compresses the rows for continue-as-new.
func packRows(rows []DeviceRow) ([]byte, error) {
	return packJSON(rows)
}

func unpackRows(packed []byte) ([]DeviceRow, error) {
	var rows []DeviceRow
	return rows, unpackJSON(packed, &rows)
}

// packJSON compresses v's JSON for continue-as-new. The result depends only on v, and replay does
// not compare a continue-as-new's input, so this is safe in workflow code.
func packJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(v); err != nil {
		return nil, fmt.Errorf("pack the rollout's state: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("pack the rollout's state: %w", err)
	}
	return buf.Bytes(), nil
}

func unpackJSON(packed []byte, v any) error {
	zr, err := gzip.NewReader(bytes.NewReader(packed))
	if err != nil {
		return fmt.Errorf("unpack the rollout's state: %w", err)
	}
	if err := json.NewDecoder(zr).Decode(v); err != nil {
		return fmt.Errorf("unpack the rollout's state: %w", err)
	}
	return nil
}

// countRows derives the counters from the rows. Rows still running when a run ended (none, since
// a run drains before continuing) are started again: their device workflow ID finds them.
func (r *rollout) countRows() {
	r.waveDone = make([]int, len(r.st.WaveSizes))
	r.waveFailed = make([]int, len(r.st.WaveSizes))
	r.failed, r.finished = 0, 0
	for i := range r.st.Rows {
		row := &r.st.Rows[i]
		if row.Result == DeviceRunning {
			row.Result = DevicePending
		}
		if !row.Finished() || row.Wave < 0 {
			continue
		}
		r.finished++
		r.waveDone[row.Wave]++
		if row.Result == DeviceFailed {
			r.failed++
			r.waveFailed[row.Wave]++
		}
	}
}

// resolve turns the targets into rows and plans the waves.
func (r *rollout) resolve(ctx workflow.Context) error {
	type target struct {
		id, version string
		known       bool // version read from the twin
	}
	var targets []target
	if query := r.in.TargetQuery(); query != "" {
		var a *activities.Activities
		qin := activities.QueryDevicesInput{Query: query, MaxDevices: MaxRolloutDevices, Rate: r.rate}
		if r.in.Operation == OperationFirmware {
			qin.Properties = []string{protocol.PropFirmwareVersion}
		}
		var res activities.QueryDevicesResult
		if err := workflow.ExecuteActivity(queryOptions(ctx), a.QueryDevices, qin).Get(ctx, &res); err != nil {
			return err
		}
		r.st.HubCalls += res.Pages
		for _, d := range res.Devices {
			v, _ := d.Reported[protocol.PropFirmwareVersion].(string)
			targets = append(targets, target{id: d.DeviceID, version: v, known: qin.Properties != nil})
		}
	} else {
		for _, id := range r.in.Devices {
			targets = append(targets, target{id: id})
		}
	}
	slices.SortFunc(targets, func(a, b target) int {
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})
	targets = slices.CompactFunc(targets, func(a, b target) bool { return a.id == b.id })

	rows := make([]DeviceRow, 0, len(targets))
	work := 0
	for _, t := range targets {
		row := DeviceRow{DeviceID: t.id, Result: DevicePending, FromVersion: t.version}
		if t.known && r.in.Firmware != nil && t.version == r.in.Firmware.Version {
			row.Wave, row.Result = -1, DeviceSkipped
			row.Note = "already on " + t.version + " when the targets were resolved"
		} else {
			work++
		}
		rows = append(rows, row)
	}
	r.st.WaveSizes = PlanWaves(work, r.in.Canary, r.in.Growth)
	wave, inWave := 0, 0
	for i := range rows {
		if rows[i].Result != DevicePending {
			continue
		}
		if inWave == r.st.WaveSizes[wave] {
			wave, inWave = wave+1, 0
		}
		rows[i].Wave = wave
		inWave++
	}
	r.st.Rows = rows
	r.countRows()
	r.logger.Info("targets resolved", "devices", len(rows), "to_run", work, "waves", r.st.WaveSizes)
	switch {
	case len(rows) == 0 && r.in.Reconcile:
		r.reason = "no target devices: every device selected already reports " + r.in.Firmware.Version
	case len(rows) == 0:
		r.reason = "no target devices: the query selected none"
	}
	return nil
}

// run starts the devices wave by wave until all finished, the threshold is exceeded or the
// rollout is cancelled, then winds down.
func (r *rollout) run(ctx workflow.Context) (RolloutProgress, error) {
	childCtx, cancel := workflow.WithCancel(ctx)
	r.cancelChildren = cancel
	var err error
	for err == nil && !r.cancelRequested && r.abortReason == "" {
		seen := r.changes
		if r.windowTimer != nil && r.windowTimer.IsReady() {
			r.windowTimer = nil
		}
		if r.st.Paused {
			r.setState(ctx, RolloutPaused)
			err = workflow.Await(ctx, func() bool { return !r.st.Paused || r.cancelRequested })
			continue
		}
		if r.windowed && r.hasPending() {
			ws := r.window(ctx)
			switch {
			case ws.None:
				r.outOfWindows(ctx)
				continue
			case !ws.Open:
				r.waitForWindow(ctx, ws.Opens)
				err = r.awaitChange(ctx, seen)
				continue
			}
			// The close stops the starts even if no device finishes before it.
			r.armWindowTimer(ctx, ws.Closes, "maintenance window closes")
		}
		r.setState(ctx, RolloutRunning)
		i := r.nextStartable()
		switch {
		case i >= 0 && r.runIsFull():
			if r.running == 0 {
				return r.continueAsNew(ctx)
			}
		case i >= 0 && r.running < r.in.MaxConcurrent:
			r.start(ctx, childCtx, i)
			continue
		case i < 0 && r.running == 0 && r.allFinished():
			if r.in.RetryFailed && !r.st.Retrying && r.failed > 0 {
				r.queueRetry()
				continue
			}
			return r.complete(ctx)
		}
		err = r.awaitChange(ctx, seen)
	}

	// Winding down: an abort lets the devices in flight finish, a cancellation cancels them. A
	// cancellation of the workflow itself cancelled ctx (and with it every device workflow):
	// the rest runs on a disconnected context.
	cancelled := err != nil
	if cancelled {
		ctx, _ = workflow.NewDisconnectedContext(ctx)
		r.cancelRequested = true
		if r.reason == "" {
			r.reason = "the workflow was cancelled in Temporal"
		}
	}
	if r.cancelRequested {
		r.cancelChildren()
	}
	if r.abortReason != "" && !r.cancelRequested {
		r.logger.Warn("rollout aborting: letting the devices in flight finish", "reason", r.abortReason, "running", r.running)
	}
	if err := workflow.Await(ctx, func() bool { return r.running == 0 }); err != nil {
		return r.progress(), err
	}
	for i := range r.st.Rows {
		if r.st.Rows[i].Result == DevicePending {
			r.st.Rows[i].Result = DeviceNotStarted
		}
	}
	if r.cancelRequested {
		return r.endCancelled(ctx, cancelled)
	}
	r.reason = r.abortReason
	return r.endAborted(ctx)
}

// endCancelled ends a cancelled rollout; cancelled is set when the workflow itself was cancelled
// in Temporal, which it then ends as.
func (r *rollout) endCancelled(ctx workflow.Context, cancelled bool) (RolloutProgress, error) {
	r.end(ctx, RolloutCancelled)
	p := r.progress()
	r.logger.Info("rollout cancelled", "reason", r.reason, "succeeded", p.Succeeded, "cancelled", p.Cancelled, "not_started", p.NotStarted)
	if cancelled {
		return p, temporal.NewCanceledError(p)
	}
	return p, nil
}

// endAborted ends an aborted rollout, failing with ErrRolloutNoWindow or ErrRolloutAborted.
func (r *rollout) endAborted(ctx workflow.Context) (RolloutProgress, error) {
	if r.endReached {
		return r.endAtEndTime(ctx)
	}
	r.end(ctx, RolloutAborted)
	p := r.progress()
	if r.noWindow {
		r.logger.Warn("rollout out of maintenance windows", "reason", r.reason, "not_started", p.NotStarted)
		return p, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("rollout %s aborted: %s", r.in.Name, r.reason), ErrRolloutNoWindow, nil, p)
	}
	r.logger.Error("rollout aborted", "reason", r.reason, "failed", p.Failed, "not_started", p.NotStarted)
	return p, temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("rollout %s aborted: %s; %d devices were not started", r.in.Name, r.reason, p.NotStarted),
		ErrRolloutAborted, nil, p)
}

// awaitChange waits until something the main loop acts on happened since it saw the count seen:
// a device finished, an update, the window timer fired.
func (r *rollout) awaitChange(ctx workflow.Context, seen int) error {
	return workflow.Await(ctx, func() bool {
		return r.changes != seen || r.windowTimer != nil && r.windowTimer.IsReady() || r.shardsCheckDue()
	})
}

// hasPending reports whether a device is still to start, in this wave or a later one.
func (r *rollout) hasPending() bool {
	rows := r.st.Rows
	for r.next < len(rows) && rows[r.next].Result != DevicePending {
		r.next++
	}
	return r.next < len(rows)
}

// nextStartable returns the index of the next device to start in the current wave, moving to
// the next wave when the current one has finished within the threshold; -1 when none may start
// now.
func (r *rollout) nextStartable() int {
	rows := r.st.Rows
	if !r.hasPending() {
		return -1
	}
	w := rows[r.next].Wave
	if w > r.st.Wave {
		// The current wave's devices have all started; the next wave waits until they finished.
		if r.waveDone[r.st.Wave] < r.st.WaveSizes[r.st.Wave] {
			return -1
		}
		r.st.Wave = w
		r.logger.Info("wave starts", "wave", w+1, "waves", len(r.st.WaveSizes), "size", r.st.WaveSizes[w])
	}
	return r.next
}

// runIsFull reports whether this run has started as many devices as it may before continuing as
// new.
func (r *rollout) runIsFull() bool {
	return r.startedThisRun >= r.in.DevicesPerRun
}

// allFinished reports whether no device is pending or running.
func (r *rollout) allFinished() bool {
	return r.next >= len(r.st.Rows) && r.running == 0
}

// queueRetry queues every failed device again as one last wave.
func (r *rollout) queueRetry() {
	r.st.Retrying = true
	wave := len(r.st.WaveSizes)
	n := 0
	for i := range r.st.Rows {
		row := &r.st.Rows[i]
		if row.Result != DeviceFailed {
			continue
		}
		row.Result, row.Wave = DevicePending, wave
		n++
	}
	r.st.WaveSizes = append(r.st.WaveSizes, n)
	r.failed -= n
	r.finished -= n
	r.waveDone = append(r.waveDone, 0)
	r.waveFailed = append(r.waveFailed, 0)
	r.next = 0
	r.logger.Info("retrying the failed devices", "devices", n)
}

// start runs the device workflow of row i.
func (r *rollout) start(ctx, childCtx workflow.Context, i int) {
	row := &r.st.Rows[i]
	row.Result = DeviceRunning
	row.Attempts++
	row.Started = workflow.Now(ctx)
	row.Error, row.ErrorType, row.Note, row.Stages = "", "", "", nil
	r.running++
	r.startedThisRun++
	r.touch(ctx)

	workflowID := RolloutDeviceWorkflowID(r.in.Name, row.DeviceID)
	cctx := workflow.WithChildOptions(childCtx, workflow.ChildWorkflowOptions{
		WorkflowID: workflowID,
		// A device workflow that completed is never run again under this rollout's name; one that
		// failed may be (the retry of failed devices).
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE_FAILED_ONLY,
		// Terminating the rollout asks its devices' workflows to stop cleanly rather than killing
		// them between a method call and its confirmation.
		ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
		WaitForCancellation:   true,
		TypedSearchAttributes: temporal.NewSearchAttributes(SearchAttrRollout.ValueSet(r.in.Name)),
	})
	updateID := RolloutUpdateID(r.in.Name, row.Attempts)
	deviceID := row.DeviceID
	workflow.Go(ctx, func(gctx workflow.Context) {
		var out deviceOutcome
		switch r.in.Operation {
		case OperationFirmware:
			fw := r.in.Firmware
			var res FirmwareResult
			err := workflow.ExecuteChildWorkflow(cctx, FirmwareUpdate, FirmwareInput{
				DeviceID:     deviceID,
				PackageURI:   fw.PackageURI,
				Version:      fw.Version,
				UpdateID:     updateID,
				StageTimeout: fw.StageTimeout,
				Deadline:     fw.Deadline,
				Reboot:       fw.Reboot,
				Rate:         r.rate,
			}).Get(gctx, &res)
			out = firmwareOutcome(res, err)
		default:
			var in RebootInput
			if r.in.Reboot != nil {
				in = RebootInput{MethodTimeout: r.in.Reboot.MethodTimeout, Deadline: r.in.Reboot.Deadline}
			}
			in.DeviceID, in.RequestID, in.Rate = deviceID, updateID, r.rate
			var res RebootResult
			err := workflow.ExecuteChildWorkflow(cctx, Reboot, in).Get(gctx, &res)
			out = rebootOutcome(res, err)
		}
		r.done(gctx, i, out)
	})
}

// deviceOutcome is what a device workflow's end means for its row.
type deviceOutcome struct {
	result, fromVersion, errMsg, errType, note string
	stages                                     []string
	hubCalls                                   int
	// evidence is the EvidenceBefore of a sharded device's read before its call, when it came back
	// (shard_retries.go).
	evidence *string
}

func firmwareOutcome(res FirmwareResult, err error) deviceOutcome {
	if err != nil {
		out := failedOutcome(err)
		var p activities.FollowStagesProgress
		if activities.ErrorDetails(err, &p) {
			out.stages = stageNames(p.Stages)
		}
		return out
	}
	out := deviceOutcome{result: DeviceUpdated, fromVersion: res.FromVersion, stages: stageNames(res.Stages), hubCalls: res.HubCalls}
	switch {
	case res.Status == FirmwareSkipped:
		out.result, out.note = DeviceSkipped, "already on "+res.Version
	case res.VersionUnknown:
		out.note = NoteVersionNotReported
	}
	return out
}

func rebootOutcome(res RebootResult, err error) deviceOutcome {
	if err != nil {
		return failedOutcome(err)
	}
	calls := res.HubCalls
	if calls == 0 {
		// Recorded before Reboot counted its own calls.
		calls = res.Attempts + res.Polls
	}
	return deviceOutcome{result: DeviceRebooted, hubCalls: calls}
}

// failedOutcome classifies a device workflow's error.
func failedOutcome(err error) deviceOutcome {
	var already *temporal.ChildWorkflowExecutionAlreadyStartedError
	if errors.As(err, &already) {
		return deviceOutcome{result: DeviceSkipped, note: "already done by an earlier run of this rollout"}
	}
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) {
		return deviceOutcome{result: DeviceCancelled, errMsg: "cancelled with the rollout"}
	}
	out := deviceOutcome{result: DeviceFailed}
	// The innermost cause says what went wrong; the wrappers only name the child and activity.
	cause := err
	for {
		next := errors.Unwrap(cause)
		if next == nil {
			break
		}
		cause = next
	}
	out.errMsg = cause.Error()
	var appErr *temporal.ApplicationError
	var timeoutErr *temporal.TimeoutError
	var terminated *temporal.TerminatedError
	switch {
	case errors.As(err, &appErr):
		out.errType, out.errMsg = appErr.Type(), appErr.Message()
	case errors.As(err, &timeoutErr):
		out.errType = "Timeout"
	case errors.As(err, &terminated):
		out.errType, out.errMsg = "Terminated", "the device workflow was terminated"
	}
	if len(out.errMsg) > maxErrorLength {
		out.errMsg = out.errMsg[:maxErrorLength] + "…"
	}
	return out
}

func stageNames(stages []StageSeen) []string {
	names := make([]string, 0, len(stages))
	for _, s := range stages {
		names = append(names, s.Status)
	}
	return names
}

// done records a device workflow's outcome and checks the threshold.
func (r *rollout) done(ctx workflow.Context, i int, out deviceOutcome) {
	row := &r.st.Rows[i]
	row.Result, row.Error, row.ErrorType, row.Note = out.result, out.errMsg, out.errType, out.note
	if out.fromVersion != "" {
		row.FromVersion = out.fromVersion
	}
	row.Stages = out.stages
	row.HubCalls += out.hubCalls
	row.Duration = workflow.Now(ctx).Sub(row.Started)
	r.st.HubCalls += out.hubCalls
	r.running--
	r.finished++
	r.waveDone[row.Wave]++
	if out.result == DeviceFailed {
		r.failed++
		r.waveFailed[row.Wave]++
		r.logger.Warn("device failed", "device", row.DeviceID, "wave", row.Wave+1, "error_type", out.errType, "error", out.errMsg)
	}
	r.checkThreshold(row.Wave, out.result == DeviceFailed)
	r.touch(ctx)
}

// checkThreshold sets abortReason when the failures of wave w or of the whole rollout exceed the
// threshold, after a device of wave w finished. The retry wave is exempt: its devices failed once
// already and were counted then.
func (r *rollout) checkThreshold(w int, failed bool) {
	if r.abortReason != "" || r.cancelRequested || r.st.Retrying || r.checkTypeThresholds(w) {
		return
	}
	size := r.st.WaveSizes[w]
	if allowed := r.threshold.Allowed(size); failed && r.waveFailed[w] > allowed {
		r.abortReason = fmt.Sprintf("%d of the %d devices of wave %d failed, more than the %s allowed (%d)",
			r.waveFailed[w], size, w+1, r.threshold, allowed)
		return
	}
	if !r.threshold.IsPct {
		if r.failed > r.threshold.Count {
			r.abortReason = fmt.Sprintf("%d devices failed, more than the %d allowed", r.failed, r.threshold.Count)
		}
		return
	}
	// A share of all devices is judged when a wave has finished: within a wave, devices that fail
	// fast (a refused download) finish before the healthy ones and would inflate it.
	if r.waveDone[w] < size || r.finished < r.in.MinDevices {
		return
	}
	if allowed := r.threshold.Allowed(r.finished); r.failed > allowed {
		r.abortReason = fmt.Sprintf("%d of the %d devices finished failed, more than the %s allowed (%d)",
			r.failed, r.finished, r.threshold, allowed)
	}
}

// continueAsNew ends this run and carries the rows into the next.
func (r *rollout) continueAsNew(ctx workflow.Context) (RolloutProgress, error) {
	// The update handlers do not block; waiting for them is a formality that keeps it so.
	if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
		return r.progress(), err
	}
	p := r.progress()
	r.logger.Info("continuing as new", "run", r.st.Runs, "finished", r.finished, "total", len(r.st.Rows))
	packed, err := packRows(r.st.Rows)
	if err != nil {
		return p, err
	}
	carry := *r.st
	carry.Rows, carry.PackedRows = nil, packed
	next := r.in
	next.Query, next.Devices = "", nil
	next.State = &carry
	return p, workflow.NewContinueAsNewError(ctx, Rollout, next)
}

// complete ends a rollout whose devices all finished.
func (r *rollout) complete(ctx workflow.Context) (RolloutProgress, error) {
	r.end(ctx, RolloutCompleted)
	p := r.progress()
	r.logger.Info("rollout completed", "succeeded", p.Succeeded, "skipped", p.Skipped, "failed", p.Failed)
	return p, nil
}

// end records the final state.
func (r *rollout) end(ctx workflow.Context, state string) {
	r.touch(ctx)
	if r.st.Paused {
		r.st.PausedFor += r.now.Sub(r.st.PausedSince)
		r.st.Paused = false
	}
	r.finishedTime = r.now
	r.setState(ctx, state)
}

// setState changes the state and keeps the DmflowRolloutState search attribute current.
func (r *rollout) setState(ctx workflow.Context, state string) {
	if state != RolloutWaiting {
		r.endWait(workflow.Now(ctx))
	}
	if state != RolloutAwaitingApproval {
		r.endAwait(workflow.Now(ctx))
	}
	r.state = state
	r.observe(ctx)
	if state == r.publishedState {
		return
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, SearchAttrRolloutState.ValueSet(state)); err != nil {
		r.logger.Warn("cannot update the DmflowRolloutState search attribute", "error", err)
		return
	}
	r.publishedState = state
}

// touch records that the state changed now and wakes the main loop.
func (r *rollout) touch(ctx workflow.Context) {
	r.now = workflow.Now(ctx)
	r.changes++
}
