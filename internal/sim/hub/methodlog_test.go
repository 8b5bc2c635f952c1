package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubquota"
)

// methodLogPage reads GET /_localhub/methods with query q through the REST API.
func methodLogPage(t *testing.T, h *Hub, q string) MethodLogPage {
	t.Helper()
	res, raw := rawRequest(t, h, http.MethodGet, "/_localhub/methods?"+q, serviceToken(t, h, time.Now().Add(time.Hour)), nil)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /_localhub/methods?%s = %d %s", q, res.StatusCode, raw)
	}
	var p MethodLogPage
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatalf("page %s: %v", raw, err)
	}
	return p
}

// logged is what a test compares of an entry: everything but the times and the sequence.
type logged struct {
	device, method, requestID string
	delivered                 bool
	status                    int
	response, err             string
}

func loggedOf(entries []MethodLogEntry) []logged {
	out := make([]logged, len(entries))
	for i, e := range entries {
		out[i] = logged{e.DeviceID, e.Method, e.RequestID, e.Delivered, e.Status, e.Response, e.Error}
	}
	return out
}

// Every way a direct method ends is entered in the log: answered (with the device's status and
// answer), refused for an unknown or offline device (not delivered), timed out at a device that
// did not answer (delivered) or never subscribed (not delivered), abandoned by its caller; the
// payload's update or request ID is kept.
func TestMethodLogOutcomes(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()

	ok := connectDevice(t, h, registerDevice(t, h, svc, "ok"))
	if err := ok.RegisterMethod(ctx, "firmwareUpdate", func(p map[string]any) (int, map[string]any, error) {
		return 200, map[string]any{"Response": "Firmware update started"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := ok.RegisterMethod(ctx, "rebootDevice", func(p map[string]any) (int, map[string]any, error) {
		return 409, map[string]any{"error": "busy"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	if err := ok.RegisterMethod(ctx, "hang", func(map[string]any) (int, map[string]any, error) {
		<-release
		return 200, nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	registerDevice(t, h, svc, "offline")
	connectDevice(t, h, registerDevice(t, h, svc, "deaf"))

	call := func(device, method string, payload map[string]any) {
		t.Helper()
		_, _ = svc.CallDeviceMethod(ctx, device, &iotservice.MethodCall{MethodName: method, ResponseTimeout: 5, Payload: payload})
	}
	// The two calls that run into the 5 s response timeout run side by side.
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); call("ok", "hang", nil) }()
	go func() { defer wg.Done(); call("deaf", "firmwareUpdate", map[string]any{"updateId": "u-3"}) }()
	call("ok", "firmwareUpdate", map[string]any{"fwPackageUri": "https://fw.example/2.bin", "updateId": "u-1"})
	call("ok", "rebootDevice", map[string]any{"requestId": "r-1"})
	call("offline", "firmwareUpdate", map[string]any{"updateId": "u-2"})
	call("ghost", "rebootDevice", map[string]any{"requestId": "r-2"})
	// A caller that gives up before the device answers.
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, _ = svc.CallDeviceMethod(cctx, "ok", &iotservice.MethodCall{MethodName: "hang", ResponseTimeout: 5})
	cancel()
	wg.Wait()
	require.Eventually(t, func() bool {
		return len(h.MethodLog("", 0, 0).Entries) == 7
	}, 5*time.Second, 20*time.Millisecond, "waiting for the abandoned call in the log")

	want := []logged{
		{"ok", "firmwareUpdate", "u-1", true, 200, `{"Response":"Firmware update started"}`, ""},
		{"ok", "rebootDevice", "r-1", true, 409, `{"error":"busy"}`, ""},
		{"ok", "hang", "", true, 0, "", ErrGatewayTimeout},
		{"offline", "firmwareUpdate", "u-2", false, 0, "", ErrDeviceNotOnline},
		{"ghost", "rebootDevice", "r-2", false, 0, "", ErrDeviceNotFound},
		{"deaf", "firmwareUpdate", "u-3", false, 0, "", ErrGatewayTimeout},
		{"ok", "hang", "", true, 0, "", ErrCallerGone},
	}
	p := methodLogPage(t, h, "")
	// Entries are in the order the calls ended; the concurrent ones in any.
	byKey := func(l []logged) []logged {
		slices.SortFunc(l, func(a, b logged) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
		return l
	}
	if got := loggedOf(p.Entries); !reflect.DeepEqual(byKey(got), byKey(want)) {
		t.Errorf("log =\n%+v\nwant\n%+v", got, want)
	}
	for i, e := range p.Entries {
		if e.Seq != uint64(i+1) || e.Time.IsZero() || e.Duration <= 0 {
			t.Errorf("entry %d: seq %d, time %v, duration %v", i, e.Seq, e.Time, e.Duration)
		}
	}
	if p.More || p.Next != 7 || p.Dropped != 0 {
		t.Errorf("page: more %v next %d dropped %d, want the whole log", p.More, p.Next, p.Dropped)
	}

	// One device's entries, a page at a time.
	var seqs []uint64
	for _, e := range p.Entries {
		if e.DeviceID == "ok" {
			seqs = append(seqs, e.Seq)
		}
	}
	p = methodLogPage(t, h, "deviceId=ok&limit=3")
	if len(p.Entries) != 3 || !p.More || p.Entries[2].Seq != seqs[2] {
		t.Fatalf("first page of ok: %+v, want seqs %v", p, seqs[:3])
	}
	p = methodLogPage(t, h, "deviceId=ok&limit=3&after="+itoa(int64(p.Next)))
	if len(p.Entries) != 1 || p.More || p.Entries[0].Seq != seqs[3] || p.Next != 7 {
		t.Errorf("second page of ok: %+v, want seq %d", p, seqs[3])
	}

}

// A call above the methods quota is refused before anything else, and entered.
func TestMethodLogThrottled(t *testing.T) {
	h := startHub(t, "", func(o *Options) {
		o.Unlimited = false
		o.Quotas = map[hubquota.Op]float64{hubquota.Methods: 1}
		o.MaxQueueDelay = 10 * time.Millisecond
	})
	svc := serviceClient(t, h, "")
	registerDevice(t, h, svc, "r")
	for range 2 {
		_, _ = svc.CallDeviceMethod(context.Background(), "r", &iotservice.MethodCall{MethodName: "firmwareUpdate", Payload: map[string]any{"updateId": "u"}})
	}
	want := []logged{
		{"r", "firmwareUpdate", "u", false, 0, "", ErrDeviceNotOnline},
		{"r", "firmwareUpdate", "u", false, 0, "", ErrThrottling},
	}
	if got := loggedOf(h.MethodLog("r", 0, 0).Entries); !reflect.DeepEqual(got, want) {
		t.Errorf("log = %+v, want %+v", got, want)
	}
}

// The log is saved in the store when the hub stops and read back when it starts again, and its
// numbering goes on.
func TestMethodLogSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	h1, err := New(Options{StateDir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", Unlimited: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h1.Close() })
	if err := h1.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc := serviceClient(t, h1, "")
	registerDevice(t, h1, svc, "d")
	for _, id := range []string{"a", "b"} {
		_, _ = svc.CallDeviceMethod(context.Background(), "d", &iotservice.MethodCall{MethodName: "firmwareUpdate", Payload: map[string]any{"updateId": id}})
	}
	before := h1.MethodLog("", 0, 0)
	if err := h1.Close(); err != nil {
		t.Fatal(err)
	}

	h2 := startHub(t, dir)
	if after := h2.MethodLog("", 0, 0); !reflect.DeepEqual(after.Entries, before.Entries) || len(after.Entries) != 2 {
		t.Fatalf("after the restart the log holds %+v, before %+v", after.Entries, before.Entries)
	}
	svc2 := serviceClient(t, h2, "")
	_, _ = svc2.CallDeviceMethod(context.Background(), "d", &iotservice.MethodCall{MethodName: "rebootDevice", Payload: map[string]any{"requestId": "c"}})
	p := h2.MethodLog("d", 2, 0)
	if len(p.Entries) != 1 || p.Entries[0].Seq != 3 || p.Entries[0].RequestID != "c" {
		t.Errorf("the first call after the restart: %+v, want seq 3", p.Entries)
	}
}

// The log keeps the newest entries within its size and counts those it dropped, also across a
// restart into a smaller log.
func TestMethodLogBounded(t *testing.T) {
	l := newMethodLog(3)
	for i := range 5 {
		l.add(MethodLogEntry{DeviceID: "d", RequestID: itoa(int64(i + 1))}, 3)
	}
	p := l.page("", 0, 10)
	if len(p.Entries) != 3 || p.Entries[0].Seq != 3 || p.Entries[2].Seq != 5 || p.Dropped != 2 || p.More || p.Next != 5 {
		t.Fatalf("page = %+v, want seqs 3–5 with 2 dropped", p)
	}
	if p := l.page("", 4, 10); len(p.Entries) != 1 || p.Entries[0].Seq != 5 {
		t.Errorf("after 4: %+v", p.Entries)
	}
	if p := l.page("", 5, 10); len(p.Entries) != 0 || p.Next != 5 || p.More {
		t.Errorf("after the newest: %+v", p)
	}
	if p := l.page("other", 0, 10); len(p.Entries) != 0 || p.Next != 5 {
		t.Errorf("another device: %+v", p)
	}
	all, dropped := l.all()
	small := newMethodLog(2)
	small.restore(all, dropped, 2)
	small.add(MethodLogEntry{DeviceID: "d"}, 2)
	if p := small.page("", 0, 10); len(p.Entries) != 2 || p.Entries[0].Seq != 5 || p.Entries[1].Seq != 6 || p.Dropped != 4 {
		t.Errorf("restored into a smaller log: %+v", p)
	}
}

func TestMethodLogRefusals(t *testing.T) {
	h := startHub(t, "")
	if res, _ := rawRequest(t, h, http.MethodGet, "/_localhub/methods", "", nil); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a token: %d, want 401", res.StatusCode)
	}
	auth := serviceToken(t, h, time.Now().Add(time.Hour))
	for _, q := range []string{"after=x", "after=-1", "limit=0", "limit=10001", "limit=ten"} {
		res, raw := rawRequest(t, h, http.MethodGet, "/_localhub/methods?"+q, auth, nil)
		if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(raw), "ArgumentInvalid") {
			t.Errorf("?%s: %d %s, want 400 ArgumentInvalid", q, res.StatusCode, raw)
		}
	}
	if res, _ := rawRequest(t, h, http.MethodPost, "/_localhub/methods", auth, nil); res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", res.StatusCode)
	}
}

func TestRequestIDOf(t *testing.T) {
	for _, tc := range []struct{ payload, want string }{
		{`{"fwPackageUri":"https://x/y","updateId":"u-1"}`, "u-1"},
		{`{"requestId":"r-1"}`, "r-1"},
		{`{"updateId":"u","requestId":"r"}`, "u"},
		{`{"updateId":7,"requestId":"r"}`, "r"},
		{`{"updateId":""}`, ""},
		{`{"method_number":"42"}`, ""},
		{`null`, ""},
		{`"updateId"`, ""},
		{`{"updateId":`, ""},
	} {
		if got := requestIDOf([]byte(tc.payload)); got != tc.want {
			t.Errorf("requestIDOf(%s) = %q, want %q", tc.payload, got, tc.want)
		}
	}
	long := `{"Response":"` + strings.Repeat("é", 200) + `"}`
	if got := cutResponse([]byte(long)); len(got) > maxLoggedResponse+len("…") || !strings.HasSuffix(got, "…") || !strings.HasPrefix(long, strings.TrimSuffix(got, "…")) {
		t.Errorf("cutResponse kept %d bytes: %q", len(got), got)
	}
}
