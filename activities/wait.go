package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/dmflow/dmflow/internal/reported"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
)

const (
	// WaitInitialInterval and WaitMaxInterval are the defaults of WaitForReportedInput's
	// InitialInterval and MaxInterval, which Reboot and FirmwareUpdate pass. The tutorial reads
	// every 5 s; starting at 1 s confirms a device that has already reported (the tutorial's
	// device reports rebootTime before it answers the method) almost at once, and 10 s keeps a
	// slow device's polling cheap against the hub's twin-read quota.
	WaitInitialInterval = time.Second
	WaitMaxInterval     = 10 * time.Second
	// waitMultiplier and waitJitter are backoff/v4's defaults, which WaitForReported has always
	// used: a gentle growth from InitialInterval, and jitter that spreads the polls of many devices
	// waiting at once (a rollout) over time.
	waitMultiplier = backoff.DefaultMultiplier
	waitJitter     = backoff.DefaultRandomizationFactor
)

// WaitForReportedInput says which reported property to wait for and what it must look like.
type WaitForReportedInput struct {
	DeviceID string `json:"deviceId"`
	// Property is a dotted path into the reported properties, e.g. "rebootTime" or "firmware.status".
	Property string `json:"property"`
	// After, when set, requires the value to be an RFC 3339 time strictly later than After. Values
	// that are not such times do not satisfy it; the wait goes on, since the device may yet write one.
	After time.Time `json:"after"`
	// Changed, when set, requires the reported properties to show Changed.Seen: this request's ID
	// where the device reports one, else Property changed (by the hub's $lastUpdated) since
	// Changed.Before. The value may then be in any form the device writes. Changed.Property should
	// be Property. Changed.Window is not used here.
	Changed *Evidence `json:"changed,omitempty"`
	// OneOf, when set, requires the value, as a string (JSON for non-strings), to equal one of these.
	// With neither After nor OneOf the property being present suffices; with both, both must hold.
	OneOf []string `json:"oneOf,omitempty"`
	// Deadline is the absolute time after which the activity fails with the non-retryable
	// ErrDeadlineExceeded. The twin is read once more at the deadline. Zero waits until the activity
	// is cancelled or times out.
	Deadline time.Time `json:"deadline"`
	// InitialInterval and MaxInterval shape the exponential backoff between polls; they default to
	// 1 s and 10 s. Twin reads are metered (100/s per hub on S1), so polls back off rather than
	// hammering the hub while a device is slow.
	InitialInterval time.Duration `json:"initialInterval,omitempty"`
	MaxInterval     time.Duration `json:"maxInterval,omitempty"`
	// Rate, when set, draws a token from the rollout's bucket before each twin read.
	Rate *HubRate `json:"rate,omitempty"`
}

// WaitForReportedResult is the reported value that satisfied the condition.
type WaitForReportedResult struct {
	Value any `json:"value"`
	// Version is the reported properties' $version when the value was seen.
	Version int `json:"version"`
	// Polls counts twin reads over all attempts of the activity, failed reads included.
	Polls  int       `json:"polls"`
	SeenAt time.Time `json:"seenAt"`
	// LastUpdated is the hub's $lastUpdated time of the property when it satisfied the condition
	// ("" when the hub gave none).
	LastUpdated string `json:"lastUpdated,omitempty"`
}

// WaitForReportedProgress is what WaitForReported records in its heartbeat details after every poll
// and reads back on a retried attempt, so that the poll count and the last value seen survive a
// worker crash.
type WaitForReportedProgress struct {
	Polls       int `json:"polls"`
	LastValue   any `json:"lastValue,omitempty"`
	LastVersion int `json:"lastVersion"`
	// LastReason says why the last value did not satisfy the condition.
	LastReason string `json:"lastReason,omitempty"`
}

