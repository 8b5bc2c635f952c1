package device

// The firmware-update tutorial's device, and what dmflow adds to it: the
// dmflow contract. A device on the tutorial contract does only what the
// tutorial's does; see tutorial.go.
//
// On firmwareUpdate with {"fwPackageUri", "version", "updateId"} the device
// answers 200 {"Response": "Firmware update started"} at once and then, in
// the background, reports its stages StageDuration apart, each with the
// tutorial's timestamp and the update's firmwareUpdateId:
//
//	+1 stage  {"firmwareStatus": "downloading", "downloadComplete": <now>}
//	+2 stages {"firmwareStatus": "applying", "startedApplyingImage": <now>}
//	+3 stages {"firmwareStatus": "completed", "lastFirmwareUpdate": <now>, "firmwareVersion": <version>}
//
// The downloading report also clears firmwareError and firmwareErrorStage
// of an earlier failed update.
//
// At the start of a process, and after a simulated reboot (either style),
// the device reports {"firmwareStatus": "standBy", "logTime": <now>,
// "firmwareVersion": <running version>}, unless an update is in progress,
// whose status then stays.
//
// Update key: the updateId, or without one the package URI without its
// query (which often holds a SAS token) prefixed with "<version>@". The same
// key again, while the update runs or after it ended, starts nothing and
// answers 200 {"Response": "Firmware update <key> already <status>",
// "firmwareStatus": <status>}; an update that failed stays failed under its
// key, so a new attempt needs a new updateId. Another key while an update
// runs answers 409. Keys are remembered for the life of the Device; the last
// one is in the twin (firmwareUpdateId with firmwareStatus, and
// firmwareError when it failed), from where a restarted process reads it
// back together with the running firmwareVersion.
//
// Injected failure (Config.FailStage): a device failing in downloading
// reports {"firmwareStatus": "error", "firmwareError": <reason>,
// "firmwareErrorStage": "downloading"} instead of downloading (the download
// never completes); one failing in applying reports downloading and
// applying, then the error instead of completed. It keeps its version.
//
// Choices beyond the tutorial, kept simple on purpose:
//   - A reboot (either style) does not interrupt an update: the stages run
//     in the simulator, which lives on; reports due while a realistic device
//     is offline are sent once it is back, and the boot after the reboot
//     keeps the update's status instead of reporting standBy.
//   - A process that stops during an update loses it: the next process
//     finds downloading or applying in the twin and reports the update as
//     failed in that stage ("interrupted: the device restarted while …").
//   - Without a version in the payload the device keeps its version number
//     (it cannot know the image's).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"
	"unicode"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/cenkalti/backoff/v4"

	"github.com/dmflow/dmflow/internal/protocol"
)

// MethodFirmwareUpdate is the firmware-update tutorial's method, as
// internal/protocol defines it.
const MethodFirmwareUpdate = protocol.MethodFirmwareUpdate

const (
	// FirmwareStartedResponse is the tutorial device's answer to
	// firmwareUpdate.
	FirmwareStartedResponse = "Firmware update started"
	// DefaultStageDuration is the tutorial's time between two stages.
	DefaultStageDuration = 15 * time.Second
	// DefaultFirmwareVersion is the factory version of a simulated device.
	DefaultFirmwareVersion = "1.0.0"
	// FailStages lists the accepted Config.FailStage values, for messages.
	FailStages = protocol.StatusDownloading + "|" + protocol.StatusApplying
)

const (
	// maxURILen bounds fwPackageUri; browsers and CDNs stop near 2 KB.
	maxURILen = 2048
	// maxTextLen bounds version and updateId, like IoT Hub's IDs.
	maxTextLen = 128
	// minFlapDowntime keeps a flapping device offline long enough for the
	// hub to notice.
	minFlapDowntime = 100 * time.Millisecond
	// reportMaxInterval caps the backoff of a stage report that fails,
	// e.g. while the device is offline.
	reportMaxInterval = 5 * time.Second
)

// errOffline is a report attempt while the device has no connection.
var errOffline = errors.New("the device is offline")

// FirmwareRequest is a parsed firmwareUpdate payload.
type FirmwareRequest struct {
	// PackageURI is fwPackageUri: an absolute http or https URL.
	PackageURI string
	// Version is the version the image holds; may be empty.
	Version string
	// UpdateID names the update; may be empty.
	UpdateID string
}

// Key is what identifies the update: the update ID, or the version and the
// package URI without its query and fragment.
func (r FirmwareRequest) Key() string {
	if r.UpdateID != "" {
		return r.UpdateID
	}
	u, err := url.Parse(r.PackageURI)
	if err != nil {
		return r.PackageURI
	}
	key := packageForLog(u)
	if r.Version != "" {
		key = r.Version + "@" + key
	}
	return key
}

