// Package workflows holds dmflow's Temporal workflows: the Azure IoT Hub device-management tutorials
// made durable. Reboot is the "remote reboot" tutorial: invoke the direct method rebootDevice, then
// wait until the device reports rebootTime.
//
// This file is the contract that starters, workers and clients code against: the task queue, the
// query names, the search attributes, workflow-ID helpers, and the input, result and status types.
// Workflows do no I/O themselves; they reach IoT Hub through the activities package.
//
// The search attributes DmflowDevice and DmflowOperation (both Keyword) must be registered in the
// namespace before a worker runs these workflows, e.g. for the dev server:
//
//	temporal server start-dev --search-attribute DmflowDevice=Keyword --search-attribute DmflowOperation=Keyword
//
// otherwise the server rejects the upsert and the workflow task fails until they are.
package workflows

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
)

// TaskQueue is the task queue dmflow's workers poll, for workflows and activities alike.
const TaskQueue = "dmflow"

// QueryStep is the query that returns a running workflow's current step; for Reboot it answers a
// RebootStatus.
const QueryStep = "step"

// Search attributes every dmflow workflow sets, so that executions can be listed per device and per
// operation: `DmflowDevice = "dev1" AND DmflowOperation = "reboot"`.
var (
	SearchAttrDevice    = temporal.NewSearchAttributeKeyKeyword("DmflowDevice")
	SearchAttrOperation = temporal.NewSearchAttributeKeyKeyword("DmflowOperation")
)

// OperationReboot is the DmflowOperation value of Reboot executions.
const OperationReboot = "reboot"

// ErrInvalidInput is the type of the non-retryable ApplicationError a workflow fails with when its
// input does not pass Validate.
const ErrInvalidInput = "InvalidInput"

// The direct method and reported property of the reboot tutorial.
const (
	RebootMethod       = "rebootDevice"
	RebootTimeProperty = "rebootTime"
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
	// DeviceID is the IoT Hub device ID: up to 128 characters of letters, digits and -:.+%_#*?!(),=@;$'.
	DeviceID string `json:"deviceId"`
	// RequestID identifies the request (see RebootWorkflowID); optional, same characters as DeviceID.
	RequestID string `json:"requestId,omitempty"`
	// MethodTimeout is how long IoT Hub waits for the device to answer rebootDevice, MinMethodTimeout
	// to MaxMethodTimeout; default DefaultMethodTimeout.
	MethodTimeout time.Duration `json:"methodTimeout,omitempty"`
	// Deadline is the time budget from the workflow's start to a confirmed reboot, covering every
	// invocation retry and the wait for rebootTime; at least MethodTimeout plus a 15 s margin, at most
	// MaxRebootDeadline; default DefaultRebootDeadline.
	Deadline time.Duration `json:"deadline,omitempty"`
}

// RebootResult is the outcome of a confirmed reboot.
type RebootResult struct {
	DeviceID string `json:"deviceId"`
	// MethodStatus and MethodPayload are the device's answer to rebootDevice.
	MethodStatus  int            `json:"methodStatus"`
	MethodPayload map[string]any `json:"methodPayload,omitempty"`
	// RebootTime is the rebootTime the device reported, by the device's clock.
	RebootTime time.Time `json:"rebootTime"`
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

// deviceIDPattern is IoT Hub's rule for device IDs. Request IDs follow it too: they end up in workflow
// IDs next to device IDs, where a '/' would make RebootWorkflowID ambiguous.
var deviceIDPattern = regexp.MustCompile(`^[A-Za-z0-9\-:.+%_#*?!(),=@;$']{1,128}$`)

// invokeMargin is added to MethodTimeout for the InvokeMethod activity: TLS, the round trip and the
// hub's own overhead on top of the time it waits for the device.
const invokeMargin = 15 * time.Second

// Validate reports what is wrong with the input, all problems at once, or nil.
func (in RebootInput) Validate() error {
	var problems []string
	switch {
	case in.DeviceID == "":
		problems = append(problems, "device ID is required")
	case !deviceIDPattern.MatchString(in.DeviceID):
		problems = append(problems, fmt.Sprintf("device ID %q is not a legal IoT Hub device ID: up to 128 characters of letters, digits and -:.+%%_#*?!(),=@;$'", in.DeviceID))
	}
	if in.RequestID != "" && !deviceIDPattern.MatchString(in.RequestID) {
		problems = append(problems, fmt.Sprintf("request ID %q may hold only up to 128 characters of letters, digits and -:.+%%_#*?!(),=@;$'", in.RequestID))
	}
	if in.MethodTimeout < 0 || in.Deadline < 0 {
		problems = append(problems, "durations must not be negative")
	} else {
		eff := in.withDefaults()
		if eff.MethodTimeout < MinMethodTimeout || eff.MethodTimeout > MaxMethodTimeout {
			problems = append(problems, fmt.Sprintf("method timeout %s is outside IoT Hub's %s–%s", eff.MethodTimeout, MinMethodTimeout, MaxMethodTimeout))
		} else if eff.Deadline < eff.MethodTimeout+invokeMargin || eff.Deadline > MaxRebootDeadline {
			problems = append(problems, fmt.Sprintf("deadline %s must lie between the method timeout plus %s (%s) and %s",
				eff.Deadline, invokeMargin, eff.MethodTimeout+invokeMargin, MaxRebootDeadline))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid reboot input: %s", strings.Join(problems, "; "))
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
