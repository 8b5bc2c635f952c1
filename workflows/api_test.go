package workflows_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
)

func TestRebootWorkflowID(t *testing.T) {
	assert.Equal(t, "reboot/dev1/r-42", workflows.RebootWorkflowID("dev1", "r-42"))
}

func TestRebootInputValidate(t *testing.T) {
	tests := []struct {
		name string
		in   workflows.RebootInput
		want []string // nil when valid
	}{
		{name: "defaults", in: workflows.RebootInput{DeviceID: "dev1"}},
		{name: "every legal character", in: workflows.RebootInput{DeviceID: "aZ09-:.+%_#*?!(),=@$'", RequestID: "2f1c-77"}},
		{name: "128 characters", in: workflows.RebootInput{DeviceID: strings.Repeat("d", 128)}},
		{name: "bounds", in: workflows.RebootInput{DeviceID: "dev1", MethodTimeout: 300 * time.Second, Deadline: 24 * time.Hour}},
		{name: "smallest", in: workflows.RebootInput{DeviceID: "dev1", MethodTimeout: 5 * time.Second, Deadline: 20 * time.Second}},
		{name: "no device", in: workflows.RebootInput{}, want: []string{"device ID is required"}},
		{name: "slash in device", in: workflows.RebootInput{DeviceID: "dev/1"}, want: []string{`device ID "dev/1" holds '/': use 1 to 128 ASCII letters`}},
		{name: "semicolon in device", in: workflows.RebootInput{DeviceID: "dev;1"}, want: []string{`device ID "dev;1" holds ';'`, "connection string"}},
		{name: "space in device", in: workflows.RebootInput{DeviceID: "dev 1"}, want: []string{`holds ' '`, "IoT Hub's device-ID rule"}},
		{name: "129 characters", in: workflows.RebootInput{DeviceID: strings.Repeat("d", 129)}, want: []string{"has 129 characters", "IoT Hub's device-ID rule"}},
		{name: "slash in request", in: workflows.RebootInput{DeviceID: "dev1", RequestID: "a/b"}, want: []string{`request ID "a/b"`}},
		{name: "method timeout too short", in: workflows.RebootInput{DeviceID: "dev1", MethodTimeout: 4 * time.Second}, want: []string{"method timeout 4s is outside"}},
		{name: "method timeout too long", in: workflows.RebootInput{DeviceID: "dev1", MethodTimeout: 301 * time.Second}, want: []string{"method timeout"}},
		{name: "negative", in: workflows.RebootInput{DeviceID: "dev1", Deadline: -time.Minute}, want: []string{"negative"}},
		{name: "deadline shorter than one invocation", in: workflows.RebootInput{DeviceID: "dev1", Deadline: time.Minute}, want: []string{"deadline 1m0s must lie between"}},
		{name: "deadline too long", in: workflows.RebootInput{DeviceID: "dev1", Deadline: 25 * time.Hour}, want: []string{"deadline"}},
		{name: "all problems at once", in: workflows.RebootInput{RequestID: "a b", MethodTimeout: time.Second},
			want: []string{"device ID is required", "request ID", "method timeout"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.in.Validate()
			if tc.want == nil {
				assert.NoError(t, err)
				return
			}
			if assert.Error(t, err) {
				for _, s := range tc.want {
					assert.Contains(t, err.Error(), s)
				}
			}
		})
	}
}

