package activities

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/dmflow/dmflow/internal/protocol"
	commonpb "go.temporal.io/api/common/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
)

// Polling of FollowStages. 2 s doubling to a 15 s cap: a device that moves fast is seen quickly,
// a stage is detected at most 15 s after the device reported it, and an update with the
// tutorial's 15 s stages costs about six twin reads (at 2, 6, 14, 29, 44, 59 s). Jitter 0.2 keeps
// that count (five or six reads) while still spreading the polls of a rollout's devices: intervals
// at the cap fall between 12 and 15 s.
const (
	// FollowInitialInterval and FollowMaxInterval are the defaults of FollowStagesInput's
	// InitialInterval and MaxInterval, which FirmwareUpdate passes.
	FollowInitialInterval = 2 * time.Second
	FollowMaxInterval     = 15 * time.Second
	followMultiplier      = 2
	followJitter          = 0.2
)

// followStagesActivity is the activity type name under which FollowStages runs (the method name,
// as RegisterActivity names struct methods).
const followStagesActivity = "FollowStages"

// stageTimeProperty is the reported timestamp the firmware tutorial's device writes with each stage.
var stageTimeProperty = map[string]string{
	protocol.StatusDownloading: protocol.PropDownloadComplete,
	protocol.StatusApplying:    protocol.PropStartedApplyingImage,
	protocol.StatusCompleted:   protocol.PropLastFirmwareUpdate,
}

// FollowStagesInput says which firmware update to follow on which device, and how patiently.
type FollowStagesInput struct {
	DeviceID string `json:"deviceId"`
	// UpdateID is the updateId the update was started with. Only reported statuses whose
	// firmwareUpdateId equals it count: a "completed" left from an earlier update does not.
	UpdateID string `json:"updateId"`
	// ByMetadata also counts statuses without a firmwareUpdateId, as devices built from the
	// tutorial report them, when firmwareStatus changed (by the hub's $lastUpdated) after
	// StatusBefore: its $lastUpdated in the read before the call ("" when the device had not
	// reported it, NoMetadata when the hub gave no time). A status labelled with another update's
	// ID never counts, nor does one left from before the call.
	ByMetadata   bool   `json:"byMetadata,omitempty"`
	StatusBefore string `json:"statusBefore,omitempty"`
	// Since is when the device accepted the update. The first stage (downloading) must be seen
	// within StageTimeout of it.
	Since time.Time `json:"since"`
	// StageTimeout is how long the device may stay in one stage: each next stage must be seen
	// within StageTimeout of the previous one being seen. A stage is seen at the first read that
	// shows it, up to MaxInterval after the device reported it, so the limit is never applied
	// early.
	StageTimeout time.Duration `json:"stageTimeout"`
	// Deadline is the absolute time after which the activity fails with the non-retryable
	// ErrDeadlineExceeded; zero for none.
	Deadline time.Time `json:"deadline"`
	// InitialInterval and MaxInterval shape the exponential backoff (×2, jitter 0.2) between reads;
	// they default to 2 s and 15 s. The backoff is not reset when a stage is seen: stages last
	// about as long as each other, so a stage is still detected within MaxInterval, at fewer reads.
	InitialInterval time.Duration `json:"initialInterval,omitempty"`
	MaxInterval     time.Duration `json:"maxInterval,omitempty"`
	// Rate, when set, draws a token from the rollout's bucket before each twin read.
	Rate *HubRate `json:"rate,omitempty"`
}

// StageSeen is one firmware stage as FollowStages saw it.
type StageSeen struct {
	// Status is the reported firmwareStatus: downloading, applying or completed.
	Status string `json:"status"`
	// SeenAt is when a twin read first showed the stage, by the worker's clock. A stage the reads
	// missed (the device went through it between two reads) gets the time of the read that showed
	// a later stage.
	SeenAt time.Time `json:"seenAt"`
	// ReportedAt is the device's own timestamp of the stage (downloadComplete,
	// startedApplyingImage, lastFirmwareUpdate), by the device's clock; zero when it reported none.
	ReportedAt time.Time `json:"reportedAt,omitzero"`
	// Reported is the device's timestamp of the stage as it wrote it, when it is not an RFC 3339
	// time (the tutorial's devices write local time without a zone); ReportedAt is then zero.
	Reported string `json:"reported,omitempty"`
	// UpdatedAt is the hub's $lastUpdated time of the firmwareStatus that showed the stage.
	UpdatedAt string `json:"updatedAt,omitempty"`
}

