package workflows

import (
	"slices"
	"time"

	"github.com/dmflow/dmflow/activities"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// This file holds the activity options of every workflow: timeouts, heartbeat timeouts and retry
// policies, each with why those numbers. They are tied to the activities' own behaviour (a twin read
// is bounded at activities.TwinReadTimeout, polls are at most their MaxInterval apart), and every
// execution records them in its history: replay histories in testdata/ must keep replaying.

// hubNonRetryable are the hub's answers that no retry changes: an unknown device, refused
// credentials, a request the hub calls malformed.
var hubNonRetryable = []string{
	activities.ErrDeviceNotFound,
	activities.ErrUnauthorized,
	activities.ErrBadRequest,
}

// GetTwin (Reboot's and FirmwareUpdate's first read, FirmwareUpdate's version check).
const (
	// getTwinTimeout bounds one GetTwin attempt: a single twin read, itself bounded at
	// activities.TwinReadTimeout inside the activity, plus slack for a busy worker. No heartbeat
	// timeout: for an attempt this short the start-to-close timeout notices a lost worker just as
	// soon.
	getTwinTimeout = 15 * time.Second
)

// getTwinOptions are the activity options of GetTwin.
func getTwinOptions(ctx workflow.Context, deadline time.Time) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: getTwinTimeout,
		// Retries (a throttled or unreachable hub) stop when the update's budget is spent.
		ScheduleToCloseTimeout: max(deadline.Sub(workflow.Now(ctx)), getTwinTimeout),
		RetryPolicy: &temporal.RetryPolicy{
			// Throttling (429) is the usual transient failure of a twin read: back off from 1 s to
			// 15 s, well apart on the hub's 100 reads/s (S1) even for a rollout's many devices.
			InitialInterval:        time.Second,
			BackoffCoefficient:     2,
			MaximumInterval:        15 * time.Second,
			NonRetryableErrorTypes: hubNonRetryable,
		},
	})
}

// InvokeMethod (Reboot's rebootDevice, FirmwareUpdate's firmwareUpdate).
const (
	// invokeHeartbeatTimeout: the activity heartbeats every third of it while the call is in
	// flight, so a dead worker is noticed in ~10 s rather than after the full method timeout.
	invokeHeartbeatTimeout = 10 * time.Second
)

// invokeNonRetryable are InvokeMethod's failures no retry changes: the hub's, and a device that ran
// the method and refused (MethodFailed), where calling again would only repeat that.
var invokeNonRetryable = append(slices.Clone(hubNonRetryable), activities.ErrMethodFailed)

// invokeOptions are the activity options of InvokeMethod, for Reboot and FirmwareUpdate alike.
// evidenceWindow is the longest an attempt looks for evidence of an earlier call before calling.
func invokeOptions(ctx workflow.Context, methodTimeout, evidenceWindow time.Duration, deadline time.Time) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		// IoT Hub answers within the method timeout (with 504101 GatewayTimeout if the device does
		// not); the margin covers TLS, the round trip and the hub's overhead, and an attempt may
		// first look for evidence of an earlier call. Longer is a stuck call.
		StartToCloseTimeout: evidenceWindow + methodTimeout + invokeMargin,
		HeartbeatTimeout:    invokeHeartbeatTimeout,
		// Retries stop when the operation's time budget is spent: the schedule-to-close timeout, not
		// an attempt count, bounds them (MaximumAttempts 0).
		ScheduleToCloseTimeout: deadline.Sub(workflow.Now(ctx)),
		RetryPolicy: &temporal.RetryPolicy{
			// An offline device usually reconnects within seconds to a minute; 2 s doubling to a 30 s
			// cap tries often early and then stays well under the hub's method quota (40 calls/s per
			// S1 unit) even when a rollout has many devices offline at once.
			InitialInterval:        2 * time.Second,
			BackoffCoefficient:     2,
			MaximumInterval:        30 * time.Second,
			NonRetryableErrorTypes: invokeNonRetryable,
		},
	})
}