// ParseFirmwareRequest checks a firmwareUpdate payload. Its errors are the
// reason the device answers 400 with, and never quote the URI, which may
// hold a SAS token.
func ParseFirmwareRequest(payload map[string]any) (FirmwareRequest, error) {
	var r FirmwareRequest
	raw, ok := payload[protocol.FieldPackageURI]
	if !ok || raw == nil {
		return r, fmt.Errorf("%s is missing: give the firmware image's http or https URL", protocol.FieldPackageURI)
	}
	s, ok := raw.(string)
	if !ok {
		return r, fmt.Errorf("%s must be a string holding an http or https URL", protocol.FieldPackageURI)
	}
	if len(s) > maxURILen {
		return r, fmt.Errorf("%s is longer than %d characters", protocol.FieldPackageURI, maxURILen)
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return r, fmt.Errorf("%s is not a URL", protocol.FieldPackageURI)
	case u.Scheme != "http" && u.Scheme != "https":
		return r, fmt.Errorf("%s is not an absolute http or https URL", protocol.FieldPackageURI)
	case u.Opaque != "" || u.Hostname() == "":
		return r, fmt.Errorf("%s has no host", protocol.FieldPackageURI)
	}
	r.PackageURI = s
	for _, f := range []struct {
		name string
		dst  *string
	}{{protocol.FieldVersion, &r.Version}, {protocol.FieldUpdateID, &r.UpdateID}} {
		raw, ok := payload[f.name]
		if !ok || raw == nil {
			continue
		}
		v, ok := raw.(string)
		if !ok {
			return FirmwareRequest{}, fmt.Errorf("%s must be a string", f.name)
		}
		if err := checkText(f.name, v); err != nil {
			return FirmwareRequest{}, err
		}
		*f.dst = v
	}
	return r, nil
}

// checkText accepts an optional short printable value.
func checkText(name, v string) error {
	if len(v) > maxTextLen {
		return fmt.Errorf("%s is longer than %d characters", name, maxTextLen)
	}
	for _, r := range v {
		if !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			return fmt.Errorf("%s holds a character that is not printable", name)
		}
	}
	return nil
}

// packageForLog is a package URL without user info, query and fragment.
func packageForLog(u *url.URL) string {
	c := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	return c.String()
}

// firmwareState is the device's firmware; Device.mu guards it.
type firmwareState struct {
	version string               // the version the device runs
	current *fwUpdate            // the update in progress; nil when idle
	last    *fwUpdate            // the latest update, running or ended
	served  map[string]*fwUpdate // ended updates by key
	// running counts a tutorial device's updates in progress: it runs
	// every call's, also side by side (see tutorial.go).
	running int
	// startReport, when set, replaces the next start (standBy) report: the
	// error of an update a previous process left unfinished.
	startReport iotdevice.TwinState
}

// fwUpdate is one firmware update.
type fwUpdate struct {
	key      string
	version  string // target version; "" keeps the running one
	status   string // a protocol.Status* value
	errMsg   string
	errStage string
}

func (u *fwUpdate) answer() map[string]any {
	out := map[string]any{
		FieldResponse:               fmt.Sprintf("Firmware update %s already %s", u.key, u.status),
		protocol.PropFirmwareStatus: u.status,
	}
	if u.status == protocol.StatusError {
		out[protocol.PropFirmwareError] = u.errMsg
		out[protocol.PropFirmwareErrStage] = u.errStage
	}
	return out
}

func (u *fwUpdate) errorPatch() iotdevice.TwinState {
	return iotdevice.TwinState{
		protocol.PropFirmwareStatus:   protocol.StatusError,
		protocol.PropFirmwareError:    u.errMsg,
		protocol.PropFirmwareErrStage: u.errStage,
		protocol.PropFirmwareUpdateID: u.key,
	}
}

// FirmwareState is a snapshot of a device's firmware.
type FirmwareState struct {
	// Version is the version the device runs.
	Version string
	// Status is the status of the latest update (standBy without one).
	Status string
	// UpdateID is the key of the latest update; empty without one, and
	// always on the tutorial contract, which knows no update IDs.
	UpdateID string
	// Updating is set while an update runs.
	Updating bool
}

// Firmware returns the device's firmware state.
func (d *Device) Firmware() FirmwareState {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := FirmwareState{Version: d.fw.version, Status: protocol.StatusStandBy, Updating: d.fw.current != nil || d.fw.running > 0}
	if u := d.fw.last; u != nil {
		st.Status, st.UpdateID = u.status, u.key
	}
	return st
}

// FirmwareApplies returns how many firmware updates this Device completed,
// repeats included: on the tutorial contract every call runs an update.
func (d *Device) FirmwareApplies() int64 { return d.applies.Load() }

// FirmwareFailures returns how many firmware updates this Device reported
// as failed, interrupted ones included.
func (d *Device) FirmwareFailures() int64 { return d.failures.Load() }

