package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
)

// The bulk registry API through the SDK's CreateDevices, UpdateDevices and
// DeleteDevices.
func TestBulkRegistry(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()

	devices := make([]*iotservice.Device, 3)
	for i := range devices {
		devices[i] = &iotservice.Device{DeviceID: fmt.Sprintf("bulk-%d", i)}
	}
	devices[2].Authentication = &iotservice.Authentication{Type: iotservice.AuthSAS, SymmetricKey: &iotservice.SymmetricKey{
		PrimaryKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", SecondaryKey: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
	}}
	res, err := svc.CreateDevices(ctx, devices)
	if err != nil || !res.IsSuccessful || len(res.Errors) != 0 {
		t.Fatalf("CreateDevices = %+v, %v", res, err)
	}
	for _, d := range devices {
		got, err := svc.GetDevice(ctx, d.DeviceID)
		if err != nil || got.Authentication.SymmetricKey.PrimaryKey == "" {
			t.Fatalf("GetDevice(%s) = %+v, %v", d.DeviceID, got, err)
		}
		if _, err := svc.GetDeviceTwin(ctx, d.DeviceID); err != nil {
			t.Errorf("twin of %s: %v", d.DeviceID, err)
		}
	}
	got, _ := svc.GetDevice(ctx, "bulk-2")
	if got.Authentication.SymmetricKey.PrimaryKey != devices[2].Authentication.SymmetricKey.PrimaryKey {
		t.Error("given keys were not kept")
	}

	// Existing devices fail one by one with 409001; the new one is created.
	again := []*iotservice.Device{{DeviceID: "bulk-0"}, {DeviceID: "bulk-9"}}
	res, err = svc.CreateDevices(ctx, again)
	if err != nil || res.IsSuccessful || len(res.Errors) != 1 {
		t.Fatalf("CreateDevices again = %+v, %v", res, err)
	}
	if e := res.Errors[0]; e.DeviceID != "bulk-0" || e.ErrorCode != 409001 || e.ErrorStatus == "" {
		t.Errorf("error = %+v, want bulk-0 409001", e)
	}
	if _, err := svc.GetDevice(ctx, "bulk-9"); err != nil {
		t.Errorf("bulk-9 not created next to the failure: %v", err)
	}

	// Conditional update with a stale etag fails, forced update works.
	stale := &iotservice.Device{DeviceID: "bulk-1", ETag: "c3RhbGU=", Status: iotservice.Disabled}
	res, err = svc.UpdateDevices(ctx, []*iotservice.Device{stale}, false)
	if err != nil || res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].ErrorCode != 412001 {
		t.Fatalf("UpdateDevices(if match) = %+v, %v", res, err)
	}
	res, err = svc.UpdateDevices(ctx, []*iotservice.Device{stale}, true)
	if err != nil || !res.IsSuccessful {
		t.Fatalf("UpdateDevices(force) = %+v, %v", res, err)
	}
	if got, _ := svc.GetDevice(ctx, "bulk-1"); got.Status != iotservice.Disabled {
		t.Errorf("bulk-1 status = %s, want disabled", got.Status)
	}

	res, err = svc.DeleteDevices(ctx, []*iotservice.Device{{DeviceID: "bulk-0"}, {DeviceID: "nope"}}, true)
	if err != nil || res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].DeviceID != "nope" || res.Errors[0].ErrorCode != 404001 {
		t.Fatalf("DeleteDevices = %+v, %v", res, err)
	}
	if _, err := svc.GetDevice(ctx, "bulk-0"); err == nil {
		t.Error("bulk-0 still registered")
	}
}

// Requests refused as a whole answer with IoT Hub's error body.
func TestBulkRegistryRefused(t *testing.T) {
	h := startHub(t, "")
	auth := serviceToken(t, h, time.Now().Add(time.Hour))
	many := make([]map[string]string, maxBulkDevices+1)
	for i := range many {
		many[i] = map[string]string{"id": fmt.Sprintf("d-%d", i), "importMode": "create"}
	}
	for _, tc := range []struct {
		name string
		body any
	}{
		{"too many", many},
		{"empty", []any{}},
		{"twice", []map[string]string{{"id": "a", "importMode": "create"}, {"id": "a", "importMode": "delete"}}},
		{"not an array", map[string]string{"id": "a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, _ := json.Marshal(tc.body)
			res, out := rawRequest(t, h, http.MethodPost, "/devices?api-version=2020-09-30", auth, bytes.NewReader(raw))
			var body errorBody
			if res.StatusCode != http.StatusBadRequest || json.Unmarshal(out, &body) != nil || body.ErrorCode != 400004 {
				t.Errorf("= %d %s, want 400 with ErrorCode 400004", res.StatusCode, out)
			}
		})
	}

	// Unknown modes fail per device.
	raw, _ := json.Marshal([]map[string]string{{"id": "a", "importMode": "updateTwin"}, {"id": "b", "importMode": "Create"}})
	res, out := rawRequest(t, h, http.MethodPost, "/devices?api-version=2020-09-30", auth, bytes.NewReader(raw))
	var result bulkResult
	if res.StatusCode != http.StatusBadRequest || json.Unmarshal(out, &result) != nil || len(result.Errors) != 1 || result.Errors[0].DeviceID != "a" {
		t.Errorf("= %d %s, want 400 with an error for a only", res.StatusCode, out)
	}
}
