package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// How the starter writes durations, times and words for people. Machine-readable times (JSON,
// CSV, "started:" lines) stay RFC 3339 in UTC at their call sites.

// durationText formats a duration for people, to the second under an hour: 45s, 6m05s, 2h05m,
// 3d04h. With tenths, a duration under a minute keeps a tenth of a second (59.1s): a device's run
// time in the report.
func durationText(d time.Duration, tenths bool) string {
	if tenths && d < time.Minute {
		return strconv.FormatFloat(max(d, 0).Seconds(), 'f', 1, 64) + "s"
	}
	d = max(d, 0).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

// timeText shows a time for people in loc to the minute, "2026-11-29 02:00 CET"; with weekday
// "Sun 2026-11-29 02:00 CET" (a schedule's times, which recur on weekdays).
func timeText(t time.Time, loc *time.Location, weekday bool) string {
	layout := "2006-01-02 15:04 MST"
	if weekday {
		layout = "Mon " + layout
	}
	return t.In(loc).Format(layout)
}

// whenText is a time people wait for, at now: "2026-11-29 02:00 CET (in 3h12m)", "(now)" once it
// has come.
func whenText(t, now time.Time, loc *time.Location) string {
	s := timeText(t, loc, false)
	if d := t.Sub(now); d >= time.Second {
		return s + " (in " + durationText(d, false) + ")"
	}
	return s + " (now)"
}

// zoneLoc is the time zone named tz (a schedule's): UTC when tz is empty or unknown.
func zoneLoc(tz string) *time.Location {
	if tz != "" {
		if l, err := time.LoadLocation(tz); err == nil {
			return l
		}
	}
	return time.UTC
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// quoteShort quotes s for an error message, shortened: a message must stay one line.
func quoteShort(s string) string {
	const max = 60
	if r := []rune(s); len(r) > max {
		s = string(r[:max]) + "…"
	}
	return strconv.Quote(s)
}

// oneLine folds line breaks into spaces: a cell or a summary line stays one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeJSON writes v indented, as --output json prints it.
func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