func TestFirmwareInputValidate(t *testing.T) {
	valid := func(mod func(*workflows.FirmwareInput)) workflows.FirmwareInput {
		in := workflows.FirmwareInput{DeviceID: "dev1", PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"}
		mod(&in)
		return in
	}
	tests := []struct {
		name   string
		in     workflows.FirmwareInput
		want   []string // nil when valid
		secret string   // must not appear in the message
	}{
		{name: "defaults", in: valid(func(*workflows.FirmwareInput) {})},
		{name: "http with query and port", in: valid(func(in *workflows.FirmwareInput) {
			in.PackageURI = "http://10.0.0.5:8080/fw?file=v2.bin&signature=none"
		})},
		{name: "update ID and durations", in: valid(func(in *workflows.FirmwareInput) {
			in.UpdateID, in.StageTimeout, in.Deadline, in.Reboot = "u-42", time.Second, 45*time.Second, true
		})},
		{name: "version with build metadata", in: valid(func(in *workflows.FirmwareInput) { in.Version = "2.0.0-rc.1+build.5" })},
		{name: "nothing", in: workflows.FirmwareInput{}, want: []string{"device ID is required", "package URI is required", "version is required"}},
		{name: "slash in device", in: valid(func(in *workflows.FirmwareInput) { in.DeviceID = "dev/1" }), want: []string{`device ID "dev/1"`}},
		{name: "relative URI", in: valid(func(in *workflows.FirmwareInput) { in.PackageURI = "/fw/v2.bin" }), want: []string{"absolute http or https URL"}},
		{name: "ftp URI", in: valid(func(in *workflows.FirmwareInput) { in.PackageURI = "ftp://fw.example/v2.bin" }), want: []string{`"ftp://fw.example/v2.bin" must be an absolute http or https URL`}},
		{name: "not a URL", in: valid(func(in *workflows.FirmwareInput) { in.PackageURI = "https://fw example/%zz" }), want: []string{"not a valid URL"}},
		{name: "too long", in: valid(func(in *workflows.FirmwareInput) { in.PackageURI = "https://fw.example/" + strings.Repeat("a", 2048) }), want: []string{"at most 2048"}},
		{
			name: "SAS signature",
			in: valid(func(in *workflows.FirmwareInput) {
				in.PackageURI = "https://acct.blob.core.windows.net/fw/v2.bin?sv=2024-01-01&se=2026-06-01&sp=r&sig=SECRETsig%3D"
			}),
			want:   []string{"SAS signature (sig=)", "use a URI without credentials"},
			secret: "SECRETsig",
		},
		{
			name: "SAS signature in other case",
			in: valid(func(in *workflows.FirmwareInput) {
				in.PackageURI = "https://acct.blob.core.windows.net/fw/v2.bin?SIG=SECRETsig"
			}),
			want:   []string{"use a URI without credentials"},
			secret: "SECRETsig",
		},
		{
			name:   "SAS signature with a bad scheme",
			in:     valid(func(in *workflows.FirmwareInput) { in.PackageURI = "ftp://acct/fw?sig=SECRETsig" }),
			want:   []string{"use a URI without credentials"},
			secret: "SECRETsig",
		},
		{
			name:   "user info",
			in:     valid(func(in *workflows.FirmwareInput) { in.PackageURI = "https://admin:SECRETpw@fw.example/v2.bin" }),
			want:   []string{"user credentials", "use a URI without credentials"},
			secret: "SECRETpw",
		},
		{name: "space in version", in: valid(func(in *workflows.FirmwareInput) { in.Version = "2.0 beta" }), want: []string{`version "2.0 beta"`}},
		{name: "slash in update ID", in: valid(func(in *workflows.FirmwareInput) { in.UpdateID = "a/b" }), want: []string{`update ID "a/b"`}},
		{name: "negative", in: valid(func(in *workflows.FirmwareInput) { in.StageTimeout = -time.Second }), want: []string{"negative"}},
		{name: "deadline too short", in: valid(func(in *workflows.FirmwareInput) { in.Deadline = 30 * time.Second }), want: []string{"deadline 30s must lie between 45s and 24h0m0s"}},
		{name: "deadline too long", in: valid(func(in *workflows.FirmwareInput) { in.Deadline = 25 * time.Hour }), want: []string{"deadline"}},
		{name: "stage timeout too short", in: valid(func(in *workflows.FirmwareInput) { in.StageTimeout = time.Millisecond }), want: []string{"stage timeout 1ms"}},
		{name: "stage timeout beyond the deadline", in: valid(func(in *workflows.FirmwareInput) { in.StageTimeout = 16 * time.Minute }), want: []string{"stage timeout 16m0s must lie between 1s and the deadline (15m0s)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.in.Validate()
			if tc.want == nil {
				assert.NoError(t, err)
				return
			}
			if assert.Error(t, err) {
				assert.Contains(t, err.Error(), "invalid firmware input")
				for _, s := range tc.want {
					assert.Contains(t, err.Error(), s)
				}
				if tc.secret != "" {
					assert.NotContains(t, err.Error(), tc.secret)
				}
			}
		})
	}
}

// FuzzFirmwareInputValidate checks that Validate never panics and never repeats a package URI's
// query or user info, where credentials live, whatever it says about the URI.
func FuzzFirmwareInputValidate(f *testing.F) {
	for _, seed := range []string{
		"https://fw.example/v2.bin",
		"https://acct.blob.core.windows.net/fw/v2.bin?sv=2024-01-01&sp=r&sig=c2VjcmV0c2lnbmF0dXJl",
		"ftp://user:password1234567890@fw.example/v2.bin?token=abcdefghijklmnop",
		"http://[::1]:8080/fw?%zz",
		"",
	} {
		f.Add(seed, "2.0.0")
	}
	f.Fuzz(func(t *testing.T, uri, version string) {
		err := workflows.FirmwareInput{DeviceID: "dev1", PackageURI: uri, Version: version}.Validate()
		if err == nil {
			return
		}
		u, perr := url.Parse(uri)
		if perr != nil {
			return
		}
		// Short fragments may occur in the fixed text by chance, and so may pieces of the example
		// URI the message suggests: that is taken out before looking.
		msg := strings.ReplaceAll(err.Error(), "https://fw.example/v2.bin", "")
		if q := u.RawQuery; len(q) >= 16 && strings.Contains(msg, q) {
			t.Errorf("message repeats the query %q: %v", q, err)
		}
		if u.User != nil {
			if ui := u.User.String(); len(ui) >= 16 && strings.Contains(msg, ui) {
				t.Errorf("message repeats the user info %q: %v", ui, err)
			}
		}
	})
}
