package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// The start rate of a rollout spec: --max-per-minute N (spec maxPerMinute), --ramp 2x@50 (spec ramp,
// "2x@50" or {factor: 2, every: 50, max: 1000}) and --ramp-max N (spec ramp.max). See
// workflows/rollout_rate.go.

func addStartRateFlags(fl *pflag.FlagSet, f *specFlags) {
	fl.IntVar(&f.maxPerMinute, "max-per-minute", 0, "most device starts a minute for the whole rollout, on top of the hub budget (default no bound)")
	fl.StringVar(&f.ramp, "ramp", "", `raise the start rate as devices succeed: 2x@50 doubles it each time 50 more devices have succeeded (needs --max-per-minute)`)
	fl.IntVar(&f.rampMax, "ramp-max", 0, "with --ramp: the most device starts a minute the ramp reaches (default no ceiling)")
}

// startRateInput puts the start rate into in and lists its problems, naming the flag or field.
func (f *specFlags) startRateInput(in *workflows.RolloutInput) []string {
	var problems []string
	if f.maxPerMinute < 0 || f.maxPerMinute > workflows.MaxStartRate {
		problems = append(problems, fmt.Sprintf("%s %d: give the most device starts a minute, 1 to %d (0 or none for no bound)",
			f.field("max-per-minute"), f.maxPerMinute, workflows.MaxStartRate))
	} else {
		in.MaxPerMinute = f.maxPerMinute
	}
	switch {
	case strings.TrimSpace(f.ramp) == "":
		if f.rampMax != 0 {
			problems = append(problems, fmt.Sprintf("%s is the ceiling of a ramp: add %s, e.g. 2x@50", f.field("ramp-max"), f.fieldLike("ramp", "ramp-max")))
		}
		return problems
	case f.maxPerMinute == 0:
		problems = append(problems, fmt.Sprintf("%s needs a start rate to ramp from: add %s, e.g. --max-per-minute 20",
			f.field("ramp"), f.fieldLike("max-per-minute", "ramp")))
	}
	r, err := workflows.ParseRamp(f.ramp)
	if err != nil {
		return append(problems, fmt.Sprintf("%s %q: %v", f.field("ramp"), strings.TrimSpace(f.ramp), err))
	}
	switch {
	case f.rampMax < 0 || f.rampMax > workflows.MaxStartRate:
		problems = append(problems, fmt.Sprintf("%s %d: give the most device starts a minute the ramp reaches, up to %d", f.field("ramp-max"), f.rampMax, workflows.MaxStartRate))
	case f.rampMax > 0 && f.rampMax < f.maxPerMinute:
		problems = append(problems, fmt.Sprintf("%s %d is below %s %d, the rate the ramp starts from: raise it",
			f.field("ramp-max"), f.rampMax, f.fieldLike("max-per-minute", "ramp-max"), f.maxPerMinute))
	default:
		r.Max = f.rampMax
	}
	in.Ramp = &r
	return problems
}

// mergeStartRate takes a start-rate field of the spec file; false for another flag.
func (f *specFlags) mergeStartRate(flag string, v specFlags) bool {
	switch flag {
	case "max-per-minute":
		f.maxPerMinute = v.maxPerMinute
	case "ramp":
		f.ramp = v.ramp
	case "ramp-max":
		f.rampMax = v.rampMax
	default:
		return false
	}
	return true
}

// ramp decodes the spec's ramp: "2x@50", or {factor: 2, every: 50, max: 1000}.
func (d *specDecoder) ramp(n *yaml.Node, path string) {
	v := &d.doc.v
	if n.Kind == yaml.ScalarNode {
		s, ok := d.text(n, path)
		if !ok {
			return
		}
		if _, err := workflows.ParseRamp(s); err != nil {
			d.fail(n, path, "%q: %v", s, err)
			return
		}
		v.ramp, d.doc.set["ramp"] = strings.TrimSpace(s), path
		return
	}
	var r workflows.Ramp
	var max int
	before := len(d.problems)
	maxSet := false
	d.mapping(n, path, []specField{
		{"factor", func(n *yaml.Node, path string) {
			if f, ok := d.number(n, path); ok {
				r.Factor = f
			}
		}},
		{"every", func(n *yaml.Node, path string) {
			if e, ok := d.integer(n, path); ok {
				r.Every = e
			}
		}},
		{"max", func(n *yaml.Node, path string) {
			if m, ok := d.integer(n, path); ok {
				max, maxSet = m, true
			}
		}},
	})
	if len(d.problems) > before {
		return
	}
	if r.Factor == 0 || r.Every == 0 {
		d.fail(n, path, "give the factor and the succeeded devices between rises, e.g. {factor: 2, every: 50, max: 1000}")
		return
	}
	if _, err := workflows.ParseRamp(r.String()); err != nil {
		d.fail(n, path, "%v", err)
		return
	}
	v.ramp, d.doc.set["ramp"] = r.String(), path
	if maxSet {
		v.rampMax, d.doc.set["ramp-max"] = max, path+".max"
	}
}

// startRateOut is the start rate as a spec file writes it: the ramp as "2x@50", or as a mapping
// when it has a ceiling.
func startRateOut(in workflows.RolloutInput) (int, any) {
	if in.Ramp == nil {
		return in.MaxPerMinute, nil
	}
	if in.Ramp.Max == 0 {
		return in.MaxPerMinute, in.Ramp.String()
	}
	return in.MaxPerMinute, struct {
		Factor float64 `yaml:"factor"`
		Every  int     `yaml:"every"`
		Max    int     `yaml:"max"`
	}{in.Ramp.Factor, in.Ramp.Every, in.Ramp.Max}
}

// perMinute writes a start rate: "20/min", "12.5/min".
func perMinute(rate float64) string {
	return strconv.FormatFloat(rate, 'f', -1, 64) + "/min"
}

// startRateText says where a rollout stands with its start rate: "20/min" or, with a ramp,
// "20/min, 40/min at 100 succeeded (now 63)", "1000/min, the ramp's ceiling"; "" without a rate.
func startRateText(p workflows.RolloutProgress) string {
	if p.StartRate <= 0 {
		return ""
	}
	s := perMinute(p.StartRate)
	switch {
	case p.Ramp == nil:
	case p.RampAt > 0:
		s += fmt.Sprintf(", %s at %d succeeded (now %d)", perMinute(p.NextStartRate), p.RampAt, p.Succeeded)
	default:
		s += ", the ramp's ceiling"
	}
	return s
}

// printStartRate prints status's line of the start rate.
func printStartRate(out io.Writer, p workflows.RolloutProgress) {
	if s := startRateText(p); s != "" {
		fmt.Fprintf(out, "  starts:    at most %s\n", s)
	}
}

// startRateSuffix is the live view's mention of the start rate: "  starts ≤ 20/min".
func startRateSuffix(p workflows.RolloutProgress, sep string) string {
	if p.StartRate <= 0 || p.Done() {
		return ""
	}
	s := sep + "starts ≤ " + perMinute(p.StartRate)
	if p.Ramp != nil && p.RampAt > 0 {
		s += fmt.Sprintf(" (%s at %d succeeded)", perMinute(p.NextStartRate), p.RampAt)
	}
	return s
}

// reportStartRate prints, under a report table, the start rate the rollout had: a line, when it
// has one and the progress can be read.
func reportStartRate(ctx context.Context, out io.Writer, api rolloutAPI, name string) {
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	p, err := api.Progress(qctx, name)
	if err != nil {
		return
	}
	if s := startRateText(p); s != "" {
		fmt.Fprintf(out, "start rate: at most %s (STARTED shows each device's start)\n", s)
	}
}
