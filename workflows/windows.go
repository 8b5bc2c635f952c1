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
	// MinWindowDuration is the shortest recurring window: cron has minute resolution, and a device
	// operation takes longer than that anyway.
	MinWindowDuration = time.Minute
	// MinAbsoluteWindowDuration is the shortest absolute window. Its start and end are instants, not
	// cron minutes, so a short window is well defined: a slot between two changes, or a test's.
	MinAbsoluteWindowDuration = time.Second
	// MaxWindowDuration bounds a recurring window's duration.
	MaxWindowDuration = 31 * 24 * time.Hour
)

// CronParser reads cron expressions as maintenance windows and Temporal schedules both read them:
// the five standard fields and the @daily-style descriptors. starter checks --cron with it.
var CronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

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
		s := w.Cron + " for " + ShortDuration(w.Duration)
		if w.TimeZone != "" {
			s += " in " + w.TimeZone
		}
		return s
	}
	return w.Start.Format(time.RFC3339) + "/" + w.End.Format(time.RFC3339)
}

// ShortDuration writes d as time.ParseDuration reads it, without zero trailing units: 4h, not
// 4h0m0s; 1h30m, 90s. Windows print with it, and starter's messages too.
func ShortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
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
		if w.End.Sub(w.Start) < MinAbsoluteWindowDuration {
			return nil, fmt.Errorf("window %s: it must end at least %s after it starts", w, MinAbsoluteWindowDuration)
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
	sched, err := CronParser.Parse(w.Cron)
	if err != nil {
		return nil, fmt.Errorf("window %s: cron %q: %v: give five fields, minute hour day-of-month month day-of-week, e.g. 0 2 * * SUN", w, w.Cron, err)
	}
	spec, ok := sched.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("window %s: cron %q is not a calendar schedule", w, w.Cron)
	}
	spec.Location = loc
	if nextStart(spec, time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
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
		return interval{w.Start.UTC(), w.End.UTC()}, true
	}
	// The first start after t-Duration is the opening that is open at t, if one is, or else the
	// next one.
	s := nextStart(spec, t.Add(-w.Duration))
	if s.IsZero() {
		return interval{}, false
	}
	return interval{s, s.Add(w.Duration)}, true
}

// startHorizon is how far ahead nextStart looks: a leap day comes within it.
const startHorizon = 5 * 366

// nextStart is the first start of the cron schedule spec strictly after t, in UTC; zero when none
// comes within startHorizon days. It steps by the wall clock of spec.Location rather than using
// cron's own Next, which skips a start that falls into the hour clocks spring forward over ("0 2 *
// * SUN" in Europe/Warsaw: no window on the last Sunday of March) and starts twice in the hour
// they fall back over (a window of twice its length). Here every matching wall-clock minute starts
// the window once: at its first occurrence when the clocks fall back, and when the clocks land
// after a jump over it, the way cron(8) runs such jobs.
func nextStart(spec *cron.SpecSchedule, t time.Time) time.Time {
	loc := spec.Location
	local := t.In(loc)
	// Wall-clock times this long before t's cannot lie after t, whatever the offsets: a zone's
	// offset changes by two hours at most.
	skipBefore := time.Date(local.Year(), local.Month(), local.Day(), local.Hour(), local.Minute(), local.Second(), 0, time.UTC).Add(-3 * time.Hour)
	// Start a day early: a start late on the day before may still lie after t by the clock of
	// another offset.
	y, m, d := local.Date()
	for i := -1; i < startHorizon; i++ {
		day := time.Date(y, m, d+i, 0, 0, 0, 0, time.UTC)
		if spec.Month&(1<<uint(day.Month())) == 0 || !dayMatches(spec, day) {
			continue
		}
		for h := range 24 {
			if spec.Hour&(1<<uint(h)) == 0 || day.Add(time.Duration(h+1)*time.Hour).Before(skipBefore) {
				continue
			}
			for mi := range 60 {
				if spec.Minute&(1<<uint(mi)) == 0 {
					continue
				}
				// Starts of one day come in wall-clock order, so the first after t is the one.
				if s := wallInstant(day.Add(time.Duration(h)*time.Hour+time.Duration(mi)*time.Minute), loc); s.After(t) {
					return s
				}
			}
		}
	}
	return time.Time{}
}

// starBit marks a cron field given as "*" (robfig/cron's encoding).
const starBit = 1 << 63

// dayMatches applies cron's day rule to day: day of month and day of week must both match when
// either is "*", else either may.
func dayMatches(spec *cron.SpecSchedule, day time.Time) bool {
	dom := spec.Dom&(1<<uint(day.Day())) != 0
	dow := spec.Dow&(1<<uint(day.Weekday())) != 0
	if spec.Dom&starBit != 0 || spec.Dow&starBit != 0 {
		return dom && dow
	}
	return dom || dow
}

// wallInstant is the instant (UTC) at which the clocks of loc show wall, a wall-clock time given
// in UTC fields: the first such instant when the clocks fall back over it, and the instant they
// land when they jump over it. time.Date leaves both cases unspecified.
func wallInstant(wall time.Time, loc *time.Location) time.Time {
	// The offsets in force a day either side: a zone changes its offset at most once in two days.
	_, before := wall.Add(-24 * time.Hour).In(loc).Zone()
	_, after := wall.Add(24 * time.Hour).In(loc).Zone()
	var first time.Time
	for _, off := range []int{before, after} {
		at := wall.Add(-time.Duration(off) * time.Second)
		if _, o := at.In(loc).Zone(); o == off && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	if !first.IsZero() || after <= before {
		if first.IsZero() {
			first = wall.Add(-time.Duration(before) * time.Second)
		}
		return first
	}
	// In the gap the clocks jump over: they land at the first instant of the new offset, which lies
	// in (wall-after, wall-before]. Offsets change on whole seconds.
	lo, hi := wall.Add(-time.Duration(after)*time.Second), wall.Add(-time.Duration(before)*time.Second)
	for hi.Sub(lo) > time.Second {
		mid := lo.Add(hi.Sub(lo) / 2).Truncate(time.Second)
		if _, o := mid.In(loc).Zone(); o == after {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi
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
