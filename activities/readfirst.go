package activities

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
)

// ReadFirst makes InvokeMethod read the device's twin before calling, within the activity, in
// place of a GetTwin activity of its own: an update then costs the workflow one activity (about six
// history events) less.
//
// The read is made once per operation, not once per attempt. The first attempt reads the twin,
// records the read in its heartbeat details before anything else happens, and bases its decisions
// on it: SkipIf, the request's ID (Evidence.IDProperty), and Evidence.Before, which is the read's
// $lastUpdated of Evidence.Property ("" when the device had not reported it, NoMetadata when the
// hub gave no time), as the workflows derived it from GetTwin. Later attempts take the read and
// Before from their predecessor's details and do not read again: a fresh read after a call that
// may have reached the device would move Before past the device's report of it and hide the
// evidence.
//
// A worker records the read synchronously through its client before it calls (Heartbeats), so an
// attempt whose predecessor's details hold no read knows that predecessor never called, and reads
// and calls as the first attempt does.
//
// The fallback, without Heartbeats (the SDK's test environments). An attempt whose
// predecessor's details hold no read cannot tell whether that predecessor called: it may have died after reading, with the heartbeat that recorded the read
// still in the SDK's batch (the SDK sends a heartbeat at once only when no batching window is
// open, and a dead worker never sends the rest; a background heartbeat with details taken just
// before the read can also land after it), then called. So it reads the twin again and, as
// Evidence.Before, uses ScheduledAt less readFirstSlack in the hub's time format instead of the
// fresh read's $lastUpdated, and looks for evidence before calling, as after a call that may have
// been delivered. Any report the hub stamped after that counts as the predecessor's call having
// been taken. That errs on the safe side: a report from before the operation that falls within
// the slack is a false positive, which makes the update fail later at a stage timeout; a second
// delivery of the method cannot come of it. Only an attempt right after one that recorded a failed
// read (and was itself no fallback) reads as the first attempt does: nothing was called.
type ReadFirst struct {
	// Properties are the reported properties to return in InvokeMethodResult.Read, as
	// GetTwinInput.Properties: 1 to 32 dotted paths. They must include SkipIf.Property and, with
	// Evidence set, Evidence.Property and Evidence.IDProperty, which the decisions read.
	Properties []string `json:"properties"`
	// SkipIf, when set, ends the operation without a call when the device reports SkipIf.Property
	// with SkipIf.Value (compared as strings, a non-string value as JSON): the result is Skipped,
	// e.g. for a device whose firmwareVersion is already the target.
	SkipIf *ReportedValue `json:"skipIf,omitempty"`
	// ScheduledAt is the workflow's time (workflow.Now) when it scheduled the activity, before any
	// attempt could have called. Only the fallback uses it; required with Evidence.
	ScheduledAt time.Time `json:"scheduledAt"`
	// Earlier, for an operation that is a retry with a new request ID, names its earlier requests:
	// when the read shows the device took one and is at it or finished it, the operation makes no
	// call and returns InvokeMethodResult.Earlier (see Earlier). Decided before SkipIf.
	Earlier *Earlier `json:"earlier,omitempty"`

	// Touched, when set, ends the operation without a call when the read shows an update that
	// must not be applied again (readfirst_touched.go); checked after SkipIf.
	Touched *Touched `json:"touched,omitempty"`
}

// readFirstSlack is taken off ReadFirst.ScheduledAt, a time of the Temporal server's clock, to
// compare it with $lastUpdated times of the hub's clock: it covers the skew between the two, so
// that a report the device made for a call of the operation is never stamped before it.
const readFirstSlack = 30 * time.Second

// problem says what is wrong with r, for an InvokeMethod with evidence ev, or "". A nil ReadFirst
// has none.
func (r *ReadFirst) problem(ev *Evidence) string {
	if r == nil {
		return ""
	}
	if p := propertiesProblem(r.Properties); p != "" {
		return "readFirst: " + p
	}
	if r.SkipIf != nil && r.SkipIf.Property == "" {
		return "readFirst: skipIf names no property"
	}
	needed := []string{}
	if r.SkipIf != nil {
		needed = append(needed, r.SkipIf.Property)
	}
	if ev != nil {
		needed = append(needed, ev.Property, ev.IDProperty)
	}
	for _, p := range needed {
		if p != "" && !slices.Contains(r.Properties, p) {
			return fmt.Sprintf("readFirst: %q is not among the properties read: add it to properties, the decisions before the call read it", p)
		}
	}
	if ev != nil && r.ScheduledAt.IsZero() {
		return "readFirst: scheduledAt is not set: set it to workflow.Now when scheduling the activity"
	}
	if p := r.Earlier.problem(ev); p != "" {
		return p
	}
	return r.Touched.problem(r.Properties)
}

