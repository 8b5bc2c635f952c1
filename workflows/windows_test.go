package workflows_test

import (
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	require.NoError(t, err)
	return v
}

func TestParseWindow(t *testing.T) {
	tests := []struct {
		in   string
		want workflows.Window
	}{
		{"0 2 * * SUN for 4h in Europe/Warsaw", workflows.Window{Cron: "0 2 * * SUN", Duration: 4 * time.Hour, TimeZone: "Europe/Warsaw"}},
		{"  30 1 * * MON-FRI for 90m ", workflows.Window{Cron: "30 1 * * MON-FRI", Duration: 90 * time.Minute}},
		{"@daily for 2h in UTC", workflows.Window{Cron: "@daily", Duration: 2 * time.Hour, TimeZone: "UTC"}},
		{"2026-11-29T02:00:00+01:00/2026-11-29T06:00:00+01:00", workflows.Window{
			Start: mustTime(t, "2026-11-29T02:00:00+01:00"), End: mustTime(t, "2026-11-29T06:00:00+01:00")}},
		{"2026-11-29T02:00:00Z/4h", workflows.Window{Start: mustTime(t, "2026-11-29T02:00:00Z"), End: mustTime(t, "2026-11-29T06:00:00Z")}},
		// An absolute window is not bound to cron's minutes.
		{"2026-11-29T02:00:00Z/10s", workflows.Window{Start: mustTime(t, "2026-11-29T02:00:00Z"), End: mustTime(t, "2026-11-29T02:00:10Z")}},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			w, err := workflows.ParseWindow(tc.in)
			require.NoError(t, err)
			assert.Equal(t, tc.want, w)
			again, err := workflows.ParseWindow(w.String())
			require.NoError(t, err, "String gives what ParseWindow reads: %s", w)
			assert.True(t, again.Start.Equal(w.Start) && again.End.Equal(w.End) && again.Cron == w.Cron && again.Duration == w.Duration && again.TimeZone == w.TimeZone)
		})
	}
}

func TestParseWindowErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"sundays", "a recurring window is"},
		{"0 2 * * SUN for ever", `duration "ever"`},
		{"0 2 * * SUN for 4h in Mars/Olympus", `unknown time zone "Mars/Olympus"`},
		{"0 2 * * SUN for 4h in Local", `unknown time zone "Local"`},
		{"0 2 * * for 4h", "give five fields"},
		{"0 25 * * * for 1h", "give five fields"},
		{"0 2 30 2 * for 1h", "never fires"},
		{"@every 1h for 10m", "five fields"},
		{"CRON_TZ=UTC 0 2 * * * for 1h", "five fields"},
		{"0 2 * * * for 30s", "duration must lie between"},
		{"0 2 * * * for 800h", "duration must lie between"},
		{"2026-11-29/4h", "not an RFC 3339 time"},
		{"2026-11-29T02:00:00Z/soon", "neither an RFC 3339 time nor a duration"},
		{"2026-11-29T02:00:00Z/2026-11-29T01:00:00Z", "at least 1s after"},
		{"2026-11-29T02:00:00Z/500ms", "at least 1s after"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			_, err := workflows.ParseWindow(tc.in)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestWindowCheck(t *testing.T) {
	start := mustTime(t, "2026-11-29T02:00:00Z")
	assert.ErrorContains(t, workflows.Window{Cron: "0 2 * * *", Duration: time.Hour, Start: start}.Check(), "not both")
	assert.ErrorContains(t, workflows.Window{Start: start}.Check(), "needs a start and an end")
	assert.ErrorContains(t, workflows.Window{Start: start, End: start.Add(time.Hour), TimeZone: "UTC"}.Check(), "takes no duration or time zone")
	assert.ErrorContains(t, workflows.Window{}.Check(), "give a cron start")
	in := workflows.RolloutInput{Name: "w", Operation: workflows.OperationReboot, Devices: []string{"d"},
		Windows: make([]workflows.Window, workflows.MaxWindows+1)}
	for i := range in.Windows {
		in.Windows[i] = workflows.Window{Cron: "0 2 * * *", Duration: time.Hour}
	}
	assert.ErrorContains(t, in.Validate(), "more than 16")
	in.Windows = in.Windows[:1]
	assert.NoError(t, in.Validate())
}

func TestWindowAt(t *testing.T) {
	sunday := workflows.Window{Cron: "0 2 * * SUN", Duration: 4 * time.Hour, TimeZone: "Europe/Warsaw"}
	// 2026-11-29 is a Sunday; Warsaw is UTC+1 in winter, so the window is 01:00–05:00 UTC.
	tests := []struct {
		name          string
		ws            []workflows.Window
		at            string
		open          bool
		opens, closes string
		none          bool
	}{
		{"before", []workflows.Window{sunday}, "2026-11-27T12:00:00Z", false, "2026-11-29T01:00:00Z", "2026-11-29T05:00:00Z", false},
		{"at the opening", []workflows.Window{sunday}, "2026-11-29T01:00:00Z", true, "2026-11-29T01:00:00Z", "2026-11-29T05:00:00Z", false},
		{"inside", []workflows.Window{sunday}, "2026-11-29T04:59:59Z", true, "2026-11-29T01:00:00Z", "2026-11-29T05:00:00Z", false},
		{"at the close: the next week", []workflows.Window{sunday}, "2026-11-29T05:00:00Z", false, "2026-12-06T01:00:00Z", "2026-12-06T05:00:00Z", false},
		{"summer time", []workflows.Window{sunday}, "2027-06-01T00:00:00Z", false, "2027-06-06T00:00:00Z", "2027-06-06T04:00:00Z", false},
		{"absolute ahead", []workflows.Window{{Start: mustTime(t, "2026-12-01T10:00:00Z"), End: mustTime(t, "2026-12-01T11:00:00Z")}},
			"2026-11-30T00:00:00Z", false, "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z", false},
		{"absolute past", []workflows.Window{{Start: mustTime(t, "2026-12-01T10:00:00Z"), End: mustTime(t, "2026-12-01T11:00:00Z")}},
			"2026-12-01T11:00:00Z", false, "", "", true},
		{"earliest of two", []workflows.Window{sunday, {Start: mustTime(t, "2026-11-28T10:00:00Z"), End: mustTime(t, "2026-11-28T11:00:00Z")}},
			"2026-11-27T12:00:00Z", false, "2026-11-28T10:00:00Z", "2026-11-28T11:00:00Z", false},
		{"overlapping merge", []workflows.Window{sunday, {Start: mustTime(t, "2026-11-29T04:00:00Z"), End: mustTime(t, "2026-11-29T08:00:00Z")}},
			"2026-11-29T02:00:00Z", true, "2026-11-29T01:00:00Z", "2026-11-29T08:00:00Z", false},
		{"adjoining merge", []workflows.Window{{Cron: "0 * * * *", Duration: time.Hour}},
			"2026-11-29T02:30:00Z", true, "2026-11-29T02:00:00Z", "2026-11-29T02:00:00Z", false},
		{"no windows", nil, "2026-11-29T02:30:00Z", false, "", "", true},
		{"absolute with an offset, in UTC", []workflows.Window{{Start: mustTime(t, "2026-12-01T10:00:00+01:00"), End: mustTime(t, "2026-12-01T11:00:00+01:00")}},
			"2026-11-30T00:00:00Z", false, "2026-12-01T09:00:00Z", "2026-12-01T10:00:00Z", false},
		// Daylight saving time. Warsaw springs forward on 2027-03-28 at 02:00 (01:00 UTC) to 03:00
		// and falls back on 2026-10-25 at 03:00 (01:00 UTC) to 02:00.
		{"start in the hour skipped: opens when the clocks land", []workflows.Window{sunday}, "2027-03-27T12:00:00Z", false, "2027-03-28T01:00:00Z", "2027-03-28T05:00:00Z", false},
		{"start within the hour skipped", []workflows.Window{{Cron: "30 2 * * *", Duration: time.Hour, TimeZone: "Europe/Warsaw"}},
			"2027-03-27T12:00:00Z", false, "2027-03-28T01:00:00Z", "2027-03-28T02:00:00Z", false},
		{"start in the hour repeated: opens once", []workflows.Window{{Cron: "30 2 * * *", Duration: time.Hour, TimeZone: "Europe/Warsaw"}},
			"2026-10-25T01:00:00Z", true, "2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z", false},
		{"after the repeated hour: the next day", []workflows.Window{{Cron: "30 2 * * *", Duration: time.Hour, TimeZone: "Europe/Warsaw"}},
			"2026-10-25T01:30:00Z", false, "2026-10-26T01:30:00Z", "2026-10-26T02:30:00Z", false},
		{"New York falls back at 02:00 to 01:00: the first 01:30", []workflows.Window{{Cron: "30 1 * * *", Duration: 2 * time.Hour, TimeZone: "America/New_York"}},
			"2026-10-31T12:00:00Z", false, "2026-11-01T05:30:00Z", "2026-11-01T07:30:00Z", false},
		{"a window across the change lasts its duration", []workflows.Window{{Cron: "0 0 * * *", Duration: 4 * time.Hour, TimeZone: "Europe/Warsaw"}},
			"2027-03-28T00:00:00Z", true, "2027-03-27T23:00:00Z", "2027-03-28T03:00:00Z", false},
		{"late on the day before, by another offset", []workflows.Window{{Cron: "0 23 * * *", Duration: time.Hour, TimeZone: "Pacific/Kiritimati"}},
			"2026-11-29T08:59:00Z", false, "2026-11-29T09:00:00Z", "2026-11-29T10:00:00Z", false},
		{"leap day", []workflows.Window{{Cron: "0 0 29 2 *", Duration: time.Hour}},
			"2026-11-29T00:00:00Z", false, "2028-02-29T00:00:00Z", "2028-02-29T01:00:00Z", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			open, opens, closes, ok := workflows.WindowAt(tc.ws, mustTime(t, tc.at))
			if tc.none {
				assert.False(t, ok)
				return
			}
			require.True(t, ok)
			assert.Equal(t, tc.open, open)
			assert.Equal(t, mustTime(t, tc.opens), opens)
			if tc.name == "adjoining merge" {
				// An hourly window of an hour never closes: the merge stops after a bounded number
				// of openings rather than looping.
				assert.True(t, closes.After(mustTime(t, "2026-11-29T10:00:00Z")), "closes %s", closes)
				return
			}
			assert.Equal(t, mustTime(t, tc.closes), closes)
		})
	}
}

