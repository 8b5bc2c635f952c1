package hub

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dmflow/dmflow/internal/sim/hub/sas"
)

// TestAuthMatrix tries every way in the list to get into a hub
// without the right credentials, devices over MQTT and services over REST,
// each next to the credentials that do get in, on one hub over real TLS:
// an expired token, a wrong key, a token for another hub, device A's token
// for device B, a device token on the service API, a policy without the
// permission a route needs, and plain TCP on the TLS ports.
func TestAuthMatrix(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	keyA := deviceKey(registerDevice(t, h, svc, "dev-a"))
	registerDevice(t, h, svc, "dev-b")
	hour := time.Now().Add(time.Hour)
	expired := time.Now().Add(-time.Minute)
	otherKey := bytes.Repeat([]byte{7}, 32)
	restHost := hostPort(h.HostName(), h.HTTPSAddr())
	policy := func(name string) []byte { return policyKey(h.policyKey, name) }
	user := func(device string) string { return "localhost/" + device + "/?api-version=2021-04-12" }

	// CONNACK return codes of MQTT 3.1.1.
	const (
		accepted      = 0
		badCredential = 4 // malformed user name or password
		notAuthorized = 5
	)
	mqttCases := []struct {
		name               string
		clientID, password string
		want               byte
	}{
		{"device key", "dev-a", deviceToken(t, "localhost", keyA, hour), accepted},
		{"device key, token scoped to the device", "dev-a", deviceToken(t, "localhost/devices/dev-a", keyA, hour), accepted},
		{"device policy (DeviceConnect)", "dev-a", sas.Sign("localhost/devices/dev-a", policy("device"), hour, "device"), accepted},
		{"expired token", "dev-a", deviceToken(t, "localhost", keyA, expired), notAuthorized},
		{"wrong key", "dev-a", sas.Sign("localhost", otherKey, hour, ""), notAuthorized},
		{"token for another hub", "dev-a", deviceToken(t, "otherhub.azure-devices.net", keyA, hour), notAuthorized},
		{"device A's token for device B", "dev-b", deviceToken(t, "localhost/devices/dev-a", keyA, hour), notAuthorized},
		{"device A's key for device B", "dev-b", deviceToken(t, "localhost", keyA, hour), notAuthorized},
		{"service policy (no DeviceConnect)", "dev-a", sas.Sign("localhost", policy("service"), hour, "service"), notAuthorized},
		{"registryReadWrite policy (no DeviceConnect)", "dev-a", sas.Sign("localhost", policy("registryReadWrite"), hour, "registryReadWrite"), notAuthorized},
		{"unknown policy", "dev-a", sas.Sign("localhost", mustDecode(t, keyA), hour, "devices"), notAuthorized},
		{"not a SAS token", "dev-a", "password", badCredential},
	}
	for _, tc := range mqttCases {
		t.Run("mqtt/"+tc.name, func(t *testing.T) {
			got, err := connackCode(t, h, tc.clientID, user(tc.clientID), tc.password)
			if got != tc.want {
				t.Errorf("CONNACK %d (%v), want %d", got, err, tc.want)
			}
		})
	}
	t.Run("mqtt/plain TCP on the TLS port", func(t *testing.T) {
		o := paho.NewClientOptions().AddBroker("tcp://" + h.MQTTAddr()).SetClientID("dev-a").
			SetUsername(user("dev-a")).SetPassword(deviceToken(t, "localhost", keyA, hour)).
			SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
		c := paho.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10*time.Second) || tok.Error() == nil {
			c.Disconnect(0)
			t.Fatal("a plaintext MQTT CONNECT was answered")
		}
		if connected, _, _ := h.conns.state("dev-a"); connected {
			t.Error("dev-a is connected after a plaintext CONNECT")
		}
	})

	restCases := []struct {
		name, method, path, auth string
		want                     int
	}{
		{"iothubowner", "GET", "/devices/dev-a", sas.Sign(restHost, h.policyKey, hour, PolicyName), 200},
		{"registryRead reads an identity", "GET", "/devices/dev-a", sas.Sign(restHost, policy("registryRead"), hour, "registryRead"), 200},
		{"registryRead queries", "POST", "/devices/query", sas.Sign(restHost, policy("registryRead"), hour, "registryRead"), 200},
		{"registryReadWrite writes an identity", "PUT", "/devices/dev-c", sas.Sign(restHost, policy("registryReadWrite"), hour, "registryReadWrite"), 200},
		{"service reads a twin", "GET", "/twins/dev-a", sas.Sign(restHost, policy("service"), hour, "service"), 200},
		{"expired token", "GET", "/devices/dev-a", sas.Sign(restHost, h.policyKey, expired, PolicyName), 401},
		{"wrong key", "GET", "/devices/dev-a", sas.Sign(restHost, otherKey, hour, PolicyName), 401},
		{"another policy's key", "GET", "/devices/dev-a", sas.Sign(restHost, policy("service"), hour, PolicyName), 401},
		{"token for another hub", "GET", "/devices/dev-a", sas.Sign("otherhub.azure-devices.net", h.policyKey, hour, PolicyName), 401},
		{"device token", "GET", "/twins/dev-a", deviceToken(t, restHost+"/devices/dev-a", keyA, hour), 401},
		{"device token for the hub", "GET", "/twins/dev-a", deviceToken(t, restHost, keyA, hour), 401},
		{"device policy", "GET", "/twins/dev-a", sas.Sign(restHost, policy("device"), hour, "device"), 401},
		{"service lists identities (needs RegistryRead)", "GET", "/devices", sas.Sign(restHost, policy("service"), hour, "service"), 401},
		{"service queries (needs RegistryRead)", "POST", "/devices/query", sas.Sign(restHost, policy("service"), hour, "service"), 401},
		{"registryRead writes an identity (needs RegistryWrite)", "PUT", "/devices/dev-d", sas.Sign(restHost, policy("registryRead"), hour, "registryRead"), 401},
		{"registryRead deletes in bulk (needs RegistryWrite)", "POST", "/devices", sas.Sign(restHost, policy("registryRead"), hour, "registryRead"), 401},
		{"registryReadWrite invokes a method (needs ServiceConnect)", "POST", "/twins/dev-a/methods", sas.Sign(restHost, policy("registryReadWrite"), hour, "registryReadWrite"), 401},
		{"registryReadWrite patches a twin (needs ServiceConnect)", "PATCH", "/twins/dev-a", sas.Sign(restHost, policy("registryReadWrite"), hour, "registryReadWrite"), 401},
		{"service reads localhub's stats (needs iothubowner)", "GET", "/_localhub/stats", sas.Sign(restHost, policy("service"), hour, "service"), 401},
	}
	bodies := map[string]string{
		"POST /devices/query":       `{"query":"SELECT * FROM devices"}`,
		"PUT /devices/dev-c":        `{"deviceId":"dev-c"}`,
		"PUT /devices/dev-d":        `{"deviceId":"dev-d"}`,
		"POST /devices":             `[{"id":"dev-a","importMode":"delete"}]`,
		"POST /twins/dev-a/methods": `{"methodName":"reboot","responseTimeoutInSeconds":5}`,
		"PATCH /twins/dev-a":        `{"tags":{"x":1}}`,
	}
	for _, tc := range restCases {
		t.Run("rest/"+tc.name, func(t *testing.T) {
			body := bodies[tc.method+" "+tc.path]
			res, raw := rawRequest(t, h, tc.method, tc.path+"?api-version=2021-04-12", tc.auth, strings.NewReader(body))
			if res.StatusCode != tc.want {
				t.Fatalf("= %d %s, want %d", res.StatusCode, raw, tc.want)
			}
			if tc.want == 401 {
				var eb errorBody
				if json.Unmarshal(raw, &eb) != nil || eb.ErrorCode != 401002 || !strings.HasPrefix(eb.Message, "ErrorCode:IotHubUnauthorizedAccess;") ||
					res.Header.Get("iothub-errorcode") != ErrIotHubUnauthorizedAccess {
					t.Errorf("body = %s", raw)
				}
			}
		})
	}
	t.Run("rest/plain HTTP on the TLS port", func(t *testing.T) {
		req, err := http.NewRequest("GET", "http://"+h.HTTPSAddr()+"/devices/dev-a?api-version=2021-04-12", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", sas.Sign(restHost, h.policyKey, hour, PolicyName))
		res, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return // refused at the connection: as good
		}
		defer res.Body.Close()
		raw, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusBadRequest || bytes.Contains(raw, []byte("dev-a")) {
			t.Errorf("plaintext request = %d %s, want 400 and no identity", res.StatusCode, raw)
		}
	})
	t.Run("refused requests changed nothing", func(t *testing.T) {
		for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
			if _, err := svc.GetDevice(context.Background(), id); err != nil {
				t.Errorf("%s: %v", id, err)
			}
		}
		if _, err := svc.GetDevice(context.Background(), "dev-d"); err == nil {
			t.Error("dev-d was created by a registryRead token")
		}
		twin, err := svc.GetDeviceTwin(context.Background(), "dev-a")
		if err != nil || len(twin.Tags) != 0 {
			t.Errorf("dev-a's twin = %+v, %v; want no tags", twin, err)
		}
	})
}

// connackCode connects a plain MQTT 3.1.1 client over TLS and returns the
// CONNACK return code (and the client's error); 0 means connected, after
// which it disconnects.
func connackCode(t *testing.T, h *Hub, clientID, username, password string) (byte, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tls://" + h.MQTTAddr()).
		SetTLSConfig(&tls.Config{RootCAs: caPool(t, h), ServerName: "localhost"}).
		SetProtocolVersion(4).SetClientID(clientID).SetUsername(username).SetPassword(password).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		t.Fatal("connect timed out")
	}
	ct, ok := tok.(*paho.ConnectToken)
	if !ok {
		t.Fatalf("connect token is a %T", tok)
	}
	if tok.Error() == nil {
		c.Disconnect(100)
	} else if ct.ReturnCode() == 0 {
		return 255, tok.Error() // no CONNACK at all
	}
	return ct.ReturnCode(), tok.Error()
}
