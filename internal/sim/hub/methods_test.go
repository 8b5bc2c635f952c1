package hub

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/require"
)

func TestMethodRoundTrip(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	dc := connectDevice(t, h, registerDevice(t, h, svc, "m-1"))

	var calls atomic.Int32
	if err := dc.RegisterMethod(ctx, "sum", func(v map[string]interface{}) (int, map[string]interface{}, error) {
		calls.Add(1)
		return 222, map[string]interface{}{"result": v["a"].(float64) + v["b"].(float64)}, nil
	}); err != nil {
		t.Fatalf("RegisterMethod: %v", err)
	}
	res, err := svc.CallDeviceMethod(ctx, "m-1", &iotservice.MethodCall{
		MethodName:      "sum",
		ResponseTimeout: 5,
		Payload:         map[string]interface{}{"a": 1.5, "b": 3},
	})
	if err != nil {
		t.Fatalf("CallDeviceMethod: %v", err)
	}
	want := &iotservice.MethodResult{Status: 222, Payload: map[string]interface{}{"result": 4.5}}
	if !reflect.DeepEqual(res, want) {
		t.Errorf("result = %+v, want %+v", res, want)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
	if got := h.MethodInvocations("m-1"); !reflect.DeepEqual(got, map[string]int{"sum": 1}) {
		t.Errorf("MethodInvocations = %v", got)
	}

	// A handler error: the Go SDK answers status 500 with {"error": …}.
	if err := dc.RegisterMethod(ctx, "fail", func(map[string]interface{}) (int, map[string]interface{}, error) {
		return 0, nil, errors.New("disk full")
	}); err != nil {
		t.Fatalf("RegisterMethod: %v", err)
	}
	res, err = svc.CallDeviceMethod(ctx, "m-1", &iotservice.MethodCall{MethodName: "fail", ResponseTimeout: 5})
	if err != nil {
		t.Fatalf("CallDeviceMethod(fail): %v", err)
	}
	if res.Status != 500 || res.Payload["error"] != "disk full" {
		t.Errorf("failing method = %+v, want status 500 with the error", res)
	}
	if got := h.MethodInvocations("m-1"); !reflect.DeepEqual(got, map[string]int{"sum": 1, "fail": 1}) {
		t.Errorf("MethodInvocations = %v", got)
	}
}

func TestMethodErrors(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	registerDevice(t, h, svc, "offline")

	t.Run("unknown device", func(t *testing.T) {
		_, err := svc.CallDeviceMethod(ctx, "ghost", &iotservice.MethodCall{MethodName: "x"})
		if code, body := requestError(t, err); code != http.StatusNotFound || body.ErrorCode != 404001 {
			t.Errorf("= %d %+v, want 404 404001", code, body)
		}
	})
	t.Run("offline device", func(t *testing.T) {
		start := time.Now()
		_, err := svc.CallDeviceMethod(ctx, "offline", &iotservice.MethodCall{MethodName: "x", ResponseTimeout: 5})
		code, body := requestError(t, err)
		if code != http.StatusNotFound || body.ErrorCode != 404103 ||
			!strings.HasPrefix(body.Message, "ErrorCode:DeviceNotOnline;") || body.ExceptionMessage == "" {
			t.Errorf("= %d %+v, want 404 404103 DeviceNotOnline", code, body)
		}
		if time.Since(start) > 2*time.Second {
			t.Errorf("connectTimeout 0 waited %v", time.Since(start))
		}
	})
	t.Run("offline device after connect timeout", func(t *testing.T) {
		start := time.Now()
		_, err := svc.CallDeviceMethod(ctx, "offline", &iotservice.MethodCall{MethodName: "x", ConnectTimeout: 1, ResponseTimeout: 5})
		if code, body := requestError(t, err); code != http.StatusNotFound || body.ErrorCode != 404103 {
			t.Errorf("= %d %+v, want 404 404103", code, body)
		}
		if d := time.Since(start); d < time.Second {
			t.Errorf("returned after %v, before the connect timeout", d)
		}
	})

	auth := serviceToken(t, h, time.Now().Add(time.Hour))
	bad := []struct{ name, body string }{
		{"no method name", `{"payload":{}}`},
		{"response timeout too short", `{"methodName":"x","responseTimeoutInSeconds":4}`},
		{"response timeout too long", `{"methodName":"x","responseTimeoutInSeconds":301}`},
		{"connect timeout negative", `{"methodName":"x","connectTimeoutInSeconds":-1}`},
		{"connect timeout too long", `{"methodName":"x","connectTimeoutInSeconds":301}`},
		{"payload too large", `{"methodName":"x","payload":"` + strings.Repeat("a", 128*1024) + `"}`},
		{"method name with slash", `{"methodName":"a/b"}`},
		{"not json", `{"methodName":`},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			res, raw := rawRequest(t, h, http.MethodPost, "/twins/offline/methods?api-version=2020-09-30", auth, strings.NewReader(tc.body))
			var body errorBody
			if res.StatusCode != http.StatusBadRequest || json.Unmarshal(raw, &body) != nil || body.ErrorCode != 400004 {
				t.Errorf("= %d %s, want 400 400004", res.StatusCode, raw)
			}
		})
	}
}

