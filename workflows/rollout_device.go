package workflows

import (
	"fmt"
	"slices"
	"time"

	"github.com/dmflow/dmflow/internal/deviceid"
	"go.temporal.io/sdk/workflow"
)

// Per-device control of a sharded rollout: an operator skips devices not started yet, or runs a
// failed device again, with the updates UpdateSkip and UpdateRetry.
//
// The rollout keeps no row per device: its shards do. So the caller (starter rollout skip|retry)
// first finds each device's shard through the report queries (QueryShards, then each shard's
// QueryReport) and sends (device, shard) pairs. The validator checks what the rollout knows (its
// state, the shards, which are open); the handler sends each shard a ShardControl signal naming
// its devices, and waits, up to controlAnswerWait, for the shard's answer: the tally it sends at
// once (ShardTally.Control, Outcomes), which says what became of each device. The shard decides,
// since only it knows whether a device started meanwhile; the answer comes back to the caller
// device by device.
//
// Accounting, when the shard's answer is taken (takeControl, with every tally):
//
//   - a device skipped leaves the shard's work: the rollout grants its quota no more, and quota
//     already granted beyond what the shard can now start is taken back from the current wave,
//     which the next shards fill as they would have;
//   - a device queued for a retry waits in its shard as pending until the rollout grants it (one
//     of ShardCommand.Again's runs) in the current wave, whose size grows by one, within the
//     wave's concurrency and the start rate; its earlier failure no longer counts, and the run's
//     result counts in the wave it ran in. A pause or a window's close holds it like any start.
//
// ShardControl signals carry a per-shard sequence number (ShardRecord.ControlSent, carried over
// continue-as-new) and a shard applies each once. State stays bounded: a record per open shard
// and, in the shard, its own rows.

// Per-device control updates of a Rollout. Argument: a DeviceControlRequest; result: a
// DeviceControlResult. Refused unless the rollout runs (running, paused, waiting), began with
// shards, and each device's shard is open; a retry also while the --retry-failed pass runs.
const (
	// UpdateSkip leaves devices not started yet out: final result skipped, with the note.
	UpdateSkip = "skip"
	// UpdateRetry runs failed devices again, each as its next attempt.
	UpdateRetry = "retry"
)

// SignalShardControl carries a ShardControl from a rollout to its shard.
const SignalShardControl = "shard-control"

// Bounds and defaults of per-device control.
const (
	// MaxControlDevices bounds the devices of one request.
	MaxControlDevices = 1000
	// DefaultSkipNote is the note of a device skipped without one.
	DefaultSkipNote = "skipped by an operator"
	// controlAnswerWait is how long an update waits for the shards' answers: a shard answers in
	// the workflow task after the signal, unless no worker runs it.
	controlAnswerWait = 30 * time.Second
)

// DeviceRef names a device of a rollout and the shard that holds it (its index, as in
// RolloutShardWorkflowID).
type DeviceRef struct {
	ID    string `json:"id"`
	Shard int    `json:"shard"`
}

// DeviceControlRequest is the argument of UpdateSkip and UpdateRetry.
type DeviceControlRequest struct {
	Devices []DeviceRef `json:"devices"`
	// Note is a skipped device's note (default DefaultSkipNote).
	Note string `json:"note,omitempty"`
}

// Results of a device in a DeviceControlOutcome.
const (
	// ControlSkipped: the device is skipped (or already was, by an operator).
	ControlSkipped = "skipped"
	// ControlQueued: the device runs again, as attempt Attempt, once the rollout grants it.
	ControlQueued = "queued"
	// ControlRefused: the device was not in a state that allows it: State says which.
	ControlRefused = "refused"
	// ControlUnanswered: the shard has not answered yet; the request stands.
	ControlUnanswered = "sent"
)

// States a refusal names besides the Device* results.
const (
	// ControlStateQueued: the device is queued for a retry.
	ControlStateQueued = "queued for a retry"
	// ControlStateUnknown: the shard has no such device.
	ControlStateUnknown = "not in its shard"
	// ControlStateClosed: the device's shard has closed.
	ControlStateClosed = "in a closed shard"
	// ControlStateAlready: the state of a device skipped again, which an operator skipped before.
	ControlStateAlready = "already skipped"
)

