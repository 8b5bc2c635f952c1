package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Continuous targeting (policy 3): --continuous [--until TIME] [--look-every D], the spec's
// continuous: true | {until, every} and until, and how status, watch, the summary and the report
// show the looks. The workflow's side is workflows/rollout_continuous.go.

// specNow is the time --until is judged by (a duration counts from it); tests replace it.
var specNow = time.Now

// addContinuousFlags defines the continuous targeting flags.
func addContinuousFlags(fl *pflag.FlagSet, f *specFlags) {
	fl.BoolVar(&f.continuous, "continuous", false, "firmware update by query: keep looking for devices that come to match later (registered, tagged, reporting another version) and update them too, until --until or a cancel")
	fl.StringVar(&f.until, "until", "", "with --continuous: stop looking at this time (RFC 3339, or a duration from now such as 168h); the rollout completes once the devices found finished")
	fl.DurationVar(&f.lookEvery, "look-every", 0, fmt.Sprintf("with --continuous: time between looks, %s to %s; each costs a query of the hub's quota (default %s)",
		workflows.MinLookEvery, workflows.ShortDuration(workflows.MaxLookEvery), workflows.ShortDuration(workflows.DefaultLookEvery)))
	// Without the floor of --look-every, for tests against localhub, whose queries cost nothing.
	fl.DurationVar(&f.lookInterval, "look-interval", 0, "like --look-every, down to 1s")
	_ = fl.MarkHidden("look-interval")
}

// continuousHelp documents the flags, for specHelp.
const continuousHelp = `Continuous (--continuous [--until TIME] [--look-every D]; firmware by query
only): once the devices the query selects at the start have finished, the
rollout looks every --look-every (default 5m, at least 30s) for devices that
came to match since (registered, tagged, or reporting another version again)
and updates them in the next waves, within the same threshold, concurrency and
rate, until --until (RFC 3339, or a duration from now; it then completes once
the devices found finished) or a cancel. A look is one query of the hub's
quota (and one more per 1,000 devices found): the devices of the query whose
reported properties changed since the last look (less 30 minutes, for the
hub's query lag), that do not report --version, and that this rollout did not
update already: a device is never updated twice. A device tagged later is
found at its next report. No look while paused; outside maintenance windows
the looks go on and the devices found wait for the next window. Spec:
continuous: true, until: TIME, or continuous: {until: TIME, every: 5m}. A
schedule cannot start a continuous rollout.`

// mergeContinuous takes the spec file's continuous fields; false for a flag not of them.
func (f *specFlags) mergeContinuous(flag string, v *specFlags) bool {
	switch flag {
	case "continuous":
		f.continuous = v.continuous
	case "until":
		f.until = v.until
	case "look-every":
		f.lookEvery = v.lookEvery
	default:
		return false
	}
	return true
}

// continuousInput checks the continuous flags (after the spec file's) and sets in.Continuous; it
// returns the problems.
func (f *specFlags) continuousInput(in *workflows.RolloutInput) []string {
	if !f.continuous {
		var problems []string
		for _, c := range []struct {
			flag string
			set  bool
		}{{"until", f.until != ""}, {"look-every", f.lookEvery != 0}, {"look-interval", f.lookInterval != 0}} {
			if !c.set {
				continue
			}
			add := "--continuous"
			if _, ok := f.fromFile[c.flag]; ok {
				add = "continuous: true"
			}
			problems = append(problems, f.field(c.flag)+" applies to a continuous rollout: add "+add)
		}
		return problems
	}
	var problems []string
	c := &workflows.RolloutContinuous{}
	if s := strings.TrimSpace(f.until); s != "" {
		now := specNow()
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			c.Until = t.UTC()
		} else if d, err := time.ParseDuration(s); err == nil && d > 0 {
			c.Until = now.Add(d).UTC().Truncate(time.Second)
		} else {
			problems = append(problems, fmt.Sprintf("%s %q: give a time in RFC 3339 (2026-12-31T00:00:00Z) or a duration from now (168h)", f.field("until"), s))
		}
		if !c.Until.IsZero() && !c.Until.After(now) {
			problems = append(problems, fmt.Sprintf("%s %s has passed: give a later time, or a duration from now (168h)", f.field("until"), c.Until.Format(time.RFC3339)))
		}
	}
	switch {
	case f.lookEvery != 0 && f.lookInterval != 0:
		problems = append(problems, "--look-interval and "+f.field("look-every")+" say the same: give one")
	case f.lookEvery != 0:
		if f.lookEvery < workflows.MinLookEvery || f.lookEvery > workflows.MaxLookEvery {
			problems = append(problems, fmt.Sprintf("%s %s: give %s to %s; a look costs a query of the hub's quota (20 a minute per S1 unit, shared with everything else)",
				f.field("look-every"), f.lookEvery, workflows.MinLookEvery, workflows.ShortDuration(workflows.MaxLookEvery)))
		}
		c.Every = f.lookEvery
	case f.lookInterval != 0:
		c.Every = f.lookInterval
	}
	in.Continuous = c
	return problems
}

