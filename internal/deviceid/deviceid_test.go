package deviceid

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/amenzhinsky/iothub/iotdevice"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name, id string
		want     string // in the message; "" for a legal ID
	}{
		{name: "plain", id: "dev-001"},
		{name: "every special character", id: "aZ09-.+%_#*?!(),:=@$'"},
		{name: "128 characters", id: strings.Repeat("d", 128)},
		{name: "empty", id: "", want: "device ID is empty: use 1 to 128"},
		{name: "129 characters", id: strings.Repeat("d", 129), want: `device ID "` + strings.Repeat("d", 62) + `"… has 129 characters: use 1 to 128`},
		{name: "semicolon", id: "semi;colon", want: `device ID "semi;colon" holds ';', which would end the DeviceId of its connection string`},
		{name: "slash", id: "dev/1", want: `device ID "dev/1" holds '/': use 1 to 128 ASCII letters, digits and -.+%_#*?!(),:=@$' (IoT Hub's device-ID rule)`},
		{name: "space", id: "dev 1", want: `holds ' '`},
		{name: "non-ASCII", id: "dév", want: "holds a non-ASCII character"},
		{name: "control character", id: "a\nb", want: `holds '\n'`},
		{name: "quote", id: `a"b`, want: `holds '"'`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.id)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Check(%q) = %v, want nil", tc.id, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Check(%q) = %v, want an error containing %q", tc.id, err, tc.want)
			}
		})
	}
}

func TestCheckAs(t *testing.T) {
	err := CheckAs("request ID", "a/b")
	if err == nil || !strings.HasPrefix(err.Error(), `request ID "a/b" holds '/': use 1 to 128`) {
		t.Errorf("CheckAs = %v", err)
	}
}

// TestSemicolonInConnectionString shows why the rule refuses ';': the unchanged amenzhinsky device
// client cannot carry such an ID in its connection string.
func TestSemicolonInConnectionString(t *testing.T) {
	key := "SharedAccessKey=" + base64.StdEncoding.EncodeToString([]byte(rand.Text())) // made here, never committed
	if _, err := iotdevice.ParseConnectionString("HostName=h.azure-devices.net;DeviceId=semi;colon;" + key); err == nil || err.Error() != "malformed connection string" {
		t.Errorf("DeviceId=semi;colon: err = %v, want the parser's malformed connection string", err)
	}
	creds, err := iotdevice.ParseConnectionString("HostName=h.azure-devices.net;DeviceId=semi;colon=x;" + key)
	if err != nil || creds.DeviceID != "semi" {
		t.Errorf("DeviceId=semi;colon=x: device %q, err %v; want the parser to read the device ID as semi", creds.DeviceID, err)
	}
	// Every other special character travels unchanged, '=' included: the parser splits a part at
	// its first '='.
	id := "aZ09-.+%_#*?!(),:=@$'"
	creds, err = iotdevice.ParseConnectionString("HostName=h.azure-devices.net;DeviceId=" + id + ";" + key)
	if err != nil || creds.DeviceID != id {
		t.Errorf("DeviceId=%s: device %q, err %v", id, creds.DeviceID, err)
	}
}

// FuzzCheck: Check never panics, accepts exactly the IDs of the rule, and every ID it accepts
// travels unchanged in a device connection string; a refusal is one line of bounded length.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{"dev-001", "", "semi;colon", "a/b", "dév", strings.Repeat("x", 129), "aZ09-.+%_#*?!(),:=@$'", "a=b"} {
		f.Add(s)
	}
	key := base64.StdEncoding.EncodeToString([]byte(rand.Text()))
	f.Fuzz(func(t *testing.T, id string) {
		err := Check(id)
		legal := id != "" && len(id) <= MaxLen && strings.Trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"+Special) == ""
		if (err == nil) != legal {
			t.Fatalf("Check(%q) = %v, want legal=%v", id, err, legal)
		}
		if err != nil {
			if msg := err.Error(); !utf8.ValidString(msg) || strings.ContainsAny(msg, "\r\n") || len(msg) > 400 {
				t.Fatalf("message %q is not one short line", msg)
			}
			return
		}
		creds, perr := iotdevice.ParseConnectionString("HostName=h.azure-devices.net;DeviceId=" + id + ";SharedAccessKey=" + key)
		if perr != nil || creds.DeviceID != id {
			t.Fatalf("DeviceId=%s: parsed %q, err %v", id, creds.DeviceID, perr)
		}
	})
}
