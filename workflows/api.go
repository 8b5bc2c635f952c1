// Package workflows holds dmflow's Temporal workflows: the Azure IoT Hub device-management tutorials
// made durable. Reboot is the "remote reboot" tutorial: invoke the direct method rebootDevice, then
// wait until the device reports rebootTime. FirmwareUpdate is the "firmware update" tutorial: invoke
// firmwareUpdate, then follow the device through the stages it reports (downloading, applying,
// completed), optionally rebooting it afterwards.
//
// This file is the contract that starters, workers and clients code against: the task queue, the
// query names, the search attributes, workflow-ID helpers, and the input, result and status types.
// Workflows do no I/O themselves; they reach IoT Hub through the activities package. The method and
// property names are internal/protocol's, shared with the simulated devices.
//
// The search attributes DmflowDevice, DmflowOperation, DmflowTargetVersion, DmflowRollout and
// DmflowRolloutState (all Keyword) must be registered in the namespace before a worker runs these
// workflows, e.g. for the dev server:
//
//	temporal server start-dev --search-attribute DmflowDevice=Keyword \
//	    --search-attribute DmflowOperation=Keyword --search-attribute DmflowTargetVersion=Keyword \
//	    --search-attribute DmflowRollout=Keyword --search-attribute DmflowRolloutState=Keyword
//
// otherwise the server rejects the upsert and the workflow task fails until they are.
package workflows

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/deviceid"
	"github.com/dmflow/dmflow/internal/protocol"
	"go.temporal.io/sdk/temporal"
)

// TaskQueue is the task queue dmflow's workers poll, for workflows and activities alike.
const TaskQueue = "dmflow"

// QueryStep is the query that returns a running workflow's current step; for Reboot it answers a
// RebootStatus, for FirmwareUpdate a FirmwareStatus.
const QueryStep = "step"

// Search attributes every dmflow workflow sets, so that executions can be listed per device and per
// operation: `DmflowDevice = "dev1" AND DmflowOperation = "reboot"`. FirmwareUpdate also sets the
// version it installs: `DmflowOperation = "firmware" AND DmflowTargetVersion = "2.0.0"`.
var (
	SearchAttrDevice        = temporal.NewSearchAttributeKeyKeyword("DmflowDevice")
	SearchAttrOperation     = temporal.NewSearchAttributeKeyKeyword("DmflowOperation")
	SearchAttrTargetVersion = temporal.NewSearchAttributeKeyKeyword("DmflowTargetVersion")
)

// DmflowOperation values.
const (
	// OperationReboot marks Reboot executions.
	OperationReboot = "reboot"
	// OperationFirmware marks FirmwareUpdate executions.
	OperationFirmware = "firmware"
)

// Error types of the non-retryable ApplicationErrors the workflows fail with themselves; activity
// failures keep the activities' Err* types.
const (
	// ErrInvalidInput: the input does not pass Validate.
	ErrInvalidInput = "InvalidInput"
	// ErrVersionMismatch: after a FirmwareUpdate's reboot the device does not report the target
	// version.
	ErrVersionMismatch = "VersionMismatch"
)

// The direct method and reported property of the reboot tutorial, as internal/protocol names them.
const (
	RebootMethod       = protocol.MethodReboot
	RebootTimeProperty = protocol.PropRebootTime
)

// Steps a Reboot goes through, as QueryStep reports them.
const (
	StepInvoking = "invoking " + RebootMethod
	StepWaiting  = "waiting for " + RebootTimeProperty
	StepDone     = "done"
	StepFailed   = "failed"
)

