package reported

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDescribe(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want string
	}{
		{name: "Python local time", v: "2026-12-06 18:34:08.808000", want: `"2026-12-06 18:34:08.808000" (device local time, no zone)`},
		{name: "ISO local time", v: "2026-12-06T18:34:08", want: `"2026-12-06T18:34:08" (device local time, no zone)`},
		{name: "Unix seconds", v: 1733510048.0, want: `1733510048 (Unix seconds, 2024-12-06T18:34:08Z)`},
		{name: "Unix seconds json.Number", v: json.Number("1733510048"), want: `1733510048 (Unix seconds, 2024-12-06T18:34:08Z)`},
		{name: "Unix milliseconds", v: 1733510048808.0, want: `1733510048808 (Unix milliseconds, 2024-12-06T18:34:08.808Z)`},
		{name: "Unix seconds string", v: "1733510048", want: `"1733510048" (Unix seconds, 2024-12-06T18:34:08Z)`},
		{name: "RFC 3339 UTC", v: "2026-12-06T18:34:08.812Z", want: `"2026-12-06T18:34:08.812Z" (RFC 3339, 2026-12-06T18:34:08.812Z)`},
		{name: "RFC 3339 offset", v: "2026-12-06T19:34:08+01:00", want: `"2026-12-06T19:34:08+01:00" (RFC 3339, 2026-12-06T18:34:08Z)`},
		{name: "status", v: "downloading", want: `"downloading"`},
		{name: "small number", v: 3.0, want: `3`},
		{name: "fraction", v: 0.25, want: `0.25`},
		{name: "null", v: nil, want: `null`},
		{name: "bool", v: false, want: `false`},
		{name: "object sorted, no HTML escapes", v: map[string]any{"b": "<x>&", "a": 1.0}, want: `{"a":1,"b":"<x>&"}`},
		{name: "array", v: []any{"a", 1.0, nil}, want: `["a",1,null]`},
		{name: "control characters escaped", v: "line\nnext\ttab\x00", want: `"line\nnext\ttab\u0000"`},
		{name: "invalid UTF-8", v: "a\xffb", want: `"a\ufffdb"`},
		{name: "NaN", v: math.NaN(), want: `NaN`},
		{name: "Inf", v: math.Inf(-1), want: `-Inf`},
		{name: "json.Number not JSON", v: json.Number("0x1p40"), want: `"0x1p40"`},
		// encoding/json makes no such number.
		{name: "json.Number padded", v: json.Number(" 1733510048\n"), want: `" 1733510048\n"`},
		// Go's notation, of which the loop checks only that it is one line.
		{name: "not JSON at all", v: make(chan int), want: ""},
		{name: "long string", v: strings.Repeat("x", 200), want: `"` + strings.Repeat("x", MaxDescribe-2) + `…`},
		{name: "long object", v: map[string]any{"k": strings.Repeat("é", 300)}, want: `{"k":"` + strings.Repeat("é", MaxDescribe-7) + `…`},
		{name: "padded time keeps its meaning", v: strings.Repeat(" ", 150) + "2026-12-06 18:34:08", want: `"` + strings.Repeat(" ", MaxDescribe-len(` (device local time, no zone)`)-2) + `… (device local time, no zone)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Describe(tc.v)
			if tc.want != "" && got != tc.want {
				t.Errorf("Describe(%#v) =\n%s\nwant\n%s", tc.v, got, tc.want)
			}
			if n := utf8.RuneCountInString(got); n > MaxDescribe || n == 0 || strings.ContainsAny(got, "\n\r\t\x00") {
				t.Errorf("Describe(%#v) = %q: %d characters, want 1 to %d on one line", tc.v, got, n, MaxDescribe)
			}
		})
	}
}
