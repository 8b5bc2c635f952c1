package workflows

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/deviceid"
	"github.com/dmflow/dmflow/internal/protocol"
	"go.temporal.io/sdk/temporal"
)

// Rollout contract: the names, search attributes, workflow-ID helpers and types of the Rollout
// workflow, which runs FirmwareUpdate or Reboot on many devices in waves.

// Query and update names of a Rollout.
const (
	// QueryProgress answers a RolloutProgress.
	QueryProgress = "progress"
	// QueryReport answers a ReportPage for a ReportRequest: one row per target device.
	QueryReport = "report"
	// UpdatePause stops starting devices; those in flight finish. Argument: a ControlRequest;
	// result: the RolloutProgress after the change. Refused unless the rollout is running (or
	// waiting for a maintenance window, or rolling back).
	UpdatePause = "pause"
	// UpdateResume starts devices again after a pause (or waits for the next maintenance window
	// when none is open). Refused unless the rollout is paused.
	UpdateResume = "resume"
	// UpdateCancel stops the rollout: no device starts any more, in-flight device workflows are
	// cancelled, and the rollout ends as RolloutCancelled. Refused once the rollout has ended.
	UpdateCancel = "cancel"
)

// Search attributes a Rollout sets, besides DmflowOperation and DmflowTargetVersion: its name, and
// its state as it changes. Its device workflows carry DmflowRollout too, so
// `DmflowRollout = "fw-2.0"` lists a rollout with all its device workflows in the Temporal UI.
var (
	SearchAttrRollout      = temporal.NewSearchAttributeKeyKeyword("DmflowRollout")
	SearchAttrRolloutState = temporal.NewSearchAttributeKeyKeyword("DmflowRolloutState")
)

// Rollout states, in RolloutProgress.State and the DmflowRolloutState search attribute.
const (
	// RolloutResolving: the targets are being resolved.
	RolloutResolving = "resolving"
	// RolloutRunning: devices are being started.
	RolloutRunning = "running"
	// RolloutPaused: no device starts until resume; in-flight devices finish.
	RolloutPaused = "paused"
	// RolloutWaiting: the rollout has maintenance windows and none is open: no device starts until
	// the next opens (RolloutProgress.WindowOpens); in-flight devices finish. The workflow waits on
	// a durable timer and answers queries and updates meanwhile.
	RolloutWaiting = "waiting"
	// RolloutCompleted: every target device finished (some may have failed, within the threshold).
	RolloutCompleted = "completed"
	// RolloutAborted: failures exceeded the threshold, or devices were left to start when no
	// maintenance window opens any more; devices not started were left untouched. With a rollback
	// (RolloutInput.Rollback), also a rollback that stopped (its threshold, no window); one that ran
	// to its end is RolloutRolledBack (rollout_rollback.go).
	RolloutAborted = "aborted"
	// RolloutCancelled: an operator cancelled the rollout.
	RolloutCancelled = "cancelled"
	// RolloutFailed: the targets could not be resolved (bad query, unreachable hub).
	RolloutFailed = "failed"
)

// Results of one device in a rollout, in DeviceRow.Result.
const (
	// DevicePending: not started yet.
	DevicePending = "pending"
	// DeviceRunning: its device workflow runs.
	DeviceRunning = "running"
	// DeviceUpdated: the firmware update completed (FirmwareUpdated).
	DeviceUpdated = "updated"
	// DeviceRebooted: the reboot was confirmed.
	DeviceRebooted = "rebooted"
	// DeviceSkipped: the device already ran the target version (no method was invoked), or an
	// earlier run of this rollout already completed it.
	DeviceSkipped = "skipped"
	// DeviceFailed: its device workflow failed; Error says why.
	DeviceFailed = "failed"
	// DeviceCancelled: it was in flight when the rollout was cancelled.
	DeviceCancelled = "cancelled"
	// DeviceNotStarted: the rollout ended (aborted or cancelled, or out of maintenance windows)
	// before it started; untouched.
	DeviceNotStarted = "not started"
)

// Error types a Rollout fails with.
const (
	// ErrRolloutAborted: failures exceeded the threshold. The error's details hold the final
	// RolloutProgress: aborted, or rolled-back (RolloutRolledBack) when a rollback followed and ran
	// to its end.
	ErrRolloutAborted = "RolloutAborted"
	// ErrRolloutNoWindow: devices were still to start when no maintenance window opens any more
	// (the last absolute window closed). The rollout ends as RolloutAborted, its reason "no
	// maintenance window opens after <time>; N devices not started", the devices in flight
	// finished and the rest not started; the error's details hold the final RolloutProgress. A
	// type of its own, since nothing failed: a caller may start the rest with new windows.
	ErrRolloutNoWindow = "RolloutNoWindow"
)

