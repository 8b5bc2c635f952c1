// Package store keeps localhub's durable state, device identities and
// twins, in a bbolt file, and the method log a hub saves when it stops.
//
// Records are JSON documents keyed by device ID. Twin documents are decoded
// with json.Number so that numbers written by devices and services survive a
// round trip through the store unchanged (float64 would round large
// integers). Callers change state inside Update transactions, so conditional
// writes (etag checks, create-if-absent) are atomic.
//
// bbolt holds an exclusive lock on the file while it is open: a second
// process opening the same state directory fails after a short timeout
// instead of waiting forever.
package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

var (
	// ErrNotFound reports a device that is not in the store.
	ErrNotFound = errors.New("not found")
	// ErrLocked reports a store file held open by another process.
	ErrLocked = errors.New("store is in use by another process")
)

var (
	bucketDevices = []byte("devices")
	bucketTwins   = []byte("twins")
	bucketMeta    = []byte("meta")
	// bucketMethodLog holds the method log's records by big-endian sequence number; it is created
	// when first written, so files of earlier builds open unchanged.
	bucketMethodLog = []byte("methodLog")
	keySchema       = []byte("schema")
	keyLogDropped   = []byte("methodLogDropped")
)

// schemaVersion is written on creation so that a later format change can
// recognise and migrate old files.
const schemaVersion = "1"

// Device is a device identity.
type Device struct {
	ID           string `json:"id"`
	GenerationID string `json:"generationId"`
	// Version increases with every identity change; the etag derives from it.
	Version           uint64    `json:"version"`
	Status            string    `json:"status"`
	StatusReason      string    `json:"statusReason,omitempty"`
	StatusUpdatedTime time.Time `json:"statusUpdatedTime"`
	AuthType          string    `json:"authType"`
	PrimaryKey        string    `json:"primaryKey"`
	SecondaryKey      string    `json:"secondaryKey"`
	IoTEdge           bool      `json:"iotEdge,omitempty"`
	Created           time.Time `json:"created"`
}

// Twin is a device twin. Property documents hold JSON values decoded with
// json.Number; the metadata documents mirror their shape with "$lastUpdated"
// (and, for desired properties, "$lastUpdatedVersion") entries.
type Twin struct {
	// Version increases with every change of tags, desired or reported
	// properties; the twin etag derives from it.
	Version         uint64         `json:"version"`
	Tags            map[string]any `json:"tags"`
	Desired         map[string]any `json:"desired"`
	DesiredVersion  int64          `json:"desiredVersion"`
	DesiredMeta     map[string]any `json:"desiredMeta"`
	Reported        map[string]any `json:"reported"`
	ReportedVersion int64          `json:"reportedVersion"`
	ReportedMeta    map[string]any `json:"reportedMeta"`
}

// Store is an open state file.
type Store struct {
	db *bbolt.DB
}

