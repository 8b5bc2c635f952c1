package hub

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// The fuzz targets drive what a device or a service sends localhub, topic
// and payload or route and body, through the functions that decode and check
// it before any state changes. Whatever the input, they must not panic, and
// a refusal must be an ArgumentInvalid *Error that writeError turns into an
// IoT Hub error body. Seeds besides f.Add live in testdata/fuzz/<target>/.

// testNow stamps what the fuzz targets merge.
var testNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// checkRefusal fails unless err is an ArgumentInvalid *Error that answers
// 400 with IoT Hub's error body.
func checkRefusal(t *testing.T, err error) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Code != ErrArgumentInvalid || e.Message == "" {
		t.Fatalf("refusal %v (%T) is not an ArgumentInvalid *Error", err, err)
	}
	rec := httptest.NewRecorder()
	writeError(rec, err)
	var body errorBody
	if rec.Code != http.StatusBadRequest || json.Unmarshal(rec.Body.Bytes(), &body) != nil ||
		body.ErrorCode != 400004 || !strings.HasPrefix(body.Message, "ErrorCode:ArgumentInvalid;") ||
		rec.Header().Get("iothub-errorcode") != ErrArgumentInvalid {
		t.Fatalf("refusal answered %d %s", rec.Code, rec.Body.Bytes())
	}
}

// FuzzDeviceRequest fuzzes a device's publish: the topic (twin GET, reported
// patch, method response, telemetry with a property bag) and the payload of
// reported patches and method responses.
func FuzzDeviceRequest(f *testing.F) {
	for _, seed := range []struct {
		topic   string
		payload string
	}{
		{"$iothub/twin/GET/?$rid=1", ""},
		{"$iothub/twin/PATCH/properties/reported/?$rid=2a", `{"firmwareStatus":"downloading","downloadComplete":"2026-01-01T00:00:00Z"}`},
		{"$iothub/twin/PATCH/properties/reported/?$rid=3", `{"$version":4,"o":{"p":null,"q":[1,"x",true]}}`},
		{"$iothub/methods/res/200/?$rid=7", `{"Response":"This is the response from the device"}`},
		{"$iothub/methods/res/409/?$rid=8", `not json`},
		{"devices/dev-1/messages/events/", `{"t":21.5}`},
		{"devices/dev-1/messages/events/$.ct=application%2Fjson&$.ce=utf-8&alert=1", `{}`},
		{"$iothub/twin/GET/?$rid=", ""},
		{"$iothub/methods/res/abc/?$rid=1", ""},
		{"devices/dev-2/messages/events/", ""},
	} {
		f.Add(seed.topic, []byte(seed.payload))
	}
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		const device = "dev-1"
		req, err := parseDeviceTopic(device, topic)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		if !allowedPublish(device, topic) {
			t.Fatalf("parseDeviceTopic accepted %q, which the ACL refuses", topic)
		}
		if req.kind != reqTelemetry {
			// The request ID is echoed into the answer's topic: it must read
			// back unchanged and keep the topic a valid MQTT topic name.
			answer := topicTwinRes + "200/?$rid=" + req.rid + "&$version=1"
			if got, ok := topicQuery(answer, "$rid"); !ok || got != req.rid {
				t.Fatalf("$rid %q reads back from %q as %q", req.rid, answer, got)
			}
			if req.rid == "" || strings.ContainsAny(answer, "+#\x00") || !utf8.ValidString(answer) {
				t.Fatalf("$rid %q makes answer topic %q invalid", req.rid, answer)
			}
		}
		switch req.kind {
		case reqTwinReported:
			patch, err := parseReportedPatch(payload)
			if err != nil {
				checkRefusal(t, err)
				return
			}
			if err := validatePatch(patch, "reported"); err != nil {
				t.Fatalf("accepted patch fails validation: %v", err)
			}
			doc, meta := map[string]any{}, map[string]any{}
			mergePatch(doc, meta, patch, reportedStamp(testNow))
			_ = checkSize(doc, maxPropertiesBytes, "reported properties")
			if _, err := json.Marshal(withVersion(doc, 2, meta)); err != nil {
				t.Fatalf("merged reported properties do not encode: %v", err)
			}
		case reqMethodResponse:
			res, err := parseMethodResponse(req.status, payload)
			if err != nil {
				var e *Error
				if !errors.As(err, &e) || e.Code != ErrMessageTooLarge || res.err == nil || len(payload) <= maxMethodPayload {
					t.Fatalf("method response refused with %v", err)
				}
				return
			}
			if !json.Valid(res.payload) {
				t.Fatalf("method response payload %q is not JSON", res.payload)
			}
			// JSON passes through as the device wrote it.
			if want := bytes.Trim(payload, " \t\r\n"); !res.text && len(want) > 0 && !bytes.Equal(res.payload, want) {
				t.Fatalf("method response %q passed on as %q", want, res.payload)
			}
		}
	})
}

