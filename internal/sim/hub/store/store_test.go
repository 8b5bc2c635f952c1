package store

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "test.db")
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

func TestDevicesAndTwinsSurviveReopen(t *testing.T) {
	s, path := openTemp(t)
	created := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	big := json.Number("9007199254740993") // 2^53+1: float64 would round it
	err := s.Update(func(tx *Tx) error {
		if err := tx.PutDevice(Device{ID: "d1", Status: "enabled", PrimaryKey: "k1", Version: 1, Created: created}); err != nil {
			return err
		}
		return tx.PutTwin("d1", Twin{Version: 3, Reported: map[string]any{"n": big, "s": "x"}, ReportedVersion: 2})
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s2, err := Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { _ = s2.Close() })
	err = s2.View(func(tx *Tx) error {
		d, err := tx.Device("d1")
		if err != nil {
			return err
		}
		if d.PrimaryKey != "k1" || d.Status != "enabled" || !d.Created.Equal(created) {
			t.Errorf("device = %+v", d)
		}
		tw, err := tx.Twin("d1")
		if err != nil {
			return err
		}
		if tw.Reported["n"] != big {
			t.Errorf("reported n = %#v, want %#v", tw.Reported["n"], big)
		}
		if tw.Version != 3 || tw.ReportedVersion != 2 {
			t.Errorf("twin versions = %d/%d", tw.Version, tw.ReportedVersion)
		}
		if tw.Desired == nil || tw.Tags == nil || tw.DesiredMeta == nil {
			t.Error("empty twin documents decode as nil maps")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
}

func TestNotFoundAndDelete(t *testing.T) {
	s, _ := openTemp(t)
	err := s.Update(func(tx *Tx) error {
		if _, err := tx.Device("nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Device(nope) error = %v", err)
		}
		if _, err := tx.Twin("nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Twin(nope) error = %v", err)
		}
		if err := tx.DeleteDevice("nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeleteDevice(nope) error = %v", err)
		}
		if err := tx.PutDevice(Device{ID: "d"}); err != nil {
			return err
		}
		if err := tx.PutTwin("d", Twin{}); err != nil {
			return err
		}
		if err := tx.DeleteDevice("d"); err != nil {
			return err
		}
		if _, err := tx.Twin("d"); !errors.Is(err, ErrNotFound) {
			t.Errorf("twin survived its device: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDevicesPaging(t *testing.T) {
	s, _ := openTemp(t)
	ids := []string{"c", "a", "e", "b", "d"}
	err := s.Update(func(tx *Tx) error {
		for _, id := range ids {
			if err := tx.PutDevice(Device{ID: id}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		after string
		limit int
		want  string
	}{
		{name: "all", want: "abcde"},
		{name: "first two", limit: 2, want: "ab"},
		{name: "after b", after: "b", limit: 2, want: "cd"},
		{name: "after missing key", after: "bb", want: "cde"},
		{name: "after last", after: "e", want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got string
			err := s.View(func(tx *Tx) error {
				if n := tx.CountDevices(); n != len(ids) {
					t.Errorf("CountDevices = %d", n)
				}
				return tx.Devices(tc.after, func(d Device) (bool, error) {
					got += d.ID
					return tc.limit == 0 || len(got) < tc.limit, nil
				})
			})
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestOpenLocked(t *testing.T) {
	_, path := openTemp(t)
	start := time.Now()
	s, err := Open(path)
	if err == nil {
		_ = s.Close()
		t.Fatal("second Open of a locked file succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("error = %v, want ErrLocked", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("Open waited %v for the lock", time.Since(start))
	}
}

func TestMethodLogReplaced(t *testing.T) {
	s, path := openTemp(t)
	read := func(s *Store) ([]string, uint64) {
		t.Helper()
		var got []string
		var dropped uint64
		err := s.View(func(tx *Tx) error {
			var err error
			dropped, err = tx.MethodLog(func(data []byte) error {
				got = append(got, string(data))
				return nil
			})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return got, dropped
	}
	if got, dropped := read(s); len(got) != 0 || dropped != 0 {
		t.Fatalf("a new store's log: %v, %d dropped", got, dropped)
	}
	save := func(dropped uint64, records ...LogRecord) {
		t.Helper()
		if err := s.Update(func(tx *Tx) error { return tx.ReplaceMethodLog(records, dropped) }); err != nil {
			t.Fatal(err)
		}
	}
	// Sequence numbers above 255 and 65535 sort by number, not by their first byte.
	save(0, LogRecord{9, []byte(`a`)}, LogRecord{300, []byte(`b`)}, LogRecord{70000, []byte(`c`)})
	save(2, LogRecord{300, []byte(`b`)}, LogRecord{70000, []byte(`c`)}, LogRecord{70001, []byte(`d`)})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got, dropped := read(s2); strings.Join(got, "") != "bcd" || dropped != 2 {
		t.Errorf("after a replace and a reopen: %v, %d dropped; want b c d, 2 dropped", got, dropped)
	}
}