// Defaults and bounds of RebootInput.
const (
	// DefaultMethodTimeout is the tutorial's 60 s: the device answers only after its ~20 s reboot.
	DefaultMethodTimeout = 60 * time.Second
	// DefaultRebootDeadline leaves room for several invocation retries while a device is offline,
	// and for the wait for rebootTime afterwards.
	DefaultRebootDeadline = 5 * time.Minute
	// MinMethodTimeout and MaxMethodTimeout are IoT Hub's limits on a direct method's response timeout.
	MinMethodTimeout = 5 * time.Second
	MaxMethodTimeout = 300 * time.Second
	// MaxRebootDeadline bounds how long a reboot may stay open; a device that has not come back in a
	// day needs a person, not a workflow that keeps polling.
	MaxRebootDeadline = 24 * time.Hour
)

// RebootWorkflowID is the workflow ID of the reboot of deviceID requested as requestID. Starting the
// same request twice finds the running or finished execution instead of rebooting again; the ID also
// travels to the device as the method's requestId.
func RebootWorkflowID(deviceID, requestID string) string {
	return "reboot/" + deviceID + "/" + requestID
}

// RebootInput is the input of Reboot. Zero durations take their defaults. It holds no credentials:
// the worker has the hub's.
type RebootInput struct {
	// DeviceID is the IoT Hub device ID: up to 128 characters of letters, digits and -.+%_#*?!(),:=@$'
	// (internal/deviceid).
	DeviceID string `json:"deviceId"`
	// RequestID identifies the request (see RebootWorkflowID); optional, same characters as DeviceID:
	// request IDs end up in workflow IDs next to device IDs, where a '/' would make RebootWorkflowID
	// ambiguous.
	RequestID string `json:"requestId,omitempty"`
	// MethodTimeout is how long IoT Hub waits for the device to answer rebootDevice, MinMethodTimeout
	// to MaxMethodTimeout; default DefaultMethodTimeout.
	MethodTimeout time.Duration `json:"methodTimeout,omitempty"`
	// Deadline is the time budget from the workflow's start to a confirmed reboot, covering every
	// invocation retry and the wait for rebootTime; at least MethodTimeout plus a 15 s margin, at most
	// MaxRebootDeadline; default DefaultRebootDeadline.
	Deadline time.Duration `json:"deadline,omitempty"`
	// Rate, when set, bounds the hub calls with a token bucket shared by every workflow whose input
	// carries the same key (a rollout's devices); see activities.HubRate.
	Rate *activities.HubRate `json:"rate,omitempty"`
}

// RebootResult is the outcome of a confirmed reboot.
type RebootResult struct {
	DeviceID string `json:"deviceId"`
	// MethodStatus and MethodPayload are the device's answer to rebootDevice.
	// MethodPayload is as the device sent it (any JSON value), empty when it sent none. Both are
	// zero when the device's twin showed it had taken an earlier attempt's call (the answer to
	// that call was lost: a gateway timeout, a worker that died during the call).
	MethodStatus  int             `json:"methodStatus"`
	MethodPayload json.RawMessage `json:"methodPayload,omitempty"`
	// RebootTime is the rebootTime the device reported, by the device's clock, when it is a time
	// on a known clock (RFC 3339, Unix seconds or milliseconds); RebootTimeReported is the value
	// as the device wrote it otherwise, such as the tutorial's local time without a zone.
	RebootTime         time.Time `json:"rebootTime,omitzero"`
	RebootTimeReported string    `json:"rebootTimeReported,omitempty"`
	// ConfirmedAt is the hub's $lastUpdated time of the rebootTime that confirmed the reboot.
	ConfirmedAt string `json:"confirmedAt,omitempty"`
	// HubCalls counts the IoT Hub calls the reboot made: twin reads and method calls.
	HubCalls int `json:"hubCalls,omitempty"`
	// Started is the workflow's start and Duration the time from it to the confirmation, by workflow time.
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration"`
	// Attempts is the number of rebootDevice invocations, retries of an offline device included.
	Attempts int `json:"attempts"`
	// Polls is the number of twin reads the wait for rebootTime took.
	Polls int `json:"polls"`
}

