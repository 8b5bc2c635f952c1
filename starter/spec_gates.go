package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// The rollout spec's approval gates, success condition per wave and end time (policies 2 and 6 of
// issue 18): their flags, spec file fields and checks, hooked into spec.go and spec_file.go.

// gatesHelp documents them in the spec help.
const gatesHelp = `Approval gates: --approve-after-wave N waits after wave N (1: after the
canary) until starter rollout approve NAME [--note TEXT]; --approve-after-wave
each after every wave but the last. Meanwhile the rollout is awaiting-approval
(DmflowRolloutState in the Temporal UI), nothing in flight; the approvals are
recorded with the approver's Temporal client identity. --pause-below 95% pauses
the rollout when a finished wave's devices succeeded less often than that
(skipped ones not counted); resume goes on. --max-failures is judged first.

End time: --end-at TIME (RFC 3339, or HH:MM for today in the local time zone)
or --end-after D (after the rollout's start; what schedule create takes):
then no device starts any more, and the rollout ends as ended. --end-behavior
stop (default) lets the devices in flight finish, cancel cancels them.`

// gateFlagFields are the spec file's fields of these flags, for messages (specFields).
var gateFlagFields = map[string]string{
	"approve-after-wave": "approveAfterWave", "pause-below": "pauseBelow",
	"end-at": "endAt", "end-after": "endAfter", "end-behavior": "endBehavior",
}

func init() {
	for flag, field := range gateFlagFields {
		specFields[flag] = field
	}
}

// addGateFlags defines the flags.
func addGateFlags(fl *pflag.FlagSet, f *specFlags) {
	fl.StringVar(&f.approveAfterWave, "approve-after-wave", "", "wait for starter rollout approve after this wave (1: after the canary), or each: after every wave but the last")
	fl.StringVar(&f.pauseBelow, "pause-below", "", "pause when a finished wave's success share is below this, e.g. 95% (skipped devices not counted)")
	fl.StringVar(&f.endAt, "end-at", "", "end time: no device starts after it, e.g. 2026-11-29T18:00:00+01:00, or 18:00 (today, local time)")
	fl.DurationVar(&f.endAfter, "end-after", 0, "end time as a duration after the rollout's start, e.g. 4h (for schedules)")
	fl.StringVar(&f.endBehavior, "end-behavior", "", "at the end time: stop (devices in flight finish; the default) or cancel (they are cancelled)")
}

// mergeGateField takes the spec file's value of flag; false for a flag not of these.
func (f *specFlags) mergeGateField(flag string, v *specFlags) bool {
	switch flag {
	case "approve-after-wave":
		f.approveAfterWave = v.approveAfterWave
	case "pause-below":
		f.pauseBelow = v.pauseBelow
	case "end-at":
		f.endAt = v.endAt
	case "end-after":
		f.endAfter = v.endAfter
	case "end-behavior":
		f.endBehavior = v.endBehavior
	default:
		return false
	}
	return true
}

// gatesInput checks the flags (the file's fields merged in) and sets them in the input; scheduled
// for schedule create, whose rollouts start again and again.
func (f *specFlags) gatesInput(in *workflows.RolloutInput, scheduled bool) []string {
	var problems []string
	if s := strings.TrimSpace(f.approveAfterWave); s != "" {
		wave, each, err := workflows.ParseApproveAfterWave(s)
		if err != nil {
			problems = append(problems, f.field("approve-after-wave")+": "+err.Error())
		}
		in.ApproveAfterWave, in.ApproveEachWave = wave, each
	}
	if s := strings.TrimSpace(f.pauseBelow); s != "" {
		if _, err := workflows.ParseSuccessShare(s); err != nil {
			problems = append(problems, f.field("pause-below")+": "+err.Error())
		}
		in.PauseBelow = s
	}
	endAt := strings.TrimSpace(f.endAt)
	switch {
	case endAt != "" && f.endAfter != 0:
		problems = append(problems, fmt.Sprintf("%s and %s: give the end time one way", f.field("end-at"), f.field("end-after")))
	case endAt != "" && scheduled:
		problems = append(problems, fmt.Sprintf("%s is one point in time, and a schedule starts its rollout again and again: give --end-after (e.g. 4h: each rollout ends 4 hours after it starts)", f.field("end-at")))
	case endAt != "":
		now := f.clock.Now()
		t, err := parseEndAt(endAt, now, f.clock.Loc())
		switch {
		case err != nil:
			problems = append(problems, f.field("end-at")+" "+err.Error())
		case !t.After(now):
			problems = append(problems, fmt.Sprintf("%s %s is in the past (now %s): give a later end time, or none", f.field("end-at"),
				t.Format(time.RFC3339), now.In(f.clock.Loc()).Format(time.RFC3339)))
		}
		in.EndAt = t
	case f.endAfter < 0:
		problems = append(problems, fmt.Sprintf("%s %s: give a positive duration, e.g. 4h", f.field("end-after"), f.endAfter))
	default:
		in.EndAfter = f.endAfter
	}
	if s := strings.ToLower(strings.TrimSpace(f.endBehavior)); s != "" {
		switch {
		case s != workflows.EndStop && s != workflows.EndCancel:
			problems = append(problems, fmt.Sprintf("%s %q: give stop (the devices in flight finish) or cancel (they are cancelled)", f.field("end-behavior"), f.endBehavior))
		case endAt == "" && f.endAfter == 0:
			problems = append(problems, fmt.Sprintf("%s applies at an end time: give --end-at or --end-after too", f.field("end-behavior")))
		}
		in.EndBehavior = s
	}
	return problems
}