// Defaults and bounds of RolloutInput.
const (
	DefaultCanary        = 1
	DefaultGrowth        = 2.0
	DefaultMaxConcurrent = 50
	// DefaultMaxFailures aborts a rollout when more than a tenth of a wave, or of the devices
	// finished (once DefaultMinDevices have), failed.
	DefaultMaxFailures = "10%"
	DefaultMinDevices  = 10
	// MaxRolloutDevices bounded the targets of a rollout begun before shards, whose rows travel
	// through continue-as-new; its target query still refuses more. A sharded rollout has no cap.
	MaxRolloutDevices = 20000
	// MaxDeviceListBytes bounds a rollout's Devices, which travel in its input (and, less those
	// placed in shards, through continue-as-new): their JSON stays under Temporal's 256 KB payload
	// warning. About 10,000 IDs of 16 characters; larger fleets are targeted by query.
	MaxDeviceListBytes = 192 * 1024
	// MaxConcurrentLimit bounds MaxConcurrent: each device in flight is a child workflow.
	MaxConcurrentLimit = 2000
	// DefaultDevicesPerRun is how many devices one run of the workflow starts before it continues
	// as new: each device adds about six events to the history of a rollout begun before shards,
	// and a tally or command per few devices to a sharded one's.
	DefaultDevicesPerRun = 1000
	// MaxNameLength bounds RolloutInput.Name.
	MaxNameLength = 64
)

// RolloutWorkflowID is the workflow ID of the rollout named name.
func RolloutWorkflowID(name string) string { return "rollout/" + name }

// RolloutDeviceWorkflowID is the workflow ID of the device workflow a rollout runs on deviceID.
// The same device is never run twice within a rollout: a completed device workflow with this ID
// is not started again, across worker and server restarts and new runs of the rollout.
func RolloutDeviceWorkflowID(name, deviceID string) string {
	return "rollout/" + name + "/" + deviceID
}

// RolloutUpdateID is the update ID (and reboot request ID) a rollout's device workflow sends to the
// device on its attempt'th try (1, or 2 for the retry of a failed device): a device ignores a
// repeated call of the same attempt, and a retry is a new request.
func RolloutUpdateID(name string, attempt int) string {
	if attempt <= 1 {
		return "rollout:" + name
	}
	return "rollout:" + name + ":" + strconv.Itoa(attempt)
}