// FollowStagesResult is a completed firmware update's stages.
type FollowStagesResult struct {
	// Stages are downloading, applying and completed, in that order.
	Stages []StageSeen `json:"stages"`
	// Polls counts twin reads over all attempts of the activity, failed reads included.
	Polls int `json:"polls"`
}

// FollowStagesProgress is what FollowStages records in its heartbeat details after every read and
// reads back on a retried attempt, so that the stages seen, with their times, survive a worker
// crash. It is also the details of the activity's StageTimeout, DeviceError and DeadlineExceeded
// errors, and what PendingFollowStages decodes for a live view.
type FollowStagesProgress struct {
	Polls  int         `json:"polls"`
	Stages []StageSeen `json:"stages,omitempty"`
	// LastStatus and LastUpdateID are the firmwareStatus and firmwareUpdateId of the last
	// successful read, whichever update they belong to.
	LastStatus   string `json:"lastStatus,omitempty"`
	LastUpdateID string `json:"lastUpdateId,omitempty"`
}

// Stage is the stage the update was last seen in, or "" before the device reported the first.
func (p FollowStagesProgress) Stage() string {
	if len(p.Stages) == 0 {
		return ""
	}
	return p.Stages[len(p.Stages)-1].Status
}

// FollowStages follows a firmware update through the stages the device reports in
// firmwareStatus (downloading, applying, completed), reading the twin with exponential backoff
// until the update completes, and returns every stage with the time it was seen.
//
// It is one activity for the whole update, not one per stage, to keep the workflow's history
// short (each activity costs about six events). It heartbeats after every read with a
// FollowStagesProgress, from which a retried attempt resumes; the heartbeat details are also how a
// client sees the stages live (see PendingFollowStages), since a workflow query cannot see them.
//
// Errors, all non-retryable and carrying the FollowStagesProgress as details: no next stage within
// in.StageTimeout → ErrStageTimeout naming the stage the device is stuck in; firmwareStatus
// "error" for this update → ErrDeviceError with the device's reason and stage; past in.Deadline →
// ErrDeadlineExceeded. Twin reads fail and are retried as in WaitForReported.
func (a *Activities) FollowStages(ctx context.Context, in FollowStagesInput) (FollowStagesResult, error) {
	logger := log.With(activity.GetLogger(ctx), "device", in.DeviceID, "update_id", in.UpdateID)
	initial, maxInterval, err := in.validate()
	if err != nil {
		return FollowStagesResult{}, err
	}
	if a.Hub == nil {
		return FollowStagesResult{}, errNoHub
	}

	var p FollowStagesProgress
	resumed := false
	if activity.HasHeartbeatDetails(ctx) {
		if err := activity.GetHeartbeatDetails(ctx, &p); err != nil {
			// The stages are seen again at the next read; only their times are lost.
			logger.Warn("ignoring unreadable heartbeat details", "error", err)
			p = FollowStagesProgress{}
		} else {
			resumed = true
			logger.Info("resuming from the previous attempt", "polls", p.Polls, "stage", p.Stage())
		}
	}
	if len(p.Stages) == len(protocol.FirmwareStages) {
		// The previous attempt saw the update complete and heartbeat that, but its worker died
		// before the activity could return.
		logger.Info("the previous attempt saw the update complete", "polls", p.Polls)
		return FollowStagesResult{Stages: p.Stages, Polls: p.Polls}, nil
	}

	err = a.runPoll(ctx, logger, twinPoll{
		deviceID:    in.DeviceID,
		initial:     initial,
		maxInterval: maxInterval,
		multiplier:  followMultiplier,
		jitter:      followJitter,
		// A device that has just accepted the update still reports its old status: read after the
		// first interval. A resumed attempt reads at once, time has passed.
		waitFirst: !resumed,
		observe: func(reported map[string]any, readErr error) (bool, error) {
			p.Polls++
			now := time.Now().UTC()
			if readErr == nil {
				done, err := in.observe(&p, reported, now, logger)
				if done || err != nil {
					return done, err
				}
			}
			return false, in.expired(p, now)
		},
		nextDeadline: func() time.Time {
			next := in.stageDeadline(p)
			if !in.Deadline.IsZero() && in.Deadline.Before(next) {
				next = in.Deadline
			}
			return next
		},
		progress: func() any { return p },
		rate:     in.Rate,
	})
	if err != nil {
		return FollowStagesResult{}, err
	}
	return FollowStagesResult{Stages: p.Stages, Polls: p.Polls}, nil
}

