package device

// The device's connection to its hub: one MQTT session at a time (see
// session), dialled with backoff, with the methods registered on it, and
// the classification of connect errors that no retry can fix.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/amenzhinsky/iothub/iotdevice/transport/mqtt"
	"github.com/cenkalti/backoff/v4"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/dmflow/dmflow/internal/hubconn"
)

// ErrRefused marks a connection the hub refused for the credentials: no
// retry can fix it.
var ErrRefused = errors.New("IoT Hub refused the device credentials")

const (
	// twinTimeout bounds a twin read or reported patch. The call itself
	// runs on the session's context (see session), so a timeout only stops
	// the wait.
	twinTimeout = 30 * time.Second
	// subscribeTimeout bounds registering the method subscription.
	subscribeTimeout = 30 * time.Second
)

// session is one MQTT client and a context that lives exactly as long as
// it. The client keeps the context of the first twin request and of method
// registration to re-subscribe after every reconnect and to publish method
// answers, so those calls must get this long-lived context, never a
// short timeout; waits are bounded separately (see call).
type session struct {
	client *iotdevice.Client
	// tr is the client's transport on ContractTutorial (see
	// hubconn.NewDeviceClientTransport), nil otherwise.
	tr     *mqtt.Transport
	ctx    context.Context
	cancel context.CancelFunc
	first  atomic.Bool // the first OnConnect has been seen
}

func (s *session) close() {
	if s.client != nil {
		_ = s.client.Close()
	}
	s.cancel()
}

// call runs fn with the session's context and waits at most timeout for
// it. After a timeout fn goes on until the session closes.
func (s *session) call(timeout time.Duration, fn func(ctx context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- fn(s.ctx) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("IoT Hub did not answer within %s", timeout)
	}
}

// closeSession closes s and, if it is the session in use, marks the device
// offline.
func (d *Device) closeSession(s *session) {
	d.mu.Lock()
	if d.current == s {
		d.current = nil
		d.connected.Store(false)
	}
	d.mu.Unlock()
	s.close()
}

// session returns the session in use, nil while offline.
func (d *Device) session() *session {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.current
}

// connect builds a client, connects, boots (reads the twin, reports the
// start state) and registers the methods, retrying transient failures with
// exponential backoff until ctx is done. restart says whether the device
// (re)started, as opposed to coming back after a dropped connection.
func (d *Device) connect(ctx context.Context, restart bool) (*session, error) {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(500*time.Millisecond),
		backoff.WithMaxInterval(10*time.Second),
		// A device waits for its hub as long as it runs.
		backoff.WithMaxElapsedTime(0),
	)
	notify := func(err error, next time.Duration) {
		d.log.Warn("connect failed: retrying", "error", err, "retry_in", next.Round(time.Millisecond).String())
	}
	for {
		var s *session
		op := func() error {
			var err error
			s, err = d.dial(ctx)
			return err
		}
		if err := backoff.RetryNotify(op, backoff.WithContext(b, ctx), notify); err != nil {
			return nil, err
		}
		d.mu.Lock()
		d.current = s
		d.connected.Store(true)
		d.mu.Unlock()
		d.boot(s, restart)
		method, err := d.register(ctx, s)
		if err == nil {
			return s, nil
		}
		// Rare (the hub refused or ignored the subscription): start over
		// with a fresh client rather than serve without the method.
		d.closeSession(s)
		next := b.NextBackOff()
		notify(fmt.Errorf("register method %s: %w", method, err), next)
		if !sleep(ctx, next) {
			return nil, ctx.Err()
		}
	}
}

// register subscribes the methods on s; runCtx bounds the firmware
// updates the handlers start. It returns the method that failed.
func (d *Device) register(runCtx context.Context, s *session) (string, error) {
	if d.tutorial() {
		err := s.call(subscribeTimeout, func(ctx context.Context) error {
			return s.tr.RegisterDirectMethods(ctx, tutorialMethods{d: d, s: s, run: runCtx})
		})
		if err != nil {
			return MethodReboot + " and " + MethodFirmwareUpdate, err
		}
		return "", nil
	}
	handlers := []struct {
		name string
		fn   iotdevice.DirectMethodHandler
	}{
		{MethodReboot, d.rebootHandler(s)},
		{MethodFirmwareUpdate, d.firmwareHandler(runCtx)},
	}
	for _, h := range handlers {
		fn := h.fn
		if d.cfg.Unresponsive {
			fn = d.silent(s, h.name)
		}
		err := s.call(subscribeTimeout, func(ctx context.Context) error {
			return s.client.RegisterMethod(ctx, h.name, fn)
		})
		if err != nil {
			return h.name, err
		}
	}
	return "", nil
}

