package hub

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/sim/hub/sas"
)

func TestDeviceAuthentication(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	cs := registerDevice(t, h, svc, "auth-1")
	key := deviceKey(cs)
	otherKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	hour := time.Now().Add(time.Hour)

	t.Run("sdk with wrong key", func(t *testing.T) {
		dc := newTestDevice(t, h, strings.Replace(cs, key, otherKey, 1))
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		err := dc.Connect(ctx)
		if err == nil || !strings.Contains(err.Error(), "not Authorized") {
			t.Errorf("Connect = %v, want a not-authorized CONNACK refusal", err)
		}
	})

	secondary := func() string {
		d, err := svc.GetDevice(context.Background(), "auth-1")
		if err != nil {
			t.Fatal(err)
		}
		return d.Authentication.SymmetricKey.SecondaryKey
	}()

	tests := []struct {
		name     string
		clientID string
		username string
		password string
		wantErr  string // substring of paho's refusal; empty for success
	}{
		{name: "primary key, Go SDK user name", clientID: "auth-1", username: "localhost/auth-1/api-version=2020-09-30", password: deviceToken(t, "localhost", key, hour)},
		{name: "secondary key, documented user name", clientID: "auth-1", username: "localhost/auth-1/?api-version=2021-04-12", password: deviceToken(t, "localhost", secondary, hour)},
		{name: "device-scoped resource with port", clientID: "auth-1", username: "LOCALHOST:8883/auth-1/?api-version=2021-04-12", password: deviceToken(t, "localhost:8883/devices/auth-1", key, hour)},
		{name: "expired token", clientID: "auth-1", username: "localhost/auth-1/?api-version=1", password: deviceToken(t, "localhost", key, time.Now().Add(-time.Minute)), wantErr: "not Authorized"},
		{name: "wrong key", clientID: "auth-1", username: "localhost/auth-1/?api-version=1", password: deviceToken(t, "localhost", otherKey, hour), wantErr: "not Authorized"},
		{name: "malformed token", clientID: "auth-1", username: "localhost/auth-1/?api-version=1", password: "SharedAccessSignature sig=abc", wantErr: "bad user name or password"},
		{name: "no token", clientID: "auth-1", username: "localhost/auth-1/?api-version=1", password: "", wantErr: "bad user name or password"},
		{name: "malformed user name", clientID: "auth-1", username: "auth-1", password: deviceToken(t, "localhost", key, hour), wantErr: "bad user name or password"},
		{name: "other hub", clientID: "auth-1", username: "elsewhere/auth-1/?api-version=1", password: deviceToken(t, "localhost", key, hour), wantErr: "not Authorized"},
		{name: "token for another device", clientID: "auth-1", username: "localhost/auth-1/?api-version=1", password: deviceToken(t, "localhost/devices/auth-2", key, hour), wantErr: "not Authorized"},
		{name: "user name for another device", clientID: "auth-1", username: "localhost/auth-2/?api-version=1", password: deviceToken(t, "localhost", key, hour), wantErr: "not Authorized"},
		{name: "unknown device", clientID: "ghost", username: "localhost/ghost/?api-version=1", password: deviceToken(t, "localhost", key, hour), wantErr: "not Authorized"},
		{name: "iothubowner policy token", clientID: "auth-1", username: "localhost/auth-1/?api-version=1", password: sas.Sign("localhost/devices/auth-1", h.policyKey, hour, PolicyName)},
		{name: "policy name with device key", clientID: "auth-1", username: "localhost/auth-1/?api-version=1", password: sas.Sign("localhost", mustDecode(t, key), hour, PolicyName), wantErr: "not Authorized"},
		{name: "empty client ID", clientID: "", username: "localhost/auth-1/?api-version=1", password: deviceToken(t, "localhost", key, hour), wantErr: "identifier rejected"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := rawDevice(t, h, tc.clientID, tc.username, tc.password, nil)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				c.Disconnect(100)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("connect error = %v, want %q", err, tc.wantErr)
			}
		})
	}

	t.Run("disabled device", func(t *testing.T) {
		d, err := svc.GetDevice(context.Background(), "auth-1")
		if err != nil {
			t.Fatal(err)
		}
		dc := connectDevice(t, h, cs)
		_ = dc
		d.Status = iotservice.Disabled
		if _, err := svc.UpdateDevice(context.Background(), d); err != nil {
			t.Fatalf("disable: %v", err)
		}
		require.Eventually(t, func() bool {
			connected, _, _ := h.conns.state("auth-1")
			return !connected
		}, 5*time.Second, 20*time.Millisecond, "waiting for the disabled device to be disconnected")
		_, err = rawDevice(t, h, "auth-1", "localhost/auth-1/?api-version=1", deviceToken(t, "localhost", key, hour), nil)
		if err == nil || !strings.Contains(err.Error(), "server Unavailable") {
			t.Errorf("connect error = %v, want server unavailable (device disabled)", err)
		}
	})
}

