package workflows

import (
	"errors"
	"fmt"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/protocol"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// device is one device's run in a RolloutShard: the tutorials' sequence (invoke the method, then
// follow the twin) as activities of the shard, with the same evidence, deadlines and outcomes as
// the FirmwareUpdate and Reboot workflows.
type device struct {
	rollout  ShardInput
	id       string
	attempt  int
	updateID string
	logger   log.Logger
	// rollback marks a device's rollback (policy 1): its activities are named <device>/<step>#rollback.
	rollback bool
	// out collects the outcome as the steps go, so that a failure keeps the hub calls made and
	// the stages seen before it.
	out deviceOutcome

	// Retries by failure type (shard_retries.go): earlier guards an attempt after the first
	// against a second delivery; failOffline ends it at once when the device is not connected.
	earlier     *activities.Earlier
	failOffline bool
}

// run runs the device's operation and returns its outcome.
func (d *device) run(ctx workflow.Context) deviceOutcome {
	var err error
	if d.rollout.Operation == OperationFirmware {
		err = d.firmware(ctx)
	} else {
		err = d.reboot(ctx)
	}
	if err != nil {
		failed := failedOutcome(err)
		failed.hubCalls, failed.fromVersion = d.out.hubCalls, d.out.fromVersion
		failed.stages = d.out.stages
		failed.evidence = d.out.evidence
		return failed
	}
	return d.out
}

// activityOptions names the activity after the device and step, so that the Temporal UI shows
// whose call it is: <device>/<step>, and <device>/<step>#2 for a retried device.
func (d *device) activityOptions(ctx workflow.Context, step string) workflow.Context {
	ao := workflow.GetActivityOptions(ctx)
	ao.ActivityID = d.id + "/" + step
	if d.attempt > 1 {
		ao.ActivityID += fmt.Sprintf("#%d", d.attempt)
	}
	ao.Summary = d.id + ": " + step
	if d.rollback {
		ao.ActivityID += "#rollback"
		ao.Summary += " (rollback)"
	}
	return workflow.WithActivityOptions(ctx, ao)
}

// firmware updates the device: firmwareUpdate with the read before it, the stages, and the reboot
// when asked.
func (d *device) firmware(ctx workflow.Context) error {
	var a *activities.Activities
	fw := FirmwareInput{
		StageTimeout: d.rollout.Firmware.StageTimeout,
		Deadline:     d.rollout.Firmware.Deadline,
	}.withDefaults(d.updateID)
	started := workflow.Now(ctx)
	deadline := started.Add(fw.Deadline)
	window := min(fw.StageTimeout, fw.Deadline)
	var inv activities.InvokeMethodResult
	err := workflow.ExecuteActivity(d.activityOptions(invokeOptions(ctx, firmwareMethodTimeout, window, deadline), protocol.MethodFirmwareUpdate),
		a.InvokeMethod, activities.InvokeMethodInput{
			Rate:     d.rollout.Rate,
			DeviceID: d.id,
			Method:   protocol.MethodFirmwareUpdate,
			Payload: map[string]any{
				protocol.FieldPackageURI: d.rollout.Firmware.PackageURI,
				protocol.FieldVersion:    d.rollout.Firmware.Version,
				protocol.FieldUpdateID:   d.updateID,
			},
			ResponseTimeout: firmwareMethodTimeout,
			FailOffline:     d.failOffline,
			ReadFirst: d.withTouched(&activities.ReadFirst{
				Properties:  []string{protocol.PropFirmwareVersion, protocol.PropFirmwareStatus, protocol.PropFirmwareUpdateID},
				SkipIf:      &activities.ReportedValue{Property: protocol.PropFirmwareVersion, Value: d.rollout.Firmware.Version},
				ScheduledAt: started,
				Earlier:     d.earlier,
			}),
			Evidence: &activities.Evidence{
				Property:   protocol.PropFirmwareStatus,
				OneOf:      updateStatuses,
				IDProperty: protocol.PropFirmwareUpdateID,
				ID:         d.updateID,
				Window:     window,
			},
		}).Get(ctx, &inv)
	d.out.hubCalls += invokeCalls(inv)
	if err != nil {
		d.addFailedCalls(err)
		return retriedUntilDeadline(refusal(d.id, err), fw.Deadline, invokeNonRetryable)
	}
	d.noteRead(inv)
	versionUnknown := true
	if inv.Read != nil {
		v, known := inv.Read.Reported[protocol.PropFirmwareVersion]
		if inv.Earlier == nil {
			// A read that found an earlier attempt's update under way is no "before".
			d.out.fromVersion, _ = v.(string)
		}
		versionUnknown = !known || v == nil
	}
	if inv.Skipped {
		d.out.result, d.out.note = DeviceSkipped, "already on "+d.rollout.Firmware.Version
		if inv.SkipReason != "" {
			d.out.note = inv.SkipReason
		}
		return nil
	}

	var followed activities.FollowStagesResult
	err = workflow.ExecuteActivity(d.activityOptions(followOptions(ctx, deadline), "stages"), a.FollowStages, activities.FollowStagesInput{
		Rate:            d.rollout.Rate,
		DeviceID:        d.id,
		UpdateID:        d.followID(inv),
		ByMetadata:      true,
		StatusBefore:    inv.EvidenceBefore,
		Since:           workflow.Now(ctx),
		StageTimeout:    fw.StageTimeout,
		Deadline:        deadline,
		InitialInterval: activities.FollowInitialInterval,
		MaxInterval:     activities.FollowMaxInterval,
	}).Get(ctx, &followed)
	if err != nil {
		var p activities.FollowStagesProgress
		if activities.ErrorDetails(err, &p) {
			d.out.stages = stageNames(p.Stages)
			d.out.hubCalls += p.Polls
		}
		return err
	}
	d.out.hubCalls += followed.Polls
	d.out.stages = stageNames(followed.Stages)
	d.out.result = DeviceUpdated
	if versionUnknown {
		d.out.note = NoteVersionNotReported
	}
	d.noteEarlier(inv)
	if !d.rollout.Firmware.Reboot {
		return nil
	}
	if remaining := deadline.Sub(workflow.Now(ctx)); remaining < DefaultMethodTimeout+invokeMargin {
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("firmware %s completed on %s, but the deadline leaves %s, less than the %s a reboot needs: reboot the device separately (starter reboot)",
				d.rollout.Firmware.Version, d.id, remaining, DefaultMethodTimeout+invokeMargin),
			activities.ErrDeadlineExceeded, nil)
	}
	if err := d.restart(ctx, rebootRequestID(d.updateID), DefaultMethodTimeout, deadline); err != nil {
		return err
	}
	if versionUnknown {
		return nil
	}
	by := workflow.Now(ctx).Add(fw.StageTimeout)
	if deadline.Before(by) {
		by = deadline
	}
	return d.confirmVersion(ctx, by)
}

