package workflows

import (
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

// rebootPayloadMethodNumber is what the tutorial's service app sends; kept for devices built from it.
const rebootPayloadMethodNumber = "42"

// Reboot reboots a device the way the remote-reboot tutorial does, made durable: it reads the twin
// (the hub's $lastUpdated time of rebootTime), invokes the direct method rebootDevice, retrying
// while the device is offline or the hub is throttling, then waits until the device reports a
// rebootTime the hub stamped after that read (or one labelled with this request's ID), all within
// in.Deadline. The device may write rebootTime in any form and by any clock: only the hub's times
// are compared.
//
// The method payload carries the workflow ID as requestId, so that a device on dmflow's contract
// can ignore a repeated call of the same reboot. A device built from the tutorial ignores it and
// reboots on every call, so a call that may have reached the device (a gateway timeout, a worker
// that died during it) is made again only when the twin shows no new rebootTime within
// rebootEvidenceWindow (activities.Evidence).
//
// It fails with a non-retryable ApplicationError of type ErrInvalidInput for invalid input, with
// activities.ErrDeadlineExceeded carrying the last attempt's failure when the device did not take the
// method before in.Deadline (offline, or never answering), and with the activity errors (types
// activities.Err*) otherwise. QueryStep answers a RebootStatus.
func Reboot(ctx workflow.Context, in RebootInput) (RebootResult, error) {
	info := workflow.GetInfo(ctx)
	logger := log.With(workflow.GetLogger(ctx), "device", in.DeviceID, "workflow_id", info.WorkflowExecution.ID)
	if err := in.Validate(); err != nil {
		logger.Error("invalid input", "error", err)
		err = temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalidInput, nil)
		countOperation(ctx, OperationReboot, DeviceRebooted, err)
		return RebootResult{}, err
	}
	in = in.withDefaults()

	started := workflow.Now(ctx)
	r := &reboot{
		in:     in,
		logger: logger,
		status: RebootStatus{
			DeviceID: in.DeviceID,
			Step:     StepInvoking,
			Since:    started,
			Started:  started,
			Deadline: started.Add(in.Deadline),
		},
	}
	if err := workflow.SetQueryHandler(ctx, QueryStep, func() (RebootStatus, error) {
		return r.status, nil
	}); err != nil {
		return RebootResult{}, err
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx,
		SearchAttrDevice.ValueSet(in.DeviceID),
		SearchAttrOperation.ValueSet(OperationReboot),
	); err != nil {
		return RebootResult{}, err
	}
	res, err := r.run(ctx, info.WorkflowExecution.ID)
	countOperation(ctx, OperationReboot, DeviceRebooted, err)
	return res, err
}

// reboot is the state of one Reboot execution.
type reboot struct {
	in     RebootInput
	logger log.Logger
	status RebootStatus
}

func (r *reboot) run(ctx workflow.Context, workflowID string) (RebootResult, error) {
	if workflow.GetVersion(ctx, tutorialContractChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		return r.runV0(ctx, workflowID)
	}
	var a *activities.Activities
	started, deadline := r.status.Started, r.status.Deadline

	// The read before the call: the hub's time of the last rebootTime is what a new one must be
	// later than, whatever the device writes as the value and whatever its clock says.
	var twin activities.GetTwinResult
	err := workflow.ExecuteActivity(getTwinOptions(ctx, deadline), a.GetTwin, activities.GetTwinInput{
		Rate:       r.in.Rate,
		DeviceID:   r.in.DeviceID,
		Properties: []string{RebootTimeProperty, protocol.PropLastRebootRequestID},
	}).Get(ctx, &twin)
	if err != nil {
		return r.fail(ctx, retriedUntilDeadline(err, r.in.Deadline, hubNonRetryable))
	}
	evidence := activities.Evidence{
		Property:   RebootTimeProperty,
		Before:     twin.LastUpdated[RebootTimeProperty],
		IDProperty: protocol.PropLastRebootRequestID,
		ID:         workflowID,
		Window:     rebootEvidenceWindow(r.in.MethodTimeout, deadline.Sub(workflow.Now(ctx))),
	}
	res := RebootResult{DeviceID: r.in.DeviceID, Started: started, HubCalls: twin.Attempt}

	if id, _ := twin.Reported[protocol.PropLastRebootRequestID].(string); id == workflowID {
		// An earlier run of this request (which failed afterwards) reached the device: it
		// rebooted for it already.
		r.logger.Info("the device already rebooted for this request; not calling again")
	} else {
		inv, err := r.invoke(ctx, workflowID, deadline, &evidence, nil)
		if err != nil {
			return r.fail(ctx, retriedUntilDeadline(err, r.in.Deadline, invokeNonRetryable))
		}
		res.MethodStatus, res.MethodPayload, res.Attempts = inv.Status, inv.Payload, inv.Attempt
		res.HubCalls += invokeCalls(inv)
		r.logger.Info("device took the call", "method", RebootMethod, "status", inv.Status, "attempt", inv.Attempt, "accepted_by", inv.AcceptedBy)
	}

	r.setStep(ctx, StepWaiting)
	var seen activities.WaitForReportedResult
	err = workflow.ExecuteActivity(waitOptions(ctx, deadline), a.WaitForReported, activities.WaitForReportedInput{
		Rate:     r.in.Rate,
		DeviceID: r.in.DeviceID,
		Property: RebootTimeProperty,
		// This request's ID where the device reports one, else a rebootTime the hub stamped after
		// the read before the call: a rebootTime from an earlier reboot never counts.
		Changed:         &activities.Evidence{Property: evidence.Property, Before: evidence.Before, IDProperty: evidence.IDProperty, ID: evidence.ID},
		Deadline:        deadline,
		InitialInterval: activities.WaitInitialInterval,
		MaxInterval:     activities.WaitMaxInterval,
	}).Get(ctx, &seen)
	if err != nil {
		return r.fail(ctx, err)
	}

	r.setStep(ctx, StepDone)
	res.RebootTime, res.RebootTimeReported = rebootTimeOf(seen.Value)
	res.ConfirmedAt = seen.LastUpdated
	res.Polls = seen.Polls
	res.HubCalls += seen.Polls
	res.Duration = workflow.Now(ctx).Sub(started)
	r.logger.Info("reboot confirmed", "reboot_time", seen.Value, "confirmed_at", seen.LastUpdated,
		"attempts", res.Attempts, "polls", res.Polls, "duration", res.Duration)
	return res, nil
}

