package workflows

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/deviceid"
	"github.com/dmflow/dmflow/internal/protocol"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// FirmwareUpdate updates a device's firmware the way the firmware-update tutorial does, made
// durable and checked:
//
//  1. GetTwin reads the reported firmwareVersion, and firmwareStatus with the hub's $lastUpdated
//     time of it; a device that already runs in.Version ends the workflow as FirmwareSkipped,
//     without a method call. A device that reports no version (built from the tutorial) is never
//     skipped, and its update ends "version not reported" (FirmwareResult.VersionUnknown).
//  2. InvokeMethod calls firmwareUpdate with {fwPackageUri, version, updateId}, retried while the
//     device is offline or does not answer, within in.Deadline; past it the workflow fails with
//     activities.ErrDeadlineExceeded carrying the last attempt's failure (DeviceNotOnline,
//     GatewayTimeout), as it does when the hub stayed unreachable for GetTwin. The device answers at once; a
//     refusal (409 another update in progress, 400 bad URI) fails the workflow with a
//     non-retryable activities.ErrMethodFailed carrying the device's reason. The answer may be any
//     JSON. A call that may have reached the device (a gateway timeout, a worker that died during
//     it) is called again only when the twin shows no sign of it within a stage timeout
//     (activities.Evidence).
//  3. FollowStages follows the reported firmwareStatus through downloading, applying and completed,
//     counting the statuses whose firmwareUpdateId is this update's, and, from a device that
//     reports no ID, those the hub stamped after the read in step 1. A stage that lasts longer than
//     in.StageTimeout fails with activities.ErrStageTimeout naming it; firmwareStatus "error" fails
//     with activities.ErrDeviceError and the device's reason and stage.
//  4. With in.Reboot, the Reboot workflow runs as a child, then WaitForReported confirms that the
//     device reports in.Version (ErrVersionMismatch otherwise).
//
// Cost. Following all stages is one heartbeating activity rather than one activity per stage:
// every activity adds about six history events (scheduled, started, completed and the workflow
// task that follows), so an update takes 26 events (started, 3 workflow-task events, the version
// marker and the TemporalChangeVersion upsert that goes with it, the search attribute upsert,
// 3 activities × 6, completed; bench-firmware measures 26 on both device contracts) instead of
// 38 with an activity per stage, and
// about 8 hub calls (one twin read, one method call, about six twin reads at the tutorial's 15 s
// stages). The optional reboot adds the Reboot child's calls (about 4) and 15 events (the child's
// start and completion with their workflow tasks, and the version check).
//
// The price is visibility: the stages seen while FollowStages runs live in its heartbeat details,
// which a query cannot read. QueryStep answers a FirmwareStatus with the step and the stages known
// to the workflow (all of them once FollowStages returned); a client that shows stages live reads
// the pending activity's heartbeat details through DescribeWorkflowExecution and
// activities.PendingFollowStages, as `starter firmware --wait` does.
//
// Search attributes: DmflowDevice, DmflowOperation = OperationFirmware, DmflowTargetVersion. It
// fails with a non-retryable ErrInvalidInput for invalid input, and with the activities' errors
// otherwise.
func FirmwareUpdate(ctx workflow.Context, in FirmwareInput) (FirmwareResult, error) {
	info := workflow.GetInfo(ctx)
	workflowID := info.WorkflowExecution.ID
	logger := log.With(workflow.GetLogger(ctx), "device", in.DeviceID, "workflow_id", workflowID)
	err := in.Validate()
	in = in.withDefaults(workflowID)
	if err == nil && in.Reboot {
		if idErr := deviceid.CheckAs("update ID", rebootRequestID(in.UpdateID)); idErr != nil {
			err = fmt.Errorf("invalid firmware input: the update ID (by default the workflow ID) cannot name the reboot request: %w", idErr)
		}
	}
	if err != nil {
		logger.Error("invalid input", "error", err)
		err = temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalidInput, nil)
		countOperation(ctx, OperationFirmware, DeviceUpdated, err)
		return FirmwareResult{}, err
	}

	started := workflow.Now(ctx)
	f := &firmware{
		in:     in,
		logger: log.With(logger, "update_id", in.UpdateID, "version", in.Version),
		status: FirmwareStatus{
			DeviceID: in.DeviceID,
			UpdateID: in.UpdateID,
			Version:  in.Version,
			Step:     StepCheckingVersion,
			Since:    started,
			Started:  started,
			Deadline: started.Add(in.Deadline),
		},
	}
	if err := workflow.SetQueryHandler(ctx, QueryStep, func() (FirmwareStatus, error) {
		return f.status, nil
	}); err != nil {
		return FirmwareResult{}, err
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx,
		SearchAttrDevice.ValueSet(in.DeviceID),
		SearchAttrOperation.ValueSet(OperationFirmware),
		SearchAttrTargetVersion.ValueSet(in.Version),
	); err != nil {
		return FirmwareResult{}, err
	}
	res, err := f.run(ctx)
	ok := DeviceUpdated
	if res.Status == FirmwareSkipped {
		ok = DeviceSkipped
	}
	countOperation(ctx, OperationFirmware, ok, err)
	if err != nil {
		f.logger.Error("firmware update failed", "step", f.status.Step, "stage", f.status.Stage, "error", err)
		f.setStep(ctx, StepFailed)
		f.status.Error = err.Error()
		return FirmwareResult{}, err
	}
	return res, nil
}