// WaitForReported reads the device twin until the reported property in.Property satisfies the
// condition (see WaitForReportedInput), backing off exponentially between reads.
//
// It heartbeats after every poll and returns when its context is done. Twin reads that fail with a
// retryable error are retried by the same backoff inside the attempt, since a throttled or briefly
// unreachable hub is a normal part of waiting; non-retryable ones (unknown device, bad credentials)
// fail at once. Past in.Deadline it fails with the non-retryable ErrDeadlineExceeded, naming the last
// value seen and carrying the WaitForReportedProgress as details.
func (a *Activities) WaitForReported(ctx context.Context, in WaitForReportedInput) (WaitForReportedResult, error) {
	logger := log.With(activity.GetLogger(ctx), "device", in.DeviceID, "property", in.Property)
	initial, maxInterval, err := in.validate()
	if err != nil {
		return WaitForReportedResult{}, err
	}
	if a.Hub == nil {
		return WaitForReportedResult{}, errNoHub
	}

	var p WaitForReportedProgress
	if activity.HasHeartbeatDetails(ctx) {
		if err := activity.GetHeartbeatDetails(ctx, &p); err != nil {
			// Losing the count only makes Polls smaller; it is no reason to fail the wait.
			logger.Warn("ignoring unreadable heartbeat details", "error", err)
			p = WaitForReportedProgress{}
		} else {
			logger.Info("resuming wait from the previous attempt", "polls", p.Polls,
				"last_value", p.LastValue, "last_version", p.LastVersion)
		}
	}

	var res WaitForReportedResult
	err = a.runPoll(ctx, logger, twinPoll{
		deviceID:    in.DeviceID,
		initial:     initial,
		maxInterval: maxInterval,
		multiplier:  waitMultiplier,
		jitter:      waitJitter,
		observe: func(reported map[string]any, readErr error) (bool, error) {
			p.Polls++
			if readErr == nil {
				value, found := lookup(reported, in.Property)
				p.LastValue, p.LastVersion = value, reportedVersion(reported)
				ok, why := in.satisfied(value, found)
				if ok && in.Changed != nil {
					ok, why = in.Changed.Seen(reported)
				}
				if ok {
					logger.Info("reported property satisfies the condition",
						"value", value, "version", p.LastVersion, "polls", p.Polls)
					res = WaitForReportedResult{Value: value, Version: p.LastVersion, Polls: p.Polls, SeenAt: time.Now().UTC()}
					res.LastUpdated, _ = LastUpdated(reported, in.Property)
					return true, nil
				}
				if found && value != nil {
					p.LastReason = why
				} else {
					p.LastReason = ""
				}
				logger.Debug("reported property not there yet", "value", value, "reason", why, "polls", p.Polls)
			}
			if !in.Deadline.IsZero() && !time.Now().Before(in.Deadline) {
				logger.Warn("deadline passed", "polls", p.Polls, "last_value", p.LastValue)
				return false, temporal.NewNonRetryableApplicationError(
					fmt.Sprintf("wait for %s on %s: deadline %s passed after %d polls; last value seen: %s%s",
						in.Property, in.DeviceID, in.Deadline.UTC().Format(time.RFC3339), p.Polls, describeValue(p.LastValue), reasonSuffix(p)),
					ErrDeadlineExceeded, nil, p)
			}
			return false, nil
		},
		nextDeadline: func() time.Time { return in.Deadline },
		progress:     func() any { return p },
		rate:         in.Rate,
	})
	if err != nil {
		return WaitForReportedResult{}, err
	}
	return res, nil
}

// validate checks the input and returns the backoff intervals with defaults applied.
func (in WaitForReportedInput) validate() (initial, maxInterval time.Duration, err error) {
	if in.DeviceID == "" {
		return 0, 0, badRequest("wait for %q: device ID is empty", in.Property)
	}
	if !validPath(in.Property) {
		return 0, 0, badRequest("wait on %s: property path %q is not a dotted path such as firmware.status", in.DeviceID, in.Property)
	}
	initial, maxInterval, problem := backoffIntervals(in.InitialInterval, in.MaxInterval, WaitInitialInterval, WaitMaxInterval)
	if problem == "" {
		problem = in.Rate.problem()
	}
	if problem == "" {
		problem = in.Changed.problem()
	}
	if problem != "" {
		return 0, 0, badRequest("wait for %s on %s: %s", in.Property, in.DeviceID, problem)
	}
	return initial, maxInterval, nil
}

// satisfied reports whether a reported value meets the condition, and if not, why (for logs).
func (in WaitForReportedInput) satisfied(value any, found bool) (bool, string) {
	if !found || value == nil {
		return false, "not reported"
	}
	if !in.After.IsZero() {
		s, ok := value.(string)
		if !ok {
			return false, "not an RFC 3339 time"
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return false, "not an RFC 3339 time"
		}
		if !t.After(in.After) {
			return false, "not later than " + in.After.UTC().Format(time.RFC3339Nano)
		}
	}
	if len(in.OneOf) > 0 && !slices.Contains(in.OneOf, valueString(value)) {
		return false, "not one of " + strings.Join(in.OneOf, ", ")
	}
	return true, ""
}

// valueString is the string form OneOf compares against: strings as they are, anything else as JSON,
// so that a reported 3 matches "3" and true matches "true".
func valueString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// describeValue shows a reported value as the device wrote it, with what it means when it is a
// time (reported.Describe), for messages.
func describeValue(v any) string {
	if v == nil {
		return "none (property not reported)"
	}
	return reported.Describe(v)
}

func isNonRetryable(err error) bool {
	var appErr *temporal.ApplicationError
	return errors.As(err, &appErr) && appErr.NonRetryable()
}

// reasonSuffix adds why the last value did not count, when the value alone does not say it.
func reasonSuffix(p WaitForReportedProgress) string {
	if p.LastReason == "" || p.LastValue == nil {
		return ""
	}
	return " (" + p.LastReason + ")"
}
