package benchreport

import (
	"fmt"
	"math"
	"strings"
)

// Issue 16's targets. They are reported against, not asserted: a benchmark that misses one still
// writes its figures.
const (
	// TargetDevices is the rollout size the pace and memory targets are set at.
	TargetDevices = 10000
	// PerMinuteTarget: a rollout of TargetDevices the hub's quota does not bind (S3, no --rate)
	// updates at least this many devices a minute (AWS IoT Jobs' top rollout rate)…
	PerMinuteTarget = 1000
	// CeilingTarget: … and reaches at least this fraction of Temporal's own ceiling (trivial
	// workflows of the same shape: children of 250 devices, two no-op activities a device).
	CeilingTarget = 0.5
	// QuotaTarget: rollouts the quota binds (S1, two workers, two rollouts at once, paced by the
	// hub budget) take at most this multiple of the quota-bound minimum, with zero 429s and no
	// metering window in which the hub admitted more calls than the budget.
	QuotaTarget = 1.1
	// HubCallsTarget and EventsTarget bound a device's hub calls and its history events in a
	// rollout (the rollout's runs and its shards, shared out over the devices).
	HubCallsTarget = 8
	EventsTarget   = 12
	// WorkerRSSTargetMB bounds the resident memory of a worker that serves a rollout of
	// RSSTargetDevices alone.
	WorkerRSSTargetMB = 200
	RSSTargetDevices  = TargetDevices
	// ScaleDevices is the size `make bench-scale` runs, ExtrapolatedDevices the size its figures
	// are worked out for; PayloadLimitBytes and EventsLimit are Temporal's warnings.
	ScaleDevices        = 100000
	ExtrapolatedDevices = 1000000
	PayloadLimitBytes   = 256 * 1024
	EventsLimit         = 10240
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

// Targets compares the results with issue 16's targets. Which of the two kinds of pace target a
// run is held to follows from its measurements, not from its configuration: the quota binds when
// its minimum is longer than Temporal's ceiling took on the same server (RolloutRun.QuotaBinds).
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

	// Unbound by the quota, at TargetDevices: devices per minute and the ratio to the ceiling.
	perMinute := fmt.Sprintf("≥ %s devices/min at %s devices when the quota does not bind", Count(PerMinuteTarget), Count(TargetDevices))
	ceiling := fmt.Sprintf("≥ %.0f%% of Temporal's ceiling (trivial activities) at %s devices when the quota does not bind", CeilingTarget*100, Count(TargetDevices))
	n := 0
	largest := -1
	for i, run := range runs {
		if run.QuotaBinds() {
			continue
		}
		if largest < 0 || run.Devices > runs[largest].Devices {
			largest = i
		}
		if run.Devices < TargetDevices {
			continue
		}
		n++
		rows = append(rows,
			TargetRow{perMinute, label(run), fmt.Sprintf("%.0f devices/min (%s)", run.PerMinute(), Secs(run.Seconds)),
				verdict(run.PerMinute() >= PerMinuteTarget)},
			TargetRow{ceiling, label(run),
				fmt.Sprintf("%.0f%% (%.0f vs %.0f devices/min)", run.CeilingRatio()*100, run.PerMinute(), run.CeilingPerMinute()),
				verdict(run.CeilingRatio() >= CeilingTarget)})
	}
	if n == 0 {
		why := "no rollout ran unbound by the quota"
		if largest >= 0 {
			run := runs[largest]
			why = fmt.Sprintf("largest unbound run %s devices: %.0f devices/min, %.0f%% of the ceiling",
				Count(run.Devices), run.PerMinute(), run.CeilingRatio()*100)
		}
		rows = append(rows, TargetRow{perMinute + "; " + ceiling, NoTarget, why, NotMeasured})
	}

	quota := fmt.Sprintf("≤ %g× the quota-bound minimum when the quota binds", QuotaTarget)
	zero := "zero 429s when the quota binds"
	budget := "no second (minute for queries) with more calls admitted than the hub budget when the quota binds"
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
			TargetRow{zero, label(run), fmt.Sprint(run.Throttled), verdict(run.Throttled == 0)},
			budgetRow(budget, label(run), run))
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
		rows = append(rows, TargetRow{quota + ", with zero 429s and within the hub budget", NoTarget, why, NotMeasured})
	}

	calls := fmt.Sprintf("≤ %d hub calls per device", HubCallsTarget)
	events := fmt.Sprintf("≤ %d history events per device in a rollout", EventsTarget)
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
	for _, run := range runs {
		rows = append(rows, TargetRow{events, label(run),
			fmt.Sprintf("%.1f (shards %.1f + the rollout's share %.1f; trivial ceiling %.1f)", run.EventsPerDevice,
				run.ShardEvents, run.EventsPerDevice-run.ShardEvents, run.CeilingEventsPerDevice),
			verdict(run.EventsPerDevice <= EventsTarget)})
	}
	if len(runs) == 0 {
		what := calls + ", " + events
		if dm != nil {
			what = events
		}
		rows = append(rows, TargetRow{what, NoTarget, "no rollout measured", NotMeasured})
	}

	rss := fmt.Sprintf("worker RSS ≤ %d MB at %s devices (one worker)", WorkerRSSTargetMB, Count(RSSTargetDevices))
	n = 0
	largest = -1
	for i, run := range runs {
		if !run.SingleWorker() {
			continue
		}
		if largest < 0 || run.Devices > runs[largest].Devices {
			largest = i
		}
		if run.Devices < RSSTargetDevices {
			continue
		}
		n++
		mb := wholeMB(run.WorkerPeakRSSKB)
		rows = append(rows, TargetRow{rss, label(run), fmt.Sprintf("%.0f MB (peak)", mb), verdict(mb <= WorkerRSSTargetMB)})
	}
	if n == 0 {
		why := "no rollout measured with one worker"
		if largest >= 0 {
			why = fmt.Sprintf("largest one-worker rollout %s devices: %.0f MB peak", Count(runs[largest].Devices), wholeMB(runs[largest].WorkerPeakRSSKB))
		}
		rows = append(rows, TargetRow{rss, NoTarget, why, NotMeasured})
	}

	rows = append(rows, scaleTargets(r.Scale)...)

	if b := r.Baseline; b != nil && b.Speedup() > 0 {
		rows = append(rows, TargetRow{"dmflow against the tutorials' sequential loop (no target)",
			fmt.Sprintf("%s devices, %s stages", Count(b.Devices), Secs(b.StageSeconds)),
			fmt.Sprintf("%.1f× faster (%s vs %s)", b.Speedup(), Secs(b.DmflowSeconds), Secs(b.LoopSeconds)), NoTarget})
	}
	return rows
}