// DeviceControlOutcome is what became of one device of a request.
type DeviceControlOutcome struct {
	Device  string `json:"device"`
	Shard   int    `json:"shard"`
	Result  string `json:"result"`
	Attempt int    `json:"attempt,omitempty"`
	// Wave is the wave (0-based) a device queued for a retry ran in before.
	Wave int `json:"wave,omitempty"`
	// State is the device's state when it was refused; Reason says so for people.
	State  string `json:"state,omitempty"`
	Reason string `json:"reason,omitempty"`
}

func (o DeviceControlOutcome) refused(state string) DeviceControlOutcome {
	o.Result, o.State = ControlRefused, state
	return o
}

// DeviceControlResult is the result of UpdateSkip and UpdateRetry: each device's outcome, in the
// order asked, and the rollout's progress after it.
type DeviceControlResult struct {
	Devices  []DeviceControlOutcome `json:"devices"`
	Progress RolloutProgress        `json:"progress"`
}

// ShardControl is what a rollout asks of a shard for an operator: devices to skip (with Note) and
// devices to run again. Seq numbers them per shard; a shard applies each once.
type ShardControl struct {
	Seq   int      `json:"seq"`
	Skip  []string `json:"skip,omitempty"`
	Retry []string `json:"retry,omitempty"`
	Note  string   `json:"note,omitempty"`
}

// DeviceControlRefusal says why device (of rollout name) cannot be skipped (update UpdateSkip) or
// run again (UpdateRetry) in state, a Device* result or a ControlState*, and what to do instead.
// note is the device's note, if any.
func DeviceControlRefusal(update, name, device, state, note string) string {
	what := state
	if note != "" {
		what += " (" + note + ")"
	}
	if update == UpdateSkip {
		switch state {
		case DeviceRunning:
			return fmt.Sprintf("device %s is running: skip applies to devices not started; cancel the rollout or wait", device)
		case DeviceFailed:
			return fmt.Sprintf("device %s has failed: skip applies to devices not started (a failed device runs again only when retried)", device)
		case ControlStateQueued:
			return fmt.Sprintf("device %s is queued for a retry: skip applies to devices not started", device)
		case ControlStateUnknown:
			return fmt.Sprintf("device %s is not a target of rollout %s", device, name)
		}
		return fmt.Sprintf("device %s is %s: skip applies to devices not started", device, what)
	}
	switch state {
	case DeviceRunning:
		return fmt.Sprintf("device %s is running: retry applies to devices that failed; wait for it to finish", device)
	case DevicePending:
		return fmt.Sprintf("device %s has not started yet: retry applies to devices that failed", device)
	case ControlStateQueued:
		return fmt.Sprintf("device %s is already queued for a retry", device)
	case ControlStateUnknown:
		return fmt.Sprintf("device %s is not a target of rollout %s", device, name)
	}
	return fmt.Sprintf("device %s is %s: retry applies to devices that failed", device, what)
}

// controlKey names a shard's answer to one ShardControl.
type controlKey struct{ shard, seq int }

// setDeviceHandlers registers UpdateSkip and UpdateRetry.
func (r *rollout) setDeviceHandlers(ctx workflow.Context) error {
	for _, update := range []string{UpdateSkip, UpdateRetry} {
		err := workflow.SetUpdateHandlerWithOptions(ctx, update,
			func(ctx workflow.Context, req DeviceControlRequest) (DeviceControlResult, error) {
				return r.controlDevices(ctx, update, req)
			},
			workflow.UpdateHandlerOptions{
				Validator: func(_ workflow.Context, req DeviceControlRequest) error { return r.validateDevices(update, req) },
			})
		if err != nil {
			return err
		}
	}
	return nil
}

