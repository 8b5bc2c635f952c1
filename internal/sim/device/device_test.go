package device

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/cenkalti/backoff/v4"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
)

func testConn(t *testing.T) hubconn.Device {
	t.Helper()
	d, err := hubconn.ParseDevice("test", "HostName=localhost;DeviceId=dev-1;SharedAccessKey=c2VjcmV0")
	require.NoError(t, err)
	return d
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     func(c *Config)
		check   func(t *testing.T, d *Device)
		wantErr string
	}{
		{name: "defaults", cfg: func(*Config) {}, check: func(t *testing.T, d *Device) {
			assert.Equal(t, StyleTutorial, d.cfg.RebootStyle)
			assert.Equal(t, DefaultRebootDuration, d.cfg.RebootDuration)
			assert.NotNil(t, d.cfg.Now)
			assert.Equal(t, "dev-1", d.ID())
		}},
		{name: "realistic", cfg: func(c *Config) { c.RebootStyle = StyleRealistic; c.RebootDuration = time.Second },
			check: func(t *testing.T, d *Device) {
				assert.Equal(t, StyleRealistic, d.cfg.RebootStyle)
				assert.Equal(t, time.Second, d.cfg.RebootDuration)
			}},
		{name: "unknown style", cfg: func(c *Config) { c.RebootStyle = "quick" }, wantErr: "tutorial|realistic"},
		{name: "negative duration", cfg: func(c *Config) { c.RebootDuration = -time.Second }, wantErr: "negative"},
		{name: "no connection string", cfg: func(c *Config) { c.ConnectionString = hubconn.Device{} }, wantErr: "hubconn.ParseDevice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{ConnectionString: testConn(t)}
			tc.cfg(&cfg)
			d, err := New(cfg)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			tc.check(t, d)
		})
	}
}

func TestClassify(t *testing.T) {
	d, err := New(Config{ConnectionString: testConn(t)})
	require.NoError(t, err)
	netErr := func(err error) error { return fmt.Errorf("%w : %w", packets.ErrorNetworkError, err) }
	for _, tc := range []struct {
		name      string
		err       error
		permanent bool
		want      []string
	}{
		{"not authorized", packets.ErrorRefusedNotAuthorised, true, []string{"IOTHUB_DEVICE_CONNECTION_STRING", "dev-1", ErrRefused.Error()}},
		{"bad password", packets.ErrorRefusedBadUsernameOrPassword, true, []string{"IOTHUB_DEVICE_CONNECTION_STRING"}},
		{"id rejected", packets.ErrorRefusedIDRejected, true, []string{"IOTHUB_DEVICE_CONNECTION_STRING"}},
		{"unknown CA", netErr(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), true, []string{"DMFLOW_HUB_CA_FILE"}},
		{"wrong host", netErr(&tls.CertificateVerificationError{Err: x509.HostnameError{Certificate: &x509.Certificate{}, Host: "x"}}), true, []string{"HostName"}},
		{"expired", netErr(&tls.CertificateVerificationError{Err: x509.CertificateInvalidError{Reason: x509.Expired}}), true, []string{"DMFLOW_HUB_CA_FILE"}},
		{"refused", netErr(syscall.ECONNREFUSED), false, []string{"dev-1"}},
		{"server unavailable", packets.ErrorRefusedServerUnavailable, false, []string{"dev-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := d.classify(tc.err)
			var perm *backoff.PermanentError
			assert.Equal(t, tc.permanent, errors.As(err, &perm))
			for _, s := range tc.want {
				assert.Contains(t, err.Error(), s)
			}
			if tc.name == "not authorized" {
				assert.ErrorIs(t, err, ErrRefused)
			}
		})
	}
}

