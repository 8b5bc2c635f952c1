package hub

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/sim/hub/sas"
	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// Defaults of Options.
const (
	DefaultHostName  = "localhost"
	DefaultMQTTAddr  = ":8883"
	DefaultHTTPSAddr = ":8443"
)

// Options configure a Hub. Zero values take the documented defaults.
type Options struct {
	// StateDir holds the store, the TLS material and the policy key. It is
	// created (0700) if missing. Required.
	StateDir string
	// HostName is the hub's host name as clients name it: in connection
	// strings, SAS resources, MQTT user names and the server certificate.
	// Default "localhost".
	HostName string
	// MQTTAddr is the device-side listen address (MQTT over TLS). Default
	// ":8883"; ":0" picks a free port (see MQTTAddr). A wildcard host
	// (0.0.0.0, or none) also accepts on 127.0.0.2, 127.0.0.3, …, which
	// Linux routes to lo: a fleet of more devices than one source address
	// has ephemeral ports towards one address:port (some 28,000) spreads
	// over them (fleet.Config.Brokers). One listener serves them all, so
	// MQTTAddr stays one address and devices verify the certificate by
	// HostName, whichever address they dial.
	MQTTAddr string
	// HTTPSAddr is the service-side listen address (REST over TLS). Default
	// ":8443"; ":0" picks a free port (see HTTPSAddr).
	HTTPSAddr string
	// Logger receives localhub's logs. Default: discard.
	Logger *slog.Logger
	// Tier is the IoT Hub tier whose documented throttles apply: "S1",
	// "S2" or "S3" ("F1" and "B1" throttle as S1, "B2"/"B3" as S2/S3).
	// Default "S1".
	Tier string
	// Units is the number of units of Tier. Default 1.
	Units int
	// Quotas overrides the documented rate of an operation, in tokens per
	// second (direct methods: 4 KB chunks per second); math.Inf(1) lifts
	// the limit. The bucket holds the same window's worth as the
	// documented quota (a second, or a minute for queries and registry
	// operations).
	Quotas map[hubquota.Op]float64
	// Unlimited turns throttling off, for tests and benchmarks that must
	// not meet IoT Hub's quotas.
	Unlimited bool
	// MaxQueueDelay is how long a request above its rate may wait for a
	// token (traffic shaping) before it is refused with 429
	// ThrottlingException. Default DefaultMaxQueueDelay (1 s).
	MaxQueueDelay time.Duration
	// MethodLogSize is how many entries the method log keeps, the newest over all devices (see
	// MethodLog). Default DefaultMethodLogSize.
	MethodLogSize int
	// StandIns, when set, is the device ID prefix of stand-in devices: registered devices that
	// localhub plays itself, without a connection (standin.go), for fleets larger than one machine
	// can connect. StandInStage is how long their firmware stages and reboots take (default
	// DefaultStandInStage).
	StandIns     string
	StandInStage time.Duration
}