// RebootStatus is what QueryStep returns for a Reboot.
type RebootStatus struct {
	DeviceID string `json:"deviceId"`
	// Step is one of the Step* constants.
	Step string `json:"step"`
	// Since is when the workflow entered Step, by workflow time.
	Since time.Time `json:"since"`
	// Started and Deadline bound the reboot: past Deadline it fails.
	Started  time.Time `json:"started"`
	Deadline time.Time `json:"deadline"`
	// Error is the failure, when Step is StepFailed.
	Error string `json:"error,omitempty"`
}

// invokeMargin is added to MethodTimeout for the InvokeMethod activity: TLS, the round trip and the
// hub's own overhead on top of the time it waits for the device.
const invokeMargin = 15 * time.Second

// Validate reports what is wrong with the input, all problems at once, or nil.
func (in RebootInput) Validate() error {
	problems := checkDevice(in.DeviceID)
	problems = append(problems, checkOptionalID("request ID", in.RequestID)...)
	problems = append(problems, CheckRebootTiming(in.MethodTimeout, in.Deadline)...)
	if len(problems) > 0 {
		return fmt.Errorf("invalid reboot input: %s", strings.Join(problems, "; "))
	}
	return nil
}

// checkDevice reports what is wrong with the device ID of an input.
func checkDevice(id string) []string {
	if id == "" {
		return []string{"device ID is required"}
	}
	if err := deviceid.Check(id); err != nil {
		return []string{err.Error()}
	}
	return nil
}

// checkOptionalID reports what is wrong with an optional ID that follows the device-ID rule, named
// what in the message.
func checkOptionalID(what, id string) []string {
	if id == "" {
		return nil
	}
	if err := deviceid.CheckAs(what, id); err != nil {
		return []string{err.Error()}
	}
	return nil
}

// CheckRebootTiming reports what is wrong with a reboot's method timeout and deadline, zero taking
// their defaults: the rule RebootInput.Validate and RolloutInput.Validate (for RolloutReboot) apply.
func CheckRebootTiming(methodTimeout, deadline time.Duration) []string {
	if methodTimeout < 0 || deadline < 0 {
		return []string{"durations must not be negative"}
	}
	eff := RebootInput{MethodTimeout: methodTimeout, Deadline: deadline}.withDefaults()
	if eff.MethodTimeout < MinMethodTimeout || eff.MethodTimeout > MaxMethodTimeout {
		return []string{fmt.Sprintf("method timeout %s is outside IoT Hub's %s–%s", eff.MethodTimeout, MinMethodTimeout, MaxMethodTimeout)}
	}
	if eff.Deadline < eff.MethodTimeout+invokeMargin || eff.Deadline > MaxRebootDeadline {
		return []string{fmt.Sprintf("deadline %s must lie between the method timeout plus %s (%s) and %s",
			eff.Deadline, invokeMargin, eff.MethodTimeout+invokeMargin, MaxRebootDeadline)}
	}
	return nil
}

func (in RebootInput) withDefaults() RebootInput {
	if in.MethodTimeout == 0 {
		in.MethodTimeout = DefaultMethodTimeout
	}
	if in.Deadline == 0 {
		in.Deadline = DefaultRebootDeadline
	}
	return in
}

// Steps a FirmwareUpdate goes through, as QueryStep reports them; it ends in StepDone, StepSkipped
// or StepFailed.
const (
	StepCheckingVersion   = "reading " + protocol.PropFirmwareVersion
	StepStartingUpdate    = "invoking " + protocol.MethodFirmwareUpdate
	StepFollowingStages   = "following stages"
	StepRebooting         = "rebooting"
	StepConfirmingVersion = "confirming " + protocol.PropFirmwareVersion
	StepSkipped           = "skipped"
)

// Outcomes of a FirmwareUpdate, in FirmwareResult.Status.
const (
	// FirmwareUpdated: the device went through the update (and the reboot, when asked for).
	FirmwareUpdated = "updated"
	// FirmwareSkipped: the device already reported the target version; no method was invoked.
	FirmwareSkipped = "skipped"
)

