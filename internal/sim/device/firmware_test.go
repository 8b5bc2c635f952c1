package device

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/protocol"
)

func TestParseFirmwareRequest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload map[string]any
		want    FirmwareRequest
		wantErr string
	}{
		{name: "tutorial payload", payload: map[string]any{"fwPackageUri": "https://fw.example/v2.bin"},
			want: FirmwareRequest{PackageURI: "https://fw.example/v2.bin"}},
		{name: "all fields", payload: map[string]any{"fwPackageUri": "http://fw.example:8080/a/b.bin?sig=x", "version": "2.0.0", "updateId": "u-1"},
			want: FirmwareRequest{PackageURI: "http://fw.example:8080/a/b.bin?sig=x", Version: "2.0.0", UpdateID: "u-1"}},
		{name: "null optional fields", payload: map[string]any{"fwPackageUri": "https://h/x", "version": nil, "updateId": nil},
			want: FirmwareRequest{PackageURI: "https://h/x"}},
		{name: "upper-case scheme", payload: map[string]any{"fwPackageUri": "HTTPS://fw.example/x"},
			want: FirmwareRequest{PackageURI: "HTTPS://fw.example/x"}},
		{name: "nil payload", payload: nil, wantErr: "fwPackageUri is missing"},
		{name: "missing", payload: map[string]any{"version": "2"}, wantErr: "fwPackageUri is missing"},
		{name: "null", payload: map[string]any{"fwPackageUri": nil}, wantErr: "fwPackageUri is missing"},
		{name: "number", payload: map[string]any{"fwPackageUri": 42.0}, wantErr: "must be a string"},
		{name: "empty", payload: map[string]any{"fwPackageUri": ""}, wantErr: "not an absolute http or https URL"},
		{name: "relative", payload: map[string]any{"fwPackageUri": "/fw/v2.bin"}, wantErr: "not an absolute http or https URL"},
		{name: "ftp", payload: map[string]any{"fwPackageUri": "ftp://fw.example/v2.bin"}, wantErr: "not an absolute http or https URL"},
		{name: "no host", payload: map[string]any{"fwPackageUri": "https:///v2.bin"}, wantErr: "has no host"},
		{name: "opaque", payload: map[string]any{"fwPackageUri": "https:fw.example"}, wantErr: "has no host"},
		{name: "not a URL", payload: map[string]any{"fwPackageUri": "https://fw example/%zz"}, wantErr: "is not a URL"},
		{name: "too long", payload: map[string]any{"fwPackageUri": "https://h/" + strings.Repeat("a", maxURILen)}, wantErr: "longer than 2048"},
		{name: "version not a string", payload: map[string]any{"fwPackageUri": "https://h/x", "version": 2.0}, wantErr: "version must be a string"},
		{name: "update ID not a string", payload: map[string]any{"fwPackageUri": "https://h/x", "updateId": true}, wantErr: "updateId must be a string"},
		{name: "update ID too long", payload: map[string]any{"fwPackageUri": "https://h/x", "updateId": strings.Repeat("u", 129)}, wantErr: "updateId is longer than 128"},
		{name: "version with control character", payload: map[string]any{"fwPackageUri": "https://h/x", "version": "2\n0"}, wantErr: "version holds a character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFirmwareRequest(tc.payload)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				assert.Equal(t, FirmwareRequest{}, got)
				if s, ok := tc.payload["fwPackageUri"].(string); ok && len(s) > 10 {
					assert.NotContains(t, err.Error(), s, "the URI is not echoed")
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestFirmwareKey(t *testing.T) {
	for _, tc := range []struct {
		req  FirmwareRequest
		want string
	}{
		{FirmwareRequest{PackageURI: "https://h/x", UpdateID: "u1", Version: "2"}, "u1"},
		{FirmwareRequest{PackageURI: "https://h/x?sv=1&sig=secret#frag", Version: "2.0.0"}, "2.0.0@https://h/x"},
		{FirmwareRequest{PackageURI: "https://user:pw@h/x"}, "https://h/x"},
	} {
		assert.Equal(t, tc.want, tc.req.Key())
	}
	a := FirmwareRequest{PackageURI: "https://h/x?sig=a", Version: "2"}
	b := FirmwareRequest{PackageURI: "https://h/x?sig=b", Version: "2"}
	assert.Equal(t, a.Key(), b.Key(), "a fresh SAS token names the same image")
}

// FuzzParseFirmwareRequest checks that no payload panics the parser and
// that what it accepts is what the device relies on.
func FuzzParseFirmwareRequest(f *testing.F) {
	for _, s := range []string{
		`{"fwPackageUri":"https://fw.example/v2.bin","version":"2.0.0","updateId":"u1"}`,
		`{"fwPackageUri":"http://h:1/a?b=c#d"}`,
		`{"fwPackageUri":"ftp://h/x"}`,
		`{"fwPackageUri":12,"version":[1]}`,
		`{"fwPackageUri":"https:opaque"}`,
		`null`,
		`{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var payload map[string]any
		if json.Unmarshal(data, &payload) != nil {
			return
		}
		r, err := ParseFirmwareRequest(payload)
		if err != nil {
			if r != (FirmwareRequest{}) {
				t.Errorf("error %v with a request %+v", err, r)
			}
			return
		}
		u, err := url.Parse(r.PackageURI)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
			t.Errorf("accepted %q", r.PackageURI)
		}
		if len(r.Version) > maxTextLen || len(r.UpdateID) > maxTextLen {
			t.Errorf("accepted long fields %+v", r)
		}
		if r.Key() == "" {
			t.Errorf("empty key for %+v", r)
		}
		again, err := ParseFirmwareRequest(payload)
		if err != nil || again != r {
			t.Errorf("not deterministic: %+v / %+v, %v", r, again, err)
		}
	})
}

func TestNewFirmwareConfig(t *testing.T) {
	d, err := New(Config{ConnectionString: testConn(t)})
	require.NoError(t, err)
	assert.Equal(t, DefaultStageDuration, d.cfg.StageDuration)
	assert.Equal(t, FirmwareState{Version: "1.0.0", Status: protocol.StatusStandBy}, d.Firmware())
	assert.Zero(t, d.cfg.FlapDowntime)

	d, err = New(Config{ConnectionString: testConn(t), FailStage: protocol.StatusApplying, FlapInterval: time.Second, FirmwareVersion: "3.1"})
	require.NoError(t, err)
	assert.Contains(t, d.cfg.FailReason, "applying")
	assert.Equal(t, 250*time.Millisecond, d.cfg.FlapDowntime)
	assert.Equal(t, "3.1", d.Firmware().Version)

	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{StageDuration: -time.Second}, "stage duration -1s is negative"},
		{Config{FlapInterval: -time.Second}, "flap interval"},
		{Config{FailStage: "completed"}, "downloading|applying"},
		{Config{FirmwareVersion: "1\x00"}, "firmware version"},
	} {
		tc.cfg.ConnectionString = testConn(t)
		_, err := New(tc.cfg)
		assert.ErrorContains(t, err, tc.want)
	}
}

func TestRestoreFirmware(t *testing.T) {
	for _, tc := range []struct {
		name     string
		reported iotdevice.TwinState
		want     FirmwareState
		errStage string // of the update, when it failed
		start    bool   // an interrupted update is reported at start
	}{
		{name: "empty twin", reported: iotdevice.TwinState{},
			want: FirmwareState{Version: "1.0.0", Status: protocol.StatusStandBy}},
		{name: "standBy without update", reported: iotdevice.TwinState{"firmwareStatus": "standBy", "firmwareVersion": "1.2.0"},
			want: FirmwareState{Version: "1.2.0", Status: protocol.StatusStandBy}},
		{name: "completed", reported: iotdevice.TwinState{"firmwareStatus": "completed", "firmwareVersion": "2.0.0", "firmwareUpdateId": "u1"},
			want: FirmwareState{Version: "2.0.0", Status: protocol.StatusCompleted, UpdateID: "u1"}},
		{name: "standBy after completed", reported: iotdevice.TwinState{"firmwareStatus": "standBy", "firmwareVersion": "2.0.0", "firmwareUpdateId": "u1"},
			want: FirmwareState{Version: "2.0.0", Status: protocol.StatusCompleted, UpdateID: "u1"}},
		{name: "error", reported: iotdevice.TwinState{"firmwareStatus": "error", "firmwareUpdateId": "u1", "firmwareError": "bad", "firmwareErrorStage": "applying"},
			want: FirmwareState{Version: "1.0.0", Status: protocol.StatusError, UpdateID: "u1"}, errStage: "applying"},
		{name: "standBy after error", reported: iotdevice.TwinState{"firmwareStatus": "standBy", "firmwareUpdateId": "u1", "firmwareError": "bad", "firmwareErrorStage": "downloading"},
			want: FirmwareState{Version: "1.0.0", Status: protocol.StatusError, UpdateID: "u1"}, errStage: "downloading"},
		{name: "interrupted", reported: iotdevice.TwinState{"firmwareStatus": "applying", "firmwareUpdateId": "u1", "firmwareVersion": "1.0.0"},
			want: FirmwareState{Version: "1.0.0", Status: protocol.StatusError, UpdateID: "u1"}, errStage: "applying", start: true},
		{name: "unprintable version ignored", reported: iotdevice.TwinState{"firmwareVersion": "2\x00"},
			want: FirmwareState{Version: "1.0.0", Status: protocol.StatusStandBy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(Config{ConnectionString: testConn(t)})
			require.NoError(t, err)
			d.restoreFirmware(tc.reported)
			assert.Equal(t, tc.want, d.Firmware())
			if tc.want.UpdateID != "" {
				u := d.fw.served[tc.want.UpdateID]
				require.NotNil(t, u, "a restored update is a repeat")
				assert.Equal(t, tc.errStage, u.errStage)
			}
			assert.Equal(t, tc.start, d.fw.startReport != nil)
			if tc.start {
				assert.Equal(t, "error", d.fw.startReport["firmwareStatus"])
				assert.Contains(t, d.fw.startReport["firmwareError"], "interrupted")
			}
		})
	}
}

func TestFirmwareAnswer(t *testing.T) {
	u := &fwUpdate{key: "u1", status: protocol.StatusApplying}
	assert.Equal(t, map[string]any{"Response": "Firmware update u1 already applying", "firmwareStatus": "applying"}, u.answer())
	u = &fwUpdate{key: "u2", status: protocol.StatusError, errMsg: "bad image", errStage: "applying"}
	assert.Equal(t, map[string]any{"Response": "Firmware update u2 already error", "firmwareStatus": "error",
		"firmwareError": "bad image", "firmwareErrorStage": "applying"}, u.answer())
}

func TestJitter(t *testing.T) {
	for range 100 {
		j := jitter(time.Second)
		assert.GreaterOrEqual(t, j, 800*time.Millisecond)
		assert.LessOrEqual(t, j, 1200*time.Millisecond)
	}
}