// Every window ParseWindow accepts formats back to itself, and WindowAt's answer is consistent, at
// any time and at the close it gives: open means opens ≤ t < closes, closed t < opens < closes.
func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{
		"0 2 * * SUN for 4h in Europe/Warsaw", "30 1 * * MON-FRI for 90m", "@daily for 2h in UTC", "*/5 * * * * for 1m",
		"30 2 * * * for 1h in America/New_York", "0 0 29 2 * for 1h", "2026-11-29T02:00:00+01:00/2026-11-29T06:00:00+01:00",
		"2026-11-29T02:00:00Z/4h", "0 2 * * SUN for ever", "garbage",
	} {
		f.Add(s, int64(1795000000))
	}
	f.Fuzz(func(t *testing.T, s string, unix int64) {
		w, err := workflows.ParseWindow(s)
		if err != nil {
			return
		}
		again, err := workflows.ParseWindow(w.String())
		if err != nil {
			t.Fatalf("%q parses to %s, which does not parse: %v", s, w, err)
		}
		if again.String() != w.String() {
			t.Fatalf("%q: %s formats back to %s", s, w, again)
		}
		check := func(at time.Time) (time.Time, bool) {
			open, opens, closes, ok := workflows.WindowAt([]workflows.Window{w}, at)
			if ok && (!opens.Before(closes) || open == at.Before(opens) || open && !at.Before(closes)) {
				t.Fatalf("%s at %s: open %v, opens %s, closes %s", w, at, open, opens, closes)
			}
			return closes, ok
		}
		if closes, ok := check(time.Unix(unix%(1<<34), 0).UTC()); ok {
			// At the close the window is closed, or open again after a bounded merge of adjoining
			// openings: consistent either way.
			check(closes)
		}
	})
}

func TestWindowStringIsShort(t *testing.T) {
	for d, want := range map[time.Duration]string{4 * time.Hour: "4h", 90 * time.Minute: "1h30m", 45 * time.Minute: "45m", 90 * time.Second: "1m30s"} {
		w := workflows.Window{Cron: "0 2 * * SUN", Duration: d}
		assert.Equal(t, "0 2 * * SUN for "+want, w.String())
	}
}
