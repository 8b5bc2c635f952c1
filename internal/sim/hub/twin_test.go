package hub

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/amenzhinsky/iothub/iotservice"
	paho "github.com/eclipse/paho.mqtt.golang"
)

func TestTwin(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	dc := connectDevice(t, h, registerDevice(t, h, svc, "tw"))

	twin, err := svc.GetDeviceTwin(ctx, "tw")
	if err != nil {
		t.Fatalf("GetDeviceTwin: %v", err)
	}
	if twin.Version != 1 || twin.ETag != "AAAAAAAAAAE=" || twin.Properties.Desired["$version"] != float64(1) ||
		twin.Properties.Reported["$version"] != float64(1) || twin.ConnectionState != iotservice.Connected {
		t.Errorf("new twin = %+v", twin)
	}
	if n := h.Stats().ServiceTwinReads["tw"]; n != 1 {
		t.Errorf("service twin reads = %d, want 1", n)
	}

	sub, err := dc.SubscribeTwinUpdates(ctx)
	if err != nil {
		t.Fatalf("SubscribeTwinUpdates: %v", err)
	}

	// Service patch with the current etag: merged, versions bumped, pushed.
	updated, err := svc.UpdateDeviceTwin(ctx, &iotservice.Twin{
		DeviceID: "tw",
		ETag:     twin.ETag,
		Tags:     map[string]interface{}{"site": map[string]interface{}{"city": "Oslo"}},
		Properties: &iotservice.Properties{Desired: map[string]interface{}{
			"fwVersion": "2.0", "interval": 30, "nested": map[string]interface{}{"a": 1, "b": 2},
		}},
	})
	if err != nil {
		t.Fatalf("UpdateDeviceTwin: %v", err)
	}
	if updated.Version != 2 || updated.ETag == twin.ETag || updated.Properties.Desired["$version"] != float64(2) ||
		updated.Properties.Desired["fwVersion"] != "2.0" || updated.Tags["site"].(map[string]interface{})["city"] != "Oslo" {
		t.Errorf("updated twin = %+v", updated)
	}
	if _, ok := updated.Properties.Desired["$metadata"].(map[string]interface{})["fwVersion"]; !ok {
		t.Errorf("desired $metadata lacks fwVersion: %v", updated.Properties.Desired["$metadata"])
	}
	select {
	case st := <-sub.C():
		if st["fwVersion"] != "2.0" || st.Version() != 2 {
			t.Errorf("desired notification = %v", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("desired notification did not reach the device")
	}

	// A stale etag is refused.
	_, err = svc.UpdateDeviceTwin(ctx, &iotservice.Twin{DeviceID: "tw", ETag: twin.ETag,
		Properties: &iotservice.Properties{Desired: map[string]interface{}{"x": 1}}})
	if code, body := requestError(t, err); code != http.StatusPreconditionFailed || body.ErrorCode != 412001 ||
		!strings.HasPrefix(body.Message, "ErrorCode:PreconditionFailed;") {
		t.Errorf("stale etag = %d %+v, want 412 412001", code, body)
	}

	// Nested merge and null deletes, without an etag (If-Match: *).
	updated, err = svc.UpdateDeviceTwin(ctx, &iotservice.Twin{DeviceID: "tw",
		Properties: &iotservice.Properties{Desired: map[string]interface{}{
			"interval": nil, "nested": map[string]interface{}{"b": nil, "c": 3},
		}}})
	if err != nil {
		t.Fatalf("UpdateDeviceTwin(null): %v", err)
	}
	desired := updated.Properties.Desired
	if _, ok := desired["interval"]; ok {
		t.Error("null did not delete desired.interval")
	}
	if n := desired["nested"].(map[string]interface{}); !reflect.DeepEqual(n, map[string]interface{}{"a": float64(1), "c": float64(3)}) {
		t.Errorf("nested = %v, want a:1 c:3", n)
	}
	if desired["$version"] != float64(3) || updated.Version != 3 {
		t.Errorf("versions = %v/%d, want 3/3", desired["$version"], updated.Version)
	}
	select {
	case st := <-sub.C():
		if v, ok := st["interval"]; !ok || v != nil {
			t.Errorf("notification %v does not carry interval: null", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second desired notification did not arrive")
	}

	// Reported properties from the device, visible to the service.
	ver, err := dc.UpdateTwinState(ctx, iotdevice.TwinState{"firmwareStatus": "standBy", "logTime": "2024-01-01T00:00:00Z"})
	if err != nil {
		t.Fatalf("UpdateTwinState: %v", err)
	}
	if ver != 2 {
		t.Errorf("reported version = %d, want 2", ver)
	}
	twin, err = svc.GetDeviceTwin(ctx, "tw")
	if err != nil {
		t.Fatalf("GetDeviceTwin: %v", err)
	}
	if twin.Properties.Reported["firmwareStatus"] != "standBy" || twin.Properties.Reported["$version"] != float64(2) || twin.Version != 4 {
		t.Errorf("reported = %v, twin version %d", twin.Properties.Reported, twin.Version)
	}
	ver, err = dc.UpdateTwinState(ctx, iotdevice.TwinState{"firmwareStatus": nil})
	if err != nil || ver != 3 {
		t.Fatalf("UpdateTwinState(null) = %d, %v", ver, err)
	}
	desiredDev, reported, err := dc.RetrieveTwinState(ctx)
	if err != nil {
		t.Fatalf("RetrieveTwinState: %v", err)
	}
	if _, ok := reported["firmwareStatus"]; ok || reported.Version() != 3 || reported["logTime"] != "2024-01-01T00:00:00Z" {
		t.Errorf("device reported view = %v", reported)
	}
	if desiredDev.Version() != 3 || desiredDev["fwVersion"] != "2.0" {
		t.Errorf("device desired view = %v", desiredDev)
	}
	if _, ok := desiredDev["$metadata"]; ok {
		t.Error("device twin view carries $metadata")
	}

	// Replace: tags and desired become exactly the body.
	res, raw := rawRequest(t, h, http.MethodPut, "/twins/tw?api-version=2020-09-30", serviceToken(t, h, time.Now().Add(time.Hour)),
		strings.NewReader(`{"properties":{"desired":{"only":true}}}`))
	var replaced twinView
	if res.StatusCode != http.StatusOK || json.Unmarshal(raw, &replaced) != nil {
		t.Fatalf("PUT twin = %d %s", res.StatusCode, raw)
	}
	if len(replaced.Tags) != 0 || len(replaced.Properties.Desired) != 3 || replaced.Properties.Desired["only"] != true {
		t.Errorf("replaced twin = tags %v desired %v", replaced.Tags, replaced.Properties.Desired)
	}
	select {
	case st := <-sub.C():
		if st["only"] != true || st["fwVersion"] != nil {
			t.Errorf("replace notification = %v", st)
		}
		if _, ok := st["fwVersion"]; !ok {
			t.Error("replace notification does not null the removed fwVersion")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("replace notification did not arrive")
	}
}

func TestTwinValidation(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	registerDevice(t, h, svc, "v")
	auth := serviceToken(t, h, time.Now().Add(time.Hour))
	deep := `{"a":` + strings.Repeat(`{"a":`, 10) + `1` + strings.Repeat(`}`, 10) + `}`
	tests := []struct{ name, body string }{
		{"dot in key", `{"properties":{"desired":{"a.b":1}}}`},
		{"dollar in key", `{"properties":{"desired":{"$x":1}}}`},
		{"space in key", `{"tags":{"a b":1}}`},
		{"too deep", `{"properties":{"desired":` + deep + `}}`},
		{"tags too large", `{"tags":{"t":"` + strings.Repeat("x", 4000) + `","u":"` + strings.Repeat("x", 4000) + `","v":"` + strings.Repeat("x", 4000) + `"}}`},
		{"string too long", `{"tags":{"t":"` + strings.Repeat("x", 5000) + `"}}`},
		{"id mismatch", `{"deviceId":"other"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, raw := rawRequest(t, h, http.MethodPatch, "/twins/v?api-version=2020-09-30", auth, strings.NewReader(tc.body))
			if res.StatusCode != http.StatusBadRequest {
				t.Errorf("= %d %s, want 400", res.StatusCode, raw)
			}
		})
	}
	res, raw := rawRequest(t, h, http.MethodPatch, "/twins/v?api-version=2020-09-30", auth, strings.NewReader(`{"properties":{"reported":{"x":1}}}`))
	if res.StatusCode != http.StatusOK || !strings.Contains(string(raw), `"version":1`) {
		t.Errorf("patch without service-writable sections = %d %s, want 200 and no new version", res.StatusCode, raw)
	}
	twin, err := svc.GetDeviceTwin(context.Background(), "v")
	if err != nil {
		t.Fatal(err)
	}
	if twin.Version != 1 {
		t.Errorf("refused patches changed the twin to version %d", twin.Version)
	}
}

func TestDeviceTwinMalformedPatch(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	cs := registerDevice(t, h, svc, "raw")
	c, err := rawDevice(t, h, "raw", "localhost/raw/?api-version=2021-04-12", deviceToken(t, "localhost", deviceKey(cs), time.Now().Add(time.Hour)), nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	topics := make(chan string, 4)
	if tok := c.Subscribe("$iothub/twin/res/#", 1, func(_ paho.Client, m paho.Message) { topics <- m.Topic() }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	for _, tc := range []struct{ body, want string }{
		{`{bad`, "$iothub/twin/res/400/?$rid=r1"},
		{`[1,2]`, "$iothub/twin/res/400/?$rid=r1"},
		{`{"a.b":1}`, "$iothub/twin/res/400/?$rid=r1"},
		{`{"ok":1}`, "$iothub/twin/res/204/?$rid=r1&$version=2"},
	} {
		if tok := c.Publish("$iothub/twin/PATCH/properties/reported/?$rid=r1", 1, false, tc.body); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		select {
		case got := <-topics:
			if got != tc.want {
				t.Errorf("patch %s answered on %q, want %q", tc.body, got, tc.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer to patch %s", tc.body)
		}
	}
}

func TestMergePatch(t *testing.T) {
	stamp := map[string]any{"$lastUpdated": "T"}
	tests := []struct {
		name  string
		doc   string
		patch string
		want  string
	}{
		{name: "add", doc: `{}`, patch: `{"a":1}`, want: `{"a":1}`},
		{name: "replace scalar", doc: `{"a":1}`, patch: `{"a":"x"}`, want: `{"a":"x"}`},
		{name: "null deletes", doc: `{"a":1,"b":2}`, patch: `{"a":null}`, want: `{"b":2}`},
		{name: "null of missing is a no-op", doc: `{"b":2}`, patch: `{"a":null}`, want: `{"b":2}`},
		{name: "nested merge", doc: `{"o":{"x":1,"y":2}}`, patch: `{"o":{"y":3,"z":4}}`, want: `{"o":{"x":1,"y":3,"z":4}}`},
		{name: "nested delete", doc: `{"o":{"x":1,"y":2}}`, patch: `{"o":{"x":null}}`, want: `{"o":{"y":2}}`},
		{name: "object replaces scalar", doc: `{"o":1}`, patch: `{"o":{"x":1}}`, want: `{"o":{"x":1}}`},
		{name: "scalar replaces object", doc: `{"o":{"x":1}}`, patch: `{"o":5}`, want: `{"o":5}`},
		{name: "array is a value", doc: `{"a":[1,2]}`, patch: `{"a":[3]}`, want: `{"a":[3]}`},
		{name: "big number kept", doc: `{}`, patch: `{"n":9007199254740993}`, want: `{"n":9007199254740993}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc, _ := decodeDocument([]byte(tc.doc))
			patch, _ := decodeDocument([]byte(tc.patch))
			meta := map[string]any{}
			mergePatch(doc, meta, patch, stamp)
			got, _ := json.Marshal(doc)
			if string(got) != tc.want {
				t.Errorf("merged = %s, want %s", got, tc.want)
			}
			if meta["$lastUpdated"] != "T" {
				t.Errorf("root metadata = %v", meta)
			}
			for k, v := range patch {
				if _, ok := meta[k]; ok == (v == nil) {
					t.Errorf("metadata for %q = %v after patch value %v", k, meta[k], v)
				}
			}
		})
	}
}

func TestValidatePatch(t *testing.T) {
	deep := func(n int) string {
		return strings.Repeat(`{"a":`, n) + `1` + strings.Repeat(`}`, n)
	}
	tests := []struct {
		doc string
		ok  bool
	}{
		{`{"fwVersion":"1.0","n":1,"b":true,"z":null,"arr":[1,{"x":1}]}`, true},
		{`{"snake_case":1,"dash-ed":2,"ünïcode":3}`, true},
		{deep(10), true},
		{deep(11), false},
		{`{"a.b":1}`, false},
		{`{"$a":1}`, false},
		{`{"a b":1}`, false},
		{`{"a\u0001":1}`, false},
		{`{"":1}`, false},
		{`{"o":{"x.y":1}}`, false},
		{`{"k":"` + strings.Repeat("x", maxStringBytes+1) + `"}`, false},
		{`{"` + strings.Repeat("k", maxKeyBytes+1) + `":1}`, false},
	}
	for _, tc := range tests {
		name := tc.doc
		if len(name) > 40 {
			name = name[:40]
		}
		t.Run(name, func(t *testing.T) {
			doc, err := decodeDocument([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			if err := validatePatch(doc, "desired"); (err == nil) != tc.ok {
				t.Errorf("validatePatch = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestDecodeDocument(t *testing.T) {
	// `{"a":1}}` and `{"a":1}]` passed while the check for trailing data was
	// dec.More, which reports false before a closing bracket.
	for _, in := range []string{``, `null`, `[]`, `1`, `"s"`, `{`, `{} {}`, `{"a":1}}`, `{"a":1}]`, `{"a":1} x`} {
		if _, err := decodeDocument([]byte(in)); err == nil {
			t.Errorf("decodeDocument(%q) accepted a non-object", in)
		}
	}
}

func TestDocumentSize(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want int
	}{
		{`{}`, 0},
		{`{"ab":"cde"}`, 5},
		{`{"n":12345678901}`, 1 + 8},
		{`{"b":true}`, 1 + 4},
		{`{"o":{"p":"q","r":1.5}}`, 1 + (1 + 1) + (1 + 8)},
		{`{"a":["xy",2,false]}`, 1 + 2 + 8 + 4},
		{`{"s":"\u0001\u0085é"}`, 1 + 2}, // control characters (C0 and C1) do not count; é is 2 bytes
		{`{"z":null}`, 1},
	} {
		doc, err := decodeDocument([]byte(tc.doc))
		if err != nil {
			t.Fatal(err)
		}
		if got := documentSize(doc); got != tc.want {
			t.Errorf("documentSize(%s) = %d, want %d", tc.doc, got, tc.want)
		}
	}
}

func TestETags(t *testing.T) {
	if got := twinETag(1); got != "AAAAAAAAAAE=" {
		t.Errorf("twinETag(1) = %q", got)
	}
	if got := deviceETag(1); got != "MQ==" {
		t.Errorf("deviceETag(1) = %q", got)
	}
	tests := []struct {
		ifMatch, current string
		want             bool
	}{
		{"", "abc", true},
		{"  ", "abc", true},
		{"*", "abc", true},
		{`"*"`, "abc", true},
		{` "*" `, "abc", true},
		{`W/"*"`, "abc", true},
		{`"abc"`, "abc", true},
		{"abc", "abc", true},
		{` "abc"`, "abc", true},
		{`W/"abc"`, "abc", true},
		{`"abd", "abc"`, "abc", true},
		{`"abd"`, "abc", false},
		{`""`, "abc", false},
		{`"a*"`, "abc", false},
		{`"abd", "abe"`, "abc", false},
		{`"AAAAAAAAAAE="`, "AAAAAAAAAAI=", false},
		{`"AAAAAAAAAAI="`, "AAAAAAAAAAI=", true},
		{`,`, "abc", false},
		{"W/abc=", "W/abc=", true}, // base64 may begin with W/
		{`W/"W/abc="`, "W/abc=", true},
	}
	for _, tc := range tests {
		if got := etagMatches(tc.ifMatch, tc.current); got != tc.want {
			t.Errorf("etagMatches(%q, %q) = %v", tc.ifMatch, tc.current, got)
		}
	}
}

// TestReportedMetadata reads properties.reported.$metadata as the REST twin
// carries it: a $lastUpdated per property and per object, UTC with a Z and
// at least milliseconds, set on every node a patch touches (a value
// reported again included) and kept on the others.
func TestReportedMetadata(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	dc := connectDevice(t, h, registerDevice(t, h, svc, "meta"))
	auth := serviceToken(t, h, time.Now().Add(time.Hour))

	// read returns the $lastUpdated stamps of the reported section by path
	// ("" for the section itself), checked for their form.
	read := func() map[string]time.Time {
		t.Helper()
		res, raw := rawRequest(t, h, http.MethodGet, "/twins/meta?api-version=2020-09-30", auth, nil)
		var tw struct {
			Properties struct {
				Reported map[string]any `json:"reported"`
			} `json:"properties"`
		}
		if res.StatusCode != http.StatusOK || json.Unmarshal(raw, &tw) != nil {
			t.Fatalf("GET twin = %d %s", res.StatusCode, raw)
		}
		meta, ok := tw.Properties.Reported["$metadata"].(map[string]any)
		if !ok {
			t.Fatalf("reported section %v has no $metadata", tw.Properties.Reported)
		}
		stamps := map[string]time.Time{}
		var walk func(path string, m map[string]any)
		walk = func(path string, m map[string]any) {
			s, _ := m["$lastUpdated"].(string)
			stamp, err := time.Parse(time.RFC3339Nano, s)
			if err != nil || !lastUpdatedForm.MatchString(s) {
				t.Errorf("$metadata%s.$lastUpdated = %q, want UTC RFC 3339 with milliseconds and Z", path, s)
			}
			stamps[path] = stamp
			for k, v := range m {
				if sub, ok := v.(map[string]any); ok {
					walk(path+"."+k, sub)
				}
			}
		}
		walk("", meta)
		return stamps
	}
	report := func(patch iotdevice.TwinState) (before, after time.Time) {
		t.Helper()
		time.Sleep(10 * time.Millisecond) // stamps of successive reports differ
		before = time.Now()
		if _, err := dc.UpdateTwinState(ctx, patch); err != nil {
			t.Fatalf("UpdateTwinState(%v): %v", patch, err)
		}
		return before, time.Now()
	}
	within := func(what string, got, before, after time.Time) {
		t.Helper()
		// The wire keeps 100 ns; allow for it.
		if got.Before(before.Truncate(time.Microsecond)) || got.After(after) {
			t.Errorf("%s = %s, want between %s and %s", what, got.Format(time.RFC3339Nano), before.UTC().Format(time.RFC3339Nano), after.UTC().Format(time.RFC3339Nano))
		}
	}

	b1, a1 := report(iotdevice.TwinState{
		"rebootTime":     "2026-12-06 18:34:08.808000",
		"firmwareStatus": "standBy",
		"fw":             map[string]interface{}{"stage": "idle", "progress": 0},
	})
	first := read()
	for _, p := range []string{"", ".rebootTime", ".firmwareStatus", ".fw", ".fw.stage", ".fw.progress"} {
		within("first report: $metadata"+p, first[p], b1, a1)
	}

	// A partial patch: only what it names is stamped, the section and the
	// objects on the way included.
	b2, a2 := report(iotdevice.TwinState{"firmwareStatus": "downloading", "fw": map[string]interface{}{"progress": 50}})
	second := read()
	for _, p := range []string{"", ".firmwareStatus", ".fw", ".fw.progress"} {
		within("second report: $metadata"+p, second[p], b2, a2)
	}
	for _, p := range []string{".rebootTime", ".fw.stage"} {
		if !second[p].Equal(first[p]) {
			t.Errorf("untouched $metadata%s.$lastUpdated moved from %s to %s", p, first[p], second[p])
		}
	}

	// The same value reported again is a new report: stamped anew.
	b3, a3 := report(iotdevice.TwinState{"rebootTime": "2026-12-06 18:34:08.808000"})
	third := read()
	within("re-reported $metadata.rebootTime", third[".rebootTime"], b3, a3)
	if !third[".rebootTime"].After(first[".rebootTime"]) {
		t.Errorf("re-reported rebootTime keeps its stamp %s", first[".rebootTime"])
	}
	for _, p := range []string{".firmwareStatus", ".fw", ".fw.stage", ".fw.progress"} {
		if !third[p].Equal(second[p]) {
			t.Errorf("untouched $metadata%s.$lastUpdated moved from %s to %s", p, second[p], third[p])
		}
	}

	// A property removed with null loses its metadata.
	report(iotdevice.TwinState{"firmwareStatus": nil})
	if _, ok := read()[".firmwareStatus"]; ok {
		t.Error("deleted firmwareStatus keeps its $metadata")
	}
}

// lastUpdatedForm is the form of IoT Hub's $lastUpdated: UTC, a Z, and
// milliseconds or finer (IoT Hub writes up to seven digits, .NET's ticks).
var lastUpdatedForm = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3,7}Z$`)
