package hub

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/amenzhinsky/iothub/iotdevice/transport/mqtt"
	"github.com/amenzhinsky/iothub/iotservice"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dmflow/dmflow/internal/sim/hub/sas"
)

// testLogger logs through t.Log (shown for failing tests and with -v) and
// goes quiet once the test is over, when late goroutines may still log.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// startHub starts a hub on free ports in dir (a new temp dir when empty) and
// closes it when the test ends. Throttling is off unless an option turns it
// on: most tests make requests faster than IoT Hub's quotas allow.
func startHub(t *testing.T, dir string, opts ...func(*Options)) *Hub {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	o := Options{StateDir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", Logger: testLogger(t), Unlimited: true}
	for _, f := range opts {
		f(&o)
	}
	h, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := h.Start(context.Background()); err != nil {
		_ = h.Close()
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

func caPool(t *testing.T, h *Hub) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(h.CACertFile())
	if err != nil {
		t.Fatalf("read CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA file holds no certificate")
	}
	return pool
}

func httpClient(t *testing.T, h *Hub) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool(t, h)}}}
}

// serviceClient is the unchanged amenzhinsky service client, trusting the
// hub's CA.
func serviceClient(t *testing.T, h *Hub, cs string) *iotservice.Client {
	t.Helper()
	if cs == "" {
		cs = h.ServiceConnectionString()
	}
	c, err := iotservice.NewFromConnectionString(cs, iotservice.WithHTTPClient(httpClient(t, h)))
	if err != nil {
		t.Fatalf("service client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// registerDevice creates a device through the REST API and returns its
// connection string.
func registerDevice(t *testing.T, h *Hub, svc *iotservice.Client, id string) string {
	t.Helper()
	if _, err := svc.CreateDevice(context.Background(), &iotservice.Device{DeviceID: id}); err != nil {
		t.Fatalf("CreateDevice(%s): %v", id, err)
	}
	cs, err := h.DeviceConnectionString(context.Background(), id)
	if err != nil {
		t.Fatalf("DeviceConnectionString(%s): %v", id, err)
	}
	return cs
}

// newTestDevice builds the unchanged amenzhinsky MQTT device client aimed at the
// hub's MQTT port.
func newTestDevice(t *testing.T, h *Hub, cs string) *iotdevice.Client {
	t.Helper()
	pool := caPool(t, h)
	tr := mqtt.New(mqtt.WithClientOptionsConfig(func(o *paho.ClientOptions) {
		o.Servers = nil
		o.AddBroker("tls://" + h.MQTTAddr())
		o.TLSConfig = &tls.Config{RootCAs: pool, ServerName: "localhost"}
		o.SetOrderMatters(false)
		o.SetConnectTimeout(10 * time.Second)
	}))
	c, err := iotdevice.NewFromConnectionString(tr, cs)
	if err != nil {
		t.Fatalf("device client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// connectDevice connects a device client and fails the test on error.
func connectDevice(t *testing.T, h *Hub, cs string) *iotdevice.Client {
	t.Helper()
	c := newTestDevice(t, h, cs)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("device Connect: %v", err)
	}
	return c
}

// rawDevice is a plain paho client for what the SDK does not let a test do:
// hand-made credentials and topics. It does not reconnect.
func rawDevice(t *testing.T, h *Hub, clientID, username, password string, onLost func(error)) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions()
	o.AddBroker("tls://" + h.MQTTAddr())
	o.SetTLSConfig(&tls.Config{RootCAs: caPool(t, h), ServerName: "localhost"})
	o.SetProtocolVersion(4)
	o.SetClientID(clientID)
	o.SetUsername(username)
	o.SetPassword(password)
	o.SetAutoReconnect(false)
	o.SetConnectTimeout(10 * time.Second)
	o.SetOrderMatters(false)
	if onLost != nil {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { onLost(err) })
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// deviceToken signs a device SAS token the way the Go SDK does.
func deviceToken(t *testing.T, host, key string, expiry time.Time) string {
	t.Helper()
	raw, err := sas.DecodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return sas.Sign(host, raw, expiry, "")
}

// deviceKey returns the primary key from a device connection string.
func deviceKey(cs string) string {
	for _, part := range strings.Split(cs, ";") {
		if k, ok := strings.CutPrefix(part, "SharedAccessKey="); ok {
			return k
		}
	}
	return ""
}

// requestError unpacks the service client's error for a non-2xx answer.
func requestError(t *testing.T, err error) (int, errorBody) {
	t.Helper()
	var re *iotservice.RequestError
	var body errorBody
	switch {
	case errors.As(err, &re):
		if jerr := json.Unmarshal(re.Body, &body); jerr != nil {
			t.Fatalf("error body %q: %v", re.Body, jerr)
		}
		return re.Code, body
	case err != nil:
		var bre *iotservice.BadRequestError
		if errors.As(err, &bre) {
			return http.StatusBadRequest, errorBody{Message: bre.Message, ExceptionMessage: bre.ExceptionMessage}
		}
		t.Fatalf("error %v (%T) is not a service request error", err, err)
	}
	t.Fatal("expected an error, got none")
	return 0, body
}

// rawRequest sends a REST request with the given Authorization header.
func rawRequest(t *testing.T, h *Hub, method, path, auth string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	header := http.Header{}
	if auth != "" {
		header.Set("Authorization", auth)
	}
	return rawRequestHeader(t, h, method, path, header, body)
}

// rawRequestHeader sends a REST request with the given headers.
func rawRequestHeader(t *testing.T, h *Hub, method, path string, header http.Header, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+h.HTTPSAddr()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := httpClient(t, h).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, raw
}

// serviceToken signs a service token for the hub with the owner key.
func serviceToken(t *testing.T, h *Hub, expiry time.Time) string {
	t.Helper()
	return sas.Sign(hostPort(h.HostName(), h.HTTPSAddr()), h.policyKey, expiry, PolicyName)
}
