package device

// The reboot protocol of the dmflow contract (see the package
// documentation): rebootDevice in either style, repeats recognised by
// request ID, and rebootTime reported with the request it served. A device
// on ContractTutorial reboots as tutorial.go describes.

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/cenkalti/backoff/v4"

	"github.com/dmflow/dmflow/internal/protocol"
)

// The reboot tutorial's method, property and payload names, as
// internal/protocol defines them (kept here so callers of this package need
// not import both).
const (
	MethodReboot            = protocol.MethodReboot
	PropRebootTime          = protocol.PropRebootTime
	PropLastRebootRequestID = protocol.PropLastRebootRequestID
	FieldRequestID          = protocol.FieldRequestID

	// FieldResponse is the field of the tutorials' method answers.
	FieldResponse = "Response"

	// TutorialResponse is the tutorial device's answer to rebootDevice.
	TutorialResponse = "This is the response from the device"
	// RebootingResponse is the realistic device's immediate answer.
	RebootingResponse = "Rebooting"
)

// Reboot styles; see the package documentation.
const (
	StyleTutorial  = "tutorial"
	StyleRealistic = "realistic"
)

// Styles lists the accepted RebootStyle values, for messages.
const Styles = StyleTutorial + "|" + StyleRealistic

// DefaultRebootDuration is the tutorial's reboot time.
const DefaultRebootDuration = 20 * time.Second

// TimeFormat is how rebootTime is reported: RFC 3339 in UTC with
// milliseconds, so two reboots within a second stay ordered.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// rebootHandler serves rebootDevice on session s.
func (d *Device) rebootHandler(s *session) iotdevice.DirectMethodHandler {
	return func(payload map[string]any) (int, map[string]any, error) {
		d.methodCalls.Add(1)
		id, _ := payload[FieldRequestID].(string)
		log := d.log.With("method", MethodReboot)
		if id != "" {
			log = log.With("request_id", id)
		}

		if r, repeat := d.reboot.begin(id); repeat {
			log.Info("repeated reboot request: not rebooting again", "done", r.done)
			return d.repeatAnswer(s, id, r)
		}

		if d.cfg.RebootStyle == StyleRealistic {
			d.reboot.goOffline(id)
			log.Info("reboot requested: answering, then going offline")
			return http.StatusOK, map[string]any{FieldResponse: RebootingResponse}, nil
		}

		log.Info("rebooting", "duration", d.cfg.RebootDuration.String())
		if !sleep(s.ctx, d.cfg.RebootDuration) {
			d.reboot.forget(id)
			return http.StatusServiceUnavailable, map[string]any{"error": "reboot interrupted: the device is shutting down"}, nil
		}
		at := d.cfg.Now().UTC()
		d.reboots.Add(1)
		d.reboot.finish(id, at)
		if err := d.report(s, at, id); err != nil {
			log.Error("reboot done but not reported", "error", err)
			return http.StatusInternalServerError, map[string]any{"error": "rebooted but could not report rebootTime: " + err.Error()}, nil
		}
		d.reboot.markReported(id)
		// Back from the reboot: the firmware's start state, as after
		// any start.
		d.reportFirmwareStart(s)
		return http.StatusOK, map[string]any{FieldResponse: TutorialResponse}, nil
	}
}

// repeatAnswer answers a repeated request ID with the state of its reboot.
// A reboot that is done but whose report failed is reported now, so a
// caller retrying after an error finds rebootTime in the twin.
func (d *Device) repeatAnswer(s *session, id string, r request) (int, map[string]any, error) {
	if !r.done {
		return http.StatusOK, map[string]any{FieldResponse: fmt.Sprintf("Reboot %s already in progress", id)}, nil
	}
	if !r.reported {
		if err := d.report(s, r.at, id); err != nil {
			return http.StatusInternalServerError, map[string]any{"error": "rebooted but could not report rebootTime: " + err.Error()}, nil
		}
		d.reboot.markReported(id)
	}
	out := map[string]any{FieldResponse: fmt.Sprintf("Reboot %s already done", id)}
	if !r.at.IsZero() {
		out[PropRebootTime] = r.at.UTC().Format(TimeFormat)
	}
	return http.StatusOK, out, nil
}

// finishReboot completes a realistic reboot after the device is back:
// it counts the reboot and reports rebootTime with the request ID served.
func (d *Device) finishReboot(s *session) {
	ids, at, ok := d.reboot.backOnline(d.cfg.Now)
	if !ok {
		return
	}
	d.reboots.Add(1)
	last := ""
	if len(ids) > 0 {
		last = ids[len(ids)-1]
	}
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(time.Second),
		backoff.WithMaxElapsedTime(reportMaxElapsed),
	)
	err := backoff.RetryNotify(func() error { return d.report(s, at, last) },
		backoff.WithContext(b, s.ctx),
		func(err error, next time.Duration) {
			d.log.Warn("report rebootTime failed: retrying", "error", err, "retry_in", next.Round(time.Millisecond).String())
		})
	if err != nil {
		d.log.Error("report rebootTime failed", "error", err)
		return
	}
	d.reboot.markReported(ids...)
}