// observe records what one read shows. It returns done when the update completed, and the
// ErrDeviceError when the device reported it failed.
func (in FollowStagesInput) observe(p *FollowStagesProgress, reported map[string]any, now time.Time, logger log.Logger) (bool, error) {
	status, _ := reported[protocol.PropFirmwareStatus].(string)
	updateID, _ := reported[protocol.PropFirmwareUpdateID].(string)
	p.LastStatus, p.LastUpdateID = status, updateID
	changedAt, _ := LastUpdated(reported, protocol.PropFirmwareStatus)
	if updateID != in.UpdateID {
		// Another update's status, or one without an ID: it counts only from a device that reports
		// no IDs (ByMetadata) and only when it changed after the call.
		if !in.ByMetadata || updateID != "" || !HubTimeAfter(changedAt, in.StatusBefore) {
			return false, nil
		}
	}

	if status == protocol.StatusError {
		reason, _ := reported[protocol.PropFirmwareError].(string)
		stage, _ := reported[protocol.PropFirmwareErrStage].(string)
		if stage == "" {
			stage = p.Stage()
		}
		if reason == "" {
			reason = "no reason given"
		}
		logger.Warn("device reported a failed update", "stage", stage, "reason", reason, "polls", p.Polls)
		return false, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("firmware update %s on %s failed in stage %s: the device reports: %s",
				in.UpdateID, in.DeviceID, describeStage(stage), reason),
			ErrDeviceError, nil, *p)
	}

	k := slices.Index(protocol.FirmwareStages, status)
	if k < len(p.Stages) {
		// Not a stage (standBy again) or one already seen.
		return false, nil
	}
	// Stages the reads missed come first: the device went through them to get here, and their
	// timestamps in the twin are this update's.
	for i := len(p.Stages); i <= k; i++ {
		stage := protocol.FirmwareStages[i]
		seen := StageSeen{Status: stage, SeenAt: now, UpdatedAt: changedAt}
		seen.ReportedAt, seen.Reported = reportedTime(reported, stageTimeProperty[stage])
		p.Stages = append(p.Stages, seen)
		logger.Info("firmware stage", "stage", stage, "reported_at", seen.ReportedAt, "polls", p.Polls)
	}
	return status == protocol.StatusCompleted, nil
}

// stageDeadline is when the next stage must have been seen.
func (in FollowStagesInput) stageDeadline(p FollowStagesProgress) time.Time {
	from := in.Since
	if n := len(p.Stages); n > 0 {
		from = p.Stages[n-1].SeenAt
	}
	return from.Add(in.StageTimeout)
}

// expired returns the error for a passed stage timeout or deadline, or nil.
func (in FollowStagesInput) expired(p FollowStagesProgress, now time.Time) error {
	last := fmt.Sprintf("last read: firmwareStatus %s for update %s, %d polls", quoteOrNone(p.LastStatus), quoteOrNone(p.LastUpdateID), p.Polls)
	if !now.Before(in.stageDeadline(p)) {
		var msg string
		if len(p.Stages) == 0 {
			msg = fmt.Sprintf("firmware update %s on %s stuck before %s: the device reported no %s within %s of accepting the update (%s)",
				in.UpdateID, in.DeviceID, protocol.StatusDownloading, protocol.StatusDownloading, in.StageTimeout, last)
		} else {
			stage := p.Stage()
			next := protocol.FirmwareStages[min(len(p.Stages), len(protocol.FirmwareStages)-1)]
			msg = fmt.Sprintf("firmware update %s on %s stuck in %s: no %s within %s of %s being seen (%s)",
				in.UpdateID, in.DeviceID, stage, next, in.StageTimeout, stage, last)
		}
		return temporal.NewNonRetryableApplicationError(msg, ErrStageTimeout, nil, p)
	}
	if !in.Deadline.IsZero() && !now.Before(in.Deadline) {
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("firmware update %s on %s: deadline %s passed in stage %s (%s)",
				in.UpdateID, in.DeviceID, in.Deadline.UTC().Format(time.RFC3339), describeStage(p.Stage()), last),
			ErrDeadlineExceeded, nil, p)
	}
	return nil
}