// validateDevices refuses a request the rollout's state or its shards do not allow.
func (r *rollout) validateDevices(update string, req DeviceControlRequest) error {
	name := r.in.Name
	switch {
	case r.fl == nil:
		return fmt.Errorf("rollout %s began before shards: %s applies to rollouts begun by this version of dmflow", name, update)
	case r.refusal(update) != "":
		return fmt.Errorf("%s", r.refusal(update))
	case r.state == RolloutResolving:
		return fmt.Errorf("rollout %s is resolving its targets: %s once it runs (starter rollout status %s)", name, update, name)
	case update == UpdateRetry && r.st.Retrying:
		return fmt.Errorf("rollout %s is running its retry of the failed devices (--retry-failed), its last wave: a device that fails there can run again in a new rollout", name)
	case len(req.Devices) == 0:
		return fmt.Errorf("name the devices to %s", update)
	case len(req.Devices) > MaxControlDevices:
		return fmt.Errorf("%d devices are more than %d a request: %s them in parts", len(req.Devices), MaxControlDevices, update)
	case len(req.Note) > maxReasonLength:
		return fmt.Errorf("the note has %d characters; keep it under %d", len(req.Note), maxReasonLength)
	}
	var problems []string
	for _, d := range req.Devices {
		if err := deviceid.Check(d.ID); err != nil {
			problems = append(problems, err.Error())
			continue
		}
		if d.Shard < 0 || d.Shard >= len(r.fl.Sizes) {
			problems = append(problems, fmt.Sprintf("device %s: shard %d is not a shard of rollout %s (it has %d): look the device up again (starter rollout report %s)",
				d.ID, d.Shard, name, len(r.fl.Sizes), name))
			continue
		}
		if r.record(d.Shard) != nil {
			continue
		}
		shard := RolloutShardWorkflowID(name, d.Shard)
		if update == UpdateSkip {
			problems = append(problems, fmt.Sprintf("device %s: its shard %s has closed, so every device of it has finished: skip applies to devices not started", d.ID, shard))
		} else {
			problems = append(problems, fmt.Sprintf("device %s: its shard %s has closed and runs no device again (it ended outside the rollout, or began before per-device retry): start a rollout of the device under a new name", d.ID, shard))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", joinProblems(problems))
	}
	return nil
}

// joinProblems lists problems in one line.
func joinProblems(problems []string) string {
	out := problems[0]
	for _, p := range problems[1:] {
		out += "; " + p
	}
	return out
}

// controlDevices sends each shard its devices and waits for the answers.
func (r *rollout) controlDevices(ctx workflow.Context, update string, req DeviceControlRequest) (DeviceControlResult, error) {
	byShard := map[int][]string{}
	var order []DeviceRef
	for _, d := range req.Devices {
		if slices.Contains(byShard[d.Shard], d.ID) {
			continue
		}
		byShard[d.Shard] = append(byShard[d.Shard], d.ID)
		order = append(order, d)
	}
	shards := make([]int, 0, len(byShard))
	for idx := range byShard {
		shards = append(shards, idx)
	}
	slices.Sort(shards)

	type sent struct {
		key    controlKey
		ids    []string
		signal workflow.Future
	}
	var sends []sent
	answers := map[string]DeviceControlOutcome{}
	for _, idx := range shards {
		sh := r.record(idx)
		if sh == nil {
			for _, id := range byShard[idx] {
				answers[id] = DeviceControlOutcome{Device: id, Shard: idx}.refused(ControlStateClosed)
			}
			continue
		}
		sh.ControlSent++
		c := ShardControl{Seq: sh.ControlSent}
		if update == UpdateSkip {
			c.Skip, c.Note = byShard[idx], req.Note
		} else {
			c.Retry = byShard[idx]
		}
		f := workflow.SignalExternalWorkflow(ctx, RolloutShardWorkflowID(r.in.Name, idx), "", SignalShardControl, c)
		sends = append(sends, sent{key: controlKey{idx, c.Seq}, ids: byShard[idx], signal: f})
	}
	r.logger.Info("per-device control", "update", update, "devices", len(order), "shards", len(sends))
	var waiting []controlKey
	for _, s := range sends {
		if err := s.signal.Get(ctx, nil); err != nil {
			if ctx.Err() != nil {
				return DeviceControlResult{}, err
			}
			// The shard closed meanwhile (or was ended outside the rollout).
			for _, id := range s.ids {
				answers[id] = DeviceControlOutcome{Device: id, Shard: s.key.shard}.refused(ControlStateClosed)
			}
			continue
		}
		waiting = append(waiting, s.key)
	}
	answered := func() bool {
		for _, k := range waiting {
			if _, ok := r.answers[k]; !ok {
				return false
			}
		}
		return true
	}
	if _, err := workflow.AwaitWithTimeout(ctx, controlAnswerWait, answered); err != nil {
		return DeviceControlResult{}, err
	}
	for _, k := range waiting {
		outs, ok := r.answers[k]
		delete(r.answers, k)
		for _, o := range outs {
			answers[o.Device] = o
		}
		if !ok {
			for _, s := range sends {
				if s.key == k {
					for _, id := range s.ids {
						answers[id] = DeviceControlOutcome{Device: id, Shard: k.shard, Result: ControlUnanswered,
							Reason: fmt.Sprintf("shard %s has not answered within %s; the request stands: see starter rollout report %s",
								RolloutShardWorkflowID(r.in.Name, k.shard), controlAnswerWait, r.in.Name)}
					}
				}
			}
		}
	}
	res := DeviceControlResult{Devices: make([]DeviceControlOutcome, 0, len(order))}
	for _, d := range order {
		o := answers[d.ID]
		if o.Result == ControlRefused && o.Reason == "" {
			o.Reason = DeviceControlRefusal(update, r.in.Name, d.ID, o.State, "")
			if o.State == ControlStateClosed {
				o.Reason = fmt.Sprintf("device %s: its shard %s has closed", d.ID, RolloutShardWorkflowID(r.in.Name, d.Shard))
			}
		}
		res.Devices = append(res.Devices, o)
	}
	r.touch(ctx)
	res.Progress = r.progress()
	return res, nil
}

// takeControl takes a shard's answer to per-device control from its latest tally (sh.Last): the
// devices it skipped leave its work, those it queued are due to be granted.
func (r *rollout) takeControl(sh *ShardRecord) {
	outcomes := sh.Last.Outcomes
	sh.Last.Outcomes = nil
	if sh.Last.Control <= sh.ControlDone {
		return
	}
	sh.ControlDone = sh.Last.Control
	skipped := 0
	for _, o := range outcomes {
		switch o.Result {
		case ControlSkipped:
			if o.State == "" {
				skipped++
			}
		case ControlQueued:
			sh.AgainDue = append(sh.AgainDue, o.Wave)
		}
	}
	if skipped > 0 {
		sh.Work -= skipped
		if excess := sh.Want.Quota - sh.Work; excess > 0 {
			// Quota granted for devices the shard will not start: the current wave's (a wave
			// starts only once all of the one before were started), which other shards fill.
			sh.Want.Quota = sh.Work
			if w := r.st.Wave; w < len(r.fl.Granted) {
				r.fl.Granted[w] = max(r.fl.Granted[w]-excess, 0)
			}
		}
	}
	if r.answers == nil {
		r.answers = map[controlKey][]DeviceControlOutcome{}
	}
	r.answers[controlKey{sh.Index, sh.Last.Control}] = outcomes
}

// grantAgain grants the runs operators asked for, in the current wave, paced like any start. A
// device that ran in an earlier wave joins the current one, which grows by it and waits for it; one
// that ran in the current wave is of it already (its row left the wave's finished devices when it
// was queued).
func (r *rollout) grantAgain(ctx workflow.Context) {
	w := r.st.Wave
	for i := 0; i < len(r.fl.Shards); {
		sh := &r.fl.Shards[i]
		if len(sh.AgainDue) == 0 {
			i++
			continue
		}
		// Asked until none is allowed, which arms the pace timer for the next.
		n := r.startAllowance(ctx, len(sh.AgainDue))
		if n == 0 {
			return
		}
		for len(r.fl.Granted) <= w {
			r.fl.Granted = append(r.fl.Granted, 0)
		}
		for _, before := range sh.AgainDue[:n] {
			if before != w {
				r.fl.Granted[w]++
				r.st.WaveSizes[w]++
			}
		}
		sh.AgainDue = slices.Clone(sh.AgainDue[n:])
		sh.Want.Again += n
		sh.Want.Wave = w
		r.takeStarts(n)
		r.logger.Info("running devices again for an operator", "shard", sh.Index, "devices", n, "wave", w+1)
	}
}