// budgetRow is the verdict on the calls localhub admitted per metering window against the hub
// budget.
func budgetRow(target, run string, r RolloutRun) TargetRow {
	var parts []string
	within, budgeted := true, 0
	for _, a := range r.Admitted {
		if a.Budget <= 0 {
			continue
		}
		budgeted++
		parts = append(parts, a.String())
		within = within && a.Within()
	}
	if budgeted == 0 {
		return TargetRow{target, run, "no hub budget, or no per-second counts", NotMeasured}
	}
	return TargetRow{target, run, "peaks: " + strings.Join(parts, ", "), verdict(within)}
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

// scaleTargets are the rows of `make bench-scale`: the largest rollout it ran, and the same worked
// out for ExtrapolatedDevices from what it measured per device and per shard.
func scaleTargets(sc *RolloutFigures) []TargetRow {
	what := fmt.Sprintf("a rollout of %s devices: its time, largest input, most events in one run, worker RSS", Count(ScaleDevices))
	if sc == nil || len(sc.Runs) == 0 {
		return []TargetRow{{what, NoTarget, "`make bench-scale` has not run", NotMeasured}}
	}
	run := sc.Runs[0]
	for _, r := range sc.Runs[1:] {
		if r.Devices > run.Devices {
			run = r
		}
	}
	label := run.Label()
	if run.StandIns {
		label += ", stand-in devices played by localhub"
	}
	kb := func(b int) string { return fmt.Sprintf("%.0f KB", float64(b)/1024) }
	mb := wholeMB(run.WorkerPeakRSSKB)
	rows := []TargetRow{
		{what, label, fmt.Sprintf("%s (%.0f devices/min): %s updated, %s failed", Secs(run.Seconds), run.PerMinute(),
			Count(run.Succeeded), Count(run.Failed)), verdict(run.Devices >= ScaleDevices && run.Succeeded+run.Failed == run.Devices)},
		{fmt.Sprintf("no input over %s (Temporal's warning)", kb(PayloadLimitBytes)), label,
			fmt.Sprintf("a rollout run %s, a shard %s", kb(run.MaxRunInputBytes), kb(run.MaxShardInputBytes)),
			verdict(max(run.MaxRunInputBytes, run.MaxShardInputBytes) <= PayloadLimitBytes)},
		{fmt.Sprintf("no run over %s events (Temporal's warning)", Count(EventsLimit)), label,
			fmt.Sprintf("a rollout run %s, a shard %s", Count(run.MaxRunEvents), Count(run.MaxShardEvents)),
			verdict(max(run.MaxRunEvents, run.MaxShardEvents) <= EventsLimit)},
		{fmt.Sprintf("worker RSS ≤ %d MB", WorkerRSSTargetMB), label, fmt.Sprintf("%.0f MB (peak)", mb), verdict(mb <= WorkerRSSTargetMB)},
	}
	if run.Devices <= 0 || run.PerMinute() <= 0 {
		return rows
	}
	// Worked out: what grows with the fleet grows linearly (the time at the pace measured, the
	// rollout's runs, its state's record of every shard's size); what a shard or a run bounds
	// (a shard's input and events, a run's events, the worker's memory, set by --max-concurrent)
	// stays as measured.
	f := float64(ExtrapolatedDevices) / float64(run.Devices)
	input := int(math.Ceil(float64(run.MaxRunInputBytes) * f))
	rows = append(rows, TargetRow{
		fmt.Sprintf("the same for %s devices, worked out from the run above", Count(ExtrapolatedDevices)),
		fmt.Sprintf("%s devices in %s shards, about %s rollout runs", Count(ExtrapolatedDevices),
			Count((ExtrapolatedDevices+249)/250), Count(int(math.Ceil(float64(max(run.RolloutRuns, 1))*f)))),
		fmt.Sprintf("%s at %.0f devices/min; input: a rollout run ≤ %s (its state grows with the shards), a shard %s; events: a rollout run %s, a shard %s (bounded by a run's devices and a shard's size); worker %.0f MB (bounded by --max-concurrent); %s history events in all",
			Secs(float64(ExtrapolatedDevices)/run.PerMinute()*60), run.PerMinute(), kb(input), kb(run.MaxShardInputBytes),
			Count(run.MaxRunEvents), Count(run.MaxShardEvents), mb, Count(int(run.EventsPerDevice*ExtrapolatedDevices))),
		verdict(max(input, run.MaxShardInputBytes) <= PayloadLimitBytes && max(run.MaxRunEvents, run.MaxShardEvents) <= EventsLimit),
	})
	return rows
}

// wholeMB is kb in whole megabytes (MiB), cut as the benchmarks' tables print them.
func wholeMB(kb int64) float64 { return float64(kb / 1024) }