func TestMethodConnectTimeoutWaitsForLateDevice(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	cs := registerDevice(t, h, svc, "late")

	type result struct {
		res *iotservice.MethodResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := svc.CallDeviceMethod(ctx, "late", &iotservice.MethodCall{
			MethodName: "rebootDevice", ConnectTimeout: 20, ResponseTimeout: 5,
			Payload: map[string]interface{}{"method_number": "42"},
		})
		done <- result{res, err}
	}()

	require.Eventually(t, func() bool { return h.conns.waiters("late") == 1 }, 10*time.Second, 10*time.Millisecond,
		"the call never waited for the device")
	dc := connectDevice(t, h, cs)
	if err := dc.RegisterMethod(ctx, "rebootDevice", func(v map[string]interface{}) (int, map[string]interface{}, error) {
		return 200, map[string]interface{}{"Response": "rebooting", "echo": v["method_number"]}, nil
	}); err != nil {
		t.Fatalf("RegisterMethod: %v", err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("CallDeviceMethod: %v", r.err)
	}
	if r.res.Status != 200 || r.res.Payload["echo"] != "42" {
		t.Errorf("result = %+v", r.res)
	}
	// The hub's records: it received the call before the device connected
	// and ended it, delivered and answered, after.
	connected, connectedAt, _ := h.conns.state("late")
	require.True(t, connected)
	entries := h.MethodLog("late", 0, 0).Entries
	require.Len(t, entries, 1)
	e := entries[0]
	if !e.Time.Before(connectedAt) || e.Time.Add(e.Duration).Before(connectedAt) || !e.Delivered || e.Status != 200 {
		t.Errorf("method log = %+v, want a call received before the device connected at %s, delivered and answered 200 after", e, connectedAt.UTC())
	}
	if got := h.MethodInvocations("late"); got["rebootDevice"] != 1 {
		t.Errorf("MethodInvocations = %v, want exactly one rebootDevice", got)
	}
}

func TestMethodTimeouts(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()

	t.Run("slow device", func(t *testing.T) {
		t.Parallel()
		dc := connectDevice(t, h, registerDevice(t, h, svc, "slow"))
		release := make(chan struct{})
		t.Cleanup(func() { close(release) })
		if err := dc.RegisterMethod(ctx, "wait", func(map[string]interface{}) (int, map[string]interface{}, error) {
			<-release
			return 200, nil, nil
		}); err != nil {
			t.Fatalf("RegisterMethod: %v", err)
		}
		start := time.Now()
		_, err := svc.CallDeviceMethod(ctx, "slow", &iotservice.MethodCall{MethodName: "wait", ResponseTimeout: 5})
		code, body := requestError(t, err)
		if code != http.StatusGatewayTimeout || body.ErrorCode != 504101 || !strings.HasPrefix(body.Message, "ErrorCode:GatewayTimeout;") {
			t.Errorf("= %d %+v, want 504 504101", code, body)
		}
		if d := time.Since(start); d < 5*time.Second || d > 8*time.Second {
			t.Errorf("timed out after %v, want about 5s", d)
		}
		if got := h.MethodInvocations("slow"); got["wait"] != 1 {
			t.Errorf("MethodInvocations = %v", got)
		}
	})
	t.Run("connected but not subscribed", func(t *testing.T) {
		t.Parallel()
		connectDevice(t, h, registerDevice(t, h, svc, "deaf"))
		_, err := svc.CallDeviceMethod(ctx, "deaf", &iotservice.MethodCall{MethodName: "x", ResponseTimeout: 5})
		if code, body := requestError(t, err); code != http.StatusGatewayTimeout || body.ErrorCode != 504101 {
			t.Errorf("= %d %+v, want 504 504101", code, body)
		}
		if got := h.MethodInvocations("deaf"); len(got) != 0 {
			t.Errorf("MethodInvocations = %v, want none delivered", got)
		}
	})
}

func TestMethodGoesOnlyToTarget(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	var got [2]atomic.Int32
	for i, id := range []string{"dev-a", "dev-b"} {
		dc := connectDevice(t, h, registerDevice(t, h, svc, id))
		if err := dc.RegisterMethod(ctx, "ping", func(map[string]interface{}) (int, map[string]interface{}, error) {
			got[i].Add(1)
			return 200, map[string]interface{}{"from": id}, nil
		}); err != nil {
			t.Fatalf("RegisterMethod: %v", err)
		}
	}
	res, err := svc.CallDeviceMethod(ctx, "dev-b", &iotservice.MethodCall{MethodName: "ping", ResponseTimeout: 5})
	if err != nil {
		t.Fatalf("CallDeviceMethod: %v", err)
	}
	if res.Payload["from"] != "dev-b" {
		t.Errorf("answer from %v, want dev-b", res.Payload["from"])
	}
	// The hub's records say what it sent: nothing to dev-a.
	if inv := h.MethodInvocations("dev-a"); len(inv) != 0 {
		t.Errorf("MethodInvocations(dev-a) = %v", inv)
	}
	if log := h.MethodLog("dev-a", 0, 0).Entries; len(log) != 0 {
		t.Errorf("MethodLog(dev-a) = %+v", log)
	}
	// The devices' handlers say what arrived. A request the broker routed
	// to dev-a as well would reach its handler on its own connection, in no
	// order with dev-b's answer, and nothing records that it is on its way:
	// showing it never arrives needs a pause that gives it the time to.
	time.Sleep(300 * time.Millisecond)
	if a, b := got[0].Load(), got[1].Load(); a != 0 || b != 1 {
		t.Errorf("handler runs: dev-a %d, dev-b %d; want 0 and 1", a, b)
	}
}

func TestParseMethodCall(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		ok      bool
		payload string
		resp    time.Duration
		conn    time.Duration
	}{
		{name: "defaults", body: `{"methodName":"reboot"}`, ok: true, payload: "null", resp: 30 * time.Second},
		{name: "zero timeouts mean defaults", body: `{"methodName":"m","responseTimeoutInSeconds":0,"connectTimeoutInSeconds":0}`, ok: true, payload: "null", resp: 30 * time.Second},
		{name: "limits", body: `{"methodName":"m","responseTimeoutInSeconds":5,"connectTimeoutInSeconds":300}`, ok: true, payload: "null", resp: 5 * time.Second, conn: 300 * time.Second},
		{name: "max response", body: `{"methodName":"m","responseTimeoutInSeconds":300}`, ok: true, payload: "null", resp: 300 * time.Second},
		{name: "object payload", body: `{"methodName":"m","payload":{"fwPackageUri":"https://x"}}`, ok: true, payload: `{"fwPackageUri":"https://x"}`, resp: 30 * time.Second},
		{name: "scalar payload", body: `{"methodName":"m","payload":42}`, ok: true, payload: `42`, resp: 30 * time.Second},
		{name: "no name", body: `{"payload":{}}`},
		{name: "empty name", body: `{"methodName":""}`},
		{name: "wildcard in name", body: `{"methodName":"a+"}`},
		{name: "response 4", body: `{"methodName":"m","responseTimeoutInSeconds":4}`},
		{name: "response 301", body: `{"methodName":"m","responseTimeoutInSeconds":301}`},
		{name: "response huge", body: `{"methodName":"m","responseTimeoutInSeconds":9223372036854775807}`},
		{name: "connect -1", body: `{"methodName":"m","connectTimeoutInSeconds":-1}`},
		{name: "connect 301", body: `{"methodName":"m","connectTimeoutInSeconds":301}`},
		{name: "timeout not a number", body: `{"methodName":"m","connectTimeoutInSeconds":"5"}`},
		{name: "payload too large", body: `{"methodName":"m","payload":"` + strings.Repeat("x", maxMethodPayload) + `"}`},
		{name: "not json", body: `methodName=m`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			call, err := parseMethodCall([]byte(tc.body))
			if !tc.ok {
				if ErrorCode(err) != ErrArgumentInvalid {
					t.Fatalf("parseMethodCall error = %v, want ArgumentInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseMethodCall: %v", err)
			}
			if string(call.payload) != tc.payload || call.responseTimeout != tc.resp || call.connectTimeout != tc.conn {
				t.Errorf("call = %+v", call)
			}
		})
	}
}

