package hub

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestMethodAnswerPassThrough answers direct methods from a raw MQTT device
// with every kind of body and reads the REST answer as raw HTTPS: the
// amenzhinsky service client decodes the payload into a map and cannot show
// what the hub sent for anything but an object.
func TestMethodAnswerPassThrough(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	cs := registerDevice(t, h, svc, "answers")

	tests := []struct {
		name   string
		status int
		body   string // what the device publishes
		want   string // the REST answer's payload, byte for byte
	}{
		{name: "object", status: 200, body: `{"Response":"This is the response from the device"}`, want: `{"Response":"This is the response from the device"}`},
		{name: "object as written", status: 200, body: `{ "a" : "<b>&amp;" , "n" : [1, 2.50] }`, want: `{ "a" : "<b>&amp;" , "n" : [1, 2.50] }`},
		{name: "array", status: 200, body: `[1,"two",{"three":3},null]`, want: `[1,"two",{"three":3},null]`},
		{name: "string", status: 200, body: `"Firmware update started"`, want: `"Firmware update started"`},
		{name: "string with escapes", status: 200, body: `"line\nnext \u00e9 \"q\""`, want: `"line\nnext \u00e9 \"q\""`},
		{name: "integer", status: 200, body: `42`, want: `42`},
		{name: "negative exponent", status: 200, body: `-1.5e3`, want: `-1.5e3`},
		{name: "number beyond float64", status: 200, body: `123456789012345678901234567890`, want: `123456789012345678901234567890`},
		{name: "true", status: 200, body: `true`, want: `true`},
		{name: "false", status: 200, body: `false`, want: `false`},
		{name: "null", status: 200, body: `null`, want: `null`},
		{name: "padded", status: 200, body: " \r\n{\"a\":1}\t\n", want: `{"a":1}`},
		{name: "empty body", status: 200, body: ``, want: `null`},
		{name: "white space only", status: 204, body: " \n", want: `null`},
		{name: "error status with object", status: 500, body: `{"error":"disk full"}`, want: `{"error":"disk full"}`},
		{name: "device status kept", status: 409, body: `"busy"`, want: `"busy"`},
		{name: "negative status", status: -1, body: `{}`, want: `{}`},
		// Not JSON: the device's text, as a JSON string, with its status.
		{name: "single-quoted object", status: 200, body: `{'filename': 'logs.zip'}`, want: `"{'filename': 'logs.zip'}"`},
		{name: "plain text", status: 200, body: `rebooting`, want: `"rebooting"`},
		{name: "truncated JSON", status: 200, body: `{"a":`, want: `"{\"a\":"`},
		{name: "two documents", status: 200, body: `{} {}`, want: `"{} {}"`},
		{name: "invalid UTF-8", status: 200, body: "\"\xff\"", want: `"\"\ufffd\""`},
		{name: "non-JSON white space", status: 200, body: "\u00a0{}", want: "\"\u00a0{}\""},
		{name: "markup", status: 400, body: `<error/>`, want: `"\u003cerror/\u003e"`},
	}
	answers := map[string]int{}
	for i := range tests {
		answers["m"+strconv.Itoa(i)] = i
	}

	dev, err := rawDevice(t, h, "answers", "localhost/answers/?api-version=2021-04-12", deviceToken(t, "localhost", deviceKey(cs), time.Now().Add(time.Hour)), nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	// $iothub/methods/POST/{name}/?$rid={rid}: the method name picks the
	// answer.
	tok := dev.Subscribe("$iothub/methods/POST/#", 0, func(c paho.Client, m paho.Message) {
		rest := strings.TrimPrefix(m.Topic(), "$iothub/methods/POST/")
		name, query, _ := strings.Cut(rest, "/?")
		i, ok := answers[name]
		if !ok {
			t.Errorf("unexpected method request %q", m.Topic())
			return
		}
		rid := strings.TrimPrefix(query, "$rid=")
		c.Publish("$iothub/methods/res/"+strconv.Itoa(tests[i].status)+"/?$rid="+rid, 0, false, []byte(tests[i].body))
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	auth := serviceToken(t, h, time.Now().Add(time.Hour))
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			call := `{"methodName":"m` + strconv.Itoa(i) + `","payload":{"method_number":"42"},"responseTimeoutInSeconds":5}`
			res, raw := rawRequest(t, h, http.MethodPost, "/twins/answers/methods?api-version=2020-09-30", auth, strings.NewReader(call))
			if res.StatusCode != http.StatusOK {
				t.Fatalf("= %d %s, want 200", res.StatusCode, raw)
			}
			want := `{"status":` + strconv.Itoa(tc.status) + `,"payload":` + tc.want + `}`
			if string(raw) != want {
				t.Errorf("answer to %q =\n%s\nwant\n%s", tc.body, raw, want)
			}
			var decoded struct {
				Status  *int            `json:"status"`
				Payload json.RawMessage `json:"payload"`
			}
			if err := json.Unmarshal(raw, &decoded); err != nil || decoded.Status == nil || *decoded.Status != tc.status || decoded.Payload == nil {
				t.Errorf("answer %s does not decode to status %d and a payload: %v", raw, tc.status, err)
			}
			if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
}