// firmware is the state of one FirmwareUpdate execution.
type firmware struct {
	in     FirmwareInput
	logger log.Logger
	status FirmwareStatus
}

func (f *firmware) run(ctx workflow.Context) (FirmwareResult, error) {
	if workflow.GetVersion(ctx, tutorialContractChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		return f.runV0(ctx)
	}
	var a *activities.Activities
	deadline := f.status.Deadline
	res := FirmwareResult{
		DeviceID: f.in.DeviceID,
		UpdateID: f.in.UpdateID,
		Version:  f.in.Version,
		Started:  f.status.Started,
	}

	// The read before the call: the version (to skip a compliant device) and the hub's time of
	// the last firmwareStatus, which a stage of this update must be later than on a device that
	// reports no update ID.
	var twin activities.GetTwinResult
	err := workflow.ExecuteActivity(getTwinOptions(ctx, deadline), a.GetTwin, activities.GetTwinInput{
		Rate:       f.in.Rate,
		DeviceID:   f.in.DeviceID,
		Properties: []string{protocol.PropFirmwareVersion, protocol.PropFirmwareStatus, protocol.PropFirmwareUpdateID},
	}).Get(ctx, &twin)
	if err != nil {
		return res, retriedUntilDeadline(err, f.in.Deadline, hubNonRetryable)
	}
	res.HubCalls += twin.Attempt
	res.FromVersion, _ = twin.Reported[protocol.PropFirmwareVersion].(string)
	res.VersionUnknown = twin.Reported[protocol.PropFirmwareVersion] == nil
	f.status.Stage, _ = twin.Reported[protocol.PropFirmwareStatus].(string)
	if !res.VersionUnknown && res.FromVersion == f.in.Version {
		f.logger.Info("device already runs the target version: nothing to do")
		f.setStep(ctx, StepSkipped)
		res.Status = FirmwareSkipped
		res.Duration = workflow.Now(ctx).Sub(res.Started)
		return res, nil
	}
	evidence := activities.Evidence{
		Property: protocol.PropFirmwareStatus,
		Before:   twin.LastUpdated[protocol.PropFirmwareStatus],
		// standBy is what the tutorial's device reports whenever it starts: no sign of an update.
		OneOf:      updateStatuses,
		IDProperty: protocol.PropFirmwareUpdateID,
		ID:         f.in.UpdateID,
		// The device reports its first stage within a stage timeout of taking the call, or the
		// update fails anyway: so long a retry looks for it before calling again.
		Window: min(f.in.StageTimeout, max(deadline.Sub(workflow.Now(ctx)), 0)),
	}

	f.setStep(ctx, StepStartingUpdate)
	if id, _ := twin.Reported[protocol.PropFirmwareUpdateID].(string); id == f.in.UpdateID {
		// An earlier run of this update (which failed afterwards) reached the device.
		f.logger.Info("the device already runs this update; following it without calling again")
	} else {
		inv, err := f.invoke(ctx, res, deadline, &evidence, nil)
		if err != nil {
			return res, retriedUntilDeadline(refusal(f.in.DeviceID, err), f.in.Deadline, invokeNonRetryable)
		}
		res.Attempts = inv.Attempt
		res.MethodPayload = inv.Payload
		res.HubCalls += invokeCalls(inv)
		f.logger.Info("device accepted the update", "status", inv.Status, "attempt", inv.Attempt, "accepted_by", inv.AcceptedBy)
	}

	return f.follow(ctx, res, deadline, true, evidence.Before)
}

