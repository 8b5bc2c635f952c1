package workflows

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/protocol"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// A sharded rollout (shardsChange) keeps no row per device. Its devices run in RolloutShard
// workflows of up to ShardSize devices each; the rollout keeps one record per shard and aggregates
// (the sum of the shards' latest tallies), resolves its targets a page of the query at a time as
// its waves need them, and tells each shard how many of its devices to start, how many at once,
// and when to hold, stop or cancel. Nothing in its state grows with the devices but a count per
// shard, and its history grows with shards and waves, not devices: it continues as new when
// Temporal suggests it, or at continueAfterEvents.

// shardsChange is the workflow.GetVersion change ID of sharded rollouts. Runs recorded before it
// (DefaultVersion) keep a child workflow per device and the rows in their state, as the code then
// did; a continued run follows its state (RolloutState.Sharded), not a version of its own.
const shardsChange = "rollout-shards"

// QueryShards answers a ShardsPage for a ShardsRequest: where a sharded rollout's rows are.
const QueryShards = "shards"

// continueAfterEvents is the history length at which a sharded rollout continues as new, well
// under Temporal's warning at 10,240 events. It also continues after granting DevicesPerRun
// devices in a run, which bounds a run's tallies and commands as well.
const continueAfterEvents = 8000

// ShardsRequest asks QueryShards for a page of shards.
type ShardsRequest struct {
	Offset int `json:"offset,omitempty"`
	Limit  int `json:"limit,omitempty"`
}

// MaxShardsPage bounds a page of QueryShards.
const MaxShardsPage = 1000

// ShardRef locates a shard's rows in the report: rows Offset to Offset+Devices-1 are those of the
// shard workflow WorkflowID, which answers them through QueryReport.
type ShardRef struct {
	WorkflowID string `json:"workflowId"`
	Offset     int    `json:"offset"`
	Devices    int    `json:"devices"`
}

// ShardsPage is a page of a sharded rollout's shards. Total counts the rows of all its shards;
// Next is the offset of the next page of shards, or 0 after the last.
type ShardsPage struct {
	Shards []ShardRef `json:"shards"`
	Total  int        `json:"total"`
	Next   int        `json:"next,omitempty"`
}

// ShardRecord is what a rollout keeps of one of its shards.
type ShardRecord struct {
	Index int `json:"index"`
	// Devices counts the shard's devices; Work those it runs (not skipped at resolution).
	Devices int `json:"devices"`
	Work    int `json:"work"`
	// Want is the command the shard is to get, Sent the last one sent; Last its latest tally.
	Want ShardCommand `json:"want"`
	Sent ShardCommand `json:"sent"`
	Last ShardTally   `json:"last"`
	// Closed is set once its last tally came.
	Closed bool `json:"closed,omitempty"`

	// Start rate (rollout_rate.go): RetryHeld counts the --retry-failed runs held back for the
	// pace. Per-device control (rollout_device.go): AgainDue are the runs an operator asked for
	// that the shard queued and the rollout has not granted yet, in the shard's order, each as the
	// wave its device ran in before; ControlSent is the last ShardControl sent, ControlDone the
	// last the shard answered.
	RetryHeld   int   `json:"retryHeld,omitempty"`
	AgainDue    []int `json:"againDue,omitempty"`
	ControlSent int   `json:"controlSent,omitempty"`
	ControlDone int   `json:"controlDone,omitempty"`
}

// fleet is the sharded rollout's state, carried over continue-as-new in RolloutState.Fleet.
type fleet struct {
	// Shards are the records of the open shards, by index.
	Shards []ShardRecord `json:"shards,omitempty"`
	// Sizes are the device counts of all shards, by index: where each one's rows begin in the
	// report.
	Sizes []int `json:"sizes,omitempty"`
	// Closed sums the last tallies of the closed shards, ClosedWaves their waves.
	Closed      Tally       `json:"closed"`
	ClosedWaves []WaveTally `json:"closedWaves,omitempty"`
	// Cursor is the first shard whose devices were not all granted yet.
	Cursor int `json:"cursor"`
	// Granted counts the device runs granted in each wave.
	Granted []int `json:"granted,omitempty"`
	// Token is the continuation token of the next page of the target query; Resolved is set once
	// the last page was read (or the device IDs were all placed in shards).
	Token    string `json:"token,omitempty"`
	Resolved bool   `json:"resolved,omitempty"`
	Pages    int    `json:"pages,omitempty"`
}

