package reported

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"time"
)

// Form is how a device wrote a time, and so what the parsed time may be
// compared with.
type Form int

// The forms ParseTime knows, in the order it tries them.
const (
	// NotATime: the value is none of the forms below.
	NotATime Form = iota
	// Zoned is a date and time with Z or a UTC offset: RFC 3339
	// (2026-12-06T18:34:08.808Z, 2026-12-06T19:34:08+01:00), also with a
	// space for the 'T' (Python's str of an aware datetime,
	// 2026-12-06 18:34:08.808000+00:00) or an offset without its colon
	// (C's strftime %z, +0100). An instant.
	Zoned
	// Local is a date and time without a zone: Python's
	// str(datetime.datetime.now()) (2026-12-06 18:34:08.808000) or ISO 8601
	// with a 'T' (2026-12-06T18:34:08.808). It is the device's wall clock
	// at an offset nobody knows: not an instant.
	Local
	// UnixSeconds is a count of seconds since 1970-01-01T00:00:00Z. An
	// instant.
	UnixSeconds
	// UnixMillis is a count of milliseconds since 1970-01-01T00:00:00Z. An
	// instant.
	UnixMillis
)

// String names the form the way Describe shows it.
func (f Form) String() string {
	switch f {
	case Zoned:
		return "RFC 3339"
	case Local:
		return "device local time, no zone"
	case UnixSeconds:
		return "Unix seconds"
	case UnixMillis:
		return "Unix milliseconds"
	}
	return "not a time"
}

// Instant reports whether times of this form name a point in time that may
// be compared with other clocks' times. They are still read from the
// device's clock, which may be wrong; a Local time is not even that, as its
// offset from UTC is unknown.
func (f Form) Instant() bool {
	return f == Zoned || f == UnixSeconds || f == UnixMillis
}

// Unix times are told apart by magnitude. A number from 1e8 up to 1e10 is
// seconds, from 1e11 up to 1e13 milliseconds: either way a time from
// 1973-03-03T09:46:40Z up to 2286-11-20T17:46:40Z. Other numbers are no
// time: smaller ones are more likely counters or durations than clocks;
// those from 1e10 to 1e11 would be seconds after 2286 or milliseconds
// before 1973; larger ones microseconds, nanoseconds or dates written as
// digits (20261206183408), which are not guessed at. Milliseconds before
// March 1973 are thus refused or misread as seconds; no device reports
// those.
const (
	minUnixSeconds = 1e8
	maxUnixSeconds = 1e10
	minUnixMillis  = 1e11
	maxUnixMillis  = 1e13
)

// ParseTime reads a reported time, trying in this order: a string with a
// zoned date and time (Zoned), a string with a date and time without a
// zone (Local), and a Unix time in seconds or milliseconds (UnixSeconds,
// UnixMillis), given as a number (float64 as encoding/json decodes it,
// json.Number, int, int64) or as a string of digits with an optional
// fraction. Strings may carry white space around them.
//
// Dates and times are read strictly: a four-digit year, two-digit month,
// day, hour, minute and second that name a real time (no 24:00, no leap
// second 60), 1 to 9 digits of fraction, and an offset of at most ±23:59.
// Negative, NaN and infinite numbers are no time, and nor are numbers
// outside the Unix ranges above.
//
// The time is in UTC. For Local it is the device's wall-clock reading with
// UTC's label: never compare it with another clock's time, check
// form.Instant() first. ok is false, and form NotATime, for anything else.
func ParseTime(v any) (t time.Time, form Form, ok bool) {
	switch v := v.(type) {
	case string:
		s := strings.TrimSpace(v)
		if t, zoned, ok := parseDateTime(s); ok {
			if zoned {
				return t, Zoned, true
			}
			return t, Local, true
		}
		if isDecimal(s) {
			return unixDecimal(s)
		}
	case json.Number:
		if isDecimal(string(v)) {
			return unixDecimal(string(v))
		}
		// Exponents (1.7e9) and signs; not Go's hex floats, Inf or NaN,
		// which no JSON number spells.
		if !isJSONNumber(v) {
			break
		}
		if f, err := strconv.ParseFloat(string(v), 64); err == nil {
			return unixFloat(f)
		}
	case float64:
		return unixFloat(v)
	case float32:
		return unixFloat(float64(v))
	case int:
		return unixFloat(float64(v))
	case int64:
		return unixFloat(float64(v))
	}
	return time.Time{}, NotATime, false
}