// Routes of FuzzServiceBody, chosen by the first input.
const (
	bodyDevice = iota
	bodyBulk
	bodyTwinPatch
	bodyTwinReplace
	bodyMethod
	bodyQuery
	bodyRoutes
)

// FuzzServiceBody fuzzes the REST bodies localhub decodes: a device
// identity (PUT /devices/{id}), a bulk registry request (POST /devices), a
// twin patch or replacement (PATCH and PUT /twins/{id}), a method call
// (POST /twins/{id}/methods) and a query (POST /devices/query).
func FuzzServiceBody(f *testing.F) {
	for _, seed := range []struct {
		route uint8
		body  string
	}{
		{bodyDevice, `{"deviceId":"dev-1","status":"enabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"AAAAAAAAAAAAAAAAAAAAAA==","secondaryKey":"AQEBAQEBAQEBAQEBAQEBAQ=="}}}`},
		{bodyDevice, `{"deviceId":"other"}`},
		{bodyBulk, `[{"id":"a","importMode":"create"},{"id":"b","importMode":"Update","status":"disabled","eTag":"\"MQ==\""}]`},
		{bodyBulk, `[{"id":"a","importMode":"delete"},{"id":"a","importMode":"delete"}]`},
		{bodyTwinPatch, `{"tags":{"ring":"beta","site":{"city":"Oslo"}},"properties":{"desired":{"$version":3,"fw":{"version":"2.0.0"}}}}`},
		{bodyTwinReplace, `{"deviceId":"dev-1","properties":{"desired":{"a":null,"b":[1,{"c":2}]}}}`},
		{bodyMethod, `{"methodName":"firmwareUpdate","payload":{"fwPackageUri":"https://fw.example/v2.bin"},"responseTimeoutInSeconds":60,"connectTimeoutInSeconds":0}`},
		{bodyMethod, `{"methodName":"a/b","payload":1}`},
		{bodyQuery, `{"query":"SELECT * FROM devices WHERE tags.ring = 'beta' AND properties.reported.firmwareVersion != '2.1.0'"}`},
		{bodyQuery, `{"query":"SELECT COUNT() AS n FROM devices"} trailing`},
	} {
		f.Add(seed.route, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		const id = "dev-1"
		switch route % bodyRoutes {
		case bodyDevice:
			spec, err := parseDeviceBody(id, body)
			if err != nil {
				checkRefusal(t, err)
				return
			}
			if spec.ID != id {
				t.Fatalf("spec for %q names %q", id, spec.ID)
			}
			if _, err := newDevice(spec, testNow); err != nil {
				t.Fatalf("accepted identity cannot be created: %v", err)
			}
		case bodyBulk:
			req, err := parseBulkBody(body)
			if err != nil {
				checkRefusal(t, err)
				return
			}
			if len(req) == 0 || len(req) > maxBulkDevices {
				t.Fatalf("accepted %d devices", len(req))
			}
			for _, d := range req {
				// Each device is refused on its own, with IoT Hub's error.
				spec := bulkSpec(d)
				if _, err := bulkOperation(d); err != nil {
					checkRefusal(t, err)
				} else if err := spec.validate(); err != nil {
					checkRefusal(t, err)
				}
			}
		case bodyTwinPatch, bodyTwinReplace:
			u, err := parseTwinBody(id, body, route%bodyRoutes == bodyTwinReplace)
			if err != nil {
				checkRefusal(t, err)
				return
			}
			tw := newTwin(testNow)
			for _, doc := range []map[string]any{u.tags, u.desired} {
				if doc == nil {
					continue
				}
				if err := validatePatch(doc, "section"); err != nil {
					t.Fatalf("accepted section fails validation: %v", err)
				}
				mergePatch(tw.Desired, tw.DesiredMeta, doc, desiredStamp(testNow, 2))
				_ = checkSize(tw.Desired, maxPropertiesBytes, "desired properties")
				if _, err := json.Marshal(withVersion(dropNulls(doc), 2, nil)); err != nil {
					t.Fatalf("accepted section does not encode: %v", err)
				}
			}
		case bodyMethod:
			call, err := parseMethodCall(body)
			if err != nil {
				checkRefusal(t, err)
				return
			}
			if call.name == "" || strings.ContainsAny(call.name, "/+#?\x00") || !json.Valid(call.payload) ||
				len(call.payload) > maxMethodPayload ||
				call.responseTimeout < minResponseTimeout || call.responseTimeout > maxResponseTimeout ||
				call.connectTimeout < 0 || call.connectTimeout > maxConnectTimeout {
				t.Fatalf("accepted call %+v", call)
			}
		case bodyQuery:
			q, err := parseQueryBody(body)
			if err != nil {
				checkRefusal(t, err)
				return
			}
			if q.where != nil {
				q.where.eval(map[string]any{"deviceId": id, "tags": map[string]any{"ring": "beta"}})
			}
		}
	})
}