// startFleet sets up a sharded rollout's first run: the first wave planned, device IDs sorted.
func (r *rollout) startFleet() {
	r.st.Sharded = true
	r.st.WaveSizes = []int{nominalWave(r.in.Canary, r.in.Growth, 0)}
	r.fl = &fleet{Granted: []int{0}}
	if len(r.in.Devices) > 0 {
		ids := slices.Clone(r.in.Devices)
		slices.Sort(ids)
		r.in.Devices = slices.Compact(ids)
	}
	r.sumShards()
}

// runFleet runs a sharded rollout: in its first run, the first page of targets is resolved before
// the state turns running, so that a rollout with none ends at once.
func (r *rollout) runFleet(ctx workflow.Context, first bool) (RolloutProgress, error) {
	var err error
	if first {
		if rerr := r.resolvePage(ctx); rerr != nil {
			err = r.resolveFailed(ctx, rerr)
		}
		if len(r.fl.Sizes) == 0 && r.fl.Resolved {
			r.reason = "no target devices: the query selected none"
			if r.in.Reconcile {
				r.reason = "no target devices: every device selected already reports " + r.in.Firmware.Version
			}
		}
	}
	return r.runShards(ctx, err)
}

// runShards is the main loop of a sharded rollout; err is an error of the first resolution.
func (r *rollout) runShards(ctx workflow.Context, err error) (RolloutProgress, error) {
	tallies := workflow.GetSignalChannel(ctx, SignalShardTally)
	rctx, _ := workflow.NewDisconnectedContext(ctx)
	workflow.Go(rctx, func(gctx workflow.Context) {
		// Waits for tallies without taking one: a blocking Receive would hold a tally delivered
		// with the task until this coroutine runs, after the main one, which may continue as new
		// in that task and carry its state without the tally. Left in the channel, the tally is
		// taken by whichever coroutine runs first: the main one's takePendingTallies, or this.
		for workflow.Await(gctx, func() bool { return tallies.Len() > 0 }) == nil {
			r.takePendingTallies(gctx)
		}
	})
	r.sumShards()
	r.endChecks = workflow.GetVersion(ctx, endChecksChange, workflow.DefaultVersion, 1) == 1
	r.startGates(ctx)
	if cerr := r.startContinuous(ctx); cerr != nil {
		return r.progress(), temporal.NewNonRetryableApplicationError(cerr.Error(), ErrInvalidInput, nil)
	}
	if r.rollingBack() { // rollback (policy 1): a run continued during the rollback
		return r.runRollback(ctx)
	}
	for err == nil && !r.cancelRequested && r.abortReason == "" {
		seen := r.changes
		if r.windowTimer != nil && r.windowTimer.IsReady() {
			r.windowTimer = nil
		}
		r.judgeWaveEnd(ctx)
		if err = r.lookStep(ctx); err != nil {
			err = r.resolveFailed(ctx, err)
			continue
		}
		hold, ok := r.holdStarts(ctx, true, r.hasWork, r.outOfWindows)
		if !ok {
			continue
		}
		if !hold {
			r.setState(ctx, RolloutRunning)
			if err = r.grant(ctx); err != nil {
				err = r.resolveFailed(ctx, err)
				continue
			}
			if r.allDone() {
				if r.in.RetryFailed && !r.st.Retrying && r.failed > 0 {
					r.queueRetryShards()
					continue
				}
				r.command(ctx, func(c *ShardCommand) { c.Finish = true })
				if err = r.awaitSignals(ctx); err != nil {
					continue
				}
				if err = r.awaitFinishedShards(ctx); err != nil {
					continue
				}
				return r.complete(ctx)
			}
		}
		r.command(ctx, func(c *ShardCommand) { c.Hold = hold })
		if r.startedThisRun >= r.in.DevicesPerRun && !r.fl.Resolved && r.fl.Cursor >= len(r.fl.Sizes) {
			// Whether devices are left for the next run depends on the next page (a full page
			// comes with a token even when it was the last): read it now.
			if rerr := r.resolvePage(ctx); rerr != nil {
				err = r.resolveFailed(ctx, rerr)
				continue
			}
		}
		if r.historyIsLong(ctx) || r.startedThisRun >= r.in.DevicesPerRun && r.moreToGrant() {
			return r.continueShardsAsNew(ctx)
		}
		r.armShardsCheck(ctx)
		if err = r.awaitChange(ctx, seen); err == nil && r.shardsCheckDue() {
			r.checkShardsEnded(ctx)
		}
	}
	return r.windDownShards(ctx, err)
}

