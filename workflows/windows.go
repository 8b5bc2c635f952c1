package workflows

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Bounds of maintenance windows.
const (
	// MaxWindows bounds RolloutInput.Windows.
	MaxWindows = 16
	// MinWindowDuration is the shortest window: cron has minute resolution, and a device operation
	// takes longer than that anyway.
	MinWindowDuration = time.Minute
	// MaxWindowDuration bounds a recurring window's duration.
	MaxWindowDuration = 31 * 24 * time.Hour
)

// cronParser reads the five standard fields and the @daily-style descriptors.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// windowSyntax is appended to every ParseWindow error.
const windowSyntax = `a recurring window is "<cron> for <duration> [in <time zone>]", e.g. "0 2 * * SUN for 4h in Europe/Warsaw"; ` +
	`an absolute one is "<start>/<end>" or "<start>/<duration>" in RFC 3339, e.g. "2026-11-29T02:00:00+01:00/4h"`

// ParseWindow reads a maintenance window as flags give it:
//
//	0 2 * * SUN for 4h in Europe/Warsaw     recurring: cron start, duration, time zone (default UTC)
//	2026-11-29T02:00:00+01:00/2026-11-29T06:00:00+01:00   absolute: start/end
//	2026-11-29T02:00:00Z/4h                  absolute: start/duration
func ParseWindow(s string) (Window, error) {
	s = strings.TrimSpace(s)
	var w Window
	if spec, rest, ok := strings.Cut(s, " for "); ok {
		dur, tz, _ := strings.Cut(strings.TrimSpace(rest), " in ")
		d, err := time.ParseDuration(strings.TrimSpace(dur))
		if err != nil {
			return Window{}, fmt.Errorf("window %q: duration %q: %s", s, strings.TrimSpace(dur), windowSyntax)
		}
		w = Window{Cron: strings.TrimSpace(spec), Duration: d, TimeZone: strings.TrimSpace(tz)}
	} else if start, end, ok := strings.Cut(s, "/"); ok && !strings.Contains(start, " ") {
		t0, err := time.Parse(time.RFC3339, strings.TrimSpace(start))
		if err != nil {
			return Window{}, fmt.Errorf("window %q: start %q is not an RFC 3339 time: %s", s, start, windowSyntax)
		}
		end = strings.TrimSpace(end)
		t1, err := time.Parse(time.RFC3339, end)
		if err != nil {
			d, derr := time.ParseDuration(end)
			if derr != nil {
				return Window{}, fmt.Errorf("window %q: end %q is neither an RFC 3339 time nor a duration: %s", s, end, windowSyntax)
			}
			t1 = t0.Add(d)
		}
		w = Window{Start: t0, End: t1}
	} else {
		return Window{}, fmt.Errorf("window %q: %s", s, windowSyntax)
	}
	if err := w.Check(); err != nil {
		return Window{}, err
	}
	return w, nil
}

// String formats the window as ParseWindow reads it.
func (w Window) String() string {
	if w.Cron != "" {
		s := w.Cron + " for " + w.Duration.String()
		if w.TimeZone != "" {
			s += " in " + w.TimeZone
		}
		return s
	}
	return w.Start.Format(time.RFC3339) + "/" + w.End.Format(time.RFC3339)
}

// Check reports what is wrong with one window, or nil.
func (w Window) Check() error {
	_, err := w.schedule()
	return err
}

