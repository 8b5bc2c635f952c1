package reported

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzParseTime feeds ParseTime and Describe the text s as a string, as a
// json.Number and as whatever encoding/json decodes from it (with and
// without UseNumber), and x as a float64. Neither may panic; whatever
// parses must be in UTC, read back the same from the canonical text of its
// form, and stay close to the number it came from. Seeds besides f.Add
// live in testdata/fuzz/FuzzParseTime/.
func FuzzParseTime(f *testing.F) {
	f.Add("2026-12-06 18:34:08.808000", 1733510048.0)
	f.Add("2026-12-06T18:34:08.812Z", 1733510048808.0)
	f.Fuzz(func(t *testing.T, s string, x float64) {
		values := []any{s, json.Number(s), x}
		var plain any
		if json.Unmarshal([]byte(s), &plain) == nil {
			values = append(values, plain)
		}
		dec := json.NewDecoder(strings.NewReader(s))
		dec.UseNumber()
		var numbers any
		if dec.Decode(&numbers) == nil {
			values = append(values, numbers)
		}
		for _, v := range values {
			checkParse(t, v)
			d := Describe(v)
			if n := utf8.RuneCountInString(d); n == 0 || n > MaxDescribe || !utf8.ValidString(d) || strings.ContainsAny(d, "\n\r\x00") {
				t.Fatalf("Describe(%#v) = %q: want 1 to %d characters of UTF-8 on one line", v, d, MaxDescribe)
			}
		}
	})
}

// checkParse checks what ParseTime makes of v.
func checkParse(t *testing.T, v any) {
	tm, form, ok := ParseTime(v)
	if !ok {
		if form != NotATime || !tm.IsZero() {
			t.Fatalf("ParseTime(%#v) failed with %v, %v", v, tm, form)
		}
		return
	}
	if tm.Location() != time.UTC || tm.Year() < 0 || tm.Year() > 9999 {
		t.Fatalf("ParseTime(%#v) = %v, want a UTC time in years 0 to 9999", v, tm)
	}
	// The canonical text of the form reads back the same.
	var canonical string
	switch form {
	case Zoned:
		canonical = tm.Format(time.RFC3339Nano)
	case Local:
		canonical = tm.Format("2006-01-02 15:04:05.999999999")
		// The wall clock is the one written, not shifted.
		if s, isString := v.(string); isString {
			s = strings.TrimSpace(s)
			if s[:10] != tm.Format("2006-01-02") || s[11:19] != tm.Format("15:04:05") {
				t.Fatalf("local time %q parsed as %v", s, tm)
			}
		}
	case UnixSeconds:
		canonical = fmt.Sprintf("%d.%09d", tm.Unix(), tm.Nanosecond())
	case UnixMillis:
		canonical = fmt.Sprintf("%d.%06d", tm.UnixMilli(), tm.Nanosecond()%1e6)
	default:
		t.Fatalf("ParseTime(%#v) succeeded with form %v", v, form)
	}
	again, againForm, ok := ParseTime(canonical)
	if !ok || againForm != form || !again.Equal(tm) {
		t.Fatalf("ParseTime(%#v) = %v %v, but its canonical %q reads as %v %v %v", v, tm, form, canonical, again, againForm, ok)
	}
	// A number lands within a nanosecond of what it says (float64 holds
	// no more for today's times).
	if x, isFloat := v.(float64); isFloat {
		whole, frac := math.Modf(x)
		var diff float64
		if form == UnixSeconds {
			diff = float64(tm.Unix()-int64(whole))*1e9 + float64(tm.Nanosecond()) - frac*1e9
		} else {
			diff = float64(tm.UnixMilli()-int64(whole))*1e6 + float64(tm.Nanosecond()%1e6) - frac*1e6
		}
		if math.Abs(diff) > 1 {
			t.Fatalf("ParseTime(%v) = %v (%v), %v ns away", x, tm, form, diff)
		}
	}
	if form.Instant() == (form == Local) {
		t.Fatalf("%v.Instant() = %v", form, form.Instant())
	}
}