// resolveFailed takes an error of the target resolution: nil when the rollout is being cancelled
// or the targets could not be read (resolveErr, an abort of its own), err when the workflow itself
// was cancelled.
func (r *rollout) resolveFailed(ctx workflow.Context, err error) error {
	switch {
	case r.cancelRequested:
		return nil
	case ctx.Err() != nil:
		return err
	}
	r.resolveErr = err
	r.abortReason = fmt.Sprintf("resolving the targets failed after %d pages: %v", r.fl.Pages, err)
	return nil
}

// holdStarts says whether this pass of a sharded rollout's loop holds its shards' starts: while
// paused, awaiting an approval (approvals: the forward run's gates; a rollback waits for no one), or
// between maintenance windows with devices to start (hasWork). When no window opens again it calls
// outOfWindows and ok is false: the loop goes round again.
func (r *rollout) holdStarts(ctx workflow.Context, approvals bool, hasWork func() bool, outOfWindows func(workflow.Context)) (hold, ok bool) {
	switch {
	case r.st.Paused:
		r.setState(ctx, RolloutPaused)
		return true, true
	case approvals && r.st.AwaitingWave > 0:
		r.awaitApproval(ctx)
		return true, true
	case r.windowed && hasWork():
		ws := r.window(ctx)
		switch {
		case ws.None:
			outOfWindows(ctx)
			return false, false
		case !ws.Open:
			r.waitForWindow(ctx, ws.Opens)
			return true, true
		}
		r.armWindowTimer(ctx, ws.Closes, "maintenance window closes")
	}
	return false, true
}

// awaitShardsClosed waits until every shard closed: by its last tally, or found ended outside the
// rollout by the end check (endCheckEvery), which is armed again after each look.
func (r *rollout) awaitShardsClosed(ctx workflow.Context) error {
	for len(r.fl.Shards) > 0 {
		r.armShardsCheck(ctx)
		if err := workflow.Await(ctx, func() bool {
			return len(r.fl.Shards) == 0 || r.shardsCheckDue() || r.endChecks && r.shardsCheck == nil
		}); err != nil {
			return err
		}
		if r.shardsCheckDue() {
			r.checkShardsEnded(ctx)
		}
	}
	return nil
}

// hasWork reports whether devices are still to start: in pages not yet read, in shards not yet
// granted them, or granted and waiting in their shards (pending by the last tallies), or failed
// devices of the retry wave not started again yet.
func (r *rollout) hasWork() bool {
	w := r.st.Wave
	return !r.fl.Resolved || r.fl.Cursor < len(r.fl.Sizes) || r.agg.Pending > 0 ||
		r.st.Retrying && r.waveDone[w]+r.agg.Running < r.st.WaveSizes[w]
}

// moreToGrant reports whether devices are still to be granted to shards: a run that granted its
// DevicesPerRun continues as new only then.
func (r *rollout) moreToGrant() bool {
	w := r.st.Wave
	return !r.fl.Resolved || r.fl.Cursor < len(r.fl.Sizes) || !r.st.Retrying && r.grantedIn(w) < r.st.WaveSizes[w]
}

// allDone reports whether every device resolved has finished and no more are to come.
func (r *rollout) allDone() bool {
	return r.fl.Resolved && r.fl.Cursor >= len(r.fl.Sizes) && r.agg.Running == 0 && r.agg.Pending == 0 &&
		r.st.Wave < len(r.st.WaveSizes) && r.waveDone[r.st.Wave] >= r.st.WaveSizes[r.st.Wave] && !r.keepsLooking()
}