// schedule checks the window and returns its cron schedule (nil for an absolute window).
func (w Window) schedule() (*cron.SpecSchedule, error) {
	absolute := !w.Start.IsZero() || !w.End.IsZero()
	switch {
	case w.Cron != "" && absolute:
		return nil, fmt.Errorf("window %s: give a cron start with a duration, or a start and an end, not both", w)
	case absolute:
		if w.Duration != 0 || w.TimeZone != "" {
			return nil, fmt.Errorf("window %s: an absolute window takes no duration or time zone: its start and end carry them", w)
		}
		if w.Start.IsZero() || w.End.IsZero() {
			return nil, fmt.Errorf("window %s: an absolute window needs a start and an end", w)
		}
		if w.End.Sub(w.Start) < MinWindowDuration {
			return nil, fmt.Errorf("window %s: it must end at least %s after it starts", w, MinWindowDuration)
		}
		return nil, nil
	case w.Cron == "":
		return nil, errors.New("window: give a cron start with a duration (0 2 * * SUN for 4h) or a start and an end")
	}
	if w.Duration < MinWindowDuration || w.Duration > MaxWindowDuration {
		return nil, fmt.Errorf("window %s: the duration must lie between %s and %s", w, MinWindowDuration, "744h (31 days)")
	}
	loc := time.UTC
	if w.TimeZone != "" {
		var err error
		if loc, err = time.LoadLocation(w.TimeZone); err != nil || w.TimeZone == "Local" {
			return nil, fmt.Errorf("window %s: unknown time zone %q: give an IANA name such as Europe/Warsaw, or UTC", w, w.TimeZone)
		}
	}
	if strings.HasPrefix(w.Cron, "@every") || strings.Contains(w.Cron, "TZ=") {
		return nil, fmt.Errorf("window %s: the cron start takes five fields (minute hour day-of-month month day-of-week) or @daily, @weekly…; the time zone goes after \"in\"", w)
	}
	sched, err := cronParser.Parse(w.Cron)
	if err != nil {
		return nil, fmt.Errorf("window %s: cron %q: %v: give five fields, minute hour day-of-month month day-of-week, e.g. 0 2 * * SUN", w, w.Cron, err)
	}
	spec, ok := sched.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("window %s: cron %q is not a calendar schedule", w, w.Cron)
	}
	spec.Location = loc
	if spec.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
		return nil, fmt.Errorf("window %s: cron %q never fires", w, w.Cron)
	}
	return spec, nil
}

// interval is one opening of a window: [opens, closes).
type interval struct{ opens, closes time.Time }

// nextOpening is the opening of the window that is open at t or opens first after it; ok is false
// when the window never opens again.
func (w Window) nextOpening(t time.Time) (interval, bool) {
	spec, err := w.schedule()
	if err != nil {
		return interval{}, false
	}
	if spec == nil {
		if !t.Before(w.End) {
			return interval{}, false
		}
		return interval{w.Start, w.End}, true
	}
	// The first start after t-Duration is the opening that is open at t, if one is, or else the
	// next one.
	s := spec.Next(t.Add(-w.Duration))
	if s.IsZero() {
		return interval{}, false
	}
	return interval{s.UTC(), s.Add(w.Duration).UTC()}, true
}

// WindowAt tells, for the windows ws at time t, whether one is open and until when (closes), or
// else when the next opens (opens) and closes. Overlapping and adjoining openings merge into one.
// ok is false when no window opens at or after t. Times are in UTC.
func WindowAt(ws []Window, t time.Time) (open bool, opens, closes time.Time, ok bool) {
	first := func(at time.Time) (interval, bool) {
		var best interval
		found := false
		for _, w := range ws {
			iv, ok := w.nextOpening(at)
			if ok && (!found || iv.opens.Before(best.opens) || iv.opens.Equal(best.opens) && iv.closes.After(best.closes)) {
				best, found = iv, true
			}
		}
		return best, found
	}
	iv, found := first(t)
	if !found {
		return false, time.Time{}, time.Time{}, false
	}
	// Extend the opening by every opening that starts before it closes: at most a bounded number
	// of steps, since a window shorter than its period extends it at most once per window.
	for range 4 * MaxWindows {
		next, ok := first(iv.closes)
		if !ok || next.opens.After(iv.closes) {
			break
		}
		if !next.closes.After(iv.closes) {
			break
		}
		iv.closes = next.closes
	}
	open = !t.Before(iv.opens)
	return open, iv.opens, iv.closes, true
}

// checkWindows checks the windows of a rollout.
func checkWindows(ws []Window) []string {
	var problems []string
	if len(ws) > MaxWindows {
		problems = append(problems, fmt.Sprintf("%d maintenance windows are more than %d", len(ws), MaxWindows))
	}
	for _, w := range ws {
		if err := w.Check(); err != nil {
			problems = append(problems, err.Error())
		}
	}
	return problems
}
