// Package protocol is the device-management contract between dmflow's
// workflows and devices: the direct methods, their payload fields, and the
// reported twin properties, as Microsoft's IoT Hub device-management
// tutorials define them (remote reboot, firmware update) plus the fields
// dmflow adds so that a repeated or retried request is recognised.
//
// Both sides import it: the workflows and activities that drive a device,
// and the simulated device (internal/sim/device) that plays one.
package protocol

// Remote reboot.
const (
	// MethodReboot is the direct method that reboots a device. The tutorial's
	// device answers after rebooting; real devices often answer first.
	MethodReboot = "rebootDevice"
	// PropRebootTime is the reported time (RFC 3339) of the last reboot.
	PropRebootTime = "rebootTime"
	// PropLastRebootRequestID is the requestId of the last reboot a device
	// performed, reported with rebootTime so a repeat is recognised even
	// after the device restarted.
	PropLastRebootRequestID = "lastRebootRequestId"
	// FieldRequestID is the method-payload field naming a reboot request.
	FieldRequestID = "requestId"
)

// Firmware update.
const (
	// MethodFirmwareUpdate starts a firmware update; the device answers at
	// once and reports its progress in PropFirmwareStatus.
	MethodFirmwareUpdate = "firmwareUpdate"

	// Method-payload fields of MethodFirmwareUpdate.
	FieldPackageURI = "fwPackageUri" // required: where the image is
	FieldVersion    = "version"      // the version the image holds
	FieldUpdateID   = "updateId"     // names the update; a repeat is not applied again

	// Reported properties.
	PropFirmwareStatus   = "firmwareStatus"   // one of the Status* values
	PropFirmwareVersion  = "firmwareVersion"  // the version the device runs
	PropFirmwareUpdateID = "firmwareUpdateId" // the updateId the status belongs to
	PropFirmwareError    = "firmwareError"    // with StatusError: the reason
	PropFirmwareErrStage = "firmwareErrorStage"
	// Timestamps the tutorial's device reports with each status.
	PropLogTime              = "logTime"              // with standBy
	PropDownloadComplete     = "downloadComplete"     // with downloading
	PropStartedApplyingImage = "startedApplyingImage" // with applying
	PropLastFirmwareUpdate   = "lastFirmwareUpdate"   // with completed

	// Values of PropFirmwareStatus, in the order a device goes through them.
	StatusStandBy     = "standBy"
	StatusDownloading = "downloading"
	StatusApplying    = "applying"
	StatusCompleted   = "completed"
	// StatusError ends an update that failed; PropFirmwareError says why and
	// PropFirmwareErrStage in which stage.
	StatusError = "error"
)

// FirmwareStages are the statuses an update goes through after the method
// call, in order.
var FirmwareStages = []string{StatusDownloading, StatusApplying, StatusCompleted}