// grant hands the current wave's devices to the shards, moving to the next wave when the current
// one finished, and shares the concurrency among the shards with devices to run.
func (r *rollout) grant(ctx workflow.Context) error {
	r.grantPaced(ctx)
	w := r.st.Wave
	if r.grantedIn(w) >= r.st.WaveSizes[w] && r.waveDone[w] >= r.st.WaveSizes[w] && !r.st.Retrying {
		// The wave finished within the threshold (checkThreshold would have aborted): next.
		if r.fl.Cursor >= len(r.fl.Sizes) && r.fl.Resolved {
			return nil
		}
		w++
		r.st.Wave = w
		r.st.WaveSizes = append(r.st.WaveSizes, nominalWave(r.in.Canary, r.in.Growth, w))
		r.capLookWave(w)
		r.fl.Granted = append(r.fl.Granted, 0)
		r.sumShards()
		r.logger.Info("wave starts", "wave", w+1, "size", r.st.WaveSizes[w])
	}
	// A run starts at most DevicesPerRun devices; the next run grants the rest.
	for need := r.paceGrant(ctx, min(r.st.WaveSizes[w]-r.grantedIn(w), r.in.DevicesPerRun-r.startedThisRun)); need > 0 && !r.st.Retrying; {
		if r.fl.Cursor >= len(r.fl.Sizes) {
			if r.fl.Resolved {
				// Fewer devices than the wave's size are left: the wave is what is left.
				r.st.WaveSizes[w] = r.grantedIn(w)
				break
			}
			if err := r.resolvePage(ctx); err != nil {
				return err
			}
			continue
		}
		sh := r.record(r.fl.Cursor)
		if sh == nil {
			// The shard ended outside the rollout before all its devices were granted.
			r.fl.Cursor++
			continue
		}
		d := min(need, sh.Work-sh.Sent.Quota)
		if d > 0 {
			r.plan(sh.Index, func(c *ShardCommand) { c.Quota += d; c.Wave = w })
			r.fl.Granted[w] += d
			r.startedThisRun += d
			need -= d
		}
		if sh.Sent.Quota+d >= sh.Work {
			r.fl.Cursor++
		}
	}
	if !r.st.Retrying && r.fl.Resolved && r.fl.Cursor >= len(r.fl.Sizes) {
		// Every device is granted: the wave is what it was given, even where the run's share
		// of devices ended the loop above before it ran out of them.
		r.st.WaveSizes[w] = r.grantedIn(w)
	}
	r.pacedGrant(ctx)
	r.shareConcurrency()
	r.flushCommands(ctx)
	return nil
}

// nominalWave is the size wave w (0-based) has by the plan, as PlanWaves computes it: the
// canary's size, multiplied by growth for every wave before.
func nominalWave(canary int, growth float64, w int) int {
	size := float64(max(canary, 1))
	for range w {
		size *= growth
		if size > 1<<30 {
			return 1 << 30
		}
	}
	return int(math.Ceil(size - 1e-9))
}

// grantedIn is how many device runs wave w was granted.
func (r *rollout) grantedIn(w int) int {
	if w < len(r.fl.Granted) {
		return r.fl.Granted[w]
	}
	return 0
}

// record returns the open shard with index idx, or nil once it closed.
func (r *rollout) record(idx int) *ShardRecord {
	i, ok := slices.BinarySearchFunc(r.fl.Shards, idx, func(s ShardRecord, idx int) int { return s.Index - idx })
	if !ok {
		return nil
	}
	return &r.fl.Shards[i]
}

// plan changes the command shard idx is to get next (flushCommands sends it).
func (r *rollout) plan(idx int, change func(c *ShardCommand)) {
	if sh := r.record(idx); sh != nil {
		change(&sh.Want)
	}
}

// shareConcurrency shares MaxConcurrent among the open shards in index order, each getting what
// its outstanding devices need while any is left: the devices start in the order of the shards,
// as they were resolved.
func (r *rollout) shareConcurrency() {
	left := r.in.MaxConcurrent
	for i := range r.fl.Shards {
		sh := &r.fl.Shards[i]
		c := min(max(sh.Want.Quota+sh.Want.Retry+sh.Want.Again-sh.Last.Runs+sh.Last.retryNeed(), 0), left)
		sh.Want.Concurrency = c
		left -= c
	}
}