// Open opens (creating if needed) the store file at path.
func Open(path string) (*Store, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketDevices, bucketTwins, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil:
			return meta.Put(keySchema, []byte(schemaVersion))
		case string(v) != schemaVersion:
			return fmt.Errorf("schema version %q, this build reads %q", v, schemaVersion)
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("initialise %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file and releases its lock.
func (s *Store) Close() error {
	return s.db.Close()
}

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bbolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Update runs fn in a read-write transaction; an error from fn rolls back.
func (s *Store) Update(fn func(*Tx) error) error {
	return s.db.Update(func(tx *bbolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Tx is a transaction.
type Tx struct {
	tx *bbolt.Tx
}

// Device returns the identity of id, or ErrNotFound.
func (t *Tx) Device(id string) (Device, error) {
	var d Device
	err := get(t.tx.Bucket(bucketDevices), id, &d)
	return d, err
}

// PutDevice creates or replaces an identity.
func (t *Tx) PutDevice(d Device) error {
	return put(t.tx.Bucket(bucketDevices), d.ID, d)
}

// Twin returns the twin of id, or ErrNotFound.
func (t *Tx) Twin(id string) (Twin, error) {
	var tw Twin
	if err := get(t.tx.Bucket(bucketTwins), id, &tw); err != nil {
		return Twin{}, err
	}
	tw.Tags = nonNil(tw.Tags)
	tw.Desired = nonNil(tw.Desired)
	tw.DesiredMeta = nonNil(tw.DesiredMeta)
	tw.Reported = nonNil(tw.Reported)
	tw.ReportedMeta = nonNil(tw.ReportedMeta)
	return tw, nil
}

// PutTwin creates or replaces the twin of id.
func (t *Tx) PutTwin(id string, tw Twin) error {
	return put(t.tx.Bucket(bucketTwins), id, tw)
}

// DeleteDevice removes the identity and the twin of id.
func (t *Tx) DeleteDevice(id string) error {
	if t.tx.Bucket(bucketDevices).Get([]byte(id)) == nil {
		return ErrNotFound
	}
	if err := t.tx.Bucket(bucketDevices).Delete([]byte(id)); err != nil {
		return err
	}
	return t.tx.Bucket(bucketTwins).Delete([]byte(id))
}

// Devices calls fn for each identity in device ID order, starting after the
// ID after (all when empty), until fn returns false or an error.
func (t *Tx) Devices(after string, fn func(Device) (bool, error)) error {
	c := t.tx.Bucket(bucketDevices).Cursor()
	var k, v []byte
	if after == "" {
		k, v = c.First()
	} else {
		k, v = c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
	}
	for ; k != nil; k, v = c.Next() {
		var d Device
		if err := decode(v, &d); err != nil {
			return fmt.Errorf("device %q: %w", k, err)
		}
		more, err := fn(d)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// CountDevices returns the number of identities.
func (t *Tx) CountDevices() int {
	return t.tx.Bucket(bucketDevices).Stats().KeyN
}

func get(b *bbolt.Bucket, id string, v any) error {
	raw := b.Get([]byte(id))
	if raw == nil {
		return ErrNotFound
	}
	if err := decode(raw, v); err != nil {
		return fmt.Errorf("record %q: %w", id, err)
	}
	return nil
}

func put(b *bbolt.Bucket, id string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %q: %w", id, err)
	}
	return b.Put([]byte(id), raw)
}

func decode(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(v)
}

func nonNil(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

// LogRecord is a saved entry of the method log: its sequence number and its JSON document.
type LogRecord struct {
	Seq  uint64
	Data []byte
}

// ReplaceMethodLog replaces the saved method log with records (in Seq order) and the count of
// entries dropped before them.
func (t *Tx) ReplaceMethodLog(records []LogRecord, dropped uint64) error {
	if t.tx.Bucket(bucketMethodLog) != nil {
		if err := t.tx.DeleteBucket(bucketMethodLog); err != nil {
			return err
		}
	}
	b, err := t.tx.CreateBucket(bucketMethodLog)
	if err != nil {
		return err
	}
	// Keys arrive in order: fill pages completely instead of splitting them in half.
	b.FillPercent = 1
	for _, r := range records {
		if err := b.Put(binary.BigEndian.AppendUint64(nil, r.Seq), r.Data); err != nil {
			return err
		}
	}
	return t.tx.Bucket(bucketMeta).Put(keyLogDropped, binary.BigEndian.AppendUint64(nil, dropped))
}

// MethodLog calls fn with each saved record of the method log in Seq order and returns the count
// of entries dropped before them. A store that never saved one has none.
func (t *Tx) MethodLog(fn func(data []byte) error) (dropped uint64, err error) {
	if v := t.tx.Bucket(bucketMeta).Get(keyLogDropped); len(v) == 8 {
		dropped = binary.BigEndian.Uint64(v)
	}
	b := t.tx.Bucket(bucketMethodLog)
	if b == nil {
		return dropped, nil
	}
	err = b.ForEach(func(k, v []byte) error {
		if err := fn(v); err != nil {
			return fmt.Errorf("method log record %x: %w", k, err)
		}
		return nil
	})
	return dropped, err
}
