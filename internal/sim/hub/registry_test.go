package hub

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
)

func TestRegistry(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()

	d, err := svc.CreateDevice(ctx, &iotservice.Device{DeviceID: "reg-1"})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	keys := d.Authentication.SymmetricKey
	for _, k := range []string{keys.PrimaryKey, keys.SecondaryKey} {
		raw, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(raw) != 32 {
			t.Errorf("generated key %q is not base64 of 32 bytes", k)
		}
	}
	if keys.PrimaryKey == keys.SecondaryKey {
		t.Error("primary and secondary keys are equal")
	}
	if d.Status != iotservice.Enabled || d.ConnectionState != iotservice.Disconnected || d.ETag == "" ||
		d.GenerationID == "" || d.Authentication.Type != iotservice.AuthSAS {
		t.Errorf("created device = %+v", d)
	}
	if d.StatusUpdatedTime == nil || time.Since(d.StatusUpdatedTime.Time) > time.Minute {
		t.Errorf("statusUpdatedTime = %v", d.StatusUpdatedTime)
	}

	got, err := svc.GetDevice(ctx, "reg-1")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	if got.ETag != d.ETag || got.Authentication.SymmetricKey.PrimaryKey != keys.PrimaryKey {
		t.Errorf("GetDevice = %+v, want the created device", got)
	}

	// Creating again without If-Match is a conflict, as on IoT Hub.
	_, err = svc.CreateDevice(ctx, &iotservice.Device{DeviceID: "reg-1"})
	if code, body := requestError(t, err); code != http.StatusConflict || body.ErrorCode != 409001 {
		t.Errorf("second CreateDevice = %d %+v, want 409 409001", code, body)
	}

	// Keys given by the caller are kept.
	given := &iotservice.Device{DeviceID: "reg-2", Authentication: &iotservice.Authentication{
		Type: iotservice.AuthSAS,
		SymmetricKey: &iotservice.SymmetricKey{
			PrimaryKey:   base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)),
			SecondaryKey: base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32)),
		},
	}}
	d2, err := svc.CreateDevice(ctx, given)
	if err != nil {
		t.Fatalf("CreateDevice with keys: %v", err)
	}
	if *d2.Authentication.SymmetricKey != *given.Authentication.SymmetricKey {
		t.Errorf("keys = %+v, want the given ones", d2.Authentication.SymmetricKey)
	}

	// Update with a stale etag fails; with the current one it applies.
	stale := *got
	stale.ETag = "c3RhbGU="
	stale.Status = iotservice.Disabled
	_, err = svc.UpdateDevice(ctx, &stale)
	if code, body := requestError(t, err); code != http.StatusPreconditionFailed || body.ErrorCode != 412001 {
		t.Errorf("UpdateDevice(stale) = %d %+v", code, body)
	}
	got.Status = iotservice.Disabled
	upd, err := svc.UpdateDevice(ctx, got)
	if err != nil {
		t.Fatalf("UpdateDevice: %v", err)
	}
	if upd.Status != iotservice.Disabled || upd.ETag == got.ETag {
		t.Errorf("updated device = %+v", upd)
	}
	if upd.Authentication.SymmetricKey.PrimaryKey != keys.PrimaryKey {
		t.Error("update without keys changed the keys")
	}

	list, err := svc.ListDevices(ctx)
	if err != nil {
		t.Fatalf("ListDevices: %v", err)
	}
	if len(list) != 2 || list[0].DeviceID != "reg-1" || list[1].DeviceID != "reg-2" {
		t.Errorf("ListDevices = %d devices", len(list))
	}
	res, raw := rawRequest(t, h, http.MethodGet, "/devices?top=1&api-version=2020-09-30", serviceToken(t, h, time.Now().Add(time.Hour)), nil)
	var top []deviceView
	if res.StatusCode != http.StatusOK || json.Unmarshal(raw, &top) != nil || len(top) != 1 {
		t.Errorf("GET /devices?top=1 = %d %s", res.StatusCode, raw)
	}

	stats, err := svc.DeviceStats(ctx)
	if err != nil {
		t.Fatalf("DeviceStats: %v", err)
	}
	if stats.TotalDeviceCount != 2 || stats.EnabledDeviceCount != 1 || stats.DisabledDeviceCount != 1 {
		t.Errorf("DeviceStats = %+v", stats)
	}

	// Delete: stale etag refused, current etag accepted, then gone.
	if err := svc.DeleteDevice(ctx, &stale); err == nil {
		t.Error("DeleteDevice with a stale etag succeeded")
	} else if code, body := requestError(t, err); code != http.StatusPreconditionFailed || body.ErrorCode != 412001 {
		t.Errorf("DeleteDevice(stale) = %d %+v", code, body)
	}
	if err := svc.DeleteDevice(ctx, upd); err != nil {
		t.Fatalf("DeleteDevice: %v", err)
	}
	if err := svc.DeleteDevice(ctx, &iotservice.Device{DeviceID: "reg-2"}); err != nil { // If-Match: *
		t.Fatalf("DeleteDevice(*): %v", err)
	}
	_, err = svc.GetDevice(ctx, "reg-1")
	if code, body := requestError(t, err); code != http.StatusNotFound || body.ErrorCode != 404001 ||
		!strings.HasPrefix(body.Message, "ErrorCode:DeviceNotFound;") {
		t.Errorf("GetDevice(deleted) = %d %+v", code, body)
	}
	_, err = svc.GetDeviceTwin(ctx, "reg-1")
	if code, _ := requestError(t, err); code != http.StatusNotFound {
		t.Errorf("GetDeviceTwin(deleted) = %d", code)
	}
}