// invokeCalls is the hub calls an InvokeMethod made: its calls and the twin reads of its look for
// evidence. A result of an activity that counted no calls (a worker older than Calls) made one a
// attempt, unless it found the call accepted.
func invokeCalls(inv activities.InvokeMethodResult) int {
	calls := inv.Calls
	if calls == 0 && !inv.AlreadyAccepted {
		calls = inv.Attempt
	}
	return calls + inv.TwinReads
}

// tutorialContractChange is the workflow.GetVersion change ID of devices on the tutorials'
// contract: a read before the call, evidence from the hub's $lastUpdated times, raw method
// answers. Runs recorded before it replay through the old paths (runV0).
const tutorialContractChange = "tutorial-contract"

// rebootEvidenceWindow is how long a retry looks for a rebootTime before calling rebootDevice
// again after a call that may have reached the device: twice the method timeout, at least two
// minutes (devices built from the tutorial take 20 s, real ones up to a minute or two, and a
// second call reboots them again), never past the deadline.
func rebootEvidenceWindow(methodTimeout, remaining time.Duration) time.Duration {
	return max(min(max(2*methodTimeout, 2*time.Minute), remaining), 0)
}

// rebootTimeOf reads a reported rebootTime: the time, when it is one placed on a clock (RFC 3339,
// Unix seconds or milliseconds), and the value as the device wrote it otherwise (the tutorial's
// local time without a zone).
func rebootTimeOf(v any) (time.Time, string) {
	if t, ok := activities.ReportedInstant(v); ok {
		return t, ""
	}
	if s, ok := v.(string); ok {
		return time.Time{}, s
	}
	return time.Time{}, activities.ValueString(v)
}

// runV0 is Reboot as it ran before the tutorials' contract (tutorialContractChange): it trusts
// only RFC 3339 rebootTime values later than the workflow's start and lastRebootRequestId. Runs
// recorded then replay through it.
func (r *reboot) runV0(ctx workflow.Context, workflowID string) (RebootResult, error) {
	var a *activities.Activities
	started, deadline := r.status.Started, r.status.Deadline

	// A device that rebooted for this request reports its ID (simdevice does): a retry after a
	// lost answer then does not call again.
	inv, err := r.invoke(ctx, workflowID, deadline, nil,
		&activities.ReportedValue{Property: protocol.PropLastRebootRequestID, Value: workflowID})
	if err != nil {
		return r.fail(ctx, retriedUntilDeadline(err, r.in.Deadline, invokeNonRetryable))
	}
	r.logger.Info("device answered", "method", RebootMethod, "status", inv.Status, "attempt", inv.Attempt)

	r.setStep(ctx, StepWaiting)
	var seen activities.WaitForReportedResult
	err = workflow.ExecuteActivity(waitOptions(ctx, deadline), a.WaitForReported, activities.WaitForReportedInput{
		Rate:     r.in.Rate,
		DeviceID: r.in.DeviceID,
		Property: RebootTimeProperty,
		// After = the workflow's start: a rebootTime from an earlier reboot must not count. The device
		// stamps rebootTime by its own clock, after its ~20 s reboot, so a device clock behind the
		// Temporal server's by less than that is still accepted. No allowance is subtracted, because
		// any allowance would let a reboot finished shortly before this one pass as this one; a device
		// whose clock is further off fails at the deadline with the value it did report in the error.
		After:           started,
		Deadline:        deadline,
		InitialInterval: activities.WaitInitialInterval,
		MaxInterval:     activities.WaitMaxInterval,
	}).Get(ctx, &seen)
	if err != nil {
		return r.fail(ctx, err)
	}

	s, _ := seen.Value.(string)
	rebootTime, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		// WaitForReported only accepts RFC 3339 times later than After; this is a broken contract.
		return r.fail(ctx, fmt.Errorf("reported %s %v is not an RFC 3339 time: %w", RebootTimeProperty, seen.Value, err))
	}

	r.setStep(ctx, StepDone)
	res := RebootResult{
		DeviceID:      r.in.DeviceID,
		MethodStatus:  inv.Status,
		MethodPayload: inv.Payload,
		RebootTime:    rebootTime,
		Started:       started,
		Duration:      workflow.Now(ctx).Sub(started),
		Attempts:      inv.Attempt,
		Polls:         seen.Polls,
	}
	r.logger.Info("reboot confirmed", "reboot_time", rebootTime, "attempts", res.Attempts, "polls", res.Polls, "duration", res.Duration)
	return res, nil
}