// reboot reboots the device.
func (d *device) reboot(ctx workflow.Context) error {
	var rb RebootInput
	if r := d.rollout.Reboot; r != nil {
		rb = RebootInput{MethodTimeout: r.MethodTimeout, Deadline: r.Deadline}
	}
	rb = rb.withDefaults()
	if err := d.restart(ctx, rebootRequestID(d.updateID), rb.MethodTimeout, workflow.Now(ctx).Add(rb.Deadline)); err != nil {
		return err
	}
	d.out.result = DeviceRebooted
	return nil
}

// restart calls rebootDevice (reading the twin first: the baseline of its evidence) and waits until
// the device reports a rebootTime of this request.
func (d *device) restart(ctx workflow.Context, requestID string, methodTimeout time.Duration, deadline time.Time) error {
	var a *activities.Activities
	now := workflow.Now(ctx)
	window := rebootEvidenceWindow(methodTimeout, deadline.Sub(now))
	earlier, failOffline := d.rebootGuard()
	var inv activities.InvokeMethodResult
	err := workflow.ExecuteActivity(d.activityOptions(invokeOptions(ctx, methodTimeout, window, deadline), RebootMethod),
		a.InvokeMethod, activities.InvokeMethodInput{
			Rate:            d.rollout.Rate,
			DeviceID:        d.id,
			Method:          RebootMethod,
			Payload:         map[string]any{"method_number": rebootPayloadMethodNumber, protocol.FieldRequestID: requestID},
			ResponseTimeout: methodTimeout,
			FailOffline:     failOffline,
			ReadFirst: &activities.ReadFirst{
				Properties:  []string{RebootTimeProperty, protocol.PropLastRebootRequestID},
				ScheduledAt: now,
				Earlier:     earlier,
			},
			Evidence: &activities.Evidence{
				Property:   RebootTimeProperty,
				IDProperty: protocol.PropLastRebootRequestID,
				ID:         requestID,
				Window:     window,
			},
		}).Get(ctx, &inv)
	d.out.hubCalls += invokeCalls(inv)
	if err != nil {
		d.addFailedCalls(err)
		return retriedUntilDeadline(err, deadline.Sub(now), invokeNonRetryable)
	}
	if d.rollout.Operation == OperationReboot {
		d.noteRead(inv)
	}

	var seen activities.WaitForReportedResult
	err = workflow.ExecuteActivity(d.activityOptions(waitOptions(ctx, deadline), "rebootTime"), a.WaitForReported, activities.WaitForReportedInput{
		Rate:     d.rollout.Rate,
		DeviceID: d.id,
		Property: RebootTimeProperty,
		Changed: &activities.Evidence{
			Property: RebootTimeProperty, Before: inv.EvidenceBefore,
			IDProperty: protocol.PropLastRebootRequestID, ID: d.waitID(inv, requestID),
		},
		Deadline:        deadline,
		InitialInterval: activities.WaitInitialInterval,
		MaxInterval:     activities.WaitMaxInterval,
	}).Get(ctx, &seen)
	if err != nil {
		d.addWaitPolls(err)
		return err
	}
	d.out.hubCalls += seen.Polls
	if earlier != nil {
		d.noteEarlier(inv)
	}
	return nil
}

