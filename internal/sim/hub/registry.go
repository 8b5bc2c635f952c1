package hub

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dmflow/dmflow/internal/deviceid"
	"github.com/dmflow/dmflow/internal/sim/hub/sas"
	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

const (
	statusEnabled  = "enabled"
	statusDisabled = "disabled"
	authSAS        = "sas"
)

// errDeviceDisabled and errDeviceDeleted end the connection of a device the
// registry no longer admits, as IoT Hub does.
var (
	errDeviceDisabled = errors.New("device disabled")
	errDeviceDeleted  = errors.New("device deleted")
)

// validDeviceID applies IoT Hub's rule for device IDs (internal/deviceid),
// refusing an ID as IoT Hub does: ArgumentInvalid.
func validDeviceID(id string) error {
	if err := deviceid.Check(id); err != nil {
		return errorf(ErrArgumentInvalid, "%s", err)
	}
	return nil
}

// deviceSpec is the writable part of an identity, as a service sends it.
type deviceSpec struct {
	ID           string
	Status       string // "" keeps (update) or enables (create)
	StatusReason string
	AuthType     string // "" means sas
	PrimaryKey   string // "" generates (create) or keeps (update)
	SecondaryKey string
	IoTEdge      bool
}

func (s *deviceSpec) validate() error {
	if err := validDeviceID(s.ID); err != nil {
		return err
	}
	switch s.Status {
	case "", statusEnabled, statusDisabled:
	default:
		return errorf(ErrArgumentInvalid, "status %q is neither enabled nor disabled", s.Status)
	}
	switch s.AuthType {
	case "", authSAS:
	default:
		return errorf(ErrArgumentInvalid, "authentication type %q is not supported by localhub; use sas (symmetric keys)", s.AuthType)
	}
	for name, k := range map[string]string{"primaryKey": s.PrimaryKey, "secondaryKey": s.SecondaryKey} {
		if k == "" {
			continue
		}
		raw, err := sas.DecodeKey(k)
		if err != nil || len(raw) < 16 || len(raw) > 64 {
			return errorf(ErrArgumentInvalid, "%s must be base64 of 16 to 64 bytes", name)
		}
	}
	if s.PrimaryKey != "" && s.PrimaryKey == s.SecondaryKey {
		return errorf(ErrArgumentInvalid, "primaryKey and secondaryKey must differ")
	}
	return nil
}

// putDevice creates (ifMatch empty) or updates (ifMatch "*", quoted or not,
// or an etag: see etagMatches) an identity. Creating an existing device
// fails with DeviceAlreadyExists, as on IoT Hub: updates must say so with
// If-Match.
func (h *Hub) putDevice(spec deviceSpec, ifMatch string, now time.Time) (store.Device, error) {
	var (
		out      store.Device
		disabled bool
	)
	err := h.store.Update(func(tx *store.Tx) error {
		var err error
		out, disabled, err = putDeviceTx(tx, spec, ifMatch, now)
		return err
	})
	if err != nil {
		return store.Device{}, err
	}
	if disabled {
		h.disconnectDevice(spec.ID, errDeviceDisabled)
	}
	return out, nil
}

// putDeviceTx is putDevice inside a transaction. It reports whether the
// update disabled the device, whose connection the caller then closes. An
// *Error leaves the transaction unchanged.
func putDeviceTx(tx *store.Tx, spec deviceSpec, ifMatch string, now time.Time) (out store.Device, disabled bool, err error) {
	if err := spec.validate(); err != nil {
		return store.Device{}, false, err
	}
	cur, err := tx.Device(spec.ID)
	exists := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Device{}, false, err
	}
	if strings.TrimSpace(ifMatch) == "" {
		if exists {
			return store.Device{}, false, errorf(ErrDeviceAlreadyExists, "A device with ID '%s' is already registered.", spec.ID)
		}
		d, err := newDevice(spec, now)
		if err != nil {
			return store.Device{}, false, err
		}
		if err := tx.PutDevice(d); err != nil {
			return store.Device{}, false, err
		}
		return d, false, tx.PutTwin(d.ID, newTwin(now))
	}
	if !exists {
		return store.Device{}, false, errorf(ErrDeviceNotFound, "device %q is not registered", spec.ID)
	}
	if !etagMatches(ifMatch, deviceETag(cur.Version)) {
		return store.Device{}, false, errorf(ErrPreconditionFailed, "the device etag does not match If-Match %s", ifMatch)
	}
	if spec.Status != "" && spec.Status != cur.Status {
		cur.Status = spec.Status
		cur.StatusUpdatedTime = now
		disabled = spec.Status == statusDisabled
	}
	cur.StatusReason = spec.StatusReason
	if spec.PrimaryKey != "" {
		cur.PrimaryKey = spec.PrimaryKey
	}
	if spec.SecondaryKey != "" {
		cur.SecondaryKey = spec.SecondaryKey
	}
	if cur.PrimaryKey == cur.SecondaryKey {
		return store.Device{}, false, errorf(ErrArgumentInvalid, "primaryKey and secondaryKey must differ")
	}
	cur.IoTEdge = spec.IoTEdge
	cur.Version++
	return cur, disabled, tx.PutDevice(cur)
}