// RolloutInput is the input of Rollout. It holds no credentials.
type RolloutInput struct {
	// Name names the rollout: letters, digits and -._: up to MaxNameLength characters. It is part of
	// the workflow IDs of the rollout (RolloutWorkflowID) and its device workflows.
	Name string `json:"name"`
	// Operation is OperationFirmware or OperationReboot.
	Operation string `json:"operation"`

	// Targets: either Query, an IoT Hub device query (SELECT * FROM devices WHERE …), or Devices,
	// device IDs; resolved once at the start and kept in device-ID order.
	Query   string   `json:"query,omitempty"`
	Devices []string `json:"devices,omitempty"`

	// Firmware describes the update, for OperationFirmware.
	Firmware *RolloutFirmware `json:"firmware,omitempty"`
	// Reboot tunes the reboots, for OperationReboot; nil takes RebootInput's defaults.
	Reboot *RolloutReboot `json:"reboot,omitempty"`

	// Canary is the size of the first wave; default DefaultCanary.
	Canary int `json:"canary,omitempty"`
	// Growth multiplies each next wave's size (≥ 1); default DefaultGrowth.
	Growth float64 `json:"growth,omitempty"`
	// MaxConcurrent bounds the devices in flight; default DefaultMaxConcurrent.
	MaxConcurrent int `json:"maxConcurrent,omitempty"`
	// Rate bounds the rollout's IoT Hub calls per second (twin reads, method calls, queries), with
	// one token bucket for the whole rollout in each worker process; zero for no bound.
	Rate float64 `json:"rate,omitempty"`
	// MaxFailures is the failure threshold: a count ("5") or a percentage ("5%"). The rollout
	// aborts when more devices of a wave fail than it allows of the wave's size, or more of all
	// devices finished so far (once MinDevices have finished); default DefaultMaxFailures.
	MaxFailures string `json:"maxFailures,omitempty"`
	// MinDevices is how many devices must have finished before the overall percentage applies;
	// default DefaultMinDevices.
	MinDevices int `json:"minDevices,omitempty"`
	// RetryFailed runs every failed device once more at the end (a new update ID), unless the
	// rollout aborted or was cancelled.
	RetryFailed bool `json:"retryFailed,omitempty"`
	// DevicesPerRun is how many devices a run starts before it continues as new; default
	// DefaultDevicesPerRun.
	DevicesPerRun int `json:"devicesPerRun,omitempty"`

	// Reconcile narrows the targets of a firmware rollout to the devices whose reported
	// firmwareVersion differs from Firmware.Version or is missing: the query (default: all devices)
	// gains that condition, so a recurring rollout touches only devices that drifted or joined.
	Reconcile bool `json:"reconcile,omitempty"`
	// Windows are maintenance windows: when any is given, devices start only while one is open;
	// devices in flight finish, and between windows the rollout waits on a durable timer.
	Windows []Window `json:"windows,omitempty"`
	// Schedule is set by a Temporal Schedule's action (starter schedule create): the name of the
	// schedule. The rollout then takes its Name from its workflow ID, which Temporal derives from
	// the schedule's workflow ID and the run's scheduled time: rollout/<schedule>-<time>.
	Schedule string `json:"schedule,omitempty"`

	// Approval gates, the success condition per wave and the end time (policies 2 and 6 of issue
	// 18; rollout_gates.go). ApproveAfterWave (1-based) or ApproveEachWave make the rollout wait in
	// RolloutAwaitingApproval after that wave (after every wave but the last) until UpdateApprove;
	// PauseBelow ("95%") pauses it when a finished wave's success share falls below; EndAt (or
	// EndAfter the rollout's start) ends it as RolloutEnded, EndBehavior EndStop or EndCancel.
	ApproveAfterWave int           `json:"approveAfterWave,omitempty"`
	ApproveEachWave  bool          `json:"approveEachWave,omitempty"`
	PauseBelow       string        `json:"pauseBelow,omitempty"`
	EndAt            time.Time     `json:"endAt,omitzero"`
	EndAfter         time.Duration `json:"endAfter,omitempty"`
	EndBehavior      string        `json:"endBehavior,omitempty"`
	// Retries by failure type (rollout_retries.go): Retries starts a device again, as a new
	// request, when its attempt failed with a type the policy names, after a backoff that doubles
	// each time; MaxTimeouts and MaxOffline are thresholds like MaxFailures (a count or a
	// percentage) for the devices whose last attempt timed out or found them offline.
	Retries     *RetryPolicy `json:"retries,omitempty"`
	MaxTimeouts string       `json:"maxTimeouts,omitempty"`
	MaxOffline  string       `json:"maxOffline,omitempty"`
	// Rollback (policy 1): when the rollout aborts on its failure threshold, the devices it updated
	// (and, with Include, those that failed) get this firmware, under the rollout's waves, limits
	// and windows; see rollout_rollback.go. Firmware rollouts only.
	Rollback *RolloutRollback `json:"rollback,omitempty"`
	// Start rate (rollout_rate.go): MaxPerMinute bounds the device starts a minute of the whole
	// rollout (0: no bound), on top of the hub budget; Ramp raises it as devices succeed.
	MaxPerMinute int   `json:"maxPerMinute,omitempty"`
	Ramp         *Ramp `json:"ramp,omitempty"`
	// Continuous targeting (policy 3): a firmware rollout by query that keeps looking for devices
	// that come to match later and updates them too, until Continuous.Until or a cancel; nil for a
	// rollout that ends once its targets are done. A look is one query (a page, more for many
	// devices found) narrowed by the hub to the twins whose reported properties changed since the
	// last look less LookOverlap, whose firmwareVersion differs, and that no update touched since
	// the rollout began; the read before each call skips a device the query's lag let through, so
	// none is updated twice. See rollout_continuous.go.
	Continuous *RolloutContinuous `json:"continuous,omitempty"`

	// State is the rollout's state carried over continue-as-new; nil when starting.
	State *RolloutState `json:"state,omitempty"`
}