// firmwareHandler serves firmwareUpdate; the updates it starts run until
// runCtx (Run's) is done.
func (d *Device) firmwareHandler(runCtx context.Context) iotdevice.DirectMethodHandler {
	return func(payload map[string]any) (int, map[string]any, error) {
		d.methodCalls.Add(1)
		log := d.log.With("method", MethodFirmwareUpdate)
		req, err := ParseFirmwareRequest(payload)
		if err != nil {
			log.Warn("firmware update refused", "error", err)
			return http.StatusBadRequest, map[string]any{"error": err.Error()}, nil
		}
		key := req.Key()
		log = log.With("update_id", key)

		d.mu.Lock()
		if u := d.fw.served[key]; u != nil || (d.fw.current != nil && d.fw.current.key == key) {
			if u == nil {
				u = d.fw.current
			}
			out := u.answer()
			d.mu.Unlock()
			log.Info("repeated firmware update: not applying again", "status", out[protocol.PropFirmwareStatus])
			return http.StatusOK, out, nil
		}
		if cur := d.fw.current; cur != nil {
			d.mu.Unlock()
			log.Warn("firmware update refused: another one is in progress", "in_progress", cur.key)
			return http.StatusConflict, map[string]any{"error": fmt.Sprintf("firmware update %s in progress", cur.key)}, nil
		}
		if d.stopped || runCtx.Err() != nil {
			d.mu.Unlock()
			return http.StatusServiceUnavailable, map[string]any{"error": "the device is shutting down"}, nil
		}
		u := &fwUpdate{key: key, version: req.Version, status: protocol.StatusDownloading}
		d.fw.current, d.fw.last = u, u
		// Under d.mu, so that Add happens before Run's Wait (see stop).
		d.updates.Add(1)
		d.mu.Unlock()

		pkg, _ := url.Parse(req.PackageURI)
		log.Info("firmware update started", "version", req.Version, "package", packageForLog(pkg),
			"stage_duration", d.cfg.StageDuration.String())
		go d.runUpdate(runCtx, u)
		return http.StatusOK, map[string]any{FieldResponse: FirmwareStartedResponse}, nil
	}
}

// runUpdate reports the stages of u, StageDuration apart, until it
// completes, fails or ctx ends.
func (d *Device) runUpdate(ctx context.Context, u *fwUpdate) {
	defer d.updates.Done()
	log := d.log.With("method", MethodFirmwareUpdate, "update_id", u.key)
	steps := []struct{ status, stamp string }{
		{protocol.StatusDownloading, protocol.PropDownloadComplete},
		{protocol.StatusApplying, protocol.PropStartedApplyingImage},
		{protocol.StatusCompleted, protocol.PropLastFirmwareUpdate},
	}
	for i, step := range steps {
		if !sleep(ctx, d.cfg.StageDuration) {
			log.Info("firmware update interrupted: the device stopped", "status", u.status)
			return
		}
		if d.failsAt(i) {
			d.failUpdate(ctx, log, u)
			return
		}
		patch := iotdevice.TwinState{
			protocol.PropFirmwareStatus:   step.status,
			step.stamp:                    d.cfg.Now().UTC().Format(TimeFormat),
			protocol.PropFirmwareUpdateID: u.key,
		}
		if i == 0 {
			patch[protocol.PropFirmwareError] = nil
			patch[protocol.PropFirmwareErrStage] = nil
		}
		version := ""
		if step.status == protocol.StatusCompleted {
			d.mu.Lock()
			version = d.fw.version
			d.mu.Unlock()
			if u.version != "" {
				version = u.version
			}
			patch[protocol.PropFirmwareVersion] = version
		}
		if err := d.reportPatch(ctx, log, patch); err != nil {
			log.Info("firmware update interrupted: the device stopped", "status", u.status)
			return
		}
		d.mu.Lock()
		u.status = step.status
		if step.status == protocol.StatusCompleted {
			d.fw.version = version
			d.fw.current = nil
			d.fw.served[u.key] = u
		}
		d.mu.Unlock()
		if step.status == protocol.StatusCompleted {
			d.applies.Add(1)
			log.Info("firmware update completed", "version", version)
		} else {
			log.Info("firmware update stage reported", "status", step.status)
		}
	}
}

// failsAt reports whether the injected failure replaces step i: the
// downloading report (the download never completes) or the completed one
// (applying fails).
func (d *Device) failsAt(i int) bool {
	switch d.cfg.FailStage {
	case protocol.StatusDownloading:
		return i == 0
	case protocol.StatusApplying:
		return i == 2
	}
	return false
}

