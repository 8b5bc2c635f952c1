// Package hubconn turns IoT Hub connection strings and a CA file into clients
// of github.com/amenzhinsky/iothub, with errors that name the setting and the
// expected form.
//
// Connection strings are secrets: nothing in this package logs them, and no
// error it returns quotes a key.
package hubconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/amenzhinsky/iothub/iotdevice/transport"
	"github.com/amenzhinsky/iothub/iotdevice/transport/mqtt"
	"github.com/amenzhinsky/iothub/iotservice"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// ServiceForm and DeviceForm are the expected shapes, quoted in errors.
const (
	ServiceForm = "HostName=<hub>.azure-devices.net;SharedAccessKeyName=<policy>;SharedAccessKey=<base64 key>"
	DeviceForm  = "HostName=<hub>.azure-devices.net;DeviceId=<device>;SharedAccessKey=<base64 key>"
)

// Service is a parsed service (policy) connection string.
type Service struct {
	HostName string // may carry a port, e.g. localhost:8443 for localhub
	KeyName  string
	key      string
}

// Device is a parsed device connection string.
type Device struct {
	HostName string
	DeviceID string
	key      string
}

// The fixed reasons parse gives; none quotes any part of the string, which may hold a key.
var (
	errEmpty        = errors.New("it is empty")
	errPartForm     = errors.New("a part is not of the form Name=Value")
	errKeyNotBase64 = errors.New("SharedAccessKey is not base64")
)

// parse splits "k=v;k=v" and reports which of the required keys are missing.
// Values may contain '=' (base64 padding), so only the first '=' splits.
func parse(cs string, required ...string) (map[string]string, error) {
	cs = strings.TrimSpace(cs)
	if cs == "" {
		return nil, errEmpty
	}
	m := map[string]string{}
	for _, part := range strings.Split(cs, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok || k == "" {
			// Never echo the part: it may be a key.
			return nil, errPartForm
		}
		m[k] = v
	}
	var missing []string
	for _, k := range required {
		if m[k] == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s missing", strings.Join(missing, ", "))
	}
	if _, err := base64.StdEncoding.DecodeString(m["SharedAccessKey"]); err != nil {
		return nil, errKeyNotBase64
	}
	return m, nil
}

// ParseService parses a service connection string. setting names where it
// came from (e.g. IOTHUB_CONNECTION_STRING) so the error can name the fix.
func ParseService(setting, cs string) (Service, error) {
	if strings.TrimSpace(cs) == "" {
		return Service{}, fmt.Errorf("%s is not set: export the service connection string (%s)", setting, ServiceForm)
	}
	m, err := parse(cs, "HostName", "SharedAccessKeyName", "SharedAccessKey")
	if err != nil {
		return Service{}, fmt.Errorf("%s is malformed (%v): expected %s", setting, err, ServiceForm)
	}
	if m["DeviceId"] != "" {
		return Service{}, fmt.Errorf("%s is a device connection string: use a service policy connection string (%s)", setting, ServiceForm)
	}
	return Service{HostName: m["HostName"], KeyName: m["SharedAccessKeyName"], key: m["SharedAccessKey"]}, nil
}

// ParseDevice parses a device connection string.
func ParseDevice(setting, cs string) (Device, error) {
	if strings.TrimSpace(cs) == "" {
		return Device{}, fmt.Errorf("%s is not set: export the device connection string (%s)", setting, DeviceForm)
	}
	m, err := parse(cs, "HostName", "DeviceId", "SharedAccessKey")
	if err != nil {
		return Device{}, fmt.Errorf("%s is malformed (%v): expected %s", setting, err, DeviceForm)
	}
	return Device{HostName: m["HostName"], DeviceID: m["DeviceId"], key: m["SharedAccessKey"]}, nil
}

// String gives the connection string back; it is a secret.
func (s Service) String() string {
	return "HostName=" + s.HostName + ";SharedAccessKeyName=" + s.KeyName + ";SharedAccessKey=" + s.key
}

// String gives the connection string back; it is a secret.
func (d Device) String() string {
	return "HostName=" + d.HostName + ";DeviceId=" + d.DeviceID + ";SharedAccessKey=" + d.key
}

// TLSConfig trusts the system roots plus, when caFile is set, the PEM
// certificates in it (localhub's CA).
func TLSConfig(caFile string) (*tls.Config, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w: set DMFLOW_HUB_CA_FILE (or --ca-file) to localhub's ca.pem, or leave it empty for a real IoT Hub", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate: point it at localhub's ca.pem", caFile)
		}
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// NewServiceClient builds a service client for s that trusts caFile.
func NewServiceClient(s Service, caFile string) (*iotservice.Client, error) {
	c, _, err := newServiceClient(s, caFile)
	return c, err
}