func TestIdempotencyState(t *testing.T) {
	d, err := New(Config{ConnectionString: testConn(t)})
	require.NoError(t, err)

	_, repeat := d.reboot.begin("")
	assert.False(t, repeat, "calls without a request ID always reboot")
	_, repeat = d.reboot.begin("")
	assert.False(t, repeat)

	_, repeat = d.reboot.begin("r1")
	assert.False(t, repeat, "first call")
	r, repeat := d.reboot.begin("r1")
	assert.True(t, repeat)
	assert.False(t, r.done, "in progress")

	code, out, err := d.repeatAnswer(nil, "r1", r)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "Reboot r1 already in progress", out[FieldResponse])

	at := time.Date(2025, 1, 2, 3, 4, 5, 6e6, time.UTC)
	d.reboot.finish("r1", at)
	d.reboot.markReported("r1")
	r, repeat = d.reboot.begin("r1")
	assert.True(t, repeat)
	code, out, err = d.repeatAnswer(nil, "r1", r)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "Reboot r1 already done", out[FieldResponse])
	assert.Equal(t, "2025-01-02T03:04:05.006Z", out[PropRebootTime])

	// An interrupted reboot is forgotten, so a retry reboots.
	_, _ = d.reboot.begin("r2")
	d.reboot.forget("r2")
	_, repeat = d.reboot.begin("r2")
	assert.False(t, repeat)
}

func TestRealisticRebootState(t *testing.T) {
	r := newRebootState()
	// As the handler does: each call is seen, then joins the reboot.
	for _, id := range []string{"r1", "", "r2"} {
		_, repeat := r.begin(id)
		require.False(t, repeat)
		r.goOffline(id)
	}
	select {
	case <-r.offline:
	default:
		t.Fatal("the first call did not wake Run")
	}
	select {
	case <-r.offline:
		t.Fatal("calls joining the reboot woke Run again")
	default:
	}
	req, repeat := r.begin("r1")
	assert.True(t, repeat)
	assert.False(t, req.done, "in progress until the device is back")

	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	ids, got, ok := r.backOnline(func() time.Time { return at })
	require.True(t, ok)
	assert.Equal(t, []string{"r1", "r2"}, ids)
	assert.Equal(t, at, got)
	req, _ = r.begin("r2")
	assert.True(t, req.done)
	assert.Equal(t, at, req.at)
	assert.False(t, req.reported)
	_, _, ok = r.backOnline(time.Now)
	assert.False(t, ok, "no reboot in progress")
}

func TestRestore(t *testing.T) {
	d, err := New(Config{ConnectionString: testConn(t)})
	require.NoError(t, err)
	d.restore(iotdevice.TwinState{PropRebootTime: "2025-01-02T03:04:05.006Z", PropLastRebootRequestID: "r0", "$version": 3.0})
	r, repeat := d.reboot.begin("r0")
	require.True(t, repeat, "the twin's last request ID is a repeat")
	assert.True(t, r.done)
	assert.True(t, r.reported)
	assert.Equal(t, time.Date(2025, 1, 2, 3, 4, 5, 6e6, time.UTC), r.at)

	// Nothing to restore from a twin without the property.
	d.restore(iotdevice.TwinState{PropRebootTime: "2025-01-02T03:04:05Z"})
	_, repeat = d.reboot.begin("other")
	assert.False(t, repeat)
}

func TestUnknownMethod(t *testing.T) {
	d, err := New(Config{ConnectionString: testConn(t)})
	require.NoError(t, err)
	code, body := d.unknownMethod("selfDestruct")
	assert.Equal(t, http.StatusNotFound, code)
	var m map[string]string
	require.NoError(t, json.Unmarshal(body, &m))
	assert.Equal(t, "method selfDestruct is not supported by this device", m["error"])
	assert.EqualValues(t, 1, d.MethodCalls())
}

func TestBareHost(t *testing.T) {
	for in, want := range map[string]string{
		"localhost:8443":          "localhost",
		"localhost":               "localhost",
		"hub.azure-devices.net":   "hub.azure-devices.net",
		"127.0.0.1:8443":          "127.0.0.1",
		"[::1]:8443":              "::1",
		"hub.azure-devices.net:1": "hub.azure-devices.net",
	} {
		assert.Equal(t, want, bareHost(in), in)
	}
}
