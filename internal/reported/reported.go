// Package reported reads the values devices write into their reported
// properties as the devices write them. Devices report times in whatever
// form their language prints: the IoT Hub tutorials' devices send Python's
// str(datetime.datetime.now()), a local time without a zone. ParseTime
// reads the common forms and says which one it found, so that a caller
// compares with other clocks only the times that name an instant
// (Form.Instant). Describe shows any reported value as the device wrote
// it, with what it means, for messages and reports.
package reported

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxDescribe is the most characters (runes) Describe returns.
const MaxDescribe = 120

// Describe shows a reported value as the device wrote it, in JSON as it
// travelled, followed, for a time, by what it means:
//
//	"2026-12-06 18:34:08.808000" (device local time, no zone)
//	1733510048 (Unix seconds, 2024-12-06T18:34:08Z)
//	"2026-12-06T19:34:08.5+01:00" (RFC 3339, 2026-12-06T18:34:08.5Z)
//	"standBy"
//	null
//
// Instants are shown in UTC. The result is one line (control characters
// are escaped as JSON escapes them) of at most MaxDescribe characters: a
// longer value is cut and ends in "…".
func Describe(v any) string {
	var meaning string
	if t, form, ok := ParseTime(v); ok {
		if form.Instant() {
			meaning = " (" + form.String() + ", " + t.Format(time.RFC3339Nano) + ")"
		} else {
			meaning = " (" + form.String() + ")"
		}
	}
	return shorten(asWritten(v), MaxDescribe-utf8.RuneCountInString(meaning)) + meaning
}

// asWritten is v in JSON, without the HTML escapes encoding/json adds by
// default, which a device never wrote.
func asWritten(v any) string {
	switch v := v.(type) {
	case json.Number:
		if isJSONNumber(v) {
			return string(v)
		}
		return asWritten(string(v)) // not a number: show the text
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) { // no JSON for these
			return strconv.FormatFloat(v, 'g', -1, 64)
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Not a value decoded from JSON (a channel, a func): Go's
		// notation, on one line.
		return strings.Map(func(r rune) rune {
			if unicode.IsControl(r) {
				return ' '
			}
			return r
		}, strings.ToValidUTF8(fmt.Sprintf("%v", v), "\uFFFD"))
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// shorten cuts s to at most max runes, the last of them "…".
func shorten(s string, max int) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	n := 0
	for i := range s {
		if n == max-1 {
			return s[:i] + "…"
		}
		n++
	}
	return s
}