// invoke calls firmwareUpdate. evidence (or, in runs recorded before it, acceptedWhen) is how a
// retry tells that an earlier attempt's call reached the device.
func (f *firmware) invoke(ctx workflow.Context, res FirmwareResult, deadline time.Time, evidence *activities.Evidence, acceptedWhen *activities.ReportedValue) (activities.InvokeMethodResult, error) {
	var a *activities.Activities
	var window time.Duration
	if evidence != nil {
		window = evidence.Window
	}
	f.logger.Info("invoking direct method", "method", protocol.MethodFirmwareUpdate, "from_version", res.FromVersion, "deadline", deadline)
	var inv activities.InvokeMethodResult
	err := workflow.ExecuteActivity(invokeOptions(ctx, firmwareMethodTimeout, window, deadline), a.InvokeMethod, activities.InvokeMethodInput{
		Rate:     f.in.Rate,
		DeviceID: f.in.DeviceID,
		Method:   protocol.MethodFirmwareUpdate,
		// fwPackageUri is all the tutorial's device reads; version and updateId let a device on
		// dmflow's contract skip a repeat (answering with the update's state instead of starting
		// over) and label its stages.
		Payload: map[string]any{
			protocol.FieldPackageURI: f.in.PackageURI,
			protocol.FieldVersion:    f.in.Version,
			protocol.FieldUpdateID:   f.in.UpdateID,
		},
		ResponseTimeout: firmwareMethodTimeout,
		// As for Reboot: an offline device makes the hub answer DeviceNotOnline at once, retried
		// with backoff, rather than one call parked on the hub.
		ConnectTimeout: 0,
		Evidence:       evidence,
		AcceptedWhen:   acceptedWhen,
	}).Get(ctx, &inv)
	return inv, err
}

// follow follows the update's stages, reboots the device when asked, and completes res. byMetadata
// and statusBefore are FollowStagesInput's (false for runs recorded before the tutorials' contract).
func (f *firmware) follow(ctx workflow.Context, res FirmwareResult, deadline time.Time, byMetadata bool, statusBefore string) (FirmwareResult, error) {
	var a *activities.Activities
	f.setStep(ctx, StepFollowingStages)
	var followed activities.FollowStagesResult
	err := workflow.ExecuteActivity(followOptions(ctx, deadline), a.FollowStages, activities.FollowStagesInput{
		Rate:            f.in.Rate,
		DeviceID:        f.in.DeviceID,
		UpdateID:        f.in.UpdateID,
		ByMetadata:      byMetadata,
		StatusBefore:    statusBefore,
		Since:           workflow.Now(ctx),
		StageTimeout:    f.in.StageTimeout,
		Deadline:        deadline,
		InitialInterval: activities.FollowInitialInterval,
		MaxInterval:     activities.FollowMaxInterval,
	}).Get(ctx, &followed)
	if err != nil {
		// The stages seen until the failure travel in the error's details.
		var p activities.FollowStagesProgress
		if activities.ErrorDetails(err, &p) {
			f.setStages(p.Stages)
		}
		return res, err
	}
	res.HubCalls += followed.Polls
	res.Stages = followed.Stages
	f.setStages(followed.Stages)
	f.logger.Info("update completed on the device", "polls", followed.Polls)

	if f.in.Reboot {
		rebooted, calls, err := f.reboot(ctx, deadline, res.VersionUnknown)
		res.HubCalls += calls
		if err != nil {
			return res, err
		}
		res.Reboot = rebooted
	}

	f.setStep(ctx, StepDone)
	res.Status = FirmwareUpdated
	res.Duration = workflow.Now(ctx).Sub(res.Started)
	if res.VersionUnknown {
		f.logger.Info("firmware update completed; the device reports no firmwareVersion to confirm it by")
	}
	f.logger.Info("firmware updated", "attempts", res.Attempts, "hub_calls", res.HubCalls, "duration", res.Duration)
	return res, nil
}