// restore remembers the request ID of the last reboot reported in the twin.
func (d *Device) restore(reported iotdevice.TwinState) {
	id, _ := reported[PropLastRebootRequestID].(string)
	if id == "" {
		return
	}
	var at time.Time
	if s, ok := reported[PropRebootTime].(string); ok {
		at, _ = time.Parse(time.RFC3339Nano, s)
	}
	if d.reboot.restore(id, at) {
		d.log.Info("last reboot restored from twin", "request_id", id)
	}
}

// report patches the reported rebootTime (and the request ID it served).
func (d *Device) report(s *session, at time.Time, requestID string) error {
	patch := iotdevice.TwinState{PropRebootTime: at.UTC().Format(TimeFormat)}
	if requestID != "" {
		patch[PropLastRebootRequestID] = requestID
	}
	err := s.call(twinTimeout, func(ctx context.Context) error {
		_, err := s.client.UpdateTwinState(ctx, patch)
		return err
	})
	if err != nil {
		return fmt.Errorf("report %s: %w", PropRebootTime, err)
	}
	d.log.Info("reported rebootTime", PropRebootTime, patch[PropRebootTime], "request_id", requestID)
	return nil
}

// rebootState is what the reboot protocol remembers: every request ID
// served or being served, for the life of the Device (across simulated
// reboots), and the realistic reboot in progress, whose requests are done
// only once the device is back. Its methods are the protocol's
// transitions. It has its own lock: no transition touches the rest of the
// Device.
type rebootState struct {
	mu       sync.Mutex
	requests map[string]*request // by request ID
	// pending lists the request IDs the realistic reboot in progress
	// serves; rebooting is set from its first call until the device is
	// back.
	pending   []string
	rebooting bool
	// offline wakes Run to take a realistic device offline. The call that
	// starts a reboot sends the one wake-up; later calls join the reboot
	// until backOnline ends it, so the buffer of one never blocks.
	offline chan struct{}
}

// request is the state of one reboot request ID.
type request struct {
	done     bool
	at       time.Time // rebootTime, once done
	reported bool      // rebootTime of this request is in the twin
}

func newRebootState() *rebootState {
	return &rebootState{requests: map[string]*request{}, offline: make(chan struct{}, 1)}
}

// begin is a request seen: it looks up request ID id. A known one is a
// repeat, returned as it stands; an unknown one is recorded as in progress.
// Calls without an ID always reboot.
func (r *rebootState) begin(id string) (request, bool) {
	if id == "" {
		return request{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if req, ok := r.requests[id]; ok {
		return *req, true
	}
	r.requests[id] = &request{}
	return request{}, false
}

// finish records the reboot of id as done at at, not yet reported.
func (r *rebootState) finish(id string, at time.Time) {
	if id == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests[id] = &request{done: true, at: at}
}

// forget drops an interrupted reboot, so a retry of id reboots.
func (r *rebootState) forget(id string) {
	if id == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.requests, id)
}

// markReported records that the rebootTime of ids is in the twin.
func (r *rebootState) markReported(ids ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		if req, ok := r.requests[id]; ok {
			req.reported = true
		}
	}
}

// restore records id as the reboot done at at that the twin holds, unless
// id is known already. It reports whether it recorded it.
func (r *rebootState) restore(id string, at time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.requests[id]; ok {
		return false
	}
	r.requests[id] = &request{done: true, at: at, reported: true}
	return true
}

// goOffline joins id (may be empty) to the realistic reboot in progress,
// starting one, and waking Run, when none is.
func (r *rebootState) goOffline(id string) {
	r.mu.Lock()
	if id != "" {
		r.pending = append(r.pending, id)
	}
	first := !r.rebooting
	r.rebooting = true
	r.mu.Unlock()
	if first {
		r.offline <- struct{}{}
	}
}

// backOnline ends the realistic reboot in progress, if any (ok): its
// requests are done at the time now reads, which it returns with them.
func (r *rebootState) backOnline(now func() time.Time) (ids []string, at time.Time, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.rebooting {
		return nil, time.Time{}, false
	}
	ids = r.pending
	r.pending, r.rebooting = nil, false
	at = now().UTC()
	for _, id := range ids {
		r.requests[id] = &request{done: true, at: at}
	}
	return ids, at, true
}