// invoke calls rebootDevice with the workflow ID as requestId. evidence (or, in runs recorded before
// it, acceptedWhen) is how a retry tells that an earlier attempt's call reached the device.
func (r *reboot) invoke(ctx workflow.Context, workflowID string, deadline time.Time, evidence *activities.Evidence, acceptedWhen *activities.ReportedValue) (activities.InvokeMethodResult, error) {
	var a *activities.Activities
	var window time.Duration
	if evidence != nil {
		window = evidence.Window
	}
	r.logger.Info("invoking direct method", "method", RebootMethod, "deadline", deadline)
	var inv activities.InvokeMethodResult
	err := workflow.ExecuteActivity(invokeOptions(ctx, r.in.MethodTimeout, window, deadline), a.InvokeMethod, activities.InvokeMethodInput{
		Rate:     r.in.Rate,
		DeviceID: r.in.DeviceID,
		Method:   RebootMethod,
		Payload:  map[string]any{"method_number": rebootPayloadMethodNumber, protocol.FieldRequestID: workflowID},
		// The tutorial's device answers only after rebooting; a method timeout shorter than its
		// reboot makes the hub answer 504101, and the retry then finds rebootTime changed.
		ResponseTimeout: r.in.MethodTimeout,
		// The device must be connected when the call arrives, as in the tutorial. An offline device
		// makes the hub answer DeviceNotOnline, which the retry policy retries with backoff, so that
		// each try shows in the history and Attempts, rather than one call parked on the hub.
		ConnectTimeout: 0,
		Evidence:       evidence,
		AcceptedWhen:   acceptedWhen,
	}).Get(ctx, &inv)
	return inv, err
}

// retriedUntilDeadline turns an activity failure whose retries the schedule-to-close timeout ended
// at the operation's deadline (InvokeMethod of a device that stayed offline or never answered,
// GetTwin on a hub that stayed unreachable) into a non-retryable activities.ErrDeadlineExceeded
// that says so and carries the last attempt's failure. Temporal fails such an activity with that
// last failure, retryable and typed by its Go type ("hubCallError"), or with a timeout; rollout
// reports showed that type as the device's error type, with no word of the deadline.
//
// The activity's retry policy (nonRetryable: its NonRetryableErrorTypes) has no attempt limit, so
// a retryable failure that reaches the workflow means the timeout ended the retries; the server
// also says so in the retry state, which the SDK's test environment leaves unset. Other errors
// pass unchanged.
func retriedUntilDeadline(err error, deadline time.Duration, nonRetryable []string) error {
	var actErr *temporal.ActivityError
	if !errors.As(err, &actErr) {
		return err
	}
	var appErr *temporal.ApplicationError
	var te *temporal.TimeoutError
	cause := actErr.Unwrap()
	last := ""
	switch {
	case errors.As(cause, &appErr):
		if actErr.RetryState() != enumspb.RETRY_STATE_TIMEOUT && (appErr.NonRetryable() || slices.Contains(nonRetryable, appErr.Type())) {
			return err
		}
		last = appErr.Message()
	case errors.As(cause, &te):
		if actErr.RetryState() != enumspb.RETRY_STATE_TIMEOUT && te.TimeoutType() != enumspb.TIMEOUT_TYPE_SCHEDULE_TO_CLOSE {
			return err
		}
		last = fmt.Sprintf("the last attempt timed out (%s)", te.TimeoutType())
	default:
		return err
	}
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("gave up at the deadline (%s) after retrying: %s", deadline, last),
		activities.ErrDeadlineExceeded, err)
}

func (r *reboot) setStep(ctx workflow.Context, step string) {
	r.status.Step = step
	r.status.Since = workflow.Now(ctx)
}

func (r *reboot) fail(ctx workflow.Context, err error) (RebootResult, error) {
	r.logger.Error("reboot failed", "step", r.status.Step, "error", err)
	r.setStep(ctx, StepFailed)
	r.status.Error = err.Error()
	return RebootResult{}, err
}
