package device

// The tutorial contract: a Device with Config.Contract ContractTutorial
// plays the remote-reboot and firmware-update tutorials' device apps
// exactly, as do the devices in the field that were built from them. dmflow
// has to cope with such devices: they know no request or update ID, so a
// repeated call reboots or updates again.
//
// rebootDevice: the payload is ignored (no requestId, no deduplication).
// The device sleeps RebootDuration while staying connected, reports
// {"rebootTime": <now>} (nothing else, no lastRebootRequestId) and only
// then answers 200 {"Response": "This is the response from the device"}:
// the call lasts as long as the reboot. Every call reboots.
//
// firmwareUpdate: at start, when it first connected, the device reports
// {"firmwareStatus": "standBy", "logTime": <now>}. A call whose payload
// holds a fwPackageUri is answered 200 at once; version and updateId are
// ignored. Then, in the background, StageDuration apart:
//
//	{"firmwareStatus": "downloading", "downloadComplete": <now>}
//	{"firmwareStatus": "applying", "startedApplyingImage": <now>}
//	{"firmwareStatus": "completed", "lastFirmwareUpdate": <now>}
//
// No firmwareVersion, no firmwareUpdateId, no error state. Every call
// starts an update, also while another runs: like the tutorial's threads,
// both report their stages. The answer is, by Config.Answer, the object
// {"Response": "Firmware update started"} (AnswerObject) or a JSON string
// holding the text { "Response": "Firmware update started" } (AnswerString),
// as some device apps send it.
//
// <now> is Python's str(datetime.datetime.now()): the local time of the
// process (time.Local, so TZ), see PythonTime.
//
// Two choices beyond the tutorials, to keep a simulator useful in tests: a
// firmwareUpdate payload without a fwPackageUri string is answered 400
// rather than crashing the handler (the tutorial would fail on the missing
// key and leave the call to time out), and methods the device does not know
// are answered 404 at once, as on the dmflow contract. The device reads no
// twin at start: it has nothing to restore.

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"

	"github.com/dmflow/dmflow/internal/protocol"
)

// Device contracts; see Config.Contract.
const (
	// ContractDmflow serves the tutorials' methods with what dmflow adds:
	// request and update IDs that make a repeat harmless, firmware
	// versions, error states, RFC 3339 times in UTC.
	ContractDmflow = "dmflow"
	// ContractTutorial plays the tutorials' device apps exactly (see
	// tutorial.go).
	ContractTutorial = "tutorial"
	// Contracts lists the accepted Contract values, for messages.
	Contracts = ContractDmflow + "|" + ContractTutorial
)

// Forms of a tutorial device's firmwareUpdate answer; see Config.Answer.
const (
	// AnswerObject answers {"Response": "Firmware update started"}.
	AnswerObject = "object"
	// AnswerString answers the JSON string FirmwareStartedText.
	AnswerString = "string"
	// Answers lists the accepted Answer values, for messages.
	Answers = AnswerObject + "|" + AnswerString
)

// FirmwareStartedText is the text a tutorial device with AnswerString
// answers firmwareUpdate with, encoded as a JSON string: the method's
// payload is a string that looks like an object, not an object.
const FirmwareStartedText = `{ "Response": "Firmware update started" }`

// PythonTimeFormat is the layout of Python's str(datetime.datetime.now()),
// the tutorials' timestamps: local time, a space, microseconds, no zone.
const PythonTimeFormat = "2006-01-02 15:04:05.000000"

// PythonTime formats t as Python's str() of a naive local datetime: in
// time.Local with PythonTimeFormat, or without the fraction when the
// microseconds are zero, as Python prints it.
func PythonTime(t time.Time) string {
	t = t.In(time.Local)
	if t.Nanosecond()/int(time.Microsecond) == 0 {
		return t.Format(time.DateTime)
	}
	return t.Format(PythonTimeFormat)
}

// tutorialStages are the firmware stages and the timestamp each reports.
var tutorialStages = []struct{ status, stamp string }{
	{protocol.StatusDownloading, protocol.PropDownloadComplete},
	{protocol.StatusApplying, protocol.PropStartedApplyingImage},
	{protocol.StatusCompleted, protocol.PropLastFirmwareUpdate},
}

func (d *Device) tutorial() bool { return d.cfg.Contract == ContractTutorial }

// tutorialMethods dispatches a tutorial device's direct methods on session
// s. It is registered on the MQTT transport itself (see
// hubconn.NewDeviceClientTransport), so its answers are raw JSON: the client's
// DirectMethodHandler can only answer an object. The updates it starts run
// until run (Run's context) is done.
type tutorialMethods struct {
	d   *Device
	s   *session
	run context.Context
}

// Dispatch answers a call; its error is always nil, since the transport
// drops a call it gets an error for without answering.
func (m tutorialMethods) Dispatch(method string, b []byte) (int, []byte, error) {
	d := m.d
	switch {
	case d.cfg.Unresponsive:
		d.methodCalls.Add(1)
		d.log.Info("method call ignored: the device is unresponsive", "method", method)
		// Returns when the session ends; there is no connection left to
		// answer on.
		<-m.s.ctx.Done()
		return http.StatusServiceUnavailable, errorBody("the device went offline"), nil
	case method == MethodReboot:
		d.methodCalls.Add(1)
		code, body := d.tutorialReboot(m.s)
		return code, body, nil
	case method == MethodFirmwareUpdate:
		d.methodCalls.Add(1)
		code, body := d.tutorialFirmware(m.run, b)
		return code, body, nil
	}
	code, body := d.unknownMethod(method)
	return code, body, nil
}