// updateStatuses are the firmwareStatus values that show a device working on an update.
var updateStatuses = append(slices.Clone(protocol.FirmwareStages), protocol.StatusError)

// runV0 is FirmwareUpdate as it ran before the tutorials' contract (tutorialContractChange): it
// follows only statuses labelled with the update's ID. Runs recorded then replay through it.
func (f *firmware) runV0(ctx workflow.Context) (FirmwareResult, error) {
	var a *activities.Activities
	deadline := f.status.Deadline
	res := FirmwareResult{
		DeviceID: f.in.DeviceID,
		UpdateID: f.in.UpdateID,
		Version:  f.in.Version,
		Started:  f.status.Started,
	}

	var twin activities.GetTwinResult
	err := workflow.ExecuteActivity(getTwinOptions(ctx, deadline), a.GetTwin, activities.GetTwinInput{
		Rate:       f.in.Rate,
		DeviceID:   f.in.DeviceID,
		Properties: []string{protocol.PropFirmwareVersion, protocol.PropFirmwareStatus},
	}).Get(ctx, &twin)
	if err != nil {
		return res, retriedUntilDeadline(err, f.in.Deadline, hubNonRetryable)
	}
	res.HubCalls += twin.Attempt
	res.FromVersion, _ = twin.Reported[protocol.PropFirmwareVersion].(string)
	f.status.Stage, _ = twin.Reported[protocol.PropFirmwareStatus].(string)
	if res.FromVersion == f.in.Version {
		f.logger.Info("device already runs the target version: nothing to do")
		f.setStep(ctx, StepSkipped)
		res.Status = FirmwareSkipped
		res.Duration = workflow.Now(ctx).Sub(res.Started)
		return res, nil
	}

	f.setStep(ctx, StepStartingUpdate)
	// A device that accepted this update labels its status with the update ID: a retry after a
	// lost answer (a worker killed during the call) then does not call again.
	inv, err := f.invoke(ctx, res, deadline, nil,
		&activities.ReportedValue{Property: protocol.PropFirmwareUpdateID, Value: f.in.UpdateID})
	if err != nil {
		return res, retriedUntilDeadline(refusal(f.in.DeviceID, err), f.in.Deadline, invokeNonRetryable)
	}
	res.Attempts = inv.Attempt
	res.HubCalls += inv.Attempt
	f.logger.Info("device accepted the update", "status", inv.Status, "attempt", inv.Attempt)

	return f.follow(ctx, res, deadline, false, "")
}