// command changes every open shard's next command and sends those that changed.
func (r *rollout) command(ctx workflow.Context, change func(c *ShardCommand)) {
	for i := range r.fl.Shards {
		change(&r.fl.Shards[i].Want)
	}
	r.flushCommands(ctx)
}

// flushCommands sends each open shard the command planned for it, when it differs from the last
// one sent. A lower concurrency alone is not sent: a shard's in flight never exceeds its
// outstanding devices, which is what lowered it.
func (r *rollout) flushCommands(ctx workflow.Context) {
	r.stopAtEndTime(ctx)
	r.signals = slices.DeleteFunc(r.signals, func(f workflow.Future) bool { return f.IsReady() })
	for i := range r.fl.Shards {
		sh := &r.fl.Shards[i]
		want, sent := sh.Want, sh.Sent
		raised := want.Concurrency > sent.Concurrency
		want.Seq, want.Concurrency = sent.Seq, sent.Concurrency
		if want == sent && !raised {
			continue
		}
		sh.Want.Seq = sent.Seq + 1
		sh.Sent = sh.Want
		r.logger.Debug("shard command", "shard", sh.Index, "command", sh.Sent)
		// A shard that closed meanwhile refuses the signal; its last tally tells the rest.
		r.signals = append(r.signals, workflow.SignalExternalWorkflow(ctx, RolloutShardWorkflowID(r.in.Name, sh.Index), "", SignalShardCommand, sh.Sent))
	}
}

// resolvePage places the next page of targets in new shards: a page of the target query (up to
// 1,000 twins, one query of the hub's quota) or, for device IDs, the next 1,000 of them.
func (r *rollout) resolvePage(ctx workflow.Context) error {
	if r.cont != nil && r.cont.st.Looking {
		return r.lookPage(ctx)
	}
	var page []ShardDevice
	if query := r.in.TargetQuery(); query != "" {
		res, err := r.queryPage(ctx, query)
		if err != nil {
			return err
		}
		r.st.HubCalls++
		r.fl.Pages++
		r.fl.Token = res.Next
		r.fl.Resolved = res.Next == ""
		for _, d := range res.Devices {
			sd := ShardDevice{ID: d.DeviceID}
			if r.in.Firmware != nil {
				sd.FromVersion, _ = d.Reported[protocol.PropFirmwareVersion].(string)
				sd.Skip = d.Reported[protocol.PropFirmwareVersion] != nil && sd.FromVersion == r.in.Firmware.Version
			}
			page = append(page, sd)
		}
		// The page's devices in device-ID order, each once. A device the hub repeats on a later
		// page (its twin changed while the query was read) lands in a second shard; the read
		// before its call there finds this rollout's update (by ID or version) or its stages.
		slices.SortFunc(page, func(a, b ShardDevice) int { return strings.Compare(a.ID, b.ID) })
		page = slices.CompactFunc(page, func(a, b ShardDevice) bool { return a.ID == b.ID })
	} else {
		n := min(len(r.in.Devices), pageDevices)
		for _, id := range r.in.Devices[:n] {
			page = append(page, ShardDevice{ID: id})
		}
		r.in.Devices = r.in.Devices[n:]
		r.fl.Pages++
		r.fl.Resolved = len(r.in.Devices) == 0
	}
	for chunk := range slices.Chunk(page, ShardSize) {
		if err := r.startShard(ctx, chunk); err != nil {
			return err
		}
	}
	r.logger.Info("targets resolved", "page", r.fl.Pages, "devices", len(page), "shards", len(r.fl.Sizes), "last", r.fl.Resolved)
	r.touch(ctx)
	return nil
}

// pageDevices is how many device IDs resolvePage places at once, as many as a query page holds.
const pageDevices = 1000