// confirmVersion waits, until by, for the device to report the target version after its reboot.
func (d *device) confirmVersion(ctx workflow.Context, by time.Time) error {
	var a *activities.Activities
	version := d.rollout.Firmware.Version
	var seen activities.WaitForReportedResult
	err := workflow.ExecuteActivity(d.activityOptions(waitOptions(ctx, by), "version"), a.WaitForReported, activities.WaitForReportedInput{
		Rate:            d.rollout.Rate,
		DeviceID:        d.id,
		Property:        protocol.PropFirmwareVersion,
		OneOf:           []string{version},
		Deadline:        by,
		InitialInterval: activities.WaitInitialInterval,
		MaxInterval:     activities.WaitMaxInterval,
	}).Get(ctx, &seen)
	if err != nil {
		var p activities.WaitForReportedProgress
		if activities.ErrorDetails(err, &p, activities.ErrDeadlineExceeded) {
			d.out.hubCalls += p.Polls
			return temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("after the reboot %s reports %s %s, not %s", d.id, protocol.PropFirmwareVersion, describeReported(p.LastValue), version),
				ErrVersionMismatch, nil, p)
		}
		return err
	}
	d.out.hubCalls += seen.Polls
	return nil
}

// addFailedCalls counts the calls of an InvokeMethod that failed: a device's refusal carries its
// answer, with the calls, in the error's details.
func (d *device) addFailedCalls(err error) {
	var answer activities.InvokeMethodResult
	if activities.ErrorDetails(err, &answer) {
		d.out.hubCalls += invokeCalls(answer)
		d.noteRead(answer)
		return
	}
	// The call was made at least once unless the hub refused before it; one is the floor.
	var app *temporal.ApplicationError
	if errors.As(err, &app) && app.Type() == activities.ErrBadRequest {
		return
	}
	d.out.hubCalls++
}

// addWaitPolls counts the reads of a WaitForReported that failed.
func (d *device) addWaitPolls(err error) {
	var p activities.WaitForReportedProgress
	if activities.ErrorDetails(err, &p) {
		d.out.hubCalls += p.Polls
	}
}