func TestResponsePayload(t *testing.T) {
	tests := []struct {
		in, want string
		text     bool // the device's text was not JSON
	}{
		{``, `null`, false},
		{`  `, `null`, false},
		{"\r\n\t", `null`, false},
		{`{"a":1}`, `{"a":1}`, false},
		{`{ "a" : 1 }`, `{ "a" : 1 }`, false},
		{`[1]`, `[1]`, false},
		{` {"padded":1} `, `{"padded":1}`, false},
		{"\"quoted\"", "\"quoted\"", false},
		{`12.5`, `12.5`, false},
		{`{"u":"\u00e9"}`, `{"u":"\u00e9"}`, false},
		{`true`, `true`, false},
		{`null`, `null`, false},
		{`{"nested":{}}`, `{"nested":{}}`, false},
		{`{"html":"<b>"}`, `{"html":"<b>"}`, false},
		{`not json`, `"not json"`, true},
		{`{"broken":`, `"{\"broken\":"`, true},
		{`<html></html>`, `"\u003chtml\u003e\u003c/html\u003e"`, true},
		{`{"x":1} trailer`, `"{\"x\":1} trailer"`, true},
		{"\"\xff\"", `"\"\ufffd\""`, true},
		{"\u00a0{}", "\"\u00a0{}\"", true},
		{"\v{}", `"\u000b{}"`, true},
	}
	for _, tc := range tests {
		got, text := responsePayload([]byte(tc.in))
		if string(got) != tc.want || text != tc.text {
			t.Errorf("responsePayload(%q) = %s, %v; want %s, %v", tc.in, got, text, tc.want, tc.text)
		}
		if !json.Valid(got) {
			t.Errorf("responsePayload(%q) = %q is not JSON", tc.in, got)
		}
	}
}