// reboot runs Reboot as a child and confirms the new version, unless versionUnknown (the device
// reports no firmwareVersion: there is none to confirm). It returns the child's result (nil when
// this update's reboot had already completed in an earlier run) and the hub calls made.
func (f *firmware) reboot(ctx workflow.Context, deadline time.Time, versionUnknown bool) (*RebootResult, int, error) {
	var a *activities.Activities
	f.setStep(ctx, StepRebooting)
	remaining := deadline.Sub(workflow.Now(ctx))
	if need := DefaultMethodTimeout + invokeMargin; remaining < need {
		return nil, 0, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("firmware %s completed on %s, but the deadline leaves %s, less than the %s a reboot needs: reboot the device separately (starter reboot)",
				f.in.Version, f.in.DeviceID, remaining, need),
			activities.ErrDeadlineExceeded, nil)
	}

	requestID := rebootRequestID(f.in.UpdateID)
	cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID: RebootWorkflowID(f.in.DeviceID, requestID),
		// As for a started reboot: a reboot of this update that completed (in an earlier run of this
		// update, which then failed) is not repeated; the version check below decides. Only a failed
		// one runs again.
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE_FAILED_ONLY,
	})
	f.logger.Info("rebooting the device", "reboot_workflow_id", RebootWorkflowID(f.in.DeviceID, requestID))
	var rr RebootResult
	var rebooted *RebootResult
	calls := 0
	err := workflow.ExecuteChildWorkflow(cctx, Reboot, RebootInput{
		DeviceID:  f.in.DeviceID,
		RequestID: requestID,
		// The rest of this update's budget; the child enforces it itself.
		Deadline: min(remaining, MaxRebootDeadline),
		Rate:     f.in.Rate,
	}).Get(ctx, &rr)
	var already *temporal.ChildWorkflowExecutionAlreadyStartedError
	switch {
	case errors.As(err, &already):
		f.logger.Info("this update's reboot already ran; confirming the version")
	case err != nil:
		return nil, 0, err
	default:
		rebooted = &rr
		if rr.HubCalls > 0 {
			calls += rr.HubCalls
		} else {
			calls += rr.Attempts + rr.Polls
		}
	}
	if versionUnknown {
		return rebooted, calls, nil
	}

	f.setStep(ctx, StepConfirmingVersion)
	// The device reports its version when it starts, possibly just after rebootTime: wait for it,
	// at most one stage timeout.
	confirmBy := workflow.Now(ctx).Add(f.in.StageTimeout)
	if deadline.Before(confirmBy) {
		confirmBy = deadline
	}
	var seen activities.WaitForReportedResult
	err = workflow.ExecuteActivity(waitOptions(ctx, confirmBy), a.WaitForReported, activities.WaitForReportedInput{
		Rate:            f.in.Rate,
		DeviceID:        f.in.DeviceID,
		Property:        protocol.PropFirmwareVersion,
		OneOf:           []string{f.in.Version},
		Deadline:        confirmBy,
		InitialInterval: activities.WaitInitialInterval,
		MaxInterval:     activities.WaitMaxInterval,
	}).Get(ctx, &seen)
	if err != nil {
		var p activities.WaitForReportedProgress
		if activities.ErrorDetails(err, &p, activities.ErrDeadlineExceeded) {
			calls += p.Polls
			return rebooted, calls, temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("after the reboot %s reports %s %s, not %s", f.in.DeviceID, protocol.PropFirmwareVersion, describeReported(p.LastValue), f.in.Version),
				ErrVersionMismatch, nil, p)
		}
		return rebooted, calls, err
	}
	calls += seen.Polls
	f.logger.Info("device runs the new version after the reboot", "polls", seen.Polls)
	return rebooted, calls, nil
}

// refusal rewrites a device's refusal of firmwareUpdate (ErrMethodFailed) into a message that puts
// the device's reason first; other errors pass unchanged.
func refusal(deviceID string, err error) error {
	var answer activities.InvokeMethodResult
	if !activities.ErrorDetails(err, &answer, activities.ErrMethodFailed) {
		return err
	}
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("device %s refused %s with status %d: %s", deviceID, protocol.MethodFirmwareUpdate, answer.Status, methodReason(answer.Payload)),
		activities.ErrMethodFailed, nil, answer)
}

// methodReason picks the device's explanation out of a method answer, whatever its JSON shape:
// in an object (or an object written as a JSON string, as some devices answer) the first string
// among the fields devices commonly use, a plain string as it is, else the payload as sent,
// shortened.
func methodReason(payload json.RawMessage) string {
	if len(payload) == 0 {
		return "no reason given"
	}
	var v any
	if json.Unmarshal(payload, &v) == nil {
		if s, ok := v.(string); ok {
			var inner map[string]any
			if json.Unmarshal([]byte(s), &inner) != nil {
				return shorten(s)
			}
			v = inner
		}
		if m, ok := v.(map[string]any); ok {
			for _, key := range []string{"error", "reason", "message", "Response"} {
				if s, ok := m[key].(string); ok && s != "" {
					return shorten(s)
				}
			}
		}
	}
	return shorten(string(payload))
}

// shorten bounds a device's text in a message.
func shorten(s string) string {
	const limit = 256
	if len(s) > limit {
		return s[:limit] + "…"
	}
	return s
}

func describeReported(v any) string {
	if v == nil {
		return "nothing"
	}
	return fmt.Sprintf("%v", v)
}

func (f *firmware) setStep(ctx workflow.Context, step string) {
	f.status.Step = step
	f.status.Since = workflow.Now(ctx)
}

func (f *firmware) setStages(stages []StageSeen) {
	if len(stages) == 0 {
		return
	}
	f.status.Stages = stages
	f.status.Stage = stages[len(stages)-1].Status
}