// continuousField decodes the spec's continuous: true, false or {until, every}.
func (d *specDecoder) continuousField(v *specFlags) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if n.Kind == yaml.MappingNode {
			v.continuous, d.doc.set["continuous"] = true, path
			d.mapping(n, path, []specField{
				{"until", d.setText("until", &v.until)},
				{"every", d.setDuration("look-every", &v.lookEvery)},
			})
			return
		}
		if b, ok := d.boolean(n, path); ok {
			v.continuous, d.doc.set["continuous"] = b, path
		}
	}
}

// continuousDescription is what describeInput adds for a continuous rollout.
func continuousDescription(in workflows.RolloutInput) string {
	c := in.Continuous
	if c == nil {
		return ""
	}
	every := c.Every
	if every == 0 {
		every = workflows.DefaultLookEvery
	}
	if c.Until.IsZero() {
		return ", continuous (looking every " + workflows.ShortDuration(every) + " until cancelled)"
	}
	return ", continuous until " + c.Until.UTC().Format(time.RFC3339) + " (looking every " + workflows.ShortDuration(every) + ")"
}

// looksText says where a continuous rollout stands with its looks, at now, in loc:
// "every 5m until 2026-05-08 14:00 CEST (in 7d): 12 looks found 7 devices; next look at … (in 3m00s)".
func looksText(p workflows.RolloutProgress, now time.Time, loc *time.Location) string {
	c := p.Continuous
	if c == nil {
		return ""
	}
	s := "every " + workflows.ShortDuration(c.Every)
	switch {
	case c.Until.IsZero():
		s += " until cancelled"
	case c.Ended || p.Done():
		s += " until " + timeText(c.Until, loc, false)
	default:
		s += " until " + whenText(c.Until, now, loc)
	}
	s += fmt.Sprintf(": %d %s found %d %s", c.Looks, plural(c.Looks, "look", "looks"), c.Found, plural(c.Found, "device", "devices"))
	switch {
	case c.Ended:
		s += "; looks ended"
	case !c.NextLook.IsZero():
		s += "; next look at " + whenText(c.NextLook, now, loc)
	case c.Waiting != "":
		s += "; " + c.Waiting
	}
	if c.Error != "" {
		s += "; last look failed: " + c.Error
	}
	return s
}

// printLooks prints a continuous rollout's looks for status.
func printLooks(out io.Writer, p workflows.RolloutProgress, now time.Time, loc *time.Location) {
	if s := looksText(p, now, loc); s != "" {
		fmt.Fprintf(out, "  looks:     %s\n", s)
	}
}

// looksShort is the watch line's part of the looks: "  looks 12 found 7".
func looksShort(p workflows.RolloutProgress) string {
	c := p.Continuous
	if c == nil {
		return ""
	}
	return fmt.Sprintf("  looks %d found %d", c.Looks, c.Found)
}

// summaryLooks is the summary's line of the looks.
func summaryLooks(out io.Writer, p workflows.RolloutProgress) {
	c := p.Continuous
	if c == nil {
		return
	}
	fmt.Fprintf(out, "  looks:     %d %s found %d %s (every %s)\n", c.Looks, plural(c.Looks, "look", "looks"), c.Found,
		plural(c.Found, "device", "devices"), workflows.ShortDuration(c.Every))
}

// noteWithLook is a row's note, with the look that found the device of a continuous rollout.
func noteWithLook(r workflows.DeviceRow) string {
	if r.Look == 0 {
		return r.Note
	}
	found := fmt.Sprintf("found by look %d", r.Look)
	if r.Note == "" {
		return found
	}
	return r.Note + "; " + found
}
