package reported

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseTime(t *testing.T) {
	utc := func(s string) time.Time {
		t.Helper()
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm.UTC()
	}
	tests := []struct {
		name string
		v    any
		form Form
		want string // RFC 3339 in UTC; for Local, the wall clock
	}{
		// RFC 3339 and the zoned forms devices print.
		{name: "RFC 3339 Z", v: "2026-12-06T18:34:08Z", form: Zoned, want: "2026-12-06T18:34:08Z"},
		{name: "RFC 3339 millis", v: "2026-12-06T18:34:08.812Z", form: Zoned, want: "2026-12-06T18:34:08.812Z"},
		{name: "RFC 3339 100ns as IoT Hub stamps", v: "2026-12-06T18:34:08.8123456Z", form: Zoned, want: "2026-12-06T18:34:08.8123456Z"},
		{name: "RFC 3339 nanos", v: "2026-12-06T18:34:08.123456789Z", form: Zoned, want: "2026-12-06T18:34:08.123456789Z"},
		{name: "RFC 3339 one fraction digit", v: "2026-12-06T18:34:08.5Z", form: Zoned, want: "2026-12-06T18:34:08.5Z"},
		{name: "RFC 3339 positive offset", v: "2026-12-06T19:34:08+01:00", form: Zoned, want: "2026-12-06T18:34:08Z"},
		{name: "RFC 3339 negative offset", v: "2026-12-06T13:04:08.808-05:30", form: Zoned, want: "2026-12-06T18:34:08.808Z"},
		{name: "RFC 3339 offset crossing midnight", v: "2026-12-31T23:30:00-01:00", form: Zoned, want: "2027-01-01T00:30:00Z"},
		{name: "RFC 3339 unknown local offset", v: "2026-12-06T18:34:08-00:00", form: Zoned, want: "2026-12-06T18:34:08Z"},
		{name: "RFC 3339 lower case", v: "2026-12-06t18:34:08z", form: Zoned, want: "2026-12-06T18:34:08Z"},
		{name: "C# DateTime.Now o", v: "2026-12-06T19:34:08.8080000+01:00", form: Zoned, want: "2026-12-06T18:34:08.808Z"},
		{name: "JavaScript toISOString", v: "2026-12-06T18:34:08.808Z", form: Zoned, want: "2026-12-06T18:34:08.808Z"},
		{name: "Python aware str", v: "2026-12-06 18:34:08.808000+00:00", form: Zoned, want: "2026-12-06T18:34:08.808Z"},
		{name: "strftime %z", v: "2026-12-06T19:34:08+0100", form: Zoned, want: "2026-12-06T18:34:08Z"},
		{name: "leap day", v: "2024-02-29T12:00:00Z", form: Zoned, want: "2024-02-29T12:00:00Z"},
		{name: "padded", v: " 2026-12-06T18:34:08Z\n", form: Zoned, want: "2026-12-06T18:34:08Z"},

		// No zone: the device's wall clock.
		{name: "Python str(datetime.now())", v: "2026-12-06 18:34:08.808000", form: Local, want: "2026-12-06T18:34:08.808Z"},
		{name: "Python on the second", v: "2026-12-06 18:34:08", form: Local, want: "2026-12-06T18:34:08Z"},
		{name: "one fraction digit", v: "2026-12-06 18:34:08.8", form: Local, want: "2026-12-06T18:34:08.8Z"},
		{name: "nine fraction digits", v: "2026-12-06 18:34:08.123456789", form: Local, want: "2026-12-06T18:34:08.123456789Z"},
		{name: "ISO with T", v: "2026-12-06T18:34:08.808", form: Local, want: "2026-12-06T18:34:08.808Z"},
		{name: "ISO with T on the second", v: "2026-12-06T18:34:08", form: Local, want: "2026-12-06T18:34:08Z"},
		{name: "C# unspecified kind", v: "2026-12-06T18:34:08.8080000", form: Local, want: "2026-12-06T18:34:08.808Z"},

		// Unix times, by magnitude.
		{name: "seconds float64", v: 1733510048.0, form: UnixSeconds, want: "2024-12-06T18:34:08Z"},
		{name: "seconds with fraction", v: 1733510048.5, form: UnixSeconds, want: "2024-12-06T18:34:08.5Z"},
		{name: "seconds json.Number", v: json.Number("1733510048"), form: UnixSeconds, want: "2024-12-06T18:34:08Z"},
		{name: "seconds json.Number fraction", v: json.Number("1733510048.808123456"), form: UnixSeconds, want: "2024-12-06T18:34:08.808123456Z"},
		{name: "seconds json.Number exponent", v: json.Number("1.733510048e9"), form: UnixSeconds, want: "2024-12-06T18:34:08Z"},
		{name: "seconds string", v: "1733510048", form: UnixSeconds, want: "2024-12-06T18:34:08Z"},
		{name: "seconds string fraction", v: "1733510048.808", form: UnixSeconds, want: "2024-12-06T18:34:08.808Z"},
		{name: "seconds string extra digits dropped", v: "1733510048.1234567891", form: UnixSeconds, want: "2024-12-06T18:34:08.123456789Z"},
		{name: "seconds int", v: 1733510048, form: UnixSeconds, want: "2024-12-06T18:34:08Z"},
		{name: "seconds int64", v: int64(1733510048), form: UnixSeconds, want: "2024-12-06T18:34:08Z"},
		{name: "millis float64", v: 1733510048808.0, form: UnixMillis, want: "2024-12-06T18:34:08.808Z"},
		{name: "millis json.Number", v: json.Number("1733510048808"), form: UnixMillis, want: "2024-12-06T18:34:08.808Z"},
		{name: "millis string", v: "1733510048808", form: UnixMillis, want: "2024-12-06T18:34:08.808Z"},
		{name: "millis string fraction", v: "1733510048808.5", form: UnixMillis, want: "2024-12-06T18:34:08.8085Z"},
		{name: "smallest seconds", v: 1e8, form: UnixSeconds, want: "1973-03-03T09:46:40Z"},
		{name: "largest seconds", v: "9999999999.999999999", form: UnixSeconds, want: "2286-11-20T17:46:39.999999999Z"},
		{name: "smallest millis", v: 1e11, form: UnixMillis, want: "1973-03-03T09:46:40Z"},
		{name: "largest millis", v: json.Number("9999999999999"), form: UnixMillis, want: "2286-11-20T17:46:39.999Z"},
		{name: "leading zeros", v: "0001733510048", form: UnixSeconds, want: "2024-12-06T18:34:08Z"},

		// Not times.
		{name: "status word", v: "standBy"},
		{name: "empty", v: ""},
		{name: "nil", v: nil},
		{name: "bool", v: true},
		{name: "object", v: map[string]any{"t": "2026-12-06T18:34:08Z"}},
		{name: "array", v: []any{1733510048.0}},
		{name: "date only", v: "2026-12-06"},
		{name: "no seconds", v: "2026-12-06T18:34"},
		{name: "February 30", v: "2026-02-30 00:00:00"},
		{name: "February 29 of a common year", v: "2026-02-29T00:00:00Z"},
		{name: "month 13", v: "2026-13-01 00:00:00"},
		{name: "hour 24", v: "2026-12-06 24:00:00"},
		{name: "leap second", v: "2016-12-31T23:59:60Z"},
		{name: "ten fraction digits", v: "2026-12-06 18:34:08.1234567890"},
		{name: "bare point", v: "2026-12-06 18:34:08."},
		{name: "comma fraction", v: "2026-12-06 18:34:08,808"},
		{name: "one-digit hour", v: "2026-12-06 8:34:08.808"},
		{name: "offset hour 24", v: "2026-12-06T18:34:08+24:00"},
		{name: "offset minute 60", v: "2026-12-06T18:34:08+01:60"},
		{name: "offset hours only", v: "2026-12-06T18:34:08+01"},
		{name: "zone name", v: "2026-12-06 18:34:08 UTC"},
		{name: "Go time.String", v: "2026-12-06 18:34:08.808 +0000 UTC"},
		{name: "offset leaves year 9999", v: "9999-12-31T23:59:59-01:00"},
		{name: "offset before year 0", v: "0000-01-01T00:00:00+01:00"},
		{name: "slashes", v: "2026/12/06 18:34:08"},
		{name: "small number", v: 42.0},
		{name: "zero", v: 0.0},
		{name: "just below seconds", v: 99999999.9},
		{name: "microseconds", v: 1733510048808000.0},
		{name: "nanoseconds", v: json.Number("1733510048808000000")},
		{name: "at seconds limit", v: 1e10},
		{name: "between the ranges", v: "50000000000"},
		{name: "just below millis", v: 99999999999.9},
		{name: "at millis limit", v: 1e13},
		{name: "digits of a date and time", v: "20261206183408"},
		{name: "digits of a date", v: json.Number("20261206")},
		{name: "negative", v: -1733510048.0},
		{name: "negative json.Number", v: json.Number("-1733510048")},
		{name: "negative string", v: "-1733510048"},
		{name: "NaN", v: math.NaN()},
		{name: "+Inf", v: math.Inf(1)},
		{name: "-Inf", v: math.Inf(-1)},
		{name: "json.Number Inf", v: json.Number("Inf")},
		{name: "json.Number hex float", v: json.Number("0x1p40")},
		{name: "string exponent", v: "1.733510048e9"},
		{name: "string with sign", v: "+1733510048"},
		{name: "string bare point", v: "1733510048."},
		{name: "string two points", v: "1733510048.8.8"},
		{name: "string of huge number", v: "123456789012345678901234567890"},
		{name: "uint64", v: uint64(1733510048)}, // not what encoding/json decodes
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, form, ok := ParseTime(tc.v)
			if tc.form == NotATime {
				if ok || form != NotATime || !got.IsZero() {
					t.Errorf("ParseTime(%#v) = %v, %v, %v; want no time", tc.v, got, form, ok)
				}
				return
			}
			if !ok || form != tc.form || !got.Equal(utc(tc.want)) || got.Location() != time.UTC {
				t.Errorf("ParseTime(%#v) = %s, %v, %v; want %s, %v", tc.v, got.Format(time.RFC3339Nano), form, ok, tc.want, tc.form)
			}
			if form.Instant() != (tc.form != Local) {
				t.Errorf("%v.Instant() = %v", form, form.Instant())
			}
		})
	}
}