func TestTokenExpiryDisconnects(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	cs := registerDevice(t, h, svc, "exp")
	lost := make(chan error, 1)
	_, err := rawDevice(t, h, "exp", "localhost/exp/?api-version=1", deviceToken(t, "localhost", deviceKey(cs), time.Now().Add(2*time.Second)),
		func(err error) { lost <- err })
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("connection outlived its token")
	}
}

func TestDeviceIsolation(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	csA := registerDevice(t, h, svc, "iso-a")
	csB := registerDevice(t, h, svc, "iso-b")
	dcB := connectDevice(t, h, csB)
	events, err := dcB.SubscribeEvents(context.Background())
	if err != nil {
		t.Fatalf("SubscribeEvents: %v", err)
	}

	hour := time.Now().Add(time.Hour)
	lost := make(chan error, 1)
	a, err := rawDevice(t, h, "iso-a", "localhost/iso-a/?api-version=1", deviceToken(t, "localhost", deviceKey(csA), hour), func(err error) { lost <- err })
	if err != nil {
		t.Fatalf("connect A: %v", err)
	}
	for _, filter := range []string{"devices/iso-b/messages/devicebound/#", "devices/+/messages/devicebound/#", "#", "$iothub/#", "devices/iso-b/messages/events/#"} {
		tok := a.Subscribe(filter, 1, func(paho.Client, paho.Message) {})
		if !tok.WaitTimeout(5 * time.Second) {
			t.Fatalf("subscribe %s timed out", filter)
		}
		if code := tok.(*paho.SubscribeToken).Result()[filter]; code != 0x80 {
			t.Errorf("subscribe %s granted with %#x, want 0x80", filter, code)
		}
	}
	for _, filter := range []string{"devices/iso-a/messages/devicebound/#", "$iothub/methods/POST/#", "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#"} {
		tok := a.Subscribe(filter, 1, func(paho.Client, paho.Message) {})
		if !tok.WaitTimeout(5*time.Second) || tok.(*paho.SubscribeToken).Result()[filter] >= 0x80 {
			t.Errorf("own subscription %s refused", filter)
		}
	}
	// QoS 0 to B's cloud-to-device topic: dropped, B sees nothing.
	a.Publish("devices/iso-b/messages/devicebound/x", 0, false, "spoof").WaitTimeout(5 * time.Second)
	select {
	case m := <-events.C():
		t.Errorf("device B received %q from device A", m.Payload)
	case <-time.After(500 * time.Millisecond):
	}
	// QoS 1 to another device's telemetry: IoT Hub closes the connection.
	a.Publish("devices/iso-b/messages/events/", 1, false, "spoof")
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Error("publishing to another device's topic did not end the connection")
	}
	if n := h.Stats().TelemetryMessages; n != 0 {
		t.Errorf("telemetry count = %d after refused publishes", n)
	}
}