// queryPage reads the next page of the target query. A cancel of the rollout cancels the read
// at once rather than waiting for it (or its retries on a throttled hub).
func (r *rollout) queryPage(ctx workflow.Context, query string) (activities.QueryDevicesPageResult, error) {
	var a *activities.Activities
	in := activities.QueryDevicesPageInput{Query: query, Token: r.fl.Token, Rate: r.rate}
	if r.in.Operation == OperationFirmware {
		in.Properties = []string{protocol.PropFirmwareVersion}
	}
	qctx, cancel := workflow.WithCancel(ctx)
	r.cancelResolve = cancel
	defer func() { r.cancelResolve = nil }()
	var res activities.QueryDevicesPageResult
	err := workflow.ExecuteActivity(queryOptions(qctx), a.QueryDevicesPage, in).Get(ctx, &res)
	return res, err
}

// startShard starts the next shard with devices, dormant until its first command.
func (r *rollout) startShard(ctx workflow.Context, devices []ShardDevice) error {
	idx := len(r.fl.Sizes)
	id := RolloutShardWorkflowID(r.in.Name, idx)
	cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID: id,
		// The rollout continues as new and outlives its runs; it talks to its shards by signals.
		ParentClosePolicy: enumspb.PARENT_CLOSE_POLICY_ABANDON,
		// A closed shard of an earlier rollout of the same name gives way; a running one does not
		// (the start fails and says so).
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
		TypedSearchAttributes: temporal.NewSearchAttributes(
			SearchAttrRollout.ValueSet(r.in.Name), SearchAttrOperation.ValueSet(r.in.Operation)),
		StaticSummary: fmt.Sprintf("%d devices of rollout %s, from %s", len(devices), r.in.Name, devices[0].ID),
	})
	in := ShardInput{
		Rollout: r.in.Name, Parent: workflow.GetInfo(ctx).WorkflowExecution.ID, Index: idx,
		ParentFirstRun: workflow.GetInfo(ctx).FirstRunID,
		Operation:      r.in.Operation, Firmware: r.in.Firmware, Reboot: r.in.Reboot, Rate: r.rate,
		RetryFailed: r.in.RetryFailed, Devices: devices, Retries: r.retryPolicy(),
	}
	in.Rollback = r.shardRollback() // rollback (policy 1)
	in.Look = r.shardLook()
	err := workflow.ExecuteChildWorkflow(cctx, RolloutShard, in).GetChildWorkflowExecution().Get(ctx, nil)
	var already *temporal.ChildWorkflowExecutionAlreadyStartedError
	if errors.As(err, &already) {
		return fmt.Errorf("shard workflow %s still runs, from an earlier rollout named %s: wait for it to end or terminate it, or name this rollout differently", id, r.in.Name)
	}
	if err != nil {
		return err
	}
	work := 0
	for _, d := range devices {
		if !d.Skip {
			work++
		}
	}
	r.fl.Sizes = append(r.fl.Sizes, len(devices))
	r.fl.Shards = append(r.fl.Shards, ShardRecord{
		Index: idx, Devices: len(devices), Work: work,
		Last: ShardTally{Index: idx, Tally: Tally{Pending: work, Skipped: len(devices) - work}},
	})
	r.sumShards()
	return nil
}

// takeTally takes a shard's tally, keeping only the latest, and checks the threshold.
func (r *rollout) takeTally(ctx workflow.Context, t ShardTally) {
	sh := r.record(t.Index)
	if sh == nil || t.Seq <= sh.Last.Seq {
		return
	}
	before := sh.Last.Waves
	rollbackBefore := sh.Last.Rollback // rollback (policy 1)
	sh.Last = t
	r.takeControl(sh)
	if t.Closed {
		r.fl.Closed.add(t.Tally, 1)
		r.fl.ClosedWaves = addWaves(r.fl.ClosedWaves, t.Waves)
		r.fl.Shards = slices.DeleteFunc(r.fl.Shards, func(s ShardRecord) bool { return s.Index == t.Index })
	}
	r.sumShards()
	// As when a device finishes in a rollout begun before shards: the waves whose devices
	// finished since the shard's last tally are judged, not the others.
	for _, w := range t.Waves {
		if !slices.Contains(before, w) {
			r.checkThreshold(w.Wave, r.waveFailed[w.Wave] > 0)
		}
	}
	r.takeRollbackTally(rollbackBefore, t) // rollback (policy 1)
	r.touch(ctx)
}

