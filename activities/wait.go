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
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
)

const (
	defaultInitialInterval = time.Second
	defaultMaxInterval     = 10 * time.Second
	// twinReadTimeout bounds one twin read. A read normally takes well under a second; bounding it
	// keeps the gap between heartbeats (one read plus one wait of at most MaxInterval) below the
	// heartbeat timeout workflows set, and turns a stuck connection into a retried poll.
	twinReadTimeout = 5 * time.Second
)

// WaitForReportedInput says which reported property to wait for and what it must look like.
type WaitForReportedInput struct {
	DeviceID string `json:"deviceId"`
	// Property is a dotted path into the reported properties, e.g. "rebootTime" or "firmware.status".
	Property string `json:"property"`
	// After, when set, requires the value to be an RFC 3339 time strictly later than After. Values
	// that are not such times do not satisfy it; the wait goes on, since the device may yet write one.
	After time.Time `json:"after"`
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
}

// WaitForReportedResult is the reported value that satisfied the condition.
type WaitForReportedResult struct {
	Value any `json:"value"`
	// Version is the reported properties' $version when the value was seen.
	Version int `json:"version"`
	// Polls counts twin reads over all attempts of the activity, failed reads included.
	Polls  int       `json:"polls"`
	SeenAt time.Time `json:"seenAt"`
}

// WaitForReportedProgress is what WaitForReported records in its heartbeat details after every poll
// and reads back on a retried attempt, so that the poll count and the last value seen survive a
// worker crash.
type WaitForReportedProgress struct {
	Polls       int `json:"polls"`
	LastValue   any `json:"lastValue,omitempty"`
	LastVersion int `json:"lastVersion"`
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

	// Jitter spreads the polls of many devices waiting at once (a rollout) over time. MaxElapsedTime 0:
	// the deadline bounds the wait, not the backoff.
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(maxInterval),
		backoff.WithMaxElapsedTime(0),
	)
	for {
		value, version, found, readErr := a.readReported(ctx, in.DeviceID, in.Property)
		p.Polls++
		if ctx.Err() != nil {
			return WaitForReportedResult{}, ctx.Err()
		}
		if readErr == nil {
			p.LastValue, p.LastVersion = value, version
		}
		activity.RecordHeartbeat(ctx, p)

		if readErr != nil {
			readErr = classify(readErr, "read twin", in.DeviceID)
			if isNonRetryable(readErr) {
				logger.Error("twin read failed", "polls", p.Polls, "error", readErr)
				return WaitForReportedResult{}, readErr
			}
			logger.Warn("twin read failed, retrying", "polls", p.Polls, "error", readErr)
		} else if ok, why := in.satisfied(value, found); ok {
			logger.Info("reported property satisfies the condition",
				"value", value, "version", version, "polls", p.Polls)
			return WaitForReportedResult{Value: value, Version: version, Polls: p.Polls, SeenAt: time.Now().UTC()}, nil
		} else {
			logger.Debug("reported property not there yet", "value", value, "reason", why, "polls", p.Polls)
		}

		if !in.Deadline.IsZero() && !time.Now().Before(in.Deadline) {
			err := temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("wait for %s on %s: deadline %s passed after %d polls; last value seen: %s",
					in.Property, in.DeviceID, in.Deadline.UTC().Format(time.RFC3339), p.Polls, describeValue(p.LastValue)),
				ErrDeadlineExceeded, nil, p)
			logger.Warn("deadline passed", "polls", p.Polls, "last_value", p.LastValue)
			return WaitForReportedResult{}, err
		}

		// The randomized interval may exceed MaxInterval by the randomization factor; clamp it, since
		// the workflow's heartbeat timeout is sized on MaxInterval. Never sleep past the deadline, so
		// that the last read happens at it.
		wait := min(b.NextBackOff(), maxInterval)
		if !in.Deadline.IsZero() {
			wait = min(wait, time.Until(in.Deadline))
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return WaitForReportedResult{}, ctx.Err()
		case <-timer.C:
		}
	}
}

// validate checks the input and returns the backoff intervals with defaults applied.
func (in WaitForReportedInput) validate() (initial, maxInterval time.Duration, err error) {
	if in.DeviceID == "" {
		return 0, 0, badRequest("wait for %q: device ID is empty", in.Property)
	}
	if in.Property == "" || slices.Contains(strings.Split(in.Property, "."), "") {
		return 0, 0, badRequest("wait on %s: property path %q is not a dotted path such as firmware.status", in.DeviceID, in.Property)
	}
	if in.InitialInterval < 0 || in.MaxInterval < 0 {
		return 0, 0, badRequest("wait for %s on %s: backoff intervals must not be negative", in.Property, in.DeviceID)
	}
	initial, maxInterval = in.InitialInterval, in.MaxInterval
	if initial == 0 {
		initial = defaultInitialInterval
	}
	if maxInterval == 0 {
		maxInterval = max(defaultMaxInterval, initial)
	}
	if initial > maxInterval {
		return 0, 0, badRequest("wait for %s on %s: initial interval %s exceeds max interval %s",
			in.Property, in.DeviceID, initial, maxInterval)
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

// readReported reads the twin and looks up a dotted path in its reported properties. found is false
// when the path is missing or null (a null in a reported patch removes the property).
func (a *Activities) readReported(ctx context.Context, deviceID, path string) (value any, version int, found bool, err error) {
	readCtx, cancel := context.WithTimeout(ctx, twinReadTimeout)
	defer cancel()
	twin, err := a.Hub.GetDeviceTwin(readCtx, deviceID)
	if err != nil {
		return nil, 0, false, err
	}
	if twin == nil || twin.Properties == nil {
		return nil, 0, false, nil
	}
	reported := twin.Properties.Reported
	version = toInt(reported["$version"])

	var cur any = reported
	for _, key := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, version, false, nil
		}
		if cur, ok = m[key]; !ok {
			return nil, version, false, nil
		}
	}
	return cur, version, cur != nil, nil
}

// toInt reads $version, which JSON decoding makes a float64.
func toInt(v any) int {
	switch n := v.(type) {
	case float64:
		return int(n)
	case int:
		return n
	case int64:
		return int(n)
	case json.Number:
		i, _ := n.Int64()
		return int(i)
	}
	return 0
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

func describeValue(v any) string {
	if v == nil {
		return "none (property not reported)"
	}
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return valueString(v)
}

func isNonRetryable(err error) bool {
	var appErr *temporal.ApplicationError
	return errors.As(err, &appErr) && appErr.NonRetryable()
}