// parseEndAt reads an end time: RFC 3339, or HH:MM today in loc (at now).
func parseEndAt(s string, now time.Time, loc *time.Location) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if hm, err := time.ParseInLocation("15:04", s, loc); err == nil {
		today := now.In(loc)
		return time.Date(today.Year(), today.Month(), today.Day(), hm.Hour(), hm.Minute(), 0, 0, loc), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time: give RFC 3339 (2026-11-29T18:00:00+01:00) or a time today (18:00, local time)", s)
}

// gateFields are the spec file's fields of these flags.
func (d *specDecoder) gateFields(v *specFlags) []specField {
	checked := func(flag string, dst *string, check func(string) error) func(*yaml.Node, string) {
		return func(n *yaml.Node, path string) {
			s, ok := d.text(n, path)
			if !ok {
				return
			}
			if err := check(strings.TrimSpace(s)); err != nil {
				d.fail(n, path, "%v", err)
				return
			}
			*dst, d.doc.set[flag] = strings.TrimSpace(s), path
		}
	}
	return []specField{
		{"approveAfterWave", checked("approve-after-wave", &v.approveAfterWave, func(s string) error {
			_, _, err := workflows.ParseApproveAfterWave(s)
			return err
		})},
		{"pauseBelow", checked("pause-below", &v.pauseBelow, func(s string) error {
			_, err := workflows.ParseSuccessShare(s)
			return err
		})},
		{"endAt", checked("end-at", &v.endAt, func(s string) error {
			_, err := parseEndAt(s, time.Now(), time.UTC)
			return err
		})},
		{"endAfter", d.setDuration("end-after", &v.endAfter)},
		{"endBehavior", checked("end-behavior", &v.endBehavior, func(s string) error {
			if s != workflows.EndStop && s != workflows.EndCancel {
				return fmt.Errorf("%q: give stop (the devices in flight finish) or cancel (they are cancelled)", s)
			}
			return nil
		})},
	}
}

// formatGates writes the fields of in into a spec file's form.
func formatGates(out *specOut, in workflows.RolloutInput) {
	out.ApproveAfterWave = workflows.FormatApproveAfterWave(in.ApproveAfterWave, in.ApproveEachWave)
	out.PauseBelow = in.PauseBelow
	if !in.EndAt.IsZero() {
		out.EndAt = in.EndAt.Format(time.RFC3339)
	}
	if in.EndAfter > 0 {
		out.EndAfter = workflows.ShortDuration(in.EndAfter)
	}
	out.EndBehavior = in.EndBehavior
}

// gatesText describes the gates of an input or a progress in a few words: "approve after wave 1,
// pause below 95%, ends 2026-11-29 18:00 CET (stop)"; "" for none.
func gatesText(approveAfter, pauseBelow string, endAt time.Time, endAfter time.Duration, behavior string, loc *time.Location) string {
	var parts []string
	switch approveAfter {
	case "":
	case workflows.ApproveEach:
		parts = append(parts, "approve after each wave")
	default:
		parts = append(parts, "approve after wave "+approveAfter)
	}
	if pauseBelow != "" {
		parts = append(parts, "pause below "+pauseBelow)
	}
	if behavior == "" {
		behavior = workflows.EndStop
	}
	switch {
	case !endAt.IsZero():
		parts = append(parts, "ends "+timeText(endAt, loc, false)+" ("+behavior+")")
	case endAfter > 0:
		parts = append(parts, "ends "+workflows.ShortDuration(endAfter)+" after its start ("+behavior+")")
	}
	return strings.Join(parts, ", ")
}