// Defaults and bounds of FirmwareInput.
const (
	// DefaultStageTimeout is eight times the tutorial's 15 s stages: room for a slow download,
	// while a device stuck in a stage is still noticed minutes before the overall deadline.
	DefaultStageTimeout = 2 * time.Minute
	// DefaultFirmwareDeadline covers an offline device coming back (the invocation is retried
	// meanwhile) plus three stages at their full timeout, and a reboot.
	DefaultFirmwareDeadline = 15 * time.Minute
	// MinStageTimeout is the shortest stage timeout accepted; simulated devices in tests run
	// sub-second stages.
	MinStageTimeout = time.Second
	// MaxFirmwareDeadline bounds how long an update may stay open, as MaxRebootDeadline does.
	MaxFirmwareDeadline = 24 * time.Hour
	// MinFirmwareDeadline leaves room for one firmwareUpdate invocation that the device does not
	// answer (the hub times it out) and its retry.
	MinFirmwareDeadline = firmwareMethodTimeout + invokeMargin
	// MaxPackageURILength keeps the input small; IoT Hub allows larger method payloads, but an
	// image URI is a short address, not data.
	MaxPackageURILength = 2048
	// MaxVersionLength bounds FirmwareInput.Version.
	MaxVersionLength = 128
)

// firmwareMethodTimeout is how long the hub waits for the device to answer firmwareUpdate. The
// device answers at once and works in the background (the tutorial), so the hub's default of 30 s
// is plenty, and half the tutorial's 60 s lets an unresponsive device be retried sooner.
const firmwareMethodTimeout = 30 * time.Second

// StageSeen is one firmware stage with the times it was seen and reported.
type StageSeen = activities.StageSeen

// FirmwareWorkflowID is the workflow ID of the firmware update of deviceID named updateID.
// Starting the same update twice finds the running or finished execution instead of updating again.
func FirmwareWorkflowID(deviceID, updateID string) string {
	return "firmware/" + deviceID + "/" + updateID
}

// FirmwareInput is the input of FirmwareUpdate. Zero durations take their defaults. It holds no
// credentials: the package URI must not carry any (it is stored in the workflow's history and sent
// to the device), and the worker has the hub's.
type FirmwareInput struct {
	// DeviceID is the IoT Hub device ID (see RebootInput.DeviceID).
	DeviceID string `json:"deviceId"`
	// PackageURI is the absolute http or https address of the firmware image, sent to the device as
	// fwPackageUri; at most MaxPackageURILength characters, without user info or a SAS signature.
	PackageURI string `json:"packageUri"`
	// Version is the version the image holds: the device is compliant when it reports it as
	// firmwareVersion. Up to MaxVersionLength printable characters without spaces.
	Version string `json:"version"`
	// UpdateID names the update for the device (the method's updateId; the device ignores a repeat
	// and labels its reported status with it); optional, same characters as DeviceID (it is also the
	// reboot's request ID). Default: the workflow ID.
	UpdateID string `json:"updateId,omitempty"`
	// StageTimeout is how long the device may take for each stage (to start downloading after
	// accepting the update, to go from downloading to applying, from applying to completed);
	// MinStageTimeout up to Deadline; default DefaultStageTimeout.
	StageTimeout time.Duration `json:"stageTimeout,omitempty"`
	// Deadline is the time budget from the workflow's start to a completed (and, with Reboot,
	// confirmed) update; MinFirmwareDeadline to MaxFirmwareDeadline; default DefaultFirmwareDeadline.
	Deadline time.Duration `json:"deadline,omitempty"`
	// Reboot reboots the device after the update completed, through the Reboot workflow as a child
	// (workflow ID RebootWorkflowID(device, update ID)), then confirms that the device reports
	// Version.
	Reboot bool `json:"reboot,omitempty"`
	// Rate, when set, bounds the hub calls (see RebootInput.Rate); the reboot inherits it.
	Rate *activities.HubRate `json:"rate,omitempty"`
}