// Window is a maintenance window, either recurring or absolute.
//
// Recurring: Cron is a five-field cron expression (minute hour day-of-month month day-of-week)
// giving the times the window opens, in TimeZone (an IANA name, default UTC); it stays open for
// Duration, elapsed time. Where the clocks change, a start the clocks jump over opens the window
// when they land (0 2 * * SUN in Europe/Warsaw opens at 03:00 on the last Sunday of March), and a
// start they pass twice opens it once, at the first. Absolute: the window is open from Start
// (inclusive) to End (exclusive). Overlapping and adjoining openings of windows merge into one.
type Window struct {
	Cron     string        `json:"cron,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	TimeZone string        `json:"timeZone,omitempty"`

	Start time.Time `json:"start,omitzero"`
	End   time.Time `json:"end,omitzero"`
}

// RolloutFirmware is the firmware update a rollout applies to each device: FirmwareInput without the
// device and update IDs.
type RolloutFirmware struct {
	PackageURI   string        `json:"packageUri"`
	Version      string        `json:"version"`
	StageTimeout time.Duration `json:"stageTimeout,omitempty"`
	Deadline     time.Duration `json:"deadline,omitempty"`
	Reboot       bool          `json:"reboot,omitempty"`
}

// RolloutReboot tunes a reboot rollout's reboots: RebootInput without the device and request IDs.
type RolloutReboot struct {
	MethodTimeout time.Duration `json:"methodTimeout,omitempty"`
	Deadline      time.Duration `json:"deadline,omitempty"`
}

// RolloutState is what a rollout carries into its next run when it continues as new.
type RolloutState struct {
	// EndedShards names the shards that ended outside the rollout (terminated in the Temporal UI),
	// whose devices in flight it counted as failed (shard_ends.go).
	EndedShards []string `json:"endedShards,omitempty"`
	// Rows are the target devices in device-ID order with their results so far. Between runs they
	// travel as PackedRows instead: gzip-compressed JSON, since 20,000 rows of JSON (about 200
	// bytes each) would pass Temporal's 2 MB payload limit, and compress about tenfold.
	Rows       []DeviceRow `json:"rows,omitempty"`
	PackedRows []byte      `json:"packedRows,omitempty"`
	// WaveSizes are the planned sizes of the waves; Wave is the current one (0-based). A retry of
	// failed devices is one more wave.
	WaveSizes []int `json:"waveSizes"`
	Wave      int   `json:"wave"`
	// Retrying is set once failed devices were queued again.
	Retrying bool `json:"retrying,omitempty"`
	// Paused and PauseReason carry a pause over.
	Paused      bool   `json:"paused,omitempty"`
	PauseReason string `json:"pauseReason,omitempty"`
	// Started is the first run's start; PausedFor sums the time spent paused, WaitedFor the time
	// spent waiting for a maintenance window (not paused). A run never continues as new while
	// waiting, so no wait is in force then.
	Started   time.Time     `json:"started"`
	PausedFor time.Duration `json:"pausedFor,omitempty"`
	WaitedFor time.Duration `json:"waitedFor,omitempty"`
	// PausedSince is when the pause in force began.
	PausedSince time.Time `json:"pausedSince,omitzero"`
	// Runs counts the runs so far, this one included.
	Runs int `json:"runs"`
	// HubCalls sums the hub calls of the finished devices and the target resolution.
	HubCalls int `json:"hubCalls"`

	// Sharded is set for a rollout that runs its devices in RolloutShard workflows (shardsChange);
	// PackedFleet then carries its fleet state, gzip-compressed JSON, instead of Rows.
	Sharded     bool   `json:"sharded,omitempty"`
	PackedFleet []byte `json:"packedFleet,omitempty"`

	// Approval gates and the success condition (rollout_gates.go): the approvals given; the wave
	// (1-based) whose approval is awaited, 0 when none; when the wait in force began (zero while
	// paused) and the time awaited before it; the last wave whose success share was judged.
	Approvals     []Approval    `json:"approvals,omitempty"`
	AwaitingWave  int           `json:"awaitingWave,omitempty"`
	AwaitingSince time.Time     `json:"awaitingSince,omitzero"`
	AwaitedFor    time.Duration `json:"awaitedFor,omitempty"`
	JudgedWave    int           `json:"judgedWave,omitempty"`
	// Rollback (policy 1) is the rollback's state, once one began (or a shard closed with devices
	// to roll back).
	Rollback *RollbackState `json:"rollback,omitempty"`
	// Start rate (rollout_rate.go): the start bucket's tokens at StartTokensAt, workflow time.
	StartTokens   float64   `json:"startTokens,omitempty"`
	StartTokensAt time.Time `json:"startTokensAt,omitzero"`
	// Continuous targeting (policy 3): the looks for devices that came to match later.
	Looks *LookState `json:"looks,omitempty"`
}

// DeviceRow is one target device of a rollout and its result: a line of the report.
type DeviceRow struct {
	DeviceID string `json:"deviceId"`
	// Wave is the wave it belongs to (0-based); -1 for a device skipped at resolution.
	Wave int `json:"wave"`
	// Result is one of the Device* constants.
	Result string `json:"result"`
	// Attempts is how often the rollout ran the device (2 after a retry).
	Attempts int `json:"attempts,omitempty"`
	// FromVersion is the firmware version it reported before the update, when known.
	FromVersion string `json:"fromVersion,omitempty"`
	// Stages are the firmware stages seen (downloading, applying, completed), also of a failure.
	Stages []string `json:"stages,omitempty"`
	// Started and Duration: when the device workflow started and how long it ran.
	Started  time.Time     `json:"started,omitzero"`
	Duration time.Duration `json:"duration,omitempty"`
	// HubCalls is the IoT Hub calls its device workflow made.
	HubCalls int `json:"hubCalls,omitempty"`
	// Error and ErrorType say why it failed (ErrorType: the activities' or workflows' Err* type).
	Error     string `json:"error,omitempty"`
	ErrorType string `json:"errorType,omitempty"`
	// Note explains a skip (already on the target version, done by an earlier run) or an update
	// whose version the device does not report (NoteVersionNotReported).
	Note string `json:"note,omitempty"`

	// Retries by failure type (rollout_retries.go): FailureType classifies a failed attempt
	// (timed-out, offline, failed), of a failed device or one waiting to retry; RetriedOn lists the
	// failure type of every attempt retried, in order; RetryAt is when a device waiting to retry
	// (DeviceRetrying) may start again.
	FailureType string    `json:"failureType,omitempty"`
	RetriedOn   []string  `json:"retriedOn,omitempty"`
	RetryAt     time.Time `json:"retryAt,omitzero"`
	// Rollback (policy 1) is the device's rollback, once the rollout's rollback reached it.
	Rollback *RollbackRow `json:"rollback,omitempty"`
	// Continuous targeting (policy 3): Look is the look (1-based) of a continuous rollout that
	// found the device; 0 for a device of the targets resolved at the start.
	Look int `json:"look,omitempty"`
}

// NoteVersionNotReported is the note of a device that completed the update but reports no
// firmwareVersion (devices built from the tutorial): updated, with no version to confirm it by.
const NoteVersionNotReported = "completed, version not reported by the device"

// Finished reports whether the row's result is final for the current attempt.
func (r DeviceRow) Finished() bool {
	switch r.Result {
	case DevicePending, DeviceRunning, DeviceRetrying:
		return false
	}
	return true
}

// RolloutProgress is what QueryProgress answers, and the result of a finished Rollout.
type RolloutProgress struct {
	Name      string `json:"name"`
	Operation string `json:"operation"`
	Version   string `json:"version,omitempty"`
	// State is one of the Rollout* state constants; Reason explains a pause, an abort, a
	// cancellation or a failure.
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`

	// Total is the number of target devices: Succeeded + Skipped + Failed + Cancelled + NotStarted
	// + Running + Pending.
	Total      int `json:"total"`
	Succeeded  int `json:"succeeded"`
	Skipped    int `json:"skipped"`
	Failed     int `json:"failed"`
	Cancelled  int `json:"cancelled"`
	NotStarted int `json:"notStarted"`
	Running    int `json:"running"`
	Pending    int `json:"pending"`

	// Wave is the current wave (1-based for people) of Waves; WaveSize, WaveDone and WaveFailed
	// describe it.
	Wave       int `json:"wave"`
	Waves      int `json:"waves"`
	WaveSize   int `json:"waveSize"`
	WaveDone   int `json:"waveDone"`
	WaveFailed int `json:"waveFailed"`
	// Retrying is set while failed devices run a second time.
	Retrying bool `json:"retrying,omitempty"`

	// MaxFailures and MaxConcurrent and Rate repeat the limits in force.
	MaxFailures   string  `json:"maxFailures"`
	MaxConcurrent int     `json:"maxConcurrent"`
	Rate          float64 `json:"rate,omitempty"`

	// Started is the rollout's start and Updated the time of this snapshot (the last change), by
	// workflow time; Finished is set once it ended. Active is the time spent neither paused nor
	// waiting for a maintenance window up to Updated (or Finished): devices per minute are
	// (Succeeded+Skipped+Failed) / Active, the speed inside windows, so that days between windows
	// do not drown it, and the time left at that speed is time inside windows.
	Started  time.Time     `json:"started"`
	Updated  time.Time     `json:"updated"`
	Finished time.Time     `json:"finished,omitzero"`
	Active   time.Duration `json:"active"`
	// Waited is the time spent waiting for a maintenance window (not paused) up to Updated.
	Waited time.Duration `json:"waited,omitempty"`

	// WindowOpens is when the next maintenance window opens, while the rollout is waiting;
	// WindowCloses when the open one closes, while it is running in a window with devices left to
	// start. Both are zero for a rollout without windows.
	WindowOpens  time.Time `json:"windowOpens,omitzero"`
	WindowCloses time.Time `json:"windowCloses,omitzero"`

	// HubCalls sums the hub calls of the finished devices and the target resolution.
	HubCalls int `json:"hubCalls"`
	// Runs is the number of workflow runs (continue-as-new) so far.
	Runs int `json:"runs"`

	// Approval gates, success condition and end time (rollout_gates.go). ApproveAfterWave is "2" or
	// "each" (empty: no gate); Approvals the approvals given; AwaitingSince when the wait for the
	// one in force began, and Awaited the time spent awaiting approval (not active, as Waited);
	// PauseBelow the success share a finished wave must reach ("95%"); EndAt and EndBehavior the
	// end time in force and what it does.
	ApproveAfterWave string        `json:"approveAfterWave,omitempty"`
	Approvals        []Approval    `json:"approvals,omitempty"`
	AwaitingSince    time.Time     `json:"awaitingSince,omitzero"`
	Awaited          time.Duration `json:"awaited,omitempty"`
	PauseBelow       string        `json:"pauseBelow,omitempty"`
	EndAt            time.Time     `json:"endAt,omitzero"`
	EndBehavior      string        `json:"endBehavior,omitempty"`
	// Retries by failure type (rollout_retries.go): the failed devices whose last attempt timed
	// out or found them offline (among Failed; the rest are of type failed), the devices waiting
	// out a backoff before their next attempt (among Pending), the retry attempts started, and the
	// policy and thresholds by type in force.
	TimedOut       int          `json:"timedOut,omitempty"`
	Offline        int          `json:"offline,omitempty"`
	AwaitingRetry  int          `json:"awaitingRetry,omitempty"`
	RetriesStarted int          `json:"retriesStarted,omitempty"`
	RetryPolicy    *RetryPolicy `json:"retryPolicy,omitempty"`
	MaxTimeouts    string       `json:"maxTimeouts,omitempty"`
	MaxOffline     string       `json:"maxOffline,omitempty"`
	// Rollback (policy 1) is the rollback's progress, for a rollout with a rollback; its hub calls
	// are in HubCalls too.
	Rollback *RollbackProgress `json:"rollback,omitempty"`
	// Start rate (rollout_rate.go): StartRate is the device starts a minute allowed now (0: no
	// bound); with a ramp, RampAt is the count of succeeded devices at which it next rises, to
	// NextStartRate (both 0 once it rises no more). MaxPerMinute and Ramp repeat the input.
	StartRate     float64 `json:"startRate,omitempty"`
	RampAt        int     `json:"rampAt,omitempty"`
	NextStartRate float64 `json:"nextStartRate,omitempty"`
	MaxPerMinute  int     `json:"maxPerMinute,omitempty"`
	Ramp          *Ramp   `json:"ramp,omitempty"`
	// Continuous targeting (policy 3): the looks of a continuous rollout; nil for another.
	Continuous *ContinuousProgress `json:"continuous,omitempty"`
}