func TestTakeover(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	cs := registerDevice(t, h, svc, "twice")
	lost := make(chan error, 1)
	first, err := rawDevice(t, h, "twice", "localhost/twice/?api-version=1", deviceToken(t, "localhost", deviceKey(cs), time.Now().Add(time.Hour)), func(err error) { lost <- err })
	if err != nil {
		t.Fatalf("first connect: %v", err)
	}
	first.Subscribe("$iothub/methods/POST/#", 1, func(_ paho.Client, m paho.Message) {
		t.Errorf("old connection got %s", m.Topic())
	}).WaitTimeout(5 * time.Second)

	second := connectDevice(t, h, cs)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("the first connection was not taken over")
	}
	if err := second.RegisterMethod(context.Background(), "who", func(map[string]interface{}) (int, map[string]interface{}, error) {
		return 200, map[string]interface{}{"me": "second"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	res, err := svc.CallDeviceMethod(context.Background(), "twice", &iotservice.MethodCall{MethodName: "who", ResponseTimeout: 5})
	if err != nil || res.Payload["me"] != "second" {
		t.Errorf("CallDeviceMethod = %+v, %v", res, err)
	}
	if connected, _, _ := h.conns.state("twice"); !connected {
		t.Error("device shows disconnected after the old connection closed")
	}
}

func TestParseUsername(t *testing.T) {
	tests := []struct {
		in, host, device string
		ok               bool
	}{
		{"myhub.azure-devices.net/dev1/?api-version=2021-04-12", "myhub.azure-devices.net", "dev1", true},
		{"localhost/dev1/api-version=2020-09-30", "localhost", "dev1", true},
		{"localhost:8883/dev1/?api-version=2020-09-30&DeviceClientType=c%2F1", "localhost:8883", "dev1", true},
		{"localhost/dev1/api-version=2020-09-30&model-id=dtmi%3Ax%3B1", "localhost", "dev1", true},
		{"localhost/dev1", "", "", false},
		{"localhost/dev1/", "", "", false},
		{"localhost//?api-version=1", "", "", false},
		{"/dev1/?api-version=1", "", "", false},
		{"localhost/dev1/?version=1", "", "", false},
		{"", "", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			host, device, ok := parseUsername(tc.in)
			if ok != tc.ok || host != tc.host || device != tc.device {
				t.Errorf("parseUsername = %q, %q, %v; want %q, %q, %v", host, device, ok, tc.host, tc.device, tc.ok)
			}
		})
	}
}

func TestResourceCoverage(t *testing.T) {
	h := &Hub{opts: Options{HostName: "MyHub.example"}}
	tests := []struct {
		resource        string
		device, service bool
	}{
		{"myhub.example", true, true},
		{"myhub.example/", true, true},
		{"MYHUB.EXAMPLE:8443", true, true},
		{"myhub.example/devices", true, false},
		{"myhub.example/devices/d1", true, false},
		{"myhub.example/devices/d1/", true, false},
		{"myhub.example/devices/d2", false, false},
		{"myhub.example/devices/d1/modules/m", false, false},
		{"myhub.example/other", false, false},
		{"otherhub.example", false, false},
		{"myhub.example.evil", false, false},
		{"", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.resource, func(t *testing.T) {
			if got := h.coversDevice(tc.resource, "d1"); got != tc.device {
				t.Errorf("coversDevice = %v, want %v", got, tc.device)
			}
			if got := h.coversService(tc.resource); got != tc.service {
				t.Errorf("coversService = %v, want %v", got, tc.service)
			}
		})
	}
}

func TestTopicRights(t *testing.T) {
	tests := []struct {
		topic              string
		publish, subscribe bool
	}{
		{"devices/d1/messages/events/", true, false},
		{"devices/d1/messages/events/a=b&%24.ct=json", true, false},
		{"devices/d1/messages/events", true, false},
		{"devices/d1/messages/eventsX", false, false},
		{"devices/d2/messages/events/", false, false},
		{"devices/d1/messages/devicebound/#", false, true},
		{"devices/d1/messages/devicebound/x", false, true},
		{"devices/d2/messages/devicebound/#", false, false},
		{"devices/+/messages/devicebound/#", false, false},
		{"devices/d1/#", false, false},
		{"$iothub/methods/POST/#", false, true},
		{"$iothub/methods/POST/reboot/?$rid=1", false, true},
		{"$iothub/methods/res/200/?$rid=1", true, false},
		{"$iothub/twin/GET/?$rid=1", true, false},
		{"$iothub/twin/PATCH/properties/reported/?$rid=1", true, false},
		{"$iothub/twin/PATCH/properties/desired/#", false, true},
		{"$iothub/twin/PATCH/properties/desired/?$version=3", false, true},
		{"$iothub/twin/res/#", false, true},
		{"$iothub/#", false, false},
		{"$SYS/#", false, false},
		{"#", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.topic, func(t *testing.T) {
			if got := allowedPublish("d1", tc.topic); got != tc.publish {
				t.Errorf("allowedPublish = %v, want %v", got, tc.publish)
			}
			if got := allowedSubscribe("d1", tc.topic); got != tc.subscribe {
				t.Errorf("allowedSubscribe = %v, want %v", got, tc.subscribe)
			}
		})
	}
}

func TestTopicQuery(t *testing.T) {
	tests := []struct {
		topic, key, want string
		ok               bool
	}{
		{"$iothub/twin/GET/?$rid=1f", "$rid", "1f", true},
		{"$iothub/methods/res/200/?$rid=a%2Fb&x=y", "$rid", "a%2Fb", true},
		{"$iothub/twin/res/204/?$rid=1&$version=7", "$version", "7", true},
		{"$iothub/twin/GET/", "$rid", "", false},
		{"$iothub/twin/GET/?rid=1", "$rid", "", false},
	}
	for _, tc := range tests {
		got, ok := topicQuery(tc.topic, tc.key)
		if got != tc.want || ok != tc.ok {
			t.Errorf("topicQuery(%q, %q) = %q, %v", tc.topic, tc.key, got, ok)
		}
	}
}

func TestParseDeviceTopic(t *testing.T) {
	tests := []struct {
		topic  string
		kind   requestKind
		rid    string
		status int
		props  string // encoded property bag
		ok     bool
	}{
		{topic: "$iothub/twin/GET/?$rid=1f", kind: reqTwinGet, rid: "1f", ok: true},
		{topic: "$iothub/twin/PATCH/properties/reported/?$rid=a%2Fb", kind: reqTwinReported, rid: "a%2Fb", ok: true},
		{topic: "$iothub/methods/res/200/?$rid=7", kind: reqMethodResponse, rid: "7", status: 200, ok: true},
		{topic: "$iothub/methods/res/-1/?$rid=7", kind: reqMethodResponse, rid: "7", status: -1, ok: true},
		{topic: "devices/d1/messages/events", kind: reqTelemetry, ok: true},
		{topic: "devices/d1/messages/events/", kind: reqTelemetry, ok: true},
		{topic: "devices/d1/messages/events/$.ct=application%2Fjson&alert=1", kind: reqTelemetry, props: "%24.ct=application%2Fjson&alert=1", ok: true},
		{topic: "$iothub/twin/GET/"},
		{topic: "$iothub/twin/GET/?$rid="},
		{topic: "$iothub/twin/GET/?$rid=a+b"},
		{topic: "$iothub/twin/GET/?$rid=a#"},
		{topic: "$iothub/twin/GET/?$rid=a/b"},
		{topic: "$iothub/twin/GET/?$rid=" + strings.Repeat("1", maxRequestID+1)},
		{topic: "$iothub/methods/res/ok/?$rid=7"},
		{topic: "$iothub/methods/res/99999999999/?$rid=7"},
		{topic: "$iothub/methods/res/200/"},
		{topic: "devices/d1/messages/events/a=%zz"},
		{topic: "devices/d1/messages/events/a=1;b=2"},
		{topic: "devices/d2/messages/events/"},
		{topic: "devices/d1/messages/devicebound/"},
	}
	for _, tc := range tests {
		t.Run(tc.topic[:min(len(tc.topic), 60)], func(t *testing.T) {
			got, err := parseDeviceTopic("d1", tc.topic)
			if !tc.ok {
				if ErrorCode(err) != ErrArgumentInvalid {
					t.Fatalf("= %+v, %v; want ArgumentInvalid", got, err)
				}
				return
			}
			if err != nil || got.kind != tc.kind || got.rid != tc.rid || got.status != tc.status || got.props.Encode() != tc.props {
				t.Errorf("= %+v, %v", got, err)
			}
		})
	}
}

func mustDecode(t *testing.T, key string) []byte {
	t.Helper()
	b, err := sas.DecodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWillOnForeignTopicRefused(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	cs := registerDevice(t, h, svc, "will")
	for _, tc := range []struct {
		topic string
		ok    bool
	}{
		{"devices/will/messages/events/", true},
		{"devices/other/messages/devicebound/x", false},
		{"$iothub/methods/POST/reboot/?$rid=1", false},
	} {
		t.Run(tc.topic, func(t *testing.T) {
			o := paho.NewClientOptions()
			o.AddBroker("tls://" + h.MQTTAddr())
			o.SetTLSConfig(&tls.Config{RootCAs: caPool(t, h), ServerName: "localhost"})
			o.SetProtocolVersion(4)
			o.SetClientID("will")
			o.SetUsername("localhost/will/?api-version=1")
			o.SetPassword(deviceToken(t, "localhost", deviceKey(cs), time.Now().Add(time.Hour)))
			o.SetAutoReconnect(false)
			o.SetWill(tc.topic, "gone", 0, false)
			c := paho.NewClient(o)
			tok := c.Connect()
			if !tok.WaitTimeout(10 * time.Second) {
				t.Fatal("connect timed out")
			}
			if err := tok.Error(); (err == nil) != tc.ok {
				t.Errorf("connect with will on %s = %v, want ok=%v", tc.topic, err, tc.ok)
			}
			c.Disconnect(100)
		})
	}
}

func TestDeleteAndDisableDisconnect(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	cs := registerDevice(t, h, svc, "gone")
	lost := make(chan error, 1)
	if _, err := rawDevice(t, h, "gone", "localhost/gone/?api-version=1", deviceToken(t, "localhost", deviceKey(cs), time.Now().Add(time.Hour)),
		func(err error) { lost <- err }); err != nil {
		t.Fatal(err)
	}
	if err := svc.DeleteDevice(ctx, &iotservice.Device{DeviceID: "gone"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("deleted device stayed connected")
	}
	// The client may see the connection drop before the broker's
	// disconnect hook has run.
	require.Eventually(t, func() bool { return h.Stats().ConnectedDevices == 0 }, 5*time.Second, 20*time.Millisecond, "waiting for no connected devices")
}
