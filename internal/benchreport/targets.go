package benchreport

import (
	"fmt"
	"math"
)

// Issue 8's targets. They are reported against, not asserted: a benchmark that misses one still
// writes its figures.
const (
	// CeilingTarget: a rollout the hub's quota does not bind reaches at least this fraction of
	// Temporal's own ceiling (trivial workflows with as many activities, same concurrency).
	CeilingTarget = 0.5
	// QuotaTarget: a rollout the quota binds takes at most this multiple of the quota-bound
	// minimum, with zero 429s.
	QuotaTarget = 1.25
	// HubCallsTarget and EventsTarget bound a device's hub calls and history events.
	HubCallsTarget = 8
	EventsTarget   = 25
	// WorkerRSSTargetMB bounds the worker's resident memory in a rollout of RSSTargetDevices.
	WorkerRSSTargetMB = 200
	RSSTargetDevices  = 10000
)

// Verdicts of a TargetRow.
const (
	Met         = "met"
	NotMet      = "**not met**"
	NotMeasured = "not measured"
	NoTarget    = "—"
)

// TargetRow is one line of the targets table: a target, the run it is checked on, the figure and
// the verdict.
type TargetRow struct {
	Target, Run, Measured, Verdict string
}

func verdict(ok bool) string {
	if ok {
		return Met
	}
	return NotMet
}

// Targets compares the results with issue 8's targets. Which of the two pace targets a rollout is
// held to follows from its measurements, not from its configuration: the quota binds when its
// minimum is longer than Temporal's ceiling took on the same server (RolloutRun.QuotaBinds).
func Targets(r Results) []TargetRow {
	var rows []TargetRow
	var runs []RolloutRun
	if r.Rollout != nil {
		runs = r.Rollout.Runs
	}
	label := func(run RolloutRun) string {
		if run.Failed > 0 {
			return fmt.Sprintf("%s (%d devices failed)", run.Label(), run.Failed)
		}
		return run.Label()
	}

	ceiling := fmt.Sprintf("≥ %.0f%% of Temporal's ceiling when the quota does not bind", CeilingTarget*100)
	n := 0
	for _, run := range runs {
		if run.QuotaBinds() {
			continue
		}
		n++
		rows = append(rows, TargetRow{ceiling, label(run),
			fmt.Sprintf("%.0f%% (%.0f vs %.0f devices/min)", run.CeilingRatio()*100, run.PerMinute(), run.CeilingPerMinute()),
			verdict(run.CeilingRatio() >= CeilingTarget)})
	}
	if n == 0 {
		rows = append(rows, TargetRow{ceiling, NoTarget, "no rollout ran unbound by the quota", NotMeasured})
	}

	quota := fmt.Sprintf("≤ %g× the quota-bound minimum when the quota binds", QuotaTarget)
	zero := "zero 429s when the quota binds"
	n = 0
	for _, run := range runs {
		if !run.QuotaBinds() {
			continue
		}
		n++
		rows = append(rows,
			TargetRow{quota, label(run),
				fmt.Sprintf("%.2f× (%s vs %s: %s at %s)", run.QuotaRatio(), Secs(run.Seconds), Secs(run.QuotaMinSeconds), run.QuotaOp, run.QuotaTier),
				verdict(run.QuotaRatio() <= QuotaTarget)},
			TargetRow{zero, label(run), fmt.Sprint(run.Throttled), verdict(run.Throttled == 0)})
	}
	if n == 0 {
		why := "no rollout was bound by the quota"
		for _, run := range runs {
			if run.Regime == "quota" {
				why = fmt.Sprintf("the quota did not bind (%s: quota allows %.0f devices/min, Temporal %.0f)",
					label(run), run.QuotaPerMinute(), run.CeilingPerMinute())
				break
			}
		}
		rows = append(rows, TargetRow{quota + ", with zero 429s", NoTarget, why, NotMeasured})
	}

	calls := fmt.Sprintf("≤ %d hub calls per device", HubCallsTarget)
	events := fmt.Sprintf("≤ %d history events per device", EventsTarget)
	var dm *FirmwareRun
	if r.Firmware != nil {
		for i := range r.Firmware.Runs {
			// The first: dmflow's own contract; the tutorials' follows it.
			if r.Firmware.Runs[i].Dmflow {
				dm = &r.Firmware.Runs[i]
				break
			}
		}
	}
	if dm != nil {
		rows = append(rows, TargetRow{calls, "one firmware update at the tutorial's 15 s stages", fmt.Sprint(dm.HubCalls), verdict(dm.HubCalls <= HubCallsTarget)})
	}
	for _, run := range runs {
		rows = append(rows, TargetRow{calls, label(run), fmt.Sprintf("%.2f", run.HubCallsPerDevice), verdict(run.HubCallsPerDevice <= HubCallsTarget)})
	}
	if dm != nil {
		rows = append(rows, TargetRow{events, "one firmware update at the tutorial's 15 s stages", fmt.Sprint(dm.HistoryEvents), verdict(dm.HistoryEvents <= EventsTarget)})
	}
	for _, run := range runs {
		rows = append(rows, TargetRow{events, label(run),
			fmt.Sprintf("%.1f (device workflow %.1f + the rollout's share %.1f; trivial ceiling %.1f)", run.EventsPerDevice,
				run.DeviceEvents, run.EventsPerDevice-run.DeviceEvents, run.CeilingEventsPerDevice),
			verdict(run.EventsPerDevice <= EventsTarget)})
	}
	if dm == nil && len(runs) == 0 {
		rows = append(rows, TargetRow{calls + ", " + events, NoTarget, "no firmware update or rollout measured", NotMeasured})
	}

	rss := fmt.Sprintf("worker RSS ≤ %d MB at %s devices", WorkerRSSTargetMB, Count(RSSTargetDevices))
	n = 0
	largest := -1
	for i, run := range runs {
		if largest < 0 || run.Devices > runs[largest].Devices {
			largest = i
		}
		if run.Devices < RSSTargetDevices {
			continue
		}
		n++
		mb := float64(run.WorkerPeakRSSKB) / 1024
		rows = append(rows, TargetRow{rss, label(run), fmt.Sprintf("%.0f MB (peak)", mb), verdict(mb <= WorkerRSSTargetMB)})
	}
	if n == 0 {
		why := "no rollout measured"
		if largest >= 0 {
			why = fmt.Sprintf("largest rollout %s devices: %.0f MB peak", Count(runs[largest].Devices), float64(runs[largest].WorkerPeakRSSKB)/1024)
		}
		rows = append(rows, TargetRow{rss, NoTarget, why, NotMeasured})
	}

	if b := r.Baseline; b != nil && b.Speedup() > 0 {
		rows = append(rows, TargetRow{"dmflow against the tutorials' sequential loop (no target)",
			fmt.Sprintf("%s devices, %s stages", Count(b.Devices), Secs(b.StageSeconds)),
			fmt.Sprintf("%.1f× faster (%s vs %s)", b.Speedup(), Secs(b.DmflowSeconds), Secs(b.LoopSeconds)), NoTarget})
	}
	return rows
}

// Secs formats seconds for people: "4.2 s", "3m26s", "1h02m".
func Secs(s float64) string {
	switch {
	case s < 60:
		if s < 10 {
			return fmt.Sprintf("%.1f s", s)
		}
		return fmt.Sprintf("%.0f s", s)
	case s < 3600:
		r := int(math.Round(s))
		return fmt.Sprintf("%dm%02ds", r/60, r%60)
	default:
		r := int(math.Round(s / 60))
		return fmt.Sprintf("%dh%02dm", r/60, r%60)
	}
}