// validate checks the input and returns the backoff intervals with defaults applied.
func (in FollowStagesInput) validate() (initial, maxInterval time.Duration, err error) {
	if in.DeviceID == "" {
		return 0, 0, badRequest("follow firmware update %q: device ID is empty", in.UpdateID)
	}
	if in.UpdateID == "" {
		return 0, 0, badRequest("follow firmware update on %s: update ID is empty", in.DeviceID)
	}
	if in.Since.IsZero() {
		return 0, 0, badRequest("follow firmware update %s on %s: the time the device accepted it (since) is not set", in.UpdateID, in.DeviceID)
	}
	if in.StageTimeout <= 0 {
		return 0, 0, badRequest("follow firmware update %s on %s: stage timeout %s must be positive", in.UpdateID, in.DeviceID, in.StageTimeout)
	}
	initial, maxInterval, problem := backoffIntervals(in.InitialInterval, in.MaxInterval, FollowInitialInterval, FollowMaxInterval)
	if problem == "" {
		problem = in.Rate.problem()
	}
	if problem != "" {
		return 0, 0, badRequest("follow firmware update %s on %s: %s", in.UpdateID, in.DeviceID, problem)
	}
	return initial, maxInterval, nil
}

// reportedTime parses a reported timestamp: an RFC 3339 time (or Unix seconds or milliseconds)
// gives t; any other value, such as the tutorial's local time without a zone, comes back as
// written, which cannot be placed on another clock.
func reportedTime(reported map[string]any, prop string) (t time.Time, asWritten string) {
	v, ok := reported[prop]
	if !ok || v == nil {
		return time.Time{}, ""
	}
	if t, ok := ReportedInstant(v); ok {
		return t, ""
	}
	return time.Time{}, valueString(v)
}

func describeStage(stage string) string {
	if stage == "" {
		return "(none seen)"
	}
	return stage
}

func quoteOrNone(s string) string {
	if s == "" {
		return "none"
	}
	return fmt.Sprintf("%q", s)
}

// PendingFollowStages finds a running FollowStages among a workflow's pending activities, as
// DescribeWorkflowExecution lists them (PendingActivities), and decodes the FollowStagesProgress
// it last recorded in its heartbeat, so that a client can show the stages while the workflow
// waits. ok is false when no FollowStages is pending or it has not heartbeated yet.
//
// The details are those the server has: the worker sends heartbeats at most every heartbeat
// throttle interval (worker.Options.MaxHeartbeatThrottleInterval). They are decoded with the
// default data converter, which is what dmflow's workers use.
func PendingFollowStages(pending []*workflowpb.PendingActivityInfo) (p FollowStagesProgress, ok bool, err error) {
	for _, act := range pending {
		if act.GetActivityType().GetName() != followStagesActivity {
			continue
		}
		return decodeProgress(act.GetHeartbeatDetails())
	}
	return FollowStagesProgress{}, false, nil
}

func decodeProgress(details *commonpb.Payloads) (FollowStagesProgress, bool, error) {
	var p FollowStagesProgress
	if len(details.GetPayloads()) == 0 {
		return p, false, nil
	}
	if err := converter.GetDefaultDataConverter().FromPayloads(details, &p); err != nil {
		return FollowStagesProgress{}, false, fmt.Errorf("decode %s heartbeat details: %w", followStagesActivity, err)
	}
	return p, true, nil
}