// readFirst gives the attempt the operation's read, recorded in box with the Evidence.Before taken
// from it (see ReadFirst): the read of an earlier attempt's details, or one made now. It returns
// the result when the read ends the operation without a call (Skipped, or AlreadyAccepted by the
// request's ID), and whether the attempt is the fallback, which must look for evidence before
// calling. stop ends the background heartbeats, so that a failed read's last heartbeat is the one
// the SDK sends with the failure.
func (a *Activities) readFirst(ctx context.Context, logger log.Logger, in InvokeMethodInput, attempt int,
	prev *InvokeProgress, box *progressBox, stop func()) (done *InvokeMethodResult, fallback bool, err error) {
	var read GetTwinResult
	if prev != nil && prev.Read != nil {
		// box started from prev, so its details carry the read on to the next attempt.
		read = *prev.Read
	} else {
		// A worker with a client records the read synchronously before calling (recordRead):
		// no read recorded means no call was made.
		fallback = readFallback(attempt, prev) && a.Heartbeats == nil
		if fallback {
			logger.Warn("no record of the twin read an earlier attempt made, which may have called since: reading again, taking reports since the activity was scheduled as evidence",
				"scheduled_at", in.ReadFirst.ScheduledAt, "slack", readFirstSlack)
		}
		if read, err = a.readForCall(ctx, logger, in, attempt, box); err != nil {
			if !fallback {
				// Nothing called yet, nor may anything have: the next attempt reads and calls
				// as this one would have. A fallback's Outcome stays OutcomeLooking, so that
				// the next attempt is one too.
				box.update(func(p *InvokeProgress) { p.Outcome = notDelivered.String() })
				stop()
				activity.RecordHeartbeat(ctx, box.get())
			}
			return nil, fallback, err
		}
		before := ""
		if in.Evidence != nil {
			before = read.LastUpdated[in.Evidence.Property]
			if fallback {
				before = hubTime(in.ReadFirst.ScheduledAt.Add(-readFirstSlack))
			}
		}
		box.update(func(p *InvokeProgress) { p.Read, p.Before = &read, before })
		// Before any call: an attempt after this one must find the read, not make its own.
		if err := a.recordRead(ctx, box.get()); err != nil {
			logger.Warn("cannot record the twin read with Temporal: not calling", "error", err)
			return nil, fallback, &hubCallError{msg: "record the twin read before the call: " + err.Error() + " (nothing was called)", err: err}
		}
	}
	return in.readDecision(read), fallback, nil
}

// recordRead records details, which hold the operation's read, with the Temporal server before
// the call. Through Heartbeats (the worker's client) it does so synchronously: once it returns, an
// attempt after this one finds the read, so an attempt that finds none knows that its predecessor
// never called (see readFallback). The SDK's own heartbeat is sent too, so that no detail batched
// before the read can land after it. Without Heartbeats only the SDK's heartbeat goes, and the
// fallback covers the rest.
func (a *Activities) recordRead(ctx context.Context, details any) error {
	activity.RecordHeartbeat(ctx, details)
	if a.Heartbeats == nil {
		return nil
	}
	return a.Heartbeats.RecordActivityHeartbeat(ctx, activity.GetInfo(ctx).TaskToken, details)
}

// readFallback reports whether an attempt whose predecessors' details hold no read is ReadFirst's
// fallback: every one is but the first attempt and one right after an attempt that recorded that
// its read failed (Outcome "not delivered", set only when that attempt was no fallback itself).
// Details of an older attempt say nothing of the last one, which may have read and called.
func readFallback(attempt int, prev *InvokeProgress) bool {
	if attempt <= 1 {
		return false
	}
	return prev == nil || prev.Attempt != attempt-1 || prev.Outcome != notDelivered.String()
}

// readForCall makes the operation's twin read, paced and classified as GetTwin's; the caller
// heartbeats meanwhile.
func (a *Activities) readForCall(ctx context.Context, logger log.Logger, in InvokeMethodInput, attempt int, box *progressBox) (GetTwinResult, error) {
	if err := a.takeToken(ctx, hubCall{op: opTwinReads}, in.Rate, nil); err != nil {
		return GetTwinResult{}, tokenError(ctx, logger, err)
	}
	reported, err := a.readReported(ctx, in.DeviceID)
	box.update(func(p *InvokeProgress) { p.TwinReads++ })
	if ctx.Err() != nil {
		return GetTwinResult{}, ctx.Err()
	}
	if err != nil {
		err = classify(err, "read twin", in.DeviceID)
		logger.Warn("twin read before the call failed", "error", err)
		return GetTwinResult{}, err
	}
	read := twinResult(reported, in.ReadFirst.Properties, attempt)
	logger.Info("read twin before the call", "version", read.Version, "reported", read.Reported)
	return read, nil
}

// readDecision is what the operation's read says of the call: nil when it goes ahead, else the
// result that ends the operation without one. It depends on the read alone, so that an attempt
// that takes the read from its predecessor's details decides as that predecessor did.
func (in InvokeMethodInput) readDecision(read GetTwinResult) *InvokeMethodResult {
	if e := in.ReadFirst.Earlier; e != nil && in.Evidence != nil {
		if taken := e.taken(read, *in.Evidence); taken != nil {
			return &InvokeMethodResult{Earlier: taken}
		}
	}
	if s := in.ReadFirst.SkipIf; s != nil && read.reports(*s) {
		return &InvokeMethodResult{Skipped: true}
	}
	if t := in.ReadFirst.Touched; t != nil {
		if why := t.seen(read); why != "" {
			return &InvokeMethodResult{Skipped: true, SkipReason: why}
		}
	}
	// Evidence.Seen's "id", on the read's keys, which are the paths themselves.
	if ev := in.Evidence; ev != nil && ev.IDProperty != "" && read.reports(ReportedValue{Property: ev.IDProperty, Value: ev.ID}) {
		return &InvokeMethodResult{AlreadyAccepted: true, AcceptedBy: "id"}
	}
	return nil
}

// reports tells whether the read holds the property with the value, compared as strings.
func (r GetTwinResult) reports(want ReportedValue) bool {
	v, ok := r.Reported[want.Property]
	return ok && valueString(v) == want.Value
}

// withBefore is ev with Before set, or nil.
func withBefore(ev *Evidence, before string) *Evidence {
	if ev == nil {
		return nil
	}
	e := *ev
	e.Before = before
	return &e
}
