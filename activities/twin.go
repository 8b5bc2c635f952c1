package activities

import (
	"context"
	"fmt"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
)

// maxTwinProperties bounds GetTwinInput.Properties: the activity exists to keep results small.
const maxTwinProperties = 32

// GetTwinInput names the reported properties to read from a device twin.
type GetTwinInput struct {
	DeviceID string `json:"deviceId"`
	// Properties are dotted paths into the reported properties, e.g. "firmwareVersion". Only these
	// are returned: a twin's reported section may hold up to 32 KB, and whatever an activity
	// returns is stored in the workflow's history.
	Properties []string `json:"properties"`
	// Rate, when set, draws a token from the rollout's bucket before each hub call.
	Rate *HubRate `json:"rate,omitempty"`
}

// GetTwinResult holds the requested reported properties that the device has reported.
type GetTwinResult struct {
	// Reported maps each requested path that is present and not null to its value; a path the
	// device has not reported is absent.
	Reported map[string]any `json:"reported,omitempty"`
	// LastUpdated maps each requested path that is present to the hub's $lastUpdated time of it
	// (see LastUpdated), or to NoMetadata when the hub gave none: the "before" of Evidence.
	LastUpdated map[string]string `json:"lastUpdated,omitempty"`
	// Version is the reported properties' $version.
	Version int `json:"version"`
	// Attempt is the activity attempt that read the twin (1 for the first). Each attempt makes one
	// twin read, so it is also the number of reads this activity cost the hub's quota.
	Attempt int `json:"attempt"`
}

// GetTwin reads a device twin once and returns the requested reported properties.
//
// It makes a single read, bounded by TwinReadTimeout, and lets Temporal retry a failed one: a
// throttled or unreachable hub gives a plain error, an unknown device or refused credentials a
// non-retryable one (see classify). It does not heartbeat: one bounded read ends well within the
// StartToCloseTimeout a workflow sets. Only while it waits for a token of in.Rate, which may take
// longer, does it heartbeat.
func (a *Activities) GetTwin(ctx context.Context, in GetTwinInput) (GetTwinResult, error) {
	logger := log.With(activity.GetLogger(ctx), "device", in.DeviceID)
	if in.DeviceID == "" {
		return GetTwinResult{}, badRequest("read twin: device ID is empty")
	}
	if problem := propertiesProblem(in.Properties); problem != "" {
		return GetTwinResult{}, badRequest("read twin of %s: %s", in.DeviceID, problem)
	}
	if problem := in.Rate.problem(); problem != "" {
		return GetTwinResult{}, badRequest("read twin of %s: %s", in.DeviceID, problem)
	}
	if a.Hub == nil {
		return GetTwinResult{}, errNoHub
	}

	// GetTwin records no progress, so heartbeats without details are all a wait for a token
	// needs; they matter only when the workflow set a heartbeat timeout.
	if err := a.takeToken(ctx, hubCall{op: opTwinReads}, in.Rate, func() { activity.RecordHeartbeat(ctx) }); err != nil {
		return GetTwinResult{}, tokenError(ctx, logger, err)
	}
	reported, err := a.readReported(ctx, in.DeviceID)
	if ctx.Err() != nil {
		return GetTwinResult{}, ctx.Err()
	}
	if err != nil {
		err = classify(err, "read twin", in.DeviceID)
		logger.Warn("twin read failed", "error", err)
		return GetTwinResult{}, err
	}

	out := twinResult(reported, in.Properties, int(activity.GetInfo(ctx).Attempt))
	logger.Info("read twin", "version", out.Version, "reported", out.Reported)
	return out, nil
}

// propertiesProblem says what is wrong with the property paths asked of a twin read, or "".
func propertiesProblem(paths []string) string {
	if len(paths) == 0 || len(paths) > maxTwinProperties {
		return fmt.Sprintf("ask for 1 to %d reported properties, not %d", maxTwinProperties, len(paths))
	}
	for _, path := range paths {
		if !validPath(path) {
			return fmt.Sprintf("property path %q is not a dotted path such as firmware.status", path)
		}
	}
	return ""
}

// twinResult keeps of a twin's reported properties the paths asked for, with the hub's time of
// each: what GetTwin returns, and InvokeMethod's ReadFirst.
func twinResult(reported map[string]any, paths []string, attempt int) GetTwinResult {
	out := GetTwinResult{Version: reportedVersion(reported), Attempt: attempt}
	for _, path := range paths {
		if v, ok := lookup(reported, path); ok {
			if out.Reported == nil {
				out.Reported = make(map[string]any, len(paths))
			}
			out.Reported[path] = v
			if out.LastUpdated == nil {
				out.LastUpdated = make(map[string]string, len(paths))
			}
			t, ok := LastUpdated(reported, path)
			if !ok {
				t = NoMetadata
			}
			out.LastUpdated[path] = t
		}
	}
	return out
}
