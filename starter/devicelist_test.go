package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/dmflow/dmflow/internal/deviceid"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseDeviceList(t *testing.T) {
	long := strings.Repeat("x", maxDeviceLine+10)
	for _, tc := range []struct {
		name, in string
		want     []string
		wantErr  string
	}{
		{name: "lines", in: "a\nb\nc\n", want: []string{"a", "b", "c"}},
		{name: "no final newline", in: "a\nb", want: []string{"a", "b"}},
		{name: "blanks comments CRLF BOM", in: "\ufeff# fleet\r\n\r\n  dev-1  \r\n\t# indented comment\ndev-2 # trailing comment\n", want: []string{"dev-1", "dev-2"}},
		{name: "legal punctuation", in: "a:b.c+d%e_f#g*h?i!j(k)l,m=n@o$q'r\n", want: []string{"a:b.c+d%e_f#g*h?i!j(k)l,m=n@o$q'r"}},
		{name: "semicolon", in: "o;p\n", wantErr: `ids.txt line 1: device ID "o;p" holds ';'`},
		{name: "two words", in: "a\nb c\n", wantErr: `ids.txt line 2: "b c" holds more than one word`},
		{name: "illegal id", in: "a\n\nb/c\n", wantErr: `ids.txt line 3: device ID "b/c" holds '/': use 1 to 128`},
		{name: "too long id", in: strings.Repeat("d", 129), wantErr: "ids.txt line 1: "},
		{name: "repeat", in: "a\nb\na\n", wantErr: "ids.txt line 3: device a repeats line 1"},
		{name: "empty", in: "", wantErr: "ids.txt holds no device IDs"},
		{name: "only comments", in: "# a\n\n#b\n", wantErr: "ids.txt holds no device IDs"},
		{name: "line too long", in: "a\n" + long + "\n", wantErr: "ids.txt line 2: longer than 4096 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDeviceList(strings.NewReader(tc.in), "ids.txt")
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				assert.NotContains(t, err.Error(), "\n")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// A list is bounded by its size in the rollout's input: 10,000 IDs of 16 characters pass, a few
// thousand more do not, and the error names the line and the way out (a query).
func TestParseDeviceListLimit(t *testing.T) {
	var b strings.Builder
	for i := range 10000 {
		fmt.Fprintf(&b, "device-%09d\n", i)
	}
	ids, err := parseDeviceList(strings.NewReader(b.String()), "ok.txt")
	require.NoError(t, err)
	require.NoError(t, workflows.CheckDeviceList(ids))
	for i := 10000; i < 12000; i++ {
		fmt.Fprintf(&b, "device-%09d\n", i)
	}
	_, err = parseDeviceList(strings.NewReader(b.String()), "big.txt")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "big.txt line 10348: 10348 device IDs (192 KB) are more than a rollout takes as a list (192 KB): tag the devices and target them by query")
}

// FuzzParseDeviceList: whatever the input, the parser does not panic, and what it accepts are legal,
// distinct device IDs that read back the same when written one per line.
func FuzzParseDeviceList(f *testing.F) {
	for _, s := range []string{
		"dev-1\ndev-2\n",
		"# comment\n\n  a  # note\r\nb\n",
		"\ufeffa\nb c\n",
		"a\na\n",
		"a/b\n",
		"#only\n",
		strings.Repeat("z", 130) + "\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids, err := parseDeviceList(strings.NewReader(s), "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz") {
				t.Fatalf("error %q does not name the source", err)
			}
			return
		}
		if len(ids) == 0 || len(ids) > workflows.MaxRolloutDevices {
			t.Fatalf("accepted %d IDs", len(ids))
		}
		seen := map[string]bool{}
		for _, id := range ids {
			if deviceid.Check(id) != nil || strings.HasPrefix(id, "#") || seen[id] {
				t.Fatalf("accepted %q from %q", id, s)
			}
			seen[id] = true
		}
		again, err := parseDeviceList(strings.NewReader(strings.Join(ids, "\n")), "again")
		if err != nil || !slices.Equal(again, ids) {
			t.Fatalf("round trip of %q: %v, %v", ids, again, err)
		}
		if err := (workflows.RolloutInput{Name: "n", Operation: workflows.OperationReboot, Devices: ids}).Validate(); err != nil {
			t.Fatalf("the workflow refuses what the parser accepted: %v", err)
		}
	})
}
