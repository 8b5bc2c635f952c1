package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		format  string
		wantErr bool
		check   func(t *testing.T, out string)
	}{
		{format: "", check: func(t *testing.T, out string) {
			if !strings.Contains(out, "device=dev-1") {
				t.Errorf("text output %q lacks device=dev-1", out)
			}
		}},
		{format: "text", check: func(t *testing.T, out string) {
			if !strings.Contains(out, `msg=hello`) {
				t.Errorf("text output %q lacks msg=hello", out)
			}
		}},
		{format: "json", check: func(t *testing.T, out string) {
			var m map[string]any
			if err := json.Unmarshal([]byte(out), &m); err != nil {
				t.Fatalf("json output %q: %v", out, err)
			}
			if m["device"] != "dev-1" {
				t.Errorf("device = %v", m["device"])
			}
		}},
		{format: "yaml", wantErr: true},
	} {
		t.Run(tc.format, func(t *testing.T) {
			var buf bytes.Buffer
			l, err := New(tc.format, &buf, slog.LevelInfo)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), Formats) {
					t.Fatalf("err = %v, want one naming %s", err, Formats)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l.Info("hello", "device", "dev-1")
			tc.check(t, buf.String())
		})
	}
}
