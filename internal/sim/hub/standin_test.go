package hub

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"

	"github.com/dmflow/dmflow/internal/protocol"
)

// Stand-in devices answer the tutorials' methods through the unchanged service client and report
// the stages in their twins, StandInStage apart; a repeated update ID applies nothing again; a
// device outside the prefix is not played.
func TestStandInDevices(t *testing.T) {
	h := startHub(t, "", func(o *Options) { o.StandIns, o.StandInStage = "big-", 50*time.Millisecond })
	svc := serviceClient(t, h, "")
	registerDevice(t, h, svc, "big-1")
	registerDevice(t, h, svc, "small-1")
	ctx := context.Background()
	call := func(id, method string, payload map[string]any) (*iotservice.MethodResult, error) {
		return svc.CallDeviceMethod(ctx, id, &iotservice.MethodCall{MethodName: method, Payload: payload, ResponseTimeout: 5})
	}
	fw := map[string]any{protocol.FieldPackageURI: "https://fw.example/2.0.0.bin", protocol.FieldVersion: "2.0.0", protocol.FieldUpdateID: "u1"}

	res, err := call("big-1", protocol.MethodFirmwareUpdate, fw)
	if err != nil || res.Status != http.StatusOK {
		t.Fatalf("firmwareUpdate: %+v, %v; want 200", res, err)
	}
	// Another update while this one runs is refused; the same one is answered, not applied again.
	other := map[string]any{protocol.FieldPackageURI: "https://fw.example/3.0.0.bin", protocol.FieldVersion: "3.0.0", protocol.FieldUpdateID: "u2"}
	if res, err := call("big-1", protocol.MethodFirmwareUpdate, other); err != nil || res.Status != http.StatusConflict {
		t.Errorf("a second update while one runs: %+v, %v; want 409", res, err)
	}
	if res, err := call("big-1", protocol.MethodFirmwareUpdate, fw); err != nil || res.Status != http.StatusOK {
		t.Errorf("the same update again while it runs: %+v, %v; want 200", res, err)
	}

	var tw *iotservice.Twin
	deadline := time.Now().Add(5 * time.Second)
	for {
		tw, err = svc.GetDeviceTwin(ctx, "big-1")
		if err != nil {
			t.Fatal(err)
		}
		if tw.Properties.Reported[protocol.PropFirmwareStatus] == protocol.StatusCompleted || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	rep := tw.Properties.Reported
	if rep[protocol.PropFirmwareStatus] != protocol.StatusCompleted || rep[protocol.PropFirmwareVersion] != "2.0.0" || rep[protocol.PropFirmwareUpdateID] != "u1" {
		t.Fatalf("reported after the update: %v", rep)
	}
	for _, stamp := range []string{protocol.PropDownloadComplete, protocol.PropStartedApplyingImage, protocol.PropLastFirmwareUpdate} {
		if _, ok := rep[stamp].(string); !ok {
			t.Errorf("no %s reported: %v", stamp, rep)
		}
	}
	version := tw.Properties.Reported["$version"]
	if version == nil {
		t.Fatalf("no reported $version: %v", rep)
	}

	// Completed: the same update ID again is answered with its status and changes nothing.
	res, err = call("big-1", protocol.MethodFirmwareUpdate, fw)
	if err != nil || res.Status != http.StatusOK {
		t.Fatalf("the same update after it completed: %+v, %v", res, err)
	}
	if res.Payload[protocol.PropFirmwareStatus] != protocol.StatusCompleted {
		t.Errorf("repeated update answered %v, want its status completed", res.Payload)
	}
	time.Sleep(200 * time.Millisecond)
	if tw, _ := svc.GetDeviceTwin(ctx, "big-1"); tw.Properties.Reported["$version"] != version {
		t.Errorf("a repeated update changed the twin: $version %v, was %v", tw.Properties.Reported["$version"], version)
	}

	// rebootDevice reports rebootTime with the request ID.
	if res, err := call("big-1", protocol.MethodReboot, map[string]any{protocol.FieldRequestID: "r1"}); err != nil || res.Status != http.StatusOK {
		t.Fatalf("rebootDevice: %+v, %v", res, err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for tw, _ = svc.GetDeviceTwin(ctx, "big-1"); tw.Properties.Reported[protocol.PropLastRebootRequestID] != "r1" && time.Now().Before(deadline); tw, _ = svc.GetDeviceTwin(ctx, "big-1") {
		time.Sleep(20 * time.Millisecond)
	}
	if _, ok := tw.Properties.Reported[protocol.PropRebootTime].(string); !ok || tw.Properties.Reported[protocol.PropLastRebootRequestID] != "r1" {
		t.Errorf("after the reboot: %v", tw.Properties.Reported)
	}
	if res, err := call("big-1", "selfDestruct", nil); err != nil || res.Status != http.StatusNotFound {
		t.Errorf("an unknown method: %+v, %v; want 404", res, err)
	}

	// A device outside the prefix is a real one: not connected, so not online.
	if _, err := call("small-1", protocol.MethodFirmwareUpdate, fw); err == nil {
		t.Error("a device outside the prefix, not connected: no error; want DeviceNotOnline")
	}
	log := h.MethodLog("big-1", 0, 100)
	delivered := 0
	for _, e := range log.Entries {
		if e.Delivered {
			delivered++
		}
	}
	if delivered != 6 {
		t.Errorf("method log: %d delivered calls to big-1, want 6: %+v", delivered, log.Entries)
	}
}