// parseDateTime reads YYYY-MM-DD{T|t| }hh:mm:ss[.f{1,9}] and an optional
// zone (Z, z, ±hh:mm or ±hhmm). zoned says whether it had one.
func parseDateTime(s string) (t time.Time, zoned, ok bool) {
	const n = len("2006-01-02T15:04:05")
	if len(s) < n || s[4] != '-' || s[7] != '-' || s[13] != ':' || s[16] != ':' {
		return time.Time{}, false, false
	}
	switch s[10] {
	case 'T', 't', ' ':
	default:
		return time.Time{}, false, false
	}
	year, ok1 := digits(s[0:4])
	month, ok2 := digits(s[5:7])
	day, ok3 := digits(s[8:10])
	hour, ok4 := digits(s[11:13])
	minute, ok5 := digits(s[14:16])
	sec, ok6 := digits(s[17:19])
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 {
		return time.Time{}, false, false
	}
	rest := s[n:]
	nsec := 0
	if strings.HasPrefix(rest, ".") {
		i := 1
		for i < len(rest) && isDigit(rest[i]) {
			i++
		}
		frac := rest[1:i]
		if len(frac) < 1 || len(frac) > 9 {
			return time.Time{}, false, false
		}
		nsec, _ = digits(frac + strings.Repeat("0", 9-len(frac)))
		rest = rest[i:]
	}
	offset := 0
	switch {
	case rest == "":
	case rest == "Z" || rest == "z":
		zoned = true
	case rest[0] == '+' || rest[0] == '-':
		hh, mm, ok := parseOffset(rest[1:])
		if !ok {
			return time.Time{}, false, false
		}
		offset = hh*3600 + mm*60
		if rest[0] == '-' {
			offset = -offset
		}
		zoned = true
	default:
		return time.Time{}, false, false
	}
	t = time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	// time.Date normalises (February 30 is March 2): a time that moved was
	// not a real one.
	if t.Year() != year || int(t.Month()) != month || t.Day() != day || t.Hour() != hour || t.Minute() != minute || t.Second() != sec {
		return time.Time{}, false, false
	}
	t = t.Add(-time.Duration(offset) * time.Second)
	if t.Year() < 0 || t.Year() > 9999 { // an offset took it out of RFC 3339's years
		return time.Time{}, false, false
	}
	return t, zoned, true
}

// parseOffset reads hh:mm or hhmm, hh at most 23 and mm at most 59.
func parseOffset(s string) (hh, mm int, ok bool) {
	switch {
	case len(s) == 5 && s[2] == ':':
		s = s[:2] + s[3:]
	case len(s) != 4:
		return 0, 0, false
	}
	hh, ok1 := digits(s[:2])
	mm, ok2 := digits(s[2:])
	return hh, mm, ok1 && ok2 && hh <= 23 && mm <= 59
}

// digits reads a string of ASCII digits, at most 18 of them.
func digits(s string) (int, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isJSONNumber reports whether n is a number in JSON's syntax, as
// encoding/json makes them; a json.Number built by hand may hold anything.
func isJSONNumber(n json.Number) bool {
	s := string(n)
	return s != "" && (s[0] == '-' || isDigit(s[0])) && isDigit(s[len(s)-1]) && json.Valid([]byte(s))
}

// isDecimal reports whether s is digits with an optional fraction: 123 or
// 123.456, no sign, exponent or bare point.
func isDecimal(s string) bool {
	whole, frac, hasPoint := strings.Cut(s, ".")
	if whole == "" || (hasPoint && frac == "") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) && s[i] != '.' {
			return false
		}
	}
	return !strings.Contains(frac, ".")
}

// unixDecimal reads a decimal Unix time exactly, to the nanosecond; further
// digits of fraction are dropped.
func unixDecimal(s string) (time.Time, Form, bool) {
	whole, frac, _ := strings.Cut(s, ".")
	whole = strings.TrimLeft(whole, "0")
	if len(whole) > 14 { // maxUnixMillis has 14 digits
		return time.Time{}, NotATime, false
	}
	n, _ := digits("0" + whole)
	var form Form
	var scale int // digits of fraction that fit in nanoseconds
	switch {
	case minUnixSeconds <= n && n < maxUnixSeconds:
		form, scale = UnixSeconds, 9
	case minUnixMillis <= n && n < maxUnixMillis:
		form, scale = UnixMillis, 6
	default:
		return time.Time{}, NotATime, false
	}
	if len(frac) > scale {
		frac = frac[:scale]
	}
	nsec, _ := digits("0" + frac + strings.Repeat("0", scale-len(frac)))
	if form == UnixMillis {
		return time.UnixMilli(int64(n)).Add(time.Duration(nsec)).UTC(), form, true
	}
	return time.Unix(int64(n), int64(nsec)).UTC(), form, true
}

// unixFloat reads a Unix time from a number, to the precision a float64
// holds (about a quarter of a microsecond for today's times).
func unixFloat(f float64) (time.Time, Form, bool) {
	whole, frac := math.Modf(f) // NaN and ±Inf fail both ranges
	switch {
	case minUnixSeconds <= whole && whole < maxUnixSeconds:
		nsec := math.Round(frac * 1e9)
		return time.Unix(int64(whole), 0).Add(time.Duration(nsec)).UTC(), UnixSeconds, true
	case minUnixMillis <= whole && whole < maxUnixMillis:
		nsec := math.Round(frac * 1e6)
		return time.UnixMilli(int64(whole)).Add(time.Duration(nsec)).UTC(), UnixMillis, true
	}
	return time.Time{}, NotATime, false
}