// silent is an unresponsive device's handler: it counts the call and never
// answers. It returns when the session ends; the client then has no
// connection to publish the answer on.
func (d *Device) silent(s *session, method string) iotdevice.DirectMethodHandler {
	return func(map[string]any) (int, map[string]any, error) {
		d.methodCalls.Add(1)
		d.log.Info("method call ignored: the device is unresponsive", "method", method)
		<-s.ctx.Done()
		return http.StatusServiceUnavailable, map[string]any{"error": "the device went offline"}, nil
	}
}

// dial makes one connection attempt.
func (d *Device) dial(ctx context.Context) (*session, error) {
	sctx, cancel := context.WithCancel(ctx)
	s := &session{ctx: sctx, cancel: cancel}
	unknown := d.unknownMethod
	if d.cfg.Unresponsive {
		unknown = func(method string) (int, []byte) {
			d.methodCalls.Add(1)
			<-sctx.Done()
			return http.StatusServiceUnavailable, nil
		}
	}
	opts := hubconn.DeviceOptions{
		CAFile:           d.cfg.CAFile,
		TLSConfig:        d.cfg.TLSConfig,
		Broker:           d.cfg.Broker,
		Logger:           d.log,
		UnknownMethod:    unknown,
		OnConnect:        func() { d.onConnect(s) },
		OnConnectionLost: func(err error) { d.onConnectionLost(s, err) },
	}
	var c *iotdevice.Client
	var err error
	if d.tutorial() {
		c, s.tr, err = hubconn.NewDeviceClientTransport(d.cfg.ConnectionString, opts)
	} else {
		c, err = hubconn.NewDeviceClient(d.cfg.ConnectionString, opts)
	}
	if err != nil {
		cancel()
		return nil, backoff.Permanent(err)
	}
	s.client = c
	if err := c.Connect(ctx); err != nil {
		s.close()
		return nil, d.classify(err)
	}
	return s, nil
}

func (d *Device) onConnect(s *session) {
	d.connections.Add(1)
	// The first connect of a session is marked in connect; this catches
	// the client's own reconnects.
	d.mu.Lock()
	if d.current == s {
		d.connected.Store(true)
	}
	d.mu.Unlock()
	if s.first.Swap(true) {
		d.log.Info("connection restored")
		return
	}
	d.log.Info("connected", "host", d.cfg.ConnectionString.HostName)
}

func (d *Device) onConnectionLost(s *session, err error) {
	d.mu.Lock()
	if d.current == s {
		d.connected.Store(false)
	}
	d.mu.Unlock()
	d.log.Warn("connection lost", "error", err)
}

// classify makes connect errors that retrying cannot fix permanent, with a
// message naming the setting to fix.
func (d *Device) classify(err error) error {
	id := d.ID()
	var uae x509.UnknownAuthorityError
	var he x509.HostnameError
	var cve *tls.CertificateVerificationError
	switch {
	case errors.Is(err, packets.ErrorRefusedNotAuthorised),
		errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword),
		errors.Is(err, packets.ErrorRefusedIDRejected):
		return backoff.Permanent(fmt.Errorf("connect as %s: %w (%v): check IOTHUB_DEVICE_CONNECTION_STRING: its DeviceId and SharedAccessKey must belong to a registered, enabled device of this hub", id, ErrRefused, err))
	case errors.As(err, &uae):
		return backoff.Permanent(fmt.Errorf("connect as %s: the hub's certificate is not trusted (%v): set DMFLOW_HUB_CA_FILE (--ca-file) to localhub's ca.pem, or leave it empty for Azure IoT Hub", id, err))
	case errors.As(err, &he):
		return backoff.Permanent(fmt.Errorf("connect as %s: the hub's certificate does not name the host (%v): the HostName in IOTHUB_DEVICE_CONNECTION_STRING must match the certificate; point --broker at the address", id, err))
	case errors.As(err, &cve):
		return backoff.Permanent(fmt.Errorf("connect as %s: the hub's certificate was rejected (%v): check DMFLOW_HUB_CA_FILE (--ca-file)", id, err))
	}
	return fmt.Errorf("connect as %s: %w", id, err)
}

// boot runs what a device does after it connected: it reads its twin (also

// unknownMethod answers methods this device does not implement.
func (d *Device) unknownMethod(method string) (int, []byte) {
	d.methodCalls.Add(1)
	d.log.Warn("method not supported", "method", method)
	b, _ := json.Marshal(map[string]string{"error": fmt.Sprintf("method %s is not supported by this device", method)})
	return http.StatusNotFound, b
}