// TestParseTimeJSON reads values as encoding/json hands them over, with and
// without UseNumber.
func TestParseTimeJSON(t *testing.T) {
	doc := `{"rebootTime":"2026-12-06 18:34:08.808000","logTime":1733510048,"ms":1733510048808,"status":"completed"}`
	want := map[string]Form{"rebootTime": Local, "logTime": UnixSeconds, "ms": UnixMillis, "status": NotATime}
	var plain map[string]any
	if err := json.Unmarshal([]byte(doc), &plain); err != nil {
		t.Fatal(err)
	}
	var numbers map[string]any
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&numbers); err != nil {
		t.Fatal(err)
	}
	for k, form := range want {
		a, fa, _ := ParseTime(plain[k])
		b, fb, _ := ParseTime(numbers[k])
		if fa != form || fb != form || !a.Equal(b) {
			t.Errorf("%s: %v %v (float64) and %v %v (json.Number), want %v", k, a, fa, b, fb, form)
		}
	}
}

func TestFormString(t *testing.T) {
	for f, want := range map[Form]string{
		NotATime:    "not a time",
		Zoned:       "RFC 3339",
		Local:       "device local time, no zone",
		UnixSeconds: "Unix seconds",
		UnixMillis:  "Unix milliseconds",
		Form(99):    "not a time",
	} {
		if got := f.String(); got != want {
			t.Errorf("Form(%d).String() = %q, want %q", int(f), got, want)
		}
	}
	if NotATime.Instant() || Local.Instant() || !Zoned.Instant() || !UnixSeconds.Instant() || !UnixMillis.Instant() {
		t.Error("Instant is true exactly for Zoned, UnixSeconds and UnixMillis")
	}
}