// Done reports whether the progress is final.
func (p RolloutProgress) Done() bool {
	switch p.State {
	case RolloutCompleted, RolloutAborted, RolloutCancelled, RolloutFailed, RolloutEnded:
		return true
	case RolloutRolledBack: // rollback (policy 1)
		return true
	}
	return false
}

// ControlRequest is the argument of the pause, resume and cancel updates.
type ControlRequest struct {
	// Reason is shown in the progress and the report; optional.
	Reason string `json:"reason,omitempty"`
}

// ReportRequest asks QueryReport for a page of rows.
type ReportRequest struct {
	// Offset is the first row, in device-ID order; Limit the most rows (default and maximum
	// MaxReportPage).
	Offset int `json:"offset,omitempty"`
	Limit  int `json:"limit,omitempty"`
}

// MaxReportPage bounds a page of the report, keeping a query answer far below gRPC's 4 MB.
const MaxReportPage = 2000

// ReportPage is a page of a rollout's report.
type ReportPage struct {
	Rows []DeviceRow `json:"rows"`
	// Total is the number of rows; Next is the offset of the next page, or 0 after the last.
	Total int `json:"total"`
	Next  int `json:"next,omitempty"`
}

// Threshold is a parsed failure threshold: Count devices, or Percent of them.
type Threshold struct {
	Count   int
	Percent float64
	IsPct   bool
}