// takePendingTallies takes the tallies received but not taken yet.
func (r *rollout) takePendingTallies(ctx workflow.Context) {
	tallies := workflow.GetSignalChannel(ctx, SignalShardTally)
	for {
		var t ShardTally
		if !tallies.ReceiveAsync(&t) {
			return
		}
		r.takeTally(ctx, t)
	}
}

// waveIn finds wave's tally in ws, sorted by wave, inserting an empty one where it belongs.
func waveIn(ws []WaveTally, wave int) ([]WaveTally, int) {
	i, ok := slices.BinarySearchFunc(ws, wave, func(s WaveTally, w int) int { return s.Wave - w })
	if !ok {
		ws = slices.Insert(ws, i, WaveTally{Wave: wave})
	}
	return ws, i
}

// addWaves adds the wave tallies more to sum, by wave.
func addWaves(sum, more []WaveTally) []WaveTally {
	for _, w := range more {
		var i int
		sum, i = waveIn(sum, w.Wave)
		sum[i].Done += w.Done
		sum[i].Failed += w.Failed
		sum[i].Skipped += w.Skipped
		sum[i].addTypes(w)
	}
	return sum
}

// sumShards derives the rollout's figures from the shards' tallies: the closed shards' sums and
// the latest tally of each open one. It is where every count of a sharded rollout comes from.
func (r *rollout) sumShards() {
	r.agg = r.fl.Closed
	waves := r.fl.ClosedWaves
	for _, sh := range r.fl.Shards {
		r.agg.add(sh.Last.Tally, 1)
		waves = addWaves(slices.Clone(waves), sh.Last.Waves)
	}
	n := len(r.st.WaveSizes)
	for _, w := range waves {
		n = max(n, w.Wave+1)
	}
	r.waveDone, r.waveFailed = make([]int, n), make([]int, n)
	r.failed, r.finished = 0, 0
	for _, w := range waves {
		r.waveDone[w.Wave], r.waveFailed[w.Wave] = w.Done, w.Failed
		r.finished += w.Done
		r.failed += w.Failed
	}
	r.running = r.agg.Running
	r.sumTypes(waves)
	r.sumRollback() // rollback (policy 1)
}

// queueRetryShards runs every failed device once more, as one last wave.
func (r *rollout) queueRetryShards() {
	r.st.Retrying = true
	w := len(r.st.WaveSizes)
	r.st.WaveSizes = append(r.st.WaveSizes, r.failed)
	r.st.Wave = w
	r.fl.Granted = append(r.fl.Granted, make([]int, w+1-len(r.fl.Granted))...)
	for i := range r.fl.Shards {
		sh := &r.fl.Shards[i]
		if sh.Last.Failed > 0 {
			sh.Want.Retry, sh.Want.Wave = sh.Last.Failed, w
			r.fl.Granted[w] += sh.Last.Failed
		}
	}
	// The failed devices of shards that ended outside the rollout cannot run again.
	r.st.WaveSizes[w] = r.fl.Granted[w]
	r.holdRetries()
	r.sumShards()
	r.logger.Info("retrying the failed devices", "devices", r.failed)
}

// historyIsLong reports whether the run should continue as new.
func (r *rollout) historyIsLong(ctx workflow.Context) bool {
	info := workflow.GetInfo(ctx)
	return info.GetCurrentHistoryLength() > continueAfterEvents || info.GetContinueAsNewSuggested()
}

// continueShardsAsNew ends this run and carries the fleet's state into the next.
func (r *rollout) continueShardsAsNew(ctx workflow.Context) (RolloutProgress, error) {
	if err := r.awaitSignals(ctx); err != nil {
		return r.progress(), err
	}
	if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
		return r.progress(), err
	}
	// Tallies that came while this run ends belong to it: taken now, they travel on.
	r.takePendingTallies(ctx)
	p := r.progress()
	r.logger.Info("continuing as new", "run", r.st.Runs, "shards", len(r.fl.Sizes), "open", len(r.fl.Shards))
	packed, err := packJSON(r.fl)
	if err != nil {
		return p, err
	}
	carry := *r.st
	carry.PackedFleet = packed
	next := r.in
	next.State = &carry
	return p, workflow.NewContinueAsNewError(ctx, Rollout, next)
}