func errorBody(msg string) []byte {
	b, _ := json.Marshal(map[string]string{"error": msg})
	return b
}

func responseBody(msg string) []byte {
	b, _ := json.Marshal(map[string]string{FieldResponse: msg})
	return b
}

// tutorialReboot reboots (sleeps, connected), reports rebootTime and then
// answers.
func (d *Device) tutorialReboot(s *session) (int, []byte) {
	log := d.log.With("method", MethodReboot)
	log.Info("rebooting", "duration", d.cfg.RebootDuration.String())
	if !sleep(s.ctx, d.cfg.RebootDuration) {
		return http.StatusServiceUnavailable, errorBody("reboot interrupted: the device is shutting down")
	}
	d.reboots.Add(1)
	at := PythonTime(d.cfg.Now())
	err := s.call(twinTimeout, func(ctx context.Context) error {
		_, err := s.client.UpdateTwinState(ctx, iotdevice.TwinState{PropRebootTime: at})
		return err
	})
	if err != nil {
		log.Error("reboot done but not reported", "error", err)
		return http.StatusInternalServerError, errorBody("rebooted but could not report rebootTime: " + err.Error())
	}
	log.Info("reported rebootTime", PropRebootTime, at)
	return http.StatusOK, responseBody(TutorialResponse)
}

// tutorialFirmware starts an update in the background and answers at once.
func (d *Device) tutorialFirmware(run context.Context, payload []byte) (int, []byte) {
	log := d.log.With("method", MethodFirmwareUpdate)
	var p map[string]any
	_ = json.Unmarshal(payload, &p)
	uri, _ := p[protocol.FieldPackageURI].(string)
	if uri == "" {
		log.Warn("firmware update refused: no fwPackageUri")
		return http.StatusBadRequest, errorBody(protocol.FieldPackageURI + " is missing: give the firmware image's URL")
	}
	d.mu.Lock()
	if d.stopped || run.Err() != nil {
		d.mu.Unlock()
		return http.StatusServiceUnavailable, errorBody("the device is shutting down")
	}
	u := &fwUpdate{status: protocol.StatusDownloading}
	d.fw.last = u
	d.fw.running++
	// Under d.mu, so that Add happens before Run's Wait (see stop).
	d.updates.Add(1)
	d.mu.Unlock()

	pkg := "(not a URL)"
	if pu, err := url.Parse(uri); err == nil {
		pkg = packageForLog(pu)
	}
	// The device ignores an updateId, as the tutorial's does; the log names the one it was sent,
	// if any, so that a test can tell which call each start belongs to.
	if id, _ := p[protocol.FieldUpdateID].(string); id != "" {
		log = log.With("update_id", id)
	}
	log.Info("firmware update started", "package", pkg, "stage_duration", d.cfg.StageDuration.String())
	go d.runTutorialUpdate(run, u, log)
	if d.cfg.Answer == AnswerString {
		b, _ := json.Marshal(FirmwareStartedText)
		return http.StatusOK, b
	}
	return http.StatusOK, responseBody(FirmwareStartedResponse)
}

// runTutorialUpdate reports the stages of u, StageDuration apart, until it
// completed or ctx ends.
func (d *Device) runTutorialUpdate(ctx context.Context, u *fwUpdate, log *slog.Logger) {
	defer d.updates.Done()
	defer func() {
		d.mu.Lock()
		d.fw.running--
		d.mu.Unlock()
	}()
	for _, step := range tutorialStages {
		if !sleep(ctx, d.cfg.StageDuration) {
			log.Info("firmware update interrupted: the device stopped", "status", step.status)
			return
		}
		patch := iotdevice.TwinState{
			protocol.PropFirmwareStatus: step.status,
			step.stamp:                  PythonTime(d.cfg.Now()),
		}
		if err := d.reportPatch(ctx, log, patch); err != nil {
			log.Info("firmware update interrupted: the device stopped", "status", step.status)
			return
		}
		d.mu.Lock()
		u.status = step.status
		d.mu.Unlock()
		if step.status == protocol.StatusCompleted {
			d.applies.Add(1)
			log.Info("firmware update completed")
		} else {
			log.Info("firmware update stage reported", "status", step.status)
		}
	}
}

// bootTutorial reports standBy once per process, on the first connection
// (or the first after a failed report). It reads no twin. An update that
// already runs keeps its status.
func (d *Device) bootTutorial(s *session) {
	d.mu.Lock()
	if d.booted || d.fw.last != nil {
		d.booted = true
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	patch := iotdevice.TwinState{
		protocol.PropFirmwareStatus: protocol.StatusStandBy,
		protocol.PropLogTime:        PythonTime(d.cfg.Now()),
	}
	if err := s.reportStart(d, patch); err != nil {
		return
	}
	d.mu.Lock()
	d.booted = true
	d.mu.Unlock()
}
