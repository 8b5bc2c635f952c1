package hubconn

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodeAnswer(t *testing.T) {
	tests := []struct {
		body        string
		status      int
		payload     string
		unreadable  bool
		description string
	}{
		{body: `{"status":200,"payload":{"Response":"Firmware update started"}}`, status: 200, payload: `{"Response":"Firmware update started"}`},
		{body: `{"status":200,"payload":"{ \"Response\": \"Firmware update started\" }"}`, status: 200, payload: `"{ \"Response\": \"Firmware update started\" }"`},
		{body: `{"status":200,"payload":[1,2]}`, status: 200, payload: `[1,2]`},
		{body: `{"status":201,"payload":42}`, status: 201, payload: `42`},
		{body: `{"status":200,"payload":false}`, status: 200, payload: `false`},
		{body: `{"status":200,"payload":null}`, status: 200},
		{body: `{"status":204}`, status: 204},
		{body: `{"status":409,"payload":"busy"}`, status: 409, payload: `"busy"`},
		{body: `{"payload":{}}`, unreadable: true},
		{body: `<html>gateway</html>`, unreadable: true},
		{body: ``, unreadable: true},
		{body: `{"status":"200"}`, unreadable: true},
	}
	for _, tc := range tests {
		t.Run(tc.body, func(t *testing.T) {
			a, err := decodeAnswer([]byte(tc.body))
			if tc.unreadable {
				var u *UnreadableAnswerError
				require.True(t, errors.As(err, &u), "%v", err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.status, a.Status)
			assert.Equal(t, tc.payload, string(a.Payload))
		})
	}
}

// FuzzDecodeAnswer: whatever the hub answers with a 200, decoding never panics, and a payload it
// returns is valid JSON (or none).
func FuzzDecodeAnswer(f *testing.F) {
	for _, s := range []string{
		`{"status":200,"payload":{"Response":"x"}}`, `{"status":200,"payload":"s"}`, `{"status":200}`,
		`{"status":200,"payload":null}`, `[]`, `"x"`, `{"status":1e400}`, `{"status":200,"payload":{"a":`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a, err := decodeAnswer(body)
		if err != nil {
			var u *UnreadableAnswerError
			if !errors.As(err, &u) {
				t.Fatalf("error %v is not an UnreadableAnswerError", err)
			}
			if len(u.Error()) > 1000 { // 200 bytes quoted, at worst \u escapes
				t.Fatalf("error message of %d bytes", len(u.Error()))
			}
			return
		}
		if len(a.Payload) > 0 && !json.Valid(a.Payload) {
			t.Fatalf("payload %q is not JSON", a.Payload)
		}
	})
}

// hubAt is a ServiceClient of a stand-in hub: an HTTPS server whose certificate the client trusts
// through a CA file, as localhub's.
func hubAt(t *testing.T, handler http.Handler) (*ServiceClient, *httptest.Server) {
	t.Helper()
	srv := httptest.NewTLSServer(handler)
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	require.NoError(t, os.WriteFile(ca, pemBytes, 0o600))
	key := base64.StdEncoding.EncodeToString([]byte(t.Name()))
	host := strings.TrimPrefix(srv.URL, "https://")
	s, err := ParseService("test", "HostName="+host+";SharedAccessKeyName=iothubowner;SharedAccessKey="+key)
	require.NoError(t, err)
	c, err := NewServiceHub(s, ca)
	require.NoError(t, err)
	return c, srv
}

func TestCallMethod(t *testing.T) {
	var got struct {
		path, auth string
		body       map[string]json.RawMessage
	}
	c, _ := hubAt(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.path, got.auth = r.URL.Path, r.Header.Get("Authorization")
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &got.body)
		_, _ = io.WriteString(w, `{"status":200,"payload":"{ \"Response\": \"Firmware update started\" }"}`)
	}))
	a, err := c.CallMethod(context.Background(), "dev 1", MethodCall{
		Method: "firmwareUpdate", Payload: json.RawMessage(`{"fwPackageUri":"https://fw.example/a.bin"}`), ResponseTimeout: 30,
	})
	require.NoError(t, err)
	assert.Equal(t, 200, a.Status)
	assert.Equal(t, `"{ \"Response\": \"Firmware update started\" }"`, string(a.Payload))
	assert.Equal(t, "/twins/dev 1/methods", got.path)
	assert.True(t, strings.HasPrefix(got.auth, "SharedAccessSignature sr="), "signed: %q", got.auth)
	assert.JSONEq(t, `"firmwareUpdate"`, string(got.body["methodName"]))
	assert.JSONEq(t, `{"fwPackageUri":"https://fw.example/a.bin"}`, string(got.body["payload"]))
	assert.JSONEq(t, `30`, string(got.body["responseTimeoutInSeconds"]))
}

// TestCallMethodDelivery: the errors tell a call the device cannot have received (the request was
// never written) from one it may have (the hub's error answers, a connection cut after the write).
func TestCallMethodDelivery(t *testing.T) {
	t.Run("hub error", func(t *testing.T) {
		c, _ := hubAt(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusGatewayTimeout)
			_, _ = io.WriteString(w, `{"Message":"ErrorCode:GatewayTimeout;timed out","ErrorCode":504101}`)
		}))
		_, err := c.CallMethod(context.Background(), "d", MethodCall{Method: "m"})
		var re *iotservice.RequestError
		require.True(t, errors.As(err, &re), "%v", err)
		assert.Equal(t, http.StatusGatewayTimeout, re.Code)
		assert.Contains(t, string(re.Body), "504101")
	})
	t.Run("connection cut after the request was sent", func(t *testing.T) {
		c, _ := hubAt(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.ReadAll(r.Body)
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				_ = conn.Close()
			}
		}))
		_, err := c.CallMethod(context.Background(), "d", MethodCall{Method: "m"})
		require.Error(t, err)
		var notSent *NotSentError
		assert.False(t, errors.As(err, &notSent), "the request was written: %v", err)
	})
	t.Run("nobody listening", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		require.NoError(t, l.Close())
		key := base64.StdEncoding.EncodeToString([]byte("k"))
		s, err := ParseService("test", "HostName="+addr+";SharedAccessKeyName=iothubowner;SharedAccessKey="+key)
		require.NoError(t, err)
		c, err := NewServiceHub(s, "")
		require.NoError(t, err)
		_, err = c.CallMethod(context.Background(), "d", MethodCall{Method: "m"})
		var notSent *NotSentError
		assert.True(t, errors.As(err, &notSent), "%v", err)
	})
	t.Run("cancelled before sending", func(t *testing.T) {
		c, _ := hubAt(t, http.NotFoundHandler())
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := c.CallMethod(ctx, "d", MethodCall{Method: "m"})
		var notSent *NotSentError
		assert.True(t, errors.As(err, &notSent), "%v", err)
	})
	t.Run("no key in errors", func(t *testing.T) {
		c, _ := hubAt(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(50 * time.Millisecond)
		}))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		_, err := c.CallMethod(ctx, "d", MethodCall{Method: "m"})
		require.Error(t, err)
		assert.False(t, bytes.Contains([]byte(err.Error()), []byte("sig=")), "%v", err)
	})
}