// newServiceClient builds a service client and returns the HTTP client it
// uses, which NewServiceHub shares.
func newServiceClient(s Service, caFile string) (*iotservice.Client, *http.Client, error) {
	tlsCfg, err := TLSConfig(caFile)
	if err != nil {
		return nil, nil, err
	}
	httpClient := &http.Client{
		// Each REST call carries its own context deadline; this bounds a
		// call whose caller forgot one.
		Timeout: 6 * time.Minute,
		Transport: &http.Transport{
			TLSClientConfig:     tlsCfg,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	c, err := iotservice.NewFromConnectionString(s.String(),
		iotservice.WithHTTPClient(httpClient), iotservice.WithTLSConfig(tlsCfg))
	return c, httpClient, err
}

// DeviceOptions tune a device client.
type DeviceOptions struct {
	// CAFile is a PEM file of extra roots (localhub's ca.pem).
	CAFile string
	// TLSConfig, when set, is used (cloned) instead of one built from
	// CAFile. Many clients in one process share one: every TLSConfig call
	// copies the system root pool, some 30 KB a client.
	TLSConfig *tls.Config
	// Broker overrides the MQTT broker URL (default tls://<HostName>:8883),
	// e.g. tls://127.0.0.1:18883 for a localhub on another port. The TLS
	// handshake still expects the certificate of HostName.
	Broker string
	// OnConnect and OnConnectionLost observe the MQTT session.
	OnConnect        func()
	OnConnectionLost func(error)
	// Logger receives the client's own diagnostics (transport warnings,
	// debug traces). Default: the client's logger, which prints warnings
	// and errors to the standard log.
	Logger *slog.Logger
	// UnknownMethod, when set, answers direct methods that have no
	// registered handler with the status and JSON body it returns. Without
	// it the client leaves such calls unanswered and the caller waits for
	// the hub's response timeout (504).
	UnknownMethod func(method string) (status int, body []byte)
}

// NewDeviceClient builds an MQTT device client for d.
func NewDeviceClient(d Device, o DeviceOptions) (*iotdevice.Client, error) {
	c, _, err := NewDeviceClientTransport(d, o)
	return c, err
}

// NewDeviceClientTransport builds an MQTT device client for d and returns its transport too, on
// which a caller may register its own method dispatcher (RegisterDirectMethods) to answer with
// raw JSON: the client's DirectMethodHandler can only answer a JSON object, while a device may
// answer with any JSON value (a string, as some devices built from the tutorials do).
func NewDeviceClientTransport(d Device, o DeviceOptions) (*iotdevice.Client, *mqtt.Transport, error) {
	var tlsCfg *tls.Config
	if o.TLSConfig != nil {
		tlsCfg = o.TLSConfig.Clone()
	} else {
		var err error
		if tlsCfg, err = TLSConfig(o.CAFile); err != nil {
			return nil, nil, err
		}
	}
	// The hub's certificate is checked against the connection string's
	// host, never the broker dialled: a fleet spread over loopback
	// addresses dials 127.0.0.2, which localhub's certificate does not
	// name, and Azure's brokers are named by the hub's host name anyway.
	host := d.HostName
	if h, _, ok := strings.Cut(host, ":"); ok {
		host = h
	}
	tlsCfg.ServerName = host
	tr := mqtt.New(mqtt.WithClientOptionsConfig(func(po *paho.ClientOptions) {
		if o.Broker != "" {
			po.Servers = nil
			po.AddBroker(o.Broker)
		}
		po.SetTLSConfig(tlsCfg)
		// Method handlers may block (a reboot answers after it is done) and
		// themselves wait for twin responses: ordered delivery would
		// deadlock them, so handlers run concurrently.
		po.SetOrderMatters(false)
		// The first connect fails fast (so bad credentials surface as an
		// error); once connected, paho reconnects by itself.
		po.SetAutoReconnect(true)
		po.SetMaxReconnectInterval(10 * time.Second)
		if o.OnConnect != nil {
			prev := po.OnConnect
			po.SetOnConnectHandler(func(c paho.Client) {
				if prev != nil {
					prev(c)
				}
				o.OnConnect()
			})
		}
		if o.OnConnectionLost != nil {
			prev := po.OnConnectionLost
			po.SetConnectionLostHandler(func(c paho.Client, err error) {
				if prev != nil {
					prev(c, err)
				}
				o.OnConnectionLost(err)
			})
		}
	}))
	var t transport.Transport = tr
	if o.UnknownMethod != nil {
		t = unknownMethodTransport{Transport: tr, unknown: o.UnknownMethod}
	}
	var opts []iotdevice.ClientOption
	if o.Logger != nil {
		opts = append(opts, iotdevice.WithLogger(slogLogger{o.Logger}))
	}
	c, err := iotdevice.NewFromConnectionString(t, d.String(), opts...)
	if err != nil {
		return nil, nil, err
	}
	return c, tr, nil
}

// unknownMethodTransport hands the client's method dispatcher to the MQTT
// transport wrapped in unknownMethodMux.
type unknownMethodTransport struct {
	*mqtt.Transport
	unknown func(method string) (int, []byte)
}

func (t unknownMethodTransport) RegisterDirectMethods(ctx context.Context, mux transport.MethodDispatcher) error {
	return t.Transport.RegisterDirectMethods(ctx, unknownMethodMux{next: mux, unknown: t.unknown})
}

// unknownMethodMux answers the calls the client's dispatcher refuses. That
// dispatcher returns an error only for a method nobody registered (a
// handler's own failure becomes a 500 answer), and on an error the
// transport drops the call without answering.
type unknownMethodMux struct {
	next    transport.MethodDispatcher
	unknown func(method string) (int, []byte)
}

func (m unknownMethodMux) Dispatch(method string, b []byte) (int, []byte, error) {
	rc, body, err := m.next.Dispatch(method, b)
	if err != nil {
		rc, body = m.unknown(method)
	}
	return rc, body, nil
}

// slogLogger adapts slog to the client's logger interface.
type slogLogger struct{ l *slog.Logger }

func (s slogLogger) logf(level slog.Level, format string, v []any) {
	ctx := context.Background()
	if s.l.Enabled(ctx, level) {
		s.l.Log(ctx, level, "iothub client: "+fmt.Sprintf(format, v...))
	}
}

func (s slogLogger) Errorf(format string, v ...any) { s.logf(slog.LevelError, format, v) }
func (s slogLogger) Warnf(format string, v ...any)  { s.logf(slog.LevelWarn, format, v) }
func (s slogLogger) Infof(format string, v ...any)  { s.logf(slog.LevelInfo, format, v) }
func (s slogLogger) Debugf(format string, v ...any) { s.logf(slog.LevelDebug, format, v) }
