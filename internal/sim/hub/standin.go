package hub

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// Stand-in devices are registered devices whose ID starts with Options.StandIns and which localhub
// plays itself, without an MQTT connection: it answers their direct methods as the tutorials'
// devices do and writes their reported properties as they would send them. They exist for fleets
// larger than one machine can connect: a process holds one file descriptor per connection, and
// where the open-files limit cannot be raised, 100,000 devices cannot be 100,000 connections to
// one localhub. Everything on the service side is as for a connected device: the direct method is
// metered, logged and counted as delivered; each report is a device twin update, metered against
// the hub's twinUpdates quota (traffic shaping, and a throttled report is sent again a second
// later, as the devices' SDKs retry). What differs: no MQTT traffic, TLS or SAS on the device side,
// and no device process whose CPU and memory compete with the rest.
//
// firmwareUpdate (fwPackageUri required, version and updateId as dmflow's devices take them)
// answers 200 {"Response": "Firmware update started"} and reports downloading, applying and
// completed (with firmwareVersion) StandInStage apart, with the update ID; a repeated call with the
// update ID in progress or last completed answers 200 with its status and applies nothing again;
// another update while one runs is refused with 409. rebootDevice answers 200 and reports
// rebootTime (and lastRebootRequestId) after StandInStage. Other methods are answered 404.

// DefaultStandInStage is how long a stand-in device's firmware stage and reboot take.
const DefaultStandInStage = time.Second

// standIns holds the stand-in devices' updates in progress.
type standIns struct {
	prefix string
	stage  time.Duration

	mu      sync.Mutex
	running map[string]string // device → update ID in progress
	wg      sync.WaitGroup
}

func newStandIns(prefix string, stage time.Duration) *standIns {
	if prefix == "" {
		return nil
	}
	return &standIns{prefix: prefix, stage: stage, running: map[string]string{}}
}

// is reports whether localhub plays device id.
func (s *standIns) is(id string) bool { return s != nil && strings.HasPrefix(id, s.prefix) }

// standInAnswer answers a direct method call to a stand-in device and sets off its reports.
func (h *Hub) standInAnswer(deviceID string, call methodCall) methodResult {
	var payload map[string]any
	_ = json.Unmarshal(call.payload, &payload) // a payload that is not an object carries no fields
	str := func(k string) string { s, _ := payload[k].(string); return s }
	switch call.name {
	case protocol.MethodFirmwareUpdate:
		return h.standInFirmware(deviceID, str(protocol.FieldPackageURI), str(protocol.FieldVersion), str(protocol.FieldUpdateID))
	case protocol.MethodReboot:
		requestID := str(protocol.FieldRequestID)
		h.standInRun(func() {
			if !h.standInWait() {
				return
			}
			patch := map[string]any{protocol.PropRebootTime: time.Now().UTC().Format(time.RFC3339Nano)}
			if requestID != "" {
				patch[protocol.PropLastRebootRequestID] = requestID
			}
			h.standInReport(deviceID, patch)
		})
		return standInResult(http.StatusOK, map[string]any{"Response": "Rebooting"})
	}
	return standInResult(http.StatusNotFound, map[string]any{"error": "method " + call.name + " is not implemented by this device"})
}

func (h *Hub) standInFirmware(deviceID, uri, version, updateID string) methodResult {
	if uri == "" {
		return standInResult(http.StatusBadRequest, map[string]any{"error": protocol.FieldPackageURI + " is required"})
	}
	key := updateID
	if key == "" {
		key = uri + "#" + version
	}
	s := h.standIns
	s.mu.Lock()
	if cur, ok := s.running[deviceID]; ok {
		s.mu.Unlock()
		if cur == key {
			return standInResult(http.StatusOK, map[string]any{"Response": "Firmware update in progress", protocol.PropFirmwareStatus: "in progress"})
		}
		return standInResult(http.StatusConflict, map[string]any{"error": "firmware update " + cur + " in progress"})
	}
	if updateID != "" && h.standInReported(deviceID, protocol.PropFirmwareUpdateID) == updateID {
		s.mu.Unlock()
		return standInResult(http.StatusOK, map[string]any{"Response": "Firmware update already applied",
			protocol.PropFirmwareStatus: h.standInReported(deviceID, protocol.PropFirmwareStatus)})
	}
	s.running[deviceID] = key
	s.mu.Unlock()
	h.standInRun(func() {
		defer func() {
			s.mu.Lock()
			delete(s.running, deviceID)
			s.mu.Unlock()
		}()
		steps := []struct{ status, stamp string }{
			{protocol.StatusDownloading, protocol.PropDownloadComplete},
			{protocol.StatusApplying, protocol.PropStartedApplyingImage},
			{protocol.StatusCompleted, protocol.PropLastFirmwareUpdate},
		}
		for _, step := range steps {
			if !h.standInWait() {
				return
			}
			patch := map[string]any{
				protocol.PropFirmwareStatus: step.status,
				step.stamp:                  time.Now().UTC().Format(time.RFC3339Nano),
			}
			if updateID != "" {
				patch[protocol.PropFirmwareUpdateID] = updateID
			}
			if step.status == protocol.StatusCompleted && version != "" {
				patch[protocol.PropFirmwareVersion] = version
			}
			if !h.standInReport(deviceID, patch) {
				return
			}
		}
	})
	return standInResult(http.StatusOK, map[string]any{"Response": "Firmware update started"})
}

// standInRun runs f in the background until the hub closes.
func (h *Hub) standInRun(f func()) {
	h.standIns.wg.Add(1)
	go func() {
		defer h.standIns.wg.Done()
		f()
	}()
}

// standInWait waits one stage; false once the hub closes.
func (h *Hub) standInWait() bool {
	return h.sleep(context.Background(), h.standIns.stage) == nil
}

// standInReport writes a stand-in device's reported patch as a device twin update: metered, and
// sent again a second later while the hub throttles it. It reports false once the hub closes or
// the device is gone.
func (h *Hub) standInReport(deviceID string, patch map[string]any) bool {
	body, err := json.Marshal(patch)
	if err != nil {
		h.log.Error("stand-in device report", "device", deviceID, "error", err)
		return false
	}
	for {
		if err := h.limits.wait(h.ctx, hubquota.TwinUpdates, 1); err != nil {
			if h.ctx.Err() != nil {
				return false
			}
			h.log.Debug("stand-in device report throttled: sending it again in a second", "device", deviceID)
			if h.sleep(context.Background(), time.Second) != nil {
				return false
			}
			continue
		}
		if _, err := h.patchReported(deviceID, body, time.Now()); err != nil {
			h.log.Warn("stand-in device report refused", "device", deviceID, "error", err)
			return false
		}
		return true
	}
}

// standInReported is a stand-in device's reported property k as a string, "" when unset.
func (h *Hub) standInReported(deviceID, k string) string {
	var v string
	_ = h.store.View(func(tx *store.Tx) error {
		tw, err := tx.Twin(deviceID)
		if errors.Is(err, store.ErrNotFound) || err != nil {
			return err
		}
		v, _ = tw.Reported[k].(string)
		return nil
	})
	return v
}

func standInResult(status int, body map[string]any) methodResult {
	b, _ := json.Marshal(body)
	return methodResult{status: status, payload: b}
}
