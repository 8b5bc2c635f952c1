package hubconn

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const key = "c2VjcmV0LWtleS1mb3ItdGVzdHM=" // base64("secret-key-for-tests")

func TestParseService(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cs       string
		wantHost string
		wantErr  []string
	}{
		{name: "azure", cs: "HostName=hub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" + key, wantHost: "hub.azure-devices.net"},
		{name: "localhub with port", cs: "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=" + key, wantHost: "localhost:8443"},
		{name: "spaces and trailing semicolon", cs: " HostName=h;SharedAccessKeyName=p;SharedAccessKey=" + key + "; ", wantHost: "h"},
		{name: "empty", cs: "", wantErr: []string{"IOTHUB_CONNECTION_STRING is not set", "HostName="}},
		{name: "missing parts", cs: "HostName=h", wantErr: []string{"malformed", "SharedAccessKeyName, SharedAccessKey missing"}},
		{name: "no equals", cs: "HostName=h;garbage;SharedAccessKeyName=p;SharedAccessKey=" + key, wantErr: []string{"Name=Value"}},
		{name: "key not base64", cs: "HostName=h;SharedAccessKeyName=p;SharedAccessKey=not*base64", wantErr: []string{"not base64"}},
		{name: "device string", cs: "HostName=h;DeviceId=d;SharedAccessKeyName=p;SharedAccessKey=" + key, wantErr: []string{"device connection string"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseService("IOTHUB_CONNECTION_STRING", tc.cs)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("no error for %q", tc.cs)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				if strings.Contains(err.Error(), key) {
					t.Errorf("error %q leaks the key", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.HostName != tc.wantHost {
				t.Errorf("host %q, want %q", s.HostName, tc.wantHost)
			}
			if !strings.Contains(s.String(), "SharedAccessKey="+key) {
				t.Errorf("String() lost the key")
			}
		})
	}
}

func TestParseDevice(t *testing.T) {
	d, err := ParseDevice("IOTHUB_DEVICE_CONNECTION_STRING", "HostName=localhost;DeviceId=dev-001;SharedAccessKey="+key)
	if err != nil {
		t.Fatal(err)
	}
	if d.HostName != "localhost" || d.DeviceID != "dev-001" {
		t.Errorf("got %+v", d)
	}
	_, err = ParseDevice("IOTHUB_DEVICE_CONNECTION_STRING", "HostName=localhost;SharedAccessKey="+key)
	if err == nil || !strings.Contains(err.Error(), "DeviceId missing") || !strings.Contains(err.Error(), "IOTHUB_DEVICE_CONNECTION_STRING") {
		t.Errorf("err = %v", err)
	}
}

func TestTLSConfig(t *testing.T) {
	dir := t.TempDir()
	if _, err := TLSConfig(filepath.Join(dir, "missing.pem")); err == nil || !strings.Contains(err.Error(), "DMFLOW_HUB_CA_FILE") {
		t.Errorf("missing file: err = %v", err)
	}
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := TLSConfig(bad); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("bad file: err = %v", err)
	}
	if c, err := TLSConfig(""); err != nil || c.RootCAs == nil {
		t.Errorf("no CA file: %v", err)
	}
}

// FuzzParseService: the service and device parsers never panic, never quote
// the key in an error, and what they accept round-trips.
func FuzzParseService(f *testing.F) {
	f.Add("HostName=h;SharedAccessKeyName=p;SharedAccessKey=" + key)
	f.Add("HostName=h;DeviceId=d;SharedAccessKey=" + key)
	f.Add(";;=;==;HostName")
	f.Add("")
	f.Fuzz(func(t *testing.T, cs string) {
		noKeyIn := func(err error) {
			t.Helper()
			if i := strings.Index(cs, "SharedAccessKey="); i >= 0 {
				v, _, _ := strings.Cut(cs[i+len("SharedAccessKey="):], ";")
				// The fixed text (setting name, expected form) may contain
				// any short string; only what is left could be a leak.
				// (Longer phrases first: at one position the first listed wins.)
				rest := strings.NewReplacer(ServiceForm, "", DeviceForm, "",
					errKeyNotBase64.Error(), "", errPartForm.Error(), "", errEmpty.Error(), "",
					"SharedAccessKeyName", "", "SharedAccessKey", "", "HostName", "", "DeviceId", "").Replace(err.Error())
				if len(v) >= 8 && strings.Contains(rest, v) {
					t.Errorf("error %q quotes the key %q", err, v)
				}
			}
		}
		if s, err := ParseService("X", cs); err != nil {
			noKeyIn(err)
		} else {
			if s.HostName == "" || s.KeyName == "" {
				t.Errorf("accepted %q with empty fields: %+v", cs, s)
			}
			if _, err := ParseService("X", s.String()); err != nil {
				t.Errorf("round trip of %q: %v", cs, err)
			}
		}
		if d, err := ParseDevice("X", cs); err != nil {
			noKeyIn(err)
		} else {
			if d.HostName == "" || d.DeviceID == "" {
				t.Errorf("accepted device %q with empty fields: %+v", cs, d)
			}
			if _, err := ParseDevice("X", d.String()); err != nil {
				t.Errorf("round trip of device %q: %v", cs, err)
			}
		}
	})
}