// FirmwareResult is the outcome of a completed or skipped firmware update.
type FirmwareResult struct {
	DeviceID string `json:"deviceId"`
	UpdateID string `json:"updateId"`
	// Status is FirmwareUpdated or FirmwareSkipped.
	Status string `json:"status"`
	// Version is the target version, which the device now runs; FromVersion is the firmwareVersion
	// it reported before (empty when it reported none).
	Version     string `json:"version"`
	FromVersion string `json:"fromVersion,omitempty"`
	// VersionUnknown is set when the device reports no firmwareVersion (devices built from the
	// tutorial): it is never skipped as compliant, and an update it completed is "completed,
	// version not reported by the device", with no version to confirm after a reboot.
	VersionUnknown bool `json:"versionUnknown,omitempty"`
	// MethodPayload is the device's answer to firmwareUpdate as it sent it (any JSON value).
	MethodPayload json.RawMessage `json:"methodPayload,omitempty"`
	// Stages are downloading, applying and completed with their times; empty when skipped.
	Stages []StageSeen `json:"stages,omitempty"`
	// Reboot is the child Reboot's result, when Reboot was asked for (nil when a reboot of this
	// update had already completed in an earlier run).
	Reboot *RebootResult `json:"reboot,omitempty"`
	// Attempts is the number of firmwareUpdate invocations, retries of an offline device included.
	Attempts int `json:"attempts"`
	// HubCalls counts the IoT Hub calls the update made: twin reads and method invocations, the
	// reboot's included.
	HubCalls int `json:"hubCalls"`
	// Started is the workflow's start and Duration the time from it to the end, by workflow time.
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration"`
}

// FirmwareStatus is what QueryStep returns for a FirmwareUpdate.
//
// The stages the device goes through while the workflow is in StepFollowingStages are only in the
// heartbeat details of the FollowStages activity, which a query cannot see (see FirmwareUpdate):
// a client that shows them live reads those with DescribeWorkflowExecution and
// activities.PendingFollowStages.
type FirmwareStatus struct {
	DeviceID string `json:"deviceId"`
	UpdateID string `json:"updateId"`
	Version  string `json:"version"`
	// Step is one of the Step* constants.
	Step string `json:"step"`
	// Since is when the workflow entered Step, by workflow time.
	Since time.Time `json:"since"`
	// Stage is the firmwareStatus last known to the workflow: the one reported before the update
	// (from the first twin read) until the stages have been followed, then the last stage seen.
	Stage string `json:"stage,omitempty"`
	// Stages are the stages seen, once followed (also when the update failed in one).
	Stages []StageSeen `json:"stages,omitempty"`
	// Started and Deadline bound the update: past Deadline it fails.
	Started  time.Time `json:"started"`
	Deadline time.Time `json:"deadline"`
	// Error is the failure, when Step is StepFailed.
	Error string `json:"error,omitempty"`
}

// Validate reports what is wrong with the input, all problems at once, or nil. Its messages never
// repeat a URI that carries credentials.
func (in FirmwareInput) Validate() error {
	problems := checkDevice(in.DeviceID)
	problems = append(problems, CheckFirmwarePackage(in.PackageURI, in.Version)...)
	problems = append(problems, checkOptionalID("update ID", in.UpdateID)...)
	problems = append(problems, CheckFirmwareTiming(in.StageTimeout, in.Deadline)...)
	if len(problems) > 0 {
		return fmt.Errorf("invalid firmware input: %s", strings.Join(problems, "; "))
	}
	return nil
}

