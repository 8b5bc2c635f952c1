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

	"github.com/dmflow/dmflow/internal/sim/hub/sas"
)

func TestServiceAuthentication(t *testing.T) {
	h := startHub(t, "")
	hour := time.Now().Add(time.Hour)
	hostWithPort := hostPort(h.HostName(), h.HTTPSAddr())
	otherKey := bytes.Repeat([]byte{9}, 32)
	sign := sas.Sign
	tests := []struct {
		name string
		auth string
		want int
	}{
		{name: "valid, host with port", auth: sign(hostWithPort, h.policyKey, hour, PolicyName), want: 200},
		{name: "valid, bare host", auth: sign("localhost", h.policyKey, hour, PolicyName), want: 200},
		{name: "missing", auth: "", want: 401},
		{name: "malformed", auth: "SharedAccessSignature garbage", want: 401},
		{name: "bearer token", auth: "Bearer abc", want: 401},
		{name: "expired", auth: sign(hostWithPort, h.policyKey, time.Now().Add(-time.Second), PolicyName), want: 401},
		{name: "wrong key", auth: sign(hostWithPort, otherKey, hour, PolicyName), want: 401},
		{name: "unknown policy", auth: sign(hostWithPort, h.policyKey, hour, "nosuchpolicy"), want: 401},
		{name: "known policy, owner key", auth: sign(hostWithPort, h.policyKey, hour, "registryRead"), want: 401},
		{name: "other hub", auth: sign("elsewhere:443", h.policyKey, hour, PolicyName), want: 401},
		{name: "device-scoped resource", auth: sign(hostWithPort+"/devices/x", h.policyKey, hour, PolicyName), want: 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, raw := rawRequest(t, h, http.MethodGet, "/devices?api-version=2020-09-30", tc.auth, nil)
			if res.StatusCode != tc.want {
				t.Fatalf("status = %d %s, want %d", res.StatusCode, raw, tc.want)
			}
			if tc.want == 401 {
				var body errorBody
				if json.Unmarshal(raw, &body) != nil || body.ErrorCode != 401002 || !strings.HasPrefix(body.Message, "ErrorCode:IotHubUnauthorizedAccess;") {
					t.Errorf("body = %s", raw)
				}
			}
		})
	}
	t.Run("sdk with wrong key", func(t *testing.T) {
		cs := h.ServiceConnectionString()
		bad := strings.Replace(cs, "SharedAccessKey="+h.policyB64, "SharedAccessKey="+base64.StdEncoding.EncodeToString(otherKey), 1)
		_, err := serviceClient(t, h, bad).GetDevice(context.Background(), "x")
		if code, body := requestError(t, err); code != http.StatusUnauthorized || body.ErrorCode != 401002 {
			t.Errorf("= %d %+v, want 401 401002", code, body)
		}
	})
}

func TestRoutesAnswerInIoTHubShape(t *testing.T) {
	h := startHub(t, "")
	auth := serviceToken(t, h, time.Now().Add(time.Hour))
	tests := []struct {
		method, path string
		status, code int
	}{
		{http.MethodGet, "/nowhere", 404, 404000},
		{http.MethodGet, "/devices/x/modules", 404, 404000},
		{http.MethodPost, "/devices/x", 405, 405000},
		{http.MethodDelete, "/twins/x", 405, 405000},
		{http.MethodGet, "/twins/x/methods", 405, 405000},
		{http.MethodGet, "/devices/query", 404, 404001}, // a device named "query"
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			res, raw := rawRequest(t, h, tc.method, tc.path+"?api-version=2020-09-30", auth, nil)
			var body errorBody
			if res.StatusCode != tc.status || json.Unmarshal(raw, &body) != nil || body.ErrorCode != tc.code {
				t.Errorf("= %d %s, want %d with ErrorCode %d", res.StatusCode, raw, tc.status, tc.code)
			}
		})
	}
}