func TestRegistryValidation(t *testing.T) {
	h := startHub(t, "")
	auth := serviceToken(t, h, time.Now().Add(time.Hour))
	tests := []struct {
		name string
		path string
		body string
	}{
		{name: "id mismatch", path: "/devices/a", body: `{"deviceId":"b"}`},
		{name: "bad id", path: "/devices/a%20b", body: `{}`},
		{name: "bad status", path: "/devices/a", body: `{"status":"sleeping"}`},
		{name: "x509 unsupported", path: "/devices/a", body: `{"authentication":{"type":"selfSigned"}}`},
		{name: "short key", path: "/devices/a", body: `{"authentication":{"symmetricKey":{"primaryKey":"AAAA"}}}`},
		{name: "not json", path: "/devices/a", body: `{`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, raw := rawRequest(t, h, http.MethodPut, tc.path+"?api-version=2020-09-30", auth, strings.NewReader(tc.body))
			var body errorBody
			if res.StatusCode != http.StatusBadRequest || json.Unmarshal(raw, &body) != nil || body.ErrorCode != 400004 {
				t.Errorf("PUT %s %s = %d %s", tc.path, tc.body, res.StatusCode, raw)
			}
			if got := res.Header.Get("iothub-errorcode"); got != ErrArgumentInvalid {
				t.Errorf("iothub-errorcode = %q", got)
			}
		})
	}
}

// TestCreateDeviceWithSemicolon: asked by the unchanged amenzhinsky service client to create a
// device whose ID holds ';' (which its connection string could not carry, see internal/deviceid),
// localhub refuses as IoT Hub refuses an illegal device ID: 400 with ArgumentInvalid (400004),
// and registers nothing.
func TestCreateDeviceWithSemicolon(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	_, err := svc.CreateDevice(ctx, &iotservice.Device{DeviceID: "semi;colon"})
	code, body := requestError(t, err)
	// The client decodes a 400 without its ErrorCode: the Message carries it.
	if code != http.StatusBadRequest || !strings.HasPrefix(body.Message, "ErrorCode:ArgumentInvalid;") || !strings.Contains(body.Message, `holds ';'`) {
		t.Errorf("CreateDevice(semi;colon) = %d %+v, want 400 ArgumentInvalid naming the ';'", code, body)
	}
	res, raw := rawRequest(t, h, http.MethodPut, "/devices/semi%3Bcolon?api-version=2020-09-30", serviceToken(t, h, time.Now().Add(time.Hour)),
		strings.NewReader(`{"deviceId":"semi;colon"}`))
	var eb errorBody
	if res.StatusCode != http.StatusBadRequest || json.Unmarshal(raw, &eb) != nil || eb.ErrorCode != 400004 || res.Header.Get("iothub-errorcode") != ErrArgumentInvalid {
		t.Errorf("PUT /devices/semi%%3Bcolon = %d %s %q", res.StatusCode, raw, res.Header.Get("iothub-errorcode"))
	}
	if _, err := svc.GetDevice(ctx, "semi;colon"); err == nil {
		t.Error("the device was registered")
	}
}

func TestValidDeviceID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"dev-1", true},
		{"a.b+c%d_e#f*g?h!i(j)k,l:m=n@o$p'q", true},
		{strings.Repeat("x", 128), true},
		{"", false},
		{strings.Repeat("x", 129), false},
		{"with space", false},
		{"slash/inside", false},
		{"ünï", false},
		{"semi;colon", false},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			if err := validDeviceID(tc.id); (err == nil) != tc.ok {
				t.Errorf("validDeviceID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
			}
		})
	}
}
