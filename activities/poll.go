package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
)

const (
	// TwinReadTimeout bounds one twin read. A read normally takes well under a second; bounding it
	// keeps the gap between heartbeats (one read plus one wait of at most the poll's max interval)
	// below the heartbeat timeout workflows set, and turns a stuck connection into a retried poll.
	TwinReadTimeout = 5 * time.Second
)

// twinPoll is one heartbeating poll of a device twin, the loop WaitForReported and FollowStages
// share: read the twin, let observe judge it, heartbeat the caller's progress, back off
// exponentially with jitter up to maxInterval, never sleeping past nextDeadline, and return when
// observe says so or the activity's context is done.
//
// Twin reads that fail with a retryable error (throttling, 5xx, network) are retried by the same
// backoff inside the attempt, since a throttled or briefly unreachable hub is a normal part of
// waiting; non-retryable ones (unknown device, bad credentials) end the poll at once. A 429 in
// particular never fails the device: the poll reads again after the next, longer, interval, and
// the caller's deadlines alone decide when waiting has lasted too long.
type twinPoll struct {
	deviceID string
	// initial, maxInterval, multiplier and jitter shape the exponential backoff between reads;
	// jitter is backoff/v4's randomization factor. The backoff runs across the whole poll, it is
	// not reset when the caller sees progress.
	initial, maxInterval time.Duration
	multiplier, jitter   float64
	// waitFirst delays the first read by the first backoff interval, for callers that know the
	// twin cannot have changed yet (a device that has just accepted a request).
	waitFirst bool
	// observe is called after every read, with the reported properties (nil when the twin has
	// none) or with the classified error of a failed read. It updates the caller's progress and
	// returns done to end the poll successfully, or an error to fail it (a deadline, a device
	// error). After a non-retryable read error the poll ends with that error whatever observe says.
	observe func(reported map[string]any, readErr error) (done bool, err error)
	// nextDeadline returns the time by which the next read must happen at the latest (a deadline
	// observe acts on), or zero for none, so that the last read falls on the deadline.
	nextDeadline func() time.Time
	// progress returns the heartbeat details recorded after every read; a retried attempt reads
	// them back with activity.GetHeartbeatDetails.
	progress func() any
	// rate, when set, is the bucket every read draws a token from first. While a read waits for
	// its token the poll heartbeats progress, so that the details are never replaced by empty ones.
	rate *HubRate
}

// runPoll polls until observe ends it. It returns ctx.Err() when the activity is cancelled or timed
// out, so that Temporal reports that rather than an aborted read.
func (a *Activities) runPoll(ctx context.Context, logger log.Logger, p twinPoll) error {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(p.initial),
		backoff.WithMaxInterval(p.maxInterval),
		backoff.WithMultiplier(p.multiplier),
		backoff.WithRandomizationFactor(p.jitter),
		// The callers' deadlines bound the poll, not the backoff.
		backoff.WithMaxElapsedTime(0),
	)
	next := func() time.Duration {
		// The randomized interval may exceed maxInterval by the jitter; clamp it, since workflows
		// size heartbeat timeouts on maxInterval. Never sleep past the next deadline.
		wait := min(b.NextBackOff(), p.maxInterval)
		if dl := p.nextDeadline(); !dl.IsZero() {
			wait = min(wait, time.Until(dl))
		}
		return max(wait, 0)
	}

	var wait time.Duration
	if p.waitFirst {
		wait = next()
	}
	for {
		if wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			case <-timer.C:
			}
		}

		if err := a.takeToken(ctx, hubCall{op: opTwinReads}, p.rate, func() { activity.RecordHeartbeat(ctx, p.progress()) }); err != nil {
			// Retryable: the next attempt resumes from the progress heartbeated after the last read.
			return tokenError(ctx, logger, err)
		}
		reported, readErr := a.readReported(ctx, p.deviceID)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if readErr != nil {
			readErr = classify(readErr, "read twin", p.deviceID)
		}
		done, err := p.observe(reported, readErr)
		activity.RecordHeartbeat(ctx, p.progress())

		if readErr != nil {
			if isNonRetryable(readErr) {
				logger.Error("twin read failed", "error", readErr)
				return readErr
			}
			logger.Warn("twin read failed, retrying", "error", readErr)
		}
		if done || err != nil {
			return err
		}
		wait = next()
	}
}

// readReported reads the device twin and returns its reported properties, bounded by
// TwinReadTimeout. A twin without reported properties gives nil.
func (a *Activities) readReported(ctx context.Context, deviceID string) (map[string]any, error) {
	readCtx, cancel := context.WithTimeout(ctx, TwinReadTimeout)
	defer cancel()
	twin, err := a.Hub.GetDeviceTwin(readCtx, deviceID)
	if err != nil {
		return nil, err
	}
	if twin == nil || twin.Properties == nil {
		return nil, nil
	}
	return twin.Properties.Reported, nil
}

// lookup finds a dotted path in reported properties. found is false when the path is missing or
// null (a null in a reported patch removes the property).
func lookup(reported map[string]any, path string) (value any, found bool) {
	var cur any = reported
	for _, key := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[key]; !ok {
			return nil, false
		}
	}
	return cur, cur != nil
}

// reportedVersion is the reported properties' $version, which JSON decoding makes a float64.
func reportedVersion(reported map[string]any) int {
	switch n := reported["$version"].(type) {
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

// validPath reports whether a property path is a dotted path such as firmware.status.
func validPath(path string) bool {
	if path == "" {
		return false
	}
	for _, seg := range strings.Split(path, ".") {
		if seg == "" {
			return false
		}
	}
	return true
}

// backoffIntervals applies defaults to a poll's initial and max intervals and checks them; problem
// says what is wrong, for the caller's error message. A max interval left zero is at least the
// initial one.
func backoffIntervals(initial, maxInterval, defInitial, defMax time.Duration) (time.Duration, time.Duration, string) {
	if initial < 0 || maxInterval < 0 {
		return 0, 0, "backoff intervals must not be negative"
	}
	if initial == 0 {
		initial = defInitial
	}
	if maxInterval == 0 {
		maxInterval = max(defMax, initial)
	}
	if initial > maxInterval {
		return 0, 0, fmt.Sprintf("initial interval %s exceeds max interval %s", initial, maxInterval)
	}
	return initial, maxInterval, ""
}