func (o *Options) fill() error {
	if o.StateDir == "" {
		return errors.New("hub: Options.StateDir is required")
	}
	if o.HostName == "" {
		o.HostName = DefaultHostName
	}
	if o.MQTTAddr == "" {
		o.MQTTAddr = DefaultMQTTAddr
	}
	if o.HTTPSAddr == "" {
		o.HTTPSAddr = DefaultHTTPSAddr
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Tier == "" {
		o.Tier = hubquota.S1
	}
	if o.Units == 0 {
		o.Units = 1
	}
	if o.MaxQueueDelay == 0 {
		o.MaxQueueDelay = DefaultMaxQueueDelay
	}
	if o.MaxQueueDelay < 0 {
		return fmt.Errorf("hub: Options.MaxQueueDelay %v is negative", o.MaxQueueDelay)
	}
	if o.StandInStage == 0 {
		o.StandInStage = DefaultStandInStage
	}
	if o.StandInStage < 0 {
		return fmt.Errorf("hub: Options.StandInStage %v is negative", o.StandInStage)
	}
	if o.MethodLogSize == 0 {
		o.MethodLogSize = DefaultMethodLogSize
	}
	if o.MethodLogSize < 0 {
		return fmt.Errorf("hub: Options.MethodLogSize %d is negative", o.MethodLogSize)
	}
	return nil
}

// Hub is a running (or startable) localhub.
type Hub struct {
	opts      Options
	log       *slog.Logger
	store     *store.Store
	policyKey []byte // decoded iothubowner key
	policyB64 string
	cert      tls.Certificate

	// ctx ends when Close starts, so that waiting direct-method calls
	// return instead of holding up the shutdown.
	ctx    context.Context
	cancel context.CancelFunc

	broker    *mqtt.Server
	httpSrv   *http.Server
	mqttAddr  string
	httpsAddr string

	conns  *connTable
	calls  *callTable
	limits *throttle
	twinMu keyedMutex
	// methodLog records every direct-method invocation; it is saved in the store on Close and
	// read back by New.
	methodLog *methodLog
	// standIns plays the stand-in devices (Options.StandIns); nil without them.
	standIns *standIns

	statsMu     sync.Mutex
	invocations map[string]map[string]int
	twinReads   map[string]int
	telemetry   atomic.Int64

	lifeMu  sync.Mutex
	started bool
	closed  bool
}

// New prepares a hub: it creates the state directory, the TLS material and
// the policy key if they are missing, and opens the store. It does not
// listen yet; see Start.
func New(opts Options) (*Hub, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	quotas, err := opts.quotas()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	key, err := loadOrCreatePolicyKey(opts.StateDir)
	if err != nil {
		return nil, err
	}
	rawKey, err := sas.DecodeKey(key)
	if err != nil {
		return nil, err
	}
	cert, renewed, err := loadOrCreateTLS(opts.StateDir, opts.HostName, time.Now())
	if err != nil {
		return nil, fmt.Errorf("prepare TLS material in %s: %w", opts.StateDir, err)
	}
	if renewed {
		opts.Logger.Info("server certificate created", "host", opts.HostName, "ca", filepath.Join(opts.StateDir, caCertFile))
	}
	st, err := store.Open(filepath.Join(opts.StateDir, storeFile))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{
		opts:        opts,
		log:         opts.Logger,
		store:       st,
		policyKey:   rawKey,
		policyB64:   key,
		cert:        cert,
		ctx:         ctx,
		cancel:      cancel,
		conns:       newConnTable(),
		calls:       newCallTable(),
		invocations: map[string]map[string]int{},
		twinReads:   map[string]int{},
		methodLog:   newMethodLog(opts.MethodLogSize),
		standIns:    newStandIns(opts.StandIns, opts.StandInStage),
	}
	h.limits = newThrottle(quotas, opts.MaxQueueDelay)
	if err := h.loadMethodLog(); err != nil {
		_ = st.Close()
		cancel()
		return nil, err
	}
	return h, nil
}

// Start binds the MQTT and HTTPS listeners and returns once both accept
// connections. ctx bounds the start only.
func (h *Hub) Start(ctx context.Context) error {
	h.lifeMu.Lock()
	defer h.lifeMu.Unlock()
	switch {
	case h.closed:
		return errors.New("hub: Start after Close")
	case h.started:
		return errors.New("hub: already started")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{h.cert},
		MinVersion:   tls.VersionTLS12,
	}

	httpLn, err := net.Listen("tcp", h.opts.HTTPSAddr)
	if err != nil {
		return fmt.Errorf("listen https %s: %w", h.opts.HTTPSAddr, err)
	}

	broker := mqtt.New(&mqtt.Options{
		Logger:       slog.New(brokerLogHandler{h.log.Handler()}).With("component", "mqtt"),
		Capabilities: brokerCapabilities(),
	})
	if err := broker.AddHook(&deviceHook{hub: h, broker: broker}, nil); err != nil {
		httpLn.Close()
		return fmt.Errorf("mqtt hook: %w", err)
	}
	mqttLn := listeners.NewTCP(listeners.Config{ID: "iothub-mqtt", Address: h.opts.MQTTAddr, TLSConfig: tlsConf})
	if err := broker.AddListener(mqttLn); err != nil {
		httpLn.Close()
		return fmt.Errorf("listen mqtt %s: %w", h.opts.MQTTAddr, err)
	}
	if err := broker.Serve(); err != nil {
		httpLn.Close()
		_ = broker.Close()
		return fmt.Errorf("serve mqtt: %w", err)
	}

	srv := &http.Server{
		Handler:           h.Handler(),
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	go func() {
		if err := srv.ServeTLS(httpLn, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("https server stopped", "error", err)
		}
	}()

	h.broker = broker
	h.httpSrv = srv
	h.mqttAddr = dialable(mqttLn.Address())
	h.httpsAddr = dialable(httpLn.Addr().String())
	h.started = true

	if err := writeRuntime(h.opts.StateDir, runtimeInfo{
		PID: os.Getpid(), HostName: h.opts.HostName, MQTTAddr: h.mqttAddr, HTTPSAddr: h.httpsAddr,
	}); err != nil {
		h.log.Warn("cannot publish runtime info; `localhub connection-string` will not find this hub", "error", err)
	}
	h.log.Info("localhub listening", "mqtt", h.mqttAddr, "https", h.httpsAddr, "host", h.opts.HostName)
	return nil
}

// brokerLogHandler passes the broker's logs on, except that it demotes the
// message-less warning its listener writes whenever a connection ends with
// an error (every refused device, every dropped TCP connection) to debug:
// the hook already logs refusals with their reason.
type brokerLogHandler struct{ slog.Handler }

func (b brokerLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "" && r.Level == slog.LevelWarn {
		if !b.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level, r.Message = slog.LevelDebug, "mqtt connection ended"
	}
	return b.Handler.Handle(ctx, r)
}

func (b brokerLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return brokerLogHandler{b.Handler.WithAttrs(attrs)}
}

func (b brokerLogHandler) WithGroup(name string) slog.Handler {
	return brokerLogHandler{b.Handler.WithGroup(name)}
}

// clientWritesPending sizes each client's queue of messages the broker
// routes to it. mochi allocates the queue at connect (8 bytes a slot) and
// defaults to 8192 slots, 64 KB a device; localhub writes its method
// requests and twin answers to the connection directly and routes nothing
// through the broker, so a small queue saves ~64 KB per connected device.
const clientWritesPending = 64

// MaxPacketBytes is the largest MQTT packet localhub reads: IoT Hub's
// 256 KB device-to-cloud message limit, which includes the message's
// properties (over MQTT, the topic's property bag), plus 1 KB for the
// packet's framing. A larger packet ends its connection before its body is
// read, as IoT Hub ends it; MQTT 5 clients see the limit in CONNACK.
const MaxPacketBytes = 256*1024 + 1024

// brokerCapabilities narrows mochi's defaults to what IoT Hub offers: no QoS
// 2 (IoT Hub downgrades or refuses it), no retained messages, packets of at
// most MaxPacketBytes (mochi's default has no limit, so a device could make
// it allocate up to 256 MB per packet).
func brokerCapabilities() *mqtt.Capabilities {
	c := mqtt.NewDefaultServerCapabilities()
	c.MaximumPacketSize = MaxPacketBytes
	c.MaximumQos = 1
	c.RetainAvailable = 0
	c.SharedSubAvailable = 0
	c.MaximumClientWritesPending = clientWritesPending
	return c
}

// dialable turns a bound address into one a local client can dial: an
// unspecified IP (":0" binds all interfaces) becomes the IPv4 loopback.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// Close shuts the hub down: waiting method calls end with 503, the HTTPS
// server drains, devices are disconnected and the store is closed. It is
// safe to call more than once and on a hub that never started.
func (h *Hub) Close() error {
	h.lifeMu.Lock()
	defer h.lifeMu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	h.cancel()
	var errs []error
	if h.started {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := h.httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down https: %w", err))
			_ = h.httpSrv.Close()
		}
		cancel()
		if err := h.broker.Close(); err != nil {
			errs = append(errs, fmt.Errorf("shut down mqtt: %w", err))
		}
		h.conns.stopTimers()
		if err := os.Remove(filepath.Join(h.opts.StateDir, runtimeFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if h.standIns != nil {
		// The stand-ins' reports end with h.ctx; they write to the store, closed below.
		h.standIns.wg.Wait()
	}
	// After the HTTPS server drained: the calls it ended are in the log.
	if err := h.saveMethodLog(); err != nil {
		errs = append(errs, err)
	}
	if err := h.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close store: %w", err))
	}
	h.log.Info("localhub stopped")
	return errors.Join(errs...)
}

// MQTTAddr returns the address devices dial, e.g. "127.0.0.1:8883". Empty
// before Start.
func (h *Hub) MQTTAddr() string { return h.mqttAddr }

// HTTPSAddr returns the address service clients dial, e.g.
// "127.0.0.1:8443". Empty before Start.
func (h *Hub) HTTPSAddr() string { return h.httpsAddr }

// HostName returns the hub's host name.
func (h *Hub) HostName() string { return h.opts.HostName }

// CACertFile returns the path of the PEM CA certificate clients must trust.
func (h *Hub) CACertFile() string { return filepath.Join(h.opts.StateDir, caCertFile) }

// ServiceConnectionString returns the iothubowner connection string,
// "HostName=<host>:<https port>;SharedAccessKeyName=iothubowner;SharedAccessKey=<key>".
// The port is left out when it is 443, as for a real hub.
func (h *Hub) ServiceConnectionString() string {
	return serviceConnectionString(hostPort(h.opts.HostName, h.httpsAddr), h.policyB64)
}

// PolicyConnectionString returns the connection string of one of the
// shared access policies (see Policies), e.g. "service" for one with
// ServiceConnect only.
func (h *Hub) PolicyConnectionString(name string) (string, error) {
	if name == PolicyName {
		return h.ServiceConnectionString(), nil
	}
	return policyConnectionString(hostPort(h.opts.HostName, h.httpsAddr), h.policyKey, name)
}

func serviceConnectionString(host, key string) string {
	return "HostName=" + host + ";SharedAccessKeyName=" + PolicyName + ";SharedAccessKey=" + key
}

// hostPort joins host with the port of addr, leaving out 443.
func hostPort(host, addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "443" || port == "" {
		return host
	}
	return net.JoinHostPort(host, port)
}

// DeviceConnectionString returns "HostName=<host>;DeviceId=<id>;SharedAccessKey=<primary key>"
// for a registered device. The host has no port: the device SDKs add 8883
// themselves, so callers point them at MQTTAddr when it differs.
func (h *Hub) DeviceConnectionString(ctx context.Context, deviceID string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	var d store.Device
	err := h.store.View(func(tx *store.Tx) error {
		var err error
		d, err = tx.Device(deviceID)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return "", errorf(ErrDeviceNotFound, "device %q is not registered", deviceID)
	}
	if err != nil {
		return "", fmt.Errorf("read device %s: %w", deviceID, err)
	}
	return deviceConnectionString(h.opts.HostName, d.ID, d.PrimaryKey), nil
}

func deviceConnectionString(host, deviceID, key string) string {
	return "HostName=" + host + ";DeviceId=" + deviceID + ";SharedAccessKey=" + key
}

// MethodInvocations returns how many direct-method requests localhub has
// delivered to deviceID since Start, by method name.
func (h *Hub) MethodInvocations(deviceID string) map[string]int {
	h.statsMu.Lock()
	defer h.statsMu.Unlock()
	out := map[string]int{}
	for m, n := range h.invocations[deviceID] {
		out[m] = n
	}
	return out
}

func (h *Hub) countInvocation(deviceID, method string) {
	h.statsMu.Lock()
	defer h.statsMu.Unlock()
	m := h.invocations[deviceID]
	if m == nil {
		m = map[string]int{}
		h.invocations[deviceID] = m
	}
	m[method]++
}

// countTwinRead counts a service-side twin read of deviceID: the cost the
// real hub meters (100/s on S1) and dmflow's benchmarks report.
func (h *Hub) countTwinRead(deviceID string) {
	h.statsMu.Lock()
	defer h.statsMu.Unlock()
	h.twinReads[deviceID]++
}

// Stats is the body of GET /_localhub/stats.
type Stats struct {
	// ConnectedDevices counts devices with an open MQTT connection.
	ConnectedDevices int `json:"connectedDevices"`
	// TelemetryMessages counts device-to-cloud messages received since start.
	TelemetryMessages int64 `json:"telemetryMessages"`
	// MethodInvocations counts direct-method requests delivered since start,
	// by device and method name.
	MethodInvocations map[string]map[string]int `json:"methodInvocations"`
	// ServiceTwinReads counts GET /twins/{id} answered since start, by device.
	ServiceTwinReads map[string]int `json:"serviceTwinReads"`
	// Throttled counts requests refused (429, CONNACK "server
	// unavailable", res/429) or telemetry dropped since start because an
	// operation's quota was exceeded, by operation (hubquota.Ops).
	Throttled map[string]int `json:"throttled"`
	// PerSecond records, by operation, the requests admitted (not
	// throttled) per whole second since start: the peak, its second and
	// the total. GET /_localhub/stats?since= (PerSecondSince) narrows it
	// to the seconds from a time on and lists them.
	PerSecond map[string]PeakRecord `json:"perSecond"`
}

// Stats returns counters since Start.
func (h *Hub) Stats() Stats {
	h.statsMu.Lock()
	inv := make(map[string]map[string]int, len(h.invocations))
	for d, ms := range h.invocations {
		inv[d] = make(map[string]int, len(ms))
		for m, n := range ms {
			inv[d][m] = n
		}
	}
	reads := make(map[string]int, len(h.twinReads))
	for d, n := range h.twinReads {
		reads[d] = n
	}
	h.statsMu.Unlock()
	return Stats{
		ConnectedDevices:  h.conns.count(),
		TelemetryMessages: h.telemetry.Load(),
		MethodInvocations: inv,
		ServiceTwinReads:  reads,
		Throttled:         h.limits.counts(),
		PerSecond:         h.limits.admitted.sinceStart(),
	}
}

// keyedMutex serialises work per key (device ID) without one global lock.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedEntry{}
	}
	e := k.locks[key]
	if e == nil {
		e = &keyedEntry{}
		k.locks[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

// msTime formats a timestamp the way IoT Hub does: RFC 3339 in UTC with
// seven fractional digits and a trailing Z; the zero time as
// 0001-01-01T00:00:00Z. The Go SDK's MicrosoftTime parses both.
func msTime(t time.Time) string {
	if t.IsZero() {
		return "0001-01-01T00:00:00Z"
	}
	return t.UTC().Format("2006-01-02T15:04:05.0000000Z")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