// WaitForReported (Reboot's wait for rebootTime, FirmwareUpdate's version check) and FollowStages
// (FirmwareUpdate's stages): activities that poll the twin and heartbeat after every read.
const (
	// waitHeartbeatTimeout: WaitForReported's polls are at most activities.WaitMaxInterval (10 s)
	// apart and a twin read is bounded at activities.TwinReadTimeout (5 s), so 20 s without a
	// heartbeat passes only when the worker is gone.
	waitHeartbeatTimeout = 20 * time.Second
	// waitGrace lets WaitForReported make its last read at the deadline and fail with its own
	// ErrDeadlineExceeded, which names the last value seen, before Temporal's timeouts would cut it
	// short with a bare TimeoutError.
	waitGrace = 30 * time.Second
	// followHeartbeatTimeout: FollowStages' reads are at most activities.FollowMaxInterval (15 s)
	// apart and bounded at activities.TwinReadTimeout (5 s), so 30 s without a heartbeat means the
	// worker is gone.
	followHeartbeatTimeout = 30 * time.Second
	// followGrace lets FollowStages make its last read at the deadline and fail with its own
	// error, which names the stage, before Temporal's timeouts cut it short.
	followGrace = 30 * time.Second
)

// waitOptions are the activity options of WaitForReported, polling until deadline.
func waitOptions(ctx workflow.Context, deadline time.Time) workflow.Context {
	return pollingOptions(ctx, deadline, waitGrace, waitHeartbeatTimeout, activities.ErrDeadlineExceeded)
}

// followOptions are the activity options of FollowStages: it ends itself at the deadline or at a
// stage timeout before it.
func followOptions(ctx workflow.Context, deadline time.Time) workflow.Context {
	return pollingOptions(ctx, deadline, followGrace, followHeartbeatTimeout,
		activities.ErrDeadlineExceeded, activities.ErrStageTimeout, activities.ErrDeviceError)
}

// pollingOptions are the options of an activity that polls the twin until deadline and heartbeats
// after every read (WaitForReported, FollowStages). grace lets it make its last read at the deadline
// and fail with its own error, which names what it last saw, before Temporal's timeouts would cut it
// short; if earlier steps used up the budget it still reads once (remaining 0 plus the grace).
func pollingOptions(ctx workflow.Context, deadline time.Time, grace, heartbeat time.Duration, nonRetryable ...string) workflow.Context {
	remaining := max(deadline.Sub(workflow.Now(ctx)), 0)
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout:    remaining + grace,
		ScheduleToCloseTimeout: remaining + grace,
		// A missed heartbeat means the worker is gone; the retry resumes from the heartbeat details.
		HeartbeatTimeout: heartbeat,
		RetryPolicy: &temporal.RetryPolicy{
			// Retries here mean a lost worker (transient hub errors are retried inside the activity),
			// so come back quickly.
			InitialInterval:        time.Second,
			BackoffCoefficient:     2,
			MaximumInterval:        10 * time.Second,
			NonRetryableErrorTypes: append(slices.Clone(hubNonRetryable), nonRetryable...),
		},
	})
}

// QueryDevices (Rollout's target resolution).
const (
	// queryHeartbeatTimeout: QueryDevices heartbeats after every page, and a page of up to 1,000
	// twins comes back within seconds; a minute without one means the worker is gone.
	queryHeartbeatTimeout = time.Minute
	// queryStartToClose bounds one attempt: 20 pages of 1,000 twins (MaxRolloutDevices) with room
	// for the rollout's rate limit.
	queryStartToClose = 10 * time.Minute
	// queryBudget bounds the retries of a throttled or unreachable hub before the rollout fails
	// with the hub's error: queries are scarce (20 per minute per S1 unit).
	queryBudget = 30 * time.Minute
)

// queryOptions are the activity options of QueryDevices.
func queryOptions(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout:    queryStartToClose,
		HeartbeatTimeout:       queryHeartbeatTimeout,
		ScheduleToCloseTimeout: queryBudget,
		RetryPolicy: &temporal.RetryPolicy{
			// Throttled queries (20/min per S1 unit) recover within the minute: 5 s doubling to a
			// 1 min cap tries a few times early without eating the hub's query quota.
			InitialInterval:        5 * time.Second,
			BackoffCoefficient:     2,
			MaximumInterval:        time.Minute,
			NonRetryableErrorTypes: append(slices.Clone(hubNonRetryable), activities.ErrTooManyDevices),
		},
	})
}