func newDevice(spec deviceSpec, now time.Time) (store.Device, error) {
	d := store.Device{
		ID:                spec.ID,
		GenerationID:      generationID(now),
		Version:           1,
		Status:            spec.Status,
		StatusReason:      spec.StatusReason,
		StatusUpdatedTime: now,
		AuthType:          authSAS,
		PrimaryKey:        spec.PrimaryKey,
		SecondaryKey:      spec.SecondaryKey,
		IoTEdge:           spec.IoTEdge,
		Created:           now,
	}
	if d.Status == "" {
		d.Status = statusEnabled
	}
	var err error
	for d.PrimaryKey == "" || d.PrimaryKey == d.SecondaryKey {
		if d.PrimaryKey, err = newKey(); err != nil {
			return d, err
		}
	}
	for d.SecondaryKey == "" || d.SecondaryKey == d.PrimaryKey {
		if d.SecondaryKey, err = newKey(); err != nil {
			return d, err
		}
	}
	return d, nil
}

// generationID tells apart identities that reuse a deleted device's ID. IoT
// Hub uses .NET ticks; so does localhub, plus random low digits.
func generationID(now time.Time) string {
	const unixEpochTicks = 621355968000000000
	var b [2]byte
	_, _ = rand.Read(b[:])
	ticks := unixEpochTicks + now.UnixNano()/100
	return strconv.FormatInt(ticks-ticks%10000+int64(binary.BigEndian.Uint16(b[:])%10000), 10)
}

// getDevice returns an identity.
func (h *Hub) getDevice(id string) (store.Device, error) {
	var d store.Device
	err := h.store.View(func(tx *store.Tx) error {
		var err error
		d, err = tx.Device(id)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return d, errorf(ErrDeviceNotFound, "device %q is not registered", id)
	}
	return d, err
}

// getTwin returns an identity and its twin.
func (h *Hub) getTwin(id string) (store.Device, store.Twin, error) {
	var (
		d  store.Device
		tw store.Twin
	)
	err := h.store.View(func(tx *store.Tx) error {
		var err error
		if d, err = tx.Device(id); err != nil {
			return err
		}
		tw, err = tx.Twin(id)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return d, tw, errorf(ErrDeviceNotFound, "device %q is not registered", id)
	}
	return d, tw, err
}

// deleteDevice removes an identity and its twin and disconnects the device.
func (h *Hub) deleteDevice(id, ifMatch string) error {
	err := h.store.Update(func(tx *store.Tx) error { return deleteDeviceTx(tx, id, ifMatch) })
	if err != nil {
		return err
	}
	h.forgetDevice(id)
	return nil
}

// deleteDeviceTx is deleteDevice inside a transaction; the caller then
// calls forgetDevice. An *Error leaves the transaction unchanged.
func deleteDeviceTx(tx *store.Tx, id, ifMatch string) error {
	d, err := tx.Device(id)
	if errors.Is(err, store.ErrNotFound) {
		return errorf(ErrDeviceNotFound, "device %q is not registered", id)
	}
	if err != nil {
		return err
	}
	if !etagMatches(ifMatch, deviceETag(d.Version)) {
		return errorf(ErrPreconditionFailed, "the device etag does not match If-Match %s", ifMatch)
	}
	return tx.DeleteDevice(id)
}

// forgetDevice disconnects a deleted device and drops its connection
// history.
func (h *Hub) forgetDevice(id string) {
	h.disconnectDevice(id, errDeviceDeleted)
	h.conns.forget(id)
}

// listDevices returns up to limit identities in ID order.
func (h *Hub) listDevices(limit int) ([]store.Device, error) {
	var out []store.Device
	err := h.store.View(func(tx *store.Tx) error {
		return tx.Devices("", func(d store.Device) (bool, error) {
			out = append(out, d)
			return len(out) < limit, nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}
