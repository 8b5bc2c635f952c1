package device

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/amenzhinsky/iothub/iotservice"

	"github.com/dmflow/dmflow/internal/hubconn"
)

// Provision returns the connection string of device id, registering the
// identity with symmetric keys first when the hub does not know it. The
// device's HostName is the service's without a port: a service connection
// string for localhub names its HTTPS port (localhost:8443), while a device
// signs its SAS token for, and connects over MQTT to, the bare host.
func Provision(ctx context.Context, svc *iotservice.Client, id string) (hubconn.Device, error) {
	dev, err := svc.GetDevice(ctx, id)
	if isStatus(err, http.StatusNotFound) {
		dev, err = svc.CreateDevice(ctx, NewIdentity(id))
		if isStatus(err, http.StatusConflict) || isStatus(err, http.StatusPreconditionFailed) {
			// Registered by someone else meanwhile.
			dev, err = svc.GetDevice(ctx, id)
		}
	}
	if err != nil {
		return hubconn.Device{}, fmt.Errorf("register device %s: %w", id, err)
	}
	return Connection(svc, dev)
}

// Connection returns the connection string of a registered identity; its
// HostName is the bare host (see Provision).
func Connection(svc *iotservice.Client, dev *iotservice.Device) (hubconn.Device, error) {
	id := dev.DeviceID
	if dev.Authentication == nil || dev.Authentication.Type != iotservice.AuthSAS || dev.Authentication.SymmetricKey == nil {
		// DeviceConnectionString would dereference a missing key set.
		return hubconn.Device{}, fmt.Errorf("device %s does not authenticate with symmetric keys: use another device ID or pass its connection string in IOTHUB_DEVICE_CONNECTION_STRING", id)
	}
	cs, err := svc.DeviceConnectionString(dev, false)
	if err != nil {
		return hubconn.Device{}, fmt.Errorf("connection string of device %s: %w", id, err)
	}
	d, err := hubconn.ParseDevice("the device connection string built from IOTHUB_CONNECTION_STRING", cs)
	if err != nil {
		return hubconn.Device{}, err
	}
	d.HostName = bareHost(d.HostName)
	return d, nil
}

// NewIdentity is an enabled identity for id with fresh symmetric keys.
func NewIdentity(id string) *iotservice.Device {
	return &iotservice.Device{
		DeviceID: id,
		Status:   iotservice.Enabled,
		Authentication: &iotservice.Authentication{
			Type:         iotservice.AuthSAS,
			SymmetricKey: &iotservice.SymmetricKey{PrimaryKey: newKey(), SecondaryKey: newKey()},
		},
	}
}

// newKey makes a 256-bit key, the size IoT Hub generates.
func newKey() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.StdEncoding.EncodeToString(b)
}

func isStatus(err error, code int) bool {
	var re *iotservice.RequestError
	return errors.As(err, &re) && re.Code == code
}

// bareHost strips a port from host ("localhost:8443" → "localhost").
func bareHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return host
}
