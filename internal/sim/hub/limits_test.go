package hub

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/require"
)

// IoT Hub's documented size limits, each refused with its error while
// another client of the same hub keeps being served: a direct method's
// payload both ways (128 KB), the twin's sections (tags 8 KB, desired and
// reported 32 KB each, by the documented measure) and MQTT packets
// (MaxPacketBytes).

// filled returns a twin section of n keys "k0", "k1", … whose documented
// size is exactly size: each value is a string that tops its key up to an
// equal share (string values may hold at most 4 KB).
func filled(size, n int) map[string]interface{} {
	doc := map[string]interface{}{}
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("k%d", i)
		share := size / n
		if i == n-1 {
			share = size - (n-1)*(size/n)
		}
		doc[key] = strings.Repeat("x", share-len(key))
	}
	return doc
}

func TestMethodPayloadLimit(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	big := connectDevice(t, h, registerDevice(t, h, svc, "big"))
	other := connectDevice(t, h, registerDevice(t, h, svc, "other"))
	for _, dc := range []*iotdevice.Client{big, other} {
		if err := dc.RegisterMethod(ctx, "echo", func(v map[string]interface{}) (int, map[string]interface{}, error) {
			return 200, v, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// The payload's JSON is {"s":"xx…"}: 8 bytes around the string.
	payload := func(size int) map[string]interface{} {
		return map[string]interface{}{"s": strings.Repeat("x", size-8)}
	}
	serves := func(t *testing.T, device string) {
		t.Helper()
		res, err := svc.CallDeviceMethod(ctx, device, &iotservice.MethodCall{MethodName: "echo", ResponseTimeout: 5, Payload: map[string]interface{}{"a": 1.0}})
		if err != nil || res.Status != 200 || res.Payload["a"] != 1.0 {
			t.Fatalf("%s after a refusal: %+v, %v", device, res, err)
		}
	}

	t.Run("request at the limit", func(t *testing.T) {
		res, err := svc.CallDeviceMethod(ctx, "big", &iotservice.MethodCall{MethodName: "echo", ResponseTimeout: 5, Payload: payload(maxMethodPayload)})
		if err != nil || len(res.Payload["s"].(string)) != maxMethodPayload-8 {
			t.Fatalf("= %v", err)
		}
	})
	t.Run("request over the limit", func(t *testing.T) {
		_, err := svc.CallDeviceMethod(ctx, "big", &iotservice.MethodCall{MethodName: "echo", ResponseTimeout: 5, Payload: payload(maxMethodPayload + 1)})
		code, body := requestError(t, err)
		// The client decodes a 400 without its ErrorCode: the Message carries it.
		if code != http.StatusBadRequest || !strings.HasPrefix(body.Message, "ErrorCode:ArgumentInvalid;") || !strings.Contains(body.Message, "131073 bytes, more than the 131072 allowed") {
			t.Errorf("= %d %+v, want 400 ArgumentInvalid naming the sizes", code, body)
		}
		serves(t, "other")
		serves(t, "big")
	})
	t.Run("device answer over the limit", func(t *testing.T) {
		if err := big.RegisterMethod(ctx, "dump", func(map[string]interface{}) (int, map[string]interface{}, error) {
			return 200, payload(maxMethodPayload + 1), nil
		}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := svc.CallDeviceMethod(ctx, "big", &iotservice.MethodCall{MethodName: "dump", ResponseTimeout: 30})
		code, body := requestError(t, err)
		if code != http.StatusRequestEntityTooLarge || body.ErrorCode != 413001 || !strings.Contains(body.Message, "131073 bytes") {
			t.Errorf("= %d %+v, want 413 413001 naming the size", code, body)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("the refusal took %v: the call waited for its timeout", d)
		}
		serves(t, "other")
		serves(t, "big")
	})
}

func TestTwinSizeLimits(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	registerDevice(t, h, svc, "tw")
	dc := connectDevice(t, h, registerDevice(t, h, svc, "dev"))
	other := connectDevice(t, h, registerDevice(t, h, svc, "other"))

	// Eight keys of 4 KB values fill a 32 KB section; two fill the 8 KB of
	// tags. Encoded as JSON each is larger than its limit: the documented
	// measure counts keys and string values only.
	tests := []struct {
		name  string
		limit int
		keys  int
		twin  func(doc map[string]interface{}) *iotservice.Twin
	}{
		{"tags", maxTagsBytes, 2, func(doc map[string]interface{}) *iotservice.Twin {
			return &iotservice.Twin{DeviceID: "tw", Tags: doc}
		}},
		{"desired", maxPropertiesBytes, 8, func(doc map[string]interface{}) *iotservice.Twin {
			return &iotservice.Twin{DeviceID: "tw", Properties: &iotservice.Properties{Desired: doc}}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := svc.UpdateDeviceTwin(ctx, tc.twin(filled(tc.limit, tc.keys))); err != nil {
				t.Fatalf("a section of exactly %d bytes refused: %v", tc.limit, err)
			}
			_, err := svc.UpdateDeviceTwin(ctx, tc.twin(map[string]interface{}{"k0": strings.Repeat("y", tc.limit/tc.keys-1)}))
			code, body := requestError(t, err)
			if code != http.StatusBadRequest || !strings.HasPrefix(body.Message, "ErrorCode:ArgumentInvalid;") ||
				!strings.Contains(body.Message, fmt.Sprintf("would be %d bytes, more than the %d allowed", tc.limit+1, tc.limit)) {
				t.Errorf("one byte over = %d %+v, want 400 ArgumentInvalid naming the sizes", code, body)
			}
			if _, err := svc.GetDeviceTwin(ctx, "other"); err != nil {
				t.Errorf("another twin after the refusal: %v", err)
			}
		})
	}

	t.Run("reported", func(t *testing.T) {
		if _, err := dc.UpdateTwinState(ctx, iotdevice.TwinState(filled(maxPropertiesBytes, 8))); err != nil {
			t.Fatalf("reported properties of exactly %d bytes refused: %v", maxPropertiesBytes, err)
		}
		_, err := dc.UpdateTwinState(ctx, iotdevice.TwinState{"k8": "z"})
		if err == nil || !strings.Contains(err.Error(), "400") {
			t.Errorf("one more property = %v, want status 400", err)
		}
		twin, err := svc.GetDeviceTwin(ctx, "dev")
		if err != nil || twin.Properties.Reported["k8"] != nil || twin.Properties.Reported["k7"] == nil {
			t.Errorf("twin after the refused patch: %v %v", twin, err)
		}
		// The device and another keep being served.
		if _, err := dc.UpdateTwinState(ctx, iotdevice.TwinState{"k0": nil}); err != nil {
			t.Errorf("a patch that shrinks the section: %v", err)
		}
		if _, err := other.UpdateTwinState(ctx, iotdevice.TwinState{"ok": true}); err != nil {
			t.Errorf("another device's patch: %v", err)
		}
	})
}

func TestOversizedPacketEndsOnlyItsConnection(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	cs := registerDevice(t, h, svc, "flood")
	other := connectDevice(t, h, registerDevice(t, h, svc, "other"))
	if err := other.RegisterMethod(ctx, "ping", func(map[string]interface{}) (int, map[string]interface{}, error) {
		return 200, nil, nil
	}); err != nil {
		t.Fatal(err)
	}

	token := deviceToken(t, "localhost", deviceKey(cs), time.Now().Add(time.Hour))
	lost := make(chan error, 1)
	c, err := rawDevice(t, h, "flood", "localhost/flood/?api-version=2021-04-12", token, func(err error) { lost <- err })
	if err != nil {
		t.Fatal(err)
	}
	topic := "devices/flood/messages/events/"
	// At the limit: a packet's fixed header byte and remaining length, the
	// topic with its 2-byte length and the packet ID count toward it.
	fits := make([]byte, MaxPacketBytes-1-2-len(topic)-2)
	if tok := c.Publish(topic, 1, false, fits); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("a packet of exactly %d bytes: %v", MaxPacketBytes, tok.Error())
	}
	require.Eventually(t, func() bool { return h.Stats().TelemetryMessages == 1 }, 5*time.Second, 20*time.Millisecond, "waiting for the message at the limit counted")

	c.Publish(topic, 1, false, make([]byte, len(fits)+1))
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("a packet one byte over the limit did not end the connection")
	}
	if n := h.Stats().TelemetryMessages; n != 1 {
		t.Errorf("telemetry messages = %d, want the oversized one dropped", n)
	}

	if res, err := svc.CallDeviceMethod(ctx, "other", &iotservice.MethodCall{MethodName: "ping", ResponseTimeout: 5}); err != nil || res.Status != 200 {
		t.Errorf("another device after the refusal: %+v, %v", res, err)
	}
	again, err := rawDevice(t, h, "flood", "localhost/flood/?api-version=2021-04-12", token, nil)
	if err != nil {
		t.Fatalf("reconnect after the refusal: %v", err)
	}
	if tok := again.Publish(topic, 1, false, "{}"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Errorf("publish after reconnecting: %v", tok.Error())
	}
}