// CheckFirmwarePackage reports what is wrong with a firmware update's package URI and version: the
// rule FirmwareInput.Validate and RolloutInput.Validate (for RolloutFirmware) apply. Its messages
// never repeat a URI that carries credentials.
func CheckFirmwarePackage(packageURI, version string) []string {
	var problems []string
	if p := packageURIProblem(packageURI); p != "" {
		problems = append(problems, p)
	}
	switch {
	case version == "":
		problems = append(problems, "version is required: the version the image holds, e.g. 2.0.0")
	case len(version) > MaxVersionLength || strings.IndexFunc(version, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0:
		problems = append(problems, fmt.Sprintf("version %q must be up to %d printable characters without spaces", version, MaxVersionLength))
	}
	return problems
}

// CheckFirmwareTiming reports what is wrong with a firmware update's stage timeout and deadline,
// zero taking their defaults: the rule FirmwareInput.Validate and RolloutInput.Validate apply.
func CheckFirmwareTiming(stageTimeout, deadline time.Duration) []string {
	if stageTimeout < 0 || deadline < 0 {
		return []string{"durations must not be negative"}
	}
	eff := FirmwareInput{StageTimeout: stageTimeout, Deadline: deadline}.withDefaults("")
	if eff.Deadline < MinFirmwareDeadline || eff.Deadline > MaxFirmwareDeadline {
		return []string{fmt.Sprintf("deadline %s must lie between %s and %s", eff.Deadline, MinFirmwareDeadline, MaxFirmwareDeadline)}
	}
	if eff.StageTimeout < MinStageTimeout || eff.StageTimeout > eff.Deadline {
		return []string{fmt.Sprintf("stage timeout %s must lie between %s and the deadline (%s)", eff.StageTimeout, MinStageTimeout, eff.Deadline)}
	}
	return nil
}

// packageURIProblem says what is wrong with a package URI, or "". A URI with credentials is
// refused before anything else and never echoed: the message ends up in the workflow's history.
func packageURIProblem(uri string) string {
	if uri == "" {
		return "package URI is required: the http(s) address of the firmware image"
	}
	if len(uri) > MaxPackageURILength {
		return fmt.Sprintf("package URI has %d characters, at most %d are accepted", len(uri), MaxPackageURILength)
	}
	u, err := url.Parse(uri)
	if err != nil {
		// The parser's message repeats the URI, which may hold a secret.
		return "package URI is not a valid URL"
	}
	if u.User != nil {
		return "package URI carries user credentials (user:password@): use a URI without credentials; inputs are stored in Temporal's history"
	}
	if hasSignature(u.RawQuery) {
		return "package URI carries a SAS signature (sig=): use a URI without credentials, e.g. a public or device-authorised location; inputs are stored in Temporal's history"
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		redacted := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
		return fmt.Sprintf("package URI %q must be an absolute http or https URL, e.g. https://fw.example/v2.bin", redacted.String())
	}
	return ""
}

// hasSignature reports whether a query string holds a sig parameter, as SAS URIs (Azure blob
// storage) do, in any letter case.
func hasSignature(rawQuery string) bool {
	for part := range strings.SplitSeq(rawQuery, "&") {
		key, _, _ := strings.Cut(part, "=")
		if k, err := url.QueryUnescape(key); err == nil {
			key = k
		}
		if strings.EqualFold(strings.TrimSpace(key), "sig") {
			return true
		}
	}
	return false
}

// withDefaults fills zero fields; workflowID is the UpdateID default.
func (in FirmwareInput) withDefaults(workflowID string) FirmwareInput {
	if in.UpdateID == "" {
		in.UpdateID = workflowID
	}
	if in.StageTimeout == 0 {
		in.StageTimeout = DefaultStageTimeout
	}
	if in.Deadline == 0 {
		in.Deadline = DefaultFirmwareDeadline
	}
	return in
}

// rebootRequestID is the RequestID of a FirmwareUpdate's reboot: the update ID, with the '/' of a
// defaulted (workflow-ID) update ID replaced, since request IDs sit between slashes in
// RebootWorkflowID.
func rebootRequestID(updateID string) string {
	return strings.ReplaceAll(updateID, "/", ":")
}