// ParseThreshold parses "5" (devices) or "5%" (of the devices).
func ParseThreshold(s string) (Threshold, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(v) || v < 0 || v > 100 {
			return Threshold{}, fmt.Errorf("failure threshold %q: a percentage must be a number from 0%% to 100%%, e.g. 5%%", s)
		}
		return Threshold{Percent: v, IsPct: true}, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		return Threshold{}, fmt.Errorf("failure threshold %q: give a device count (e.g. 5) or a percentage (e.g. 5%%)", s)
	}
	return Threshold{Count: v}, nil
}

// Allowed is how many failures the threshold allows among n devices.
func (t Threshold) Allowed(n int) int {
	if !t.IsPct {
		return t.Count
	}
	// A small epsilon keeps 5% of 100 at 5 despite floating point.
	return int(math.Floor(t.Percent*float64(n)/100 + 1e-9))
}

// String formats the threshold as ParseThreshold reads it.
func (t Threshold) String() string {
	if t.IsPct {
		return strconv.FormatFloat(t.Percent, 'f', -1, 64) + "%"
	}
	return strconv.Itoa(t.Count)
}

// rolloutNamePattern keeps names usable in workflow IDs (no '/') and as search attribute values.
var rolloutNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9\-._:]*$`)

// CheckRolloutName reports what is wrong with a rollout's name (RolloutInput.Name), or nil.
func CheckRolloutName(name string) error {
	switch {
	case name == "":
		return errors.New("name is required, e.g. fw-2.0")
	case len(name) > MaxNameLength || !rolloutNamePattern.MatchString(name):
		return fmt.Errorf("name %q must be up to %d letters, digits and -._: starting with a letter or digit", name, MaxNameLength)
	}
	return nil
}

// CheckScheduleName reports what is wrong with a schedule's name (RolloutInput.Schedule), or nil.
func CheckScheduleName(name string) error {
	if len(name) > MaxScheduleNameLength || !rolloutNamePattern.MatchString(name) {
		return fmt.Errorf("schedule %q must be up to %d letters, digits and -._: starting with a letter or digit", name, MaxScheduleNameLength)
	}
	return nil
}

// Validate reports what is wrong with the input, all problems at once, or nil.
func (in RolloutInput) Validate() error {
	var problems []string
	if err := CheckRolloutName(in.Name); err != nil {
		problems = append(problems, err.Error())
	}
	switch in.Operation {
	case OperationFirmware:
		if in.Firmware == nil {
			problems = append(problems, "a firmware rollout needs the firmware: package URI and version")
		} else {
			problems = append(problems, CheckFirmwarePackage(in.Firmware.PackageURI, in.Firmware.Version)...)
			problems = append(problems, CheckFirmwareTiming(in.Firmware.StageTimeout, in.Firmware.Deadline)...)
		}
		if in.Reboot != nil {
			problems = append(problems, "reboot options belong to a reboot rollout; a firmware rollout reboots with firmware.reboot")
		}
	case OperationReboot:
		if in.Firmware != nil {
			problems = append(problems, "a reboot rollout takes no firmware")
		}
		if in.Reboot != nil {
			problems = append(problems, CheckRebootTiming(in.Reboot.MethodTimeout, in.Reboot.Deadline)...)
		}
	default:
		problems = append(problems, fmt.Sprintf("operation %q is not %q or %q", in.Operation, OperationFirmware, OperationReboot))
	}
	if in.Reconcile && in.Operation != OperationFirmware {
		problems = append(problems, "reconcile applies to a firmware rollout: it targets the devices whose firmwareVersion differs from the target")
	}
	if in.Schedule != "" {
		if err := CheckScheduleName(in.Schedule); err != nil {
			problems = append(problems, err.Error())
		}
	}
	switch {
	case in.State != nil:
		// A continued run: the targets were resolved and checked by the first.
	case in.Reconcile && len(in.Devices) > 0:
		problems = append(problems, "a reconcile rollout selects its targets by query (default: every device), not by device IDs")
	case in.Reconcile && in.Query == "":
		// Every device whose version differs.
	case in.Query != "" && len(in.Devices) > 0:
		problems = append(problems, "give the targets as a query or as device IDs, not both")
	case in.Query == "" && len(in.Devices) == 0:
		problems = append(problems, "no targets: give a device query (SELECT * FROM devices WHERE tags.ring = 'beta') or device IDs")
	case in.Query != "" && !isDeviceQuery(in.Query):
		problems = append(problems, "the target query must select whole twins: SELECT * FROM devices [WHERE …], e.g. SELECT * FROM devices WHERE tags.ring = 'beta'")
	case CheckDeviceList(in.Devices) != nil:
		problems = append(problems, CheckDeviceList(in.Devices).Error())
	default:
		for _, id := range in.Devices {
			if err := deviceid.Check(id); err != nil {
				problems = append(problems, err.Error())
				break
			}
		}
	}
	if in.Canary < 0 {
		problems = append(problems, "canary must not be negative")
	}
	if in.Growth != 0 && (in.Growth < 1 || in.Growth > 100 || math.IsNaN(in.Growth)) {
		problems = append(problems, fmt.Sprintf("growth %v must lie between 1 (waves of the canary's size) and 100", in.Growth))
	}
	if in.MaxConcurrent < 0 || in.MaxConcurrent > MaxConcurrentLimit {
		problems = append(problems, fmt.Sprintf("max concurrent %d must lie between 1 and %d", in.MaxConcurrent, MaxConcurrentLimit))
	}
	if in.Rate < 0 || math.IsNaN(in.Rate) || math.IsInf(in.Rate, 0) {
		problems = append(problems, "rate must be a positive number of hub calls per second, or 0 for no limit")
	}
	if in.MaxFailures != "" {
		if _, err := ParseThreshold(in.MaxFailures); err != nil {
			problems = append(problems, err.Error())
		}
	}
	problems = append(problems, checkWindows(in.Windows)...)
	problems = append(problems, in.checkGates()...)
	problems = append(problems, in.checkRollback()...) // rollback (policy 1)
	problems = append(problems, in.checkStartRate()...)
	if in.MinDevices < 0 || in.DevicesPerRun < 0 {
		problems = append(problems, "min devices and devices per run must not be negative")
	}
	problems = append(problems, in.retryProblems()...)
	problems = append(problems, in.continuousProblems()...)
	if len(problems) > 0 {
		return fmt.Errorf("invalid rollout input: %s", strings.Join(problems, "; "))
	}
	return nil
}

// CheckDeviceList reports a list of target device IDs too large for a rollout's input, or nil.
func CheckDeviceList(ids []string) error {
	size := 2
	for _, id := range ids {
		size += len(id) + 3 // quotes and comma
	}
	if size > MaxDeviceListBytes {
		return fmt.Errorf("%d device IDs (%d KB) are more than a rollout takes as a list (%d KB): tag the devices and target them by query, e.g. SELECT * FROM devices WHERE tags.ring = 'beta', which has no limit",
			len(ids), size/1024, MaxDeviceListBytes/1024)
	}
	return nil
}

// allDevices is the target query of a reconcile rollout given no query.
const allDevices = "SELECT * FROM devices"

// isDeviceQuery reports whether q has the shape of a target query, the one QueryDevices runs.
func isDeviceQuery(q string) bool {
	_, ok := activities.DeviceQueryCondition(q)
	return ok
}

// TargetQuery is the device query the rollout resolves its targets with, or "" when it targets
// device IDs. A reconcile rollout adds to the query (default: every device) the condition that the
// device's reported firmwareVersion differs from the target or is missing.
func (in RolloutInput) TargetQuery() string {
	if !in.Reconcile || in.Firmware == nil {
		return in.Query
	}
	drifted := "(NOT IS_DEFINED(properties.reported." + protocol.PropFirmwareVersion + ") OR properties.reported." +
		protocol.PropFirmwareVersion + " != " + quoteQueryString(in.Firmware.Version) + ")"
	if cond, _ := activities.DeviceQueryCondition(in.Query); cond != "" {
		return allDevices + " WHERE (" + cond + ") AND " + drifted
	}
	return allDevices + " WHERE " + drifted
}

// quoteQueryString writes s as a single-quoted IoT Hub query string literal.
func quoteQueryString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// ScheduledRolloutName is the name of the rollout a schedule's run starts with workflow ID
// workflowID: Temporal starts it as the schedule action's workflow ID (RolloutWorkflowID of the
// schedule's name) followed by "-" and the scheduled time, so the name is <schedule>-<time>.
func ScheduledRolloutName(workflowID string) string {
	return strings.TrimPrefix(workflowID, RolloutWorkflowID(""))
}

// MaxScheduleNameLength bounds a schedule's name: the rollouts it starts are named
// <schedule>-<RFC 3339 time>, 21 characters longer, within MaxNameLength.
const MaxScheduleNameLength = MaxNameLength - len("-2006-01-02T15:04:05Z")

// withDefaults fills zero fields.
func (in RolloutInput) withDefaults() RolloutInput {
	if in.Canary == 0 {
		in.Canary = DefaultCanary
	}
	if in.Growth == 0 {
		in.Growth = DefaultGrowth
	}
	if in.MaxConcurrent == 0 {
		in.MaxConcurrent = DefaultMaxConcurrent
	}
	if in.MaxFailures == "" {
		in.MaxFailures = DefaultMaxFailures
	}
	if in.MinDevices == 0 {
		in.MinDevices = DefaultMinDevices
	}
	if in.DevicesPerRun == 0 {
		in.DevicesPerRun = DefaultDevicesPerRun
	}
	return in
}

// PlanWaves is how a rollout splits n devices into waves: a canary wave of canary devices (at
// least one), then waves growing by the factor growth, the last one taking the rest.
func PlanWaves(n, canary int, growth float64) []int {
	var sizes []int
	size := float64(max(canary, 1))
	for left := n; left > 0; {
		s := min(int(math.Ceil(size-1e-9)), left)
		sizes = append(sizes, s)
		left -= s
		size *= growth
	}
	return sizes
}