// awaitSignals waits until the server has delivered (or refused) every command sent: a signal still
// pending when the run closes, by continuing as new or ending, is dropped with it.
func (r *rollout) awaitSignals(ctx workflow.Context) error {
	for _, f := range r.signals {
		if err := f.Get(ctx, nil); err != nil && ctx.Err() != nil {
			return err
		}
	}
	r.signals = nil
	return nil
}

// windDownShards ends a sharded rollout that was cancelled, aborted or failed to resolve its
// targets: every open shard stops (or cancels its devices in flight), and the rollout waits for
// their last tallies.
func (r *rollout) windDownShards(ctx workflow.Context, err error) (RolloutProgress, error) {
	if err == nil && r.rollbackDue() { // rollback (policy 1): an abort on the threshold rolls back
		return r.runRollback(ctx)
	}
	r.skipRollback() // rollback (policy 1): shards waiting for a rollback close
	cancelled := err != nil && r.resolveErr == nil
	if cancelled {
		ctx, _ = workflow.NewDisconnectedContext(ctx)
		r.cancelRequested = true
		if r.reason == "" {
			r.reason = "the workflow was cancelled in Temporal"
		}
	}
	if r.cancelRequested || r.endCancels() {
		r.command(ctx, func(c *ShardCommand) { c.Cancel = true })
	} else {
		r.logger.Warn("rollout aborting: letting the devices in flight finish", "reason", r.abortReason, "running", r.agg.Running)
		r.command(ctx, func(c *ShardCommand) { c.Stop = true })
	}
	if err := r.awaitShardsClosed(ctx); err != nil {
		return r.progress(), err
	}
	unread := ""
	if !r.fl.Resolved {
		unread = "; the rest of the target query was not read"
	}
	switch {
	case r.cancelRequested:
		r.reason += unread
		return r.endCancelled(ctx, cancelled)
	case r.resolveErr != nil:
		r.reason = r.abortReason
		r.end(ctx, RolloutFailed)
		r.logger.Error("resolving the targets failed", "error", r.resolveErr)
		return r.progress(), r.resolveErr
	}
	r.reason = r.abortReason + unread
	return r.endAborted(ctx)
}

// shardsPage answers QueryShards.
func (r *rollout) shardsPage(req ShardsRequest) (ShardsPage, error) {
	if r.fl == nil {
		return ShardsPage{}, fmt.Errorf("rollout %s keeps its rows itself (it began before shards): ask %s", r.in.Name, QueryReport)
	}
	if req.Offset < 0 || req.Limit < 0 {
		return ShardsPage{}, fmt.Errorf("shards offset and limit must not be negative")
	}
	limit := req.Limit
	if limit == 0 || limit > MaxShardsPage {
		limit = MaxShardsPage
	}
	page := ShardsPage{Shards: []ShardRef{}}
	offset := 0
	for i, n := range r.fl.Sizes {
		if i >= req.Offset && len(page.Shards) < limit {
			page.Shards = append(page.Shards, ShardRef{WorkflowID: RolloutShardWorkflowID(r.in.Name, i), Offset: offset, Devices: n})
		} else if len(page.Shards) == limit && page.Next == 0 {
			page.Next = i
		}
		offset += n
	}
	page.Total = offset
	return page, nil
}

// finishWaitsChange is the workflow.GetVersion change ID of a completing rollout that waits for the
// last tallies of the shards it told to finish. Shards that stay open for per-device retries (and
// for RetryFailed) close only on that command, and their last tallies then came in the task that
// completed the rollout: the server refused the completion (UnhandledCommand) and the task ran
// again, once per tally, counting the rollout's end in its metrics each time.
const finishWaitsChange = "rollout-finish-waits"

// awaitFinishedShards waits until every shard told to finish has sent its last tally, looking
// (shard_ends.go) for shards that ended outside the rollout meanwhile. Rollouts begun before
// finishWaitsChange complete at once, as they did.
func (r *rollout) awaitFinishedShards(ctx workflow.Context) error {
	if len(r.fl.Shards) == 0 || workflow.GetVersion(ctx, finishWaitsChange, workflow.DefaultVersion, 1) < 1 {
		return nil
	}
	return r.awaitShardsClosed(ctx)
}