func (d *Device) failUpdate(ctx context.Context, log *slog.Logger, u *fwUpdate) {
	d.mu.Lock()
	failed := *u
	d.mu.Unlock()
	failed.status, failed.errMsg, failed.errStage = protocol.StatusError, d.cfg.FailReason, d.cfg.FailStage
	if err := d.reportPatch(ctx, log, failed.errorPatch()); err != nil {
		log.Info("firmware update interrupted: the device stopped", "status", u.status)
		return
	}
	d.mu.Lock()
	u.status, u.errMsg, u.errStage = failed.status, failed.errMsg, failed.errStage
	d.fw.current = nil
	d.fw.served[u.key] = u
	d.mu.Unlock()
	d.failures.Add(1)
	log.Warn("firmware update failed", "stage", u.errStage, "error", u.errMsg)
}

// reportPatch patches reported properties through whichever session is in
// use, retrying (also while offline) until it succeeds or ctx ends.
func (d *Device) reportPatch(ctx context.Context, log *slog.Logger, patch iotdevice.TwinState) error {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(500*time.Millisecond),
		backoff.WithMaxInterval(reportMaxInterval),
		backoff.WithMaxElapsedTime(0),
	)
	op := func() error {
		s := d.session()
		if s == nil {
			return errOffline
		}
		return s.call(twinTimeout, func(ctx context.Context) error {
			_, err := s.client.UpdateTwinState(ctx, patch)
			return err
		})
	}
	return backoff.RetryNotify(op, backoff.WithContext(b, ctx), func(err error, next time.Duration) {
		if !errors.Is(err, errOffline) {
			log.Warn("report failed: retrying", "status", patch[protocol.PropFirmwareStatus], "error", err,
				"retry_in", next.Round(time.Millisecond).String())
		}
	})
}

// restoreFirmware takes the running version and the last update from the
// twin of a previous process.
func (d *Device) restoreFirmware(rep iotdevice.TwinState) {
	str := func(k string) string { v, _ := rep[k].(string); return v }
	d.mu.Lock()
	defer d.mu.Unlock()
	if v := str(protocol.PropFirmwareVersion); v != "" && checkText(protocol.FieldVersion, v) == nil {
		d.fw.version = v
	}
	key := str(protocol.PropFirmwareUpdateID)
	if key == "" || d.fw.last != nil {
		return
	}
	u := &fwUpdate{key: key, status: protocol.StatusCompleted}
	switch st := str(protocol.PropFirmwareStatus); {
	case st == protocol.StatusDownloading || st == protocol.StatusApplying:
		u.status, u.errStage = protocol.StatusError, st
		u.errMsg = "interrupted: the device restarted while " + st
		d.fw.startReport = u.errorPatch()
	case st == protocol.StatusError || str(protocol.PropFirmwareError) != "":
		// standBy after a failure keeps firmwareError (only the next
		// update's downloading report clears it).
		u.status = protocol.StatusError
		u.errMsg, u.errStage = str(protocol.PropFirmwareError), str(protocol.PropFirmwareErrStage)
	}
	d.fw.served[key], d.fw.last = u, u
	d.log.Info("firmware state restored from twin", "version", d.fw.version, "update_id", key, "status", u.status)
}

// reportFirmwareStart reports the start state: standBy with the running
// version, or the error of an update the previous process left unfinished.
// An update in progress keeps its status.
func (d *Device) reportFirmwareStart(s *session) {
	d.mu.Lock()
	if d.fw.current != nil {
		d.mu.Unlock()
		return
	}
	patch := d.fw.startReport
	interrupted := patch != nil
	if !interrupted {
		patch = iotdevice.TwinState{
			protocol.PropFirmwareStatus:  protocol.StatusStandBy,
			protocol.PropLogTime:         d.cfg.Now().UTC().Format(TimeFormat),
			protocol.PropFirmwareVersion: d.fw.version,
		}
	}
	d.mu.Unlock()
	if err := s.reportStart(d, patch); err != nil {
		return
	}
	if interrupted {
		d.mu.Lock()
		d.fw.startReport = nil
		d.mu.Unlock()
		d.failures.Add(1)
		d.log.Warn("firmware update of the previous process reported as interrupted",
			"update_id", patch[protocol.PropFirmwareUpdateID], "stage", patch[protocol.PropFirmwareErrStage])
	}
}

// reportStart reports patch, the firmware state a device reports when it starts, retrying with
// backoff for up to reportMaxElapsed while the session lasts; a failure is logged.
func (s *session) reportStart(d *Device, patch iotdevice.TwinState) error {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(time.Second),
		backoff.WithMaxElapsedTime(reportMaxElapsed),
	)
	err := backoff.Retry(func() error {
		return s.call(twinTimeout, func(ctx context.Context) error {
			_, err := s.client.UpdateTwinState(ctx, patch)
			return err
		})
	}, backoff.WithContext(b, s.ctx))
	if err != nil {
		d.log.Warn("report firmware start state failed", "status", patch[protocol.PropFirmwareStatus], "error", err)
	}
	return err
}
