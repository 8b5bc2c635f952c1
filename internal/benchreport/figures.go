// Package benchreport assembles BENCHMARKS.md from what `make bench` measured. Each benchmark
// writes into one directory a Markdown fragment with its tables (bench-<name>.md) and, where
// issue 16 sets targets, the figures those targets are about (bench-<name>.json, the types below).
// Render puts the fragments into the template's prose under a header describing the machine, and
// compares the figures with the targets in a table of its own.
//
// The benchmarks (test/measure*_test.go, scripts/bench-fleet.sh) write; bench/report reads.
package benchreport

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The benchmarks, by the name of their fragment: bench-<name>.md and bench-<name>.json.
const (
	Firmware = "firmware" // make bench-firmware: one update, dmflow against the tutorial's loop
	Fleet    = "fleet"    // make bench-fleet: simdevice fleet connect time and memory
	Baseline = "baseline" // make bench-baseline: the tutorial's sequential loop over a fleet
	Rollout  = "rollout"  // make bench-rollout: rollouts against Temporal's ceiling and the quota
	Cluster  = "cluster"  // make bench-cluster: the 10,000-device rollout on make up-cluster's Temporal
	// Scale is `make bench-scale`: one rollout of 100,000 devices. Not part of `make bench` (it
	// takes about an hour), its results are kept in the repository (ScaleDir) and read from there.
	Scale = "scale"
)

// Names lists the benchmarks in the order `make bench` runs them.
var Names = []string{Firmware, Fleet, Baseline, Rollout, Cluster}

// FragmentPath is where benchmark name writes its Markdown fragment in dir.
func FragmentPath(dir, name string) string { return filepath.Join(dir, "bench-"+name+".md") }

// FiguresPath is where benchmark name writes its figures in dir.
func FiguresPath(dir, name string) string { return filepath.Join(dir, "bench-"+name+".json") }

// FiguresPathFor is the figures file beside a fragment path (bench-x.md → bench-x.json), so that a
// benchmark given DMFLOW_BENCH_OUT needs no second setting.
func FiguresPathFor(fragment string) string {
	return strings.TrimSuffix(fragment, filepath.Ext(fragment)) + ".json"
}

// FirmwareFigures is what `make bench-firmware` measured: one firmware update at the tutorial's
// 15 s stages, by dmflow and by the tutorial's loop.
type FirmwareFigures struct {
	Runs []FirmwareRun `json:"runs"`
}

// FirmwareRun is one of the updates.
type FirmwareRun struct {
	Name          string  `json:"name"`
	Dmflow        bool    `json:"dmflow"`
	HubCalls      int     `json:"hubCalls"`
	HistoryEvents int     `json:"historyEvents,omitempty"` // dmflow only
	Seconds       float64 `json:"seconds"`
}

// BaselineFigures is what `make bench-baseline` measured: the tutorial's sequential loop and a
// dmflow rollout over the same simulated devices.
type BaselineFigures struct {
	Devices         int     `json:"devices"`
	IntervalSeconds float64 `json:"intervalSeconds"` // the loop's twin-read interval
	StageSeconds    float64 `json:"stageSeconds"`    // the devices' firmware stage duration
	LoopSeconds     float64 `json:"loopSeconds"`
	LoopHubCalls    int     `json:"loopHubCalls"`
	LoopCompleted   int     `json:"loopCompleted"`
	DmflowSeconds   float64 `json:"dmflowSeconds"`
	DmflowHubCalls  int     `json:"dmflowHubCalls"`
	DmflowSucceeded int     `json:"dmflowSucceeded"`
}

// Speedup is how many times faster dmflow updated the devices than the loop; 0 when unknown.
func (b BaselineFigures) Speedup() float64 {
	if b.DmflowSeconds <= 0 {
		return 0
	}
	return b.LoopSeconds / b.DmflowSeconds
}

// RolloutFigures is what `make bench-rollout` measured.
type RolloutFigures struct {
	Runs []RolloutRun `json:"runs"`
}

// RolloutRun is one measurement of the rollout benchmark: one rollout, or several at once over
// parts of one fleet, and the bounds they are compared with.
type RolloutRun struct {
	// Regime names the configuration: "unbound" (a tier whose quota is far above what Temporal
	// allows, no --rate) or "quota" (S1, whose quota binds, paced by the workers' hub budget).
	Regime  string `json:"regime"`
	Devices int    `json:"devices"` // of all the rollouts
	// Tier is localhub's tier ("S1", "S2", "S3"), or "off" for --no-throttle.
	Tier string `json:"tier"`
	// QuotaTier is the tier the quota-bound minimum is computed for: Tier, or S1 when off.
	QuotaTier string  `json:"quotaTier"`
	Rate      float64 `json:"rate,omitempty"` // each rollout's --rate; 0 for none
	// Budget describes the workers' hub budget (DMFLOW_HUB_TIER and DMFLOW_HUB_BUDGET), "off" for
	// none.
	Budget string `json:"budget,omitempty"`
	// Workers and Rollouts count the worker processes and the rollouts run at once, each over its
	// part of the fleet; 0 is read as 1.
	Workers  int `json:"workers,omitempty"`
	Rollouts int `json:"rollouts,omitempty"`
	// Server is the Temporal dev server the rollouts and their ceiling ran on: "sqlite" (a database
	// file, as `make up` runs it) or "memory".
	Server    string `json:"server"`
	Succeeded int    `json:"succeeded"`
	Failed    int    `json:"failed"`

	Seconds float64 `json:"seconds"` // the first rollout's start → the last one's end
	// CeilingSeconds is the time of Temporal's ceiling: trivial stand-ins of the same shape (a
	// parent per rollout, children of 250 devices, CeilingActivities no-op activities a device, the
	// concurrency shared among the children), as many devices, same server; 0 when no ceiling was
	// measured (CeilingActivities 0; figures written before it was recorded ran two).
	CeilingSeconds    float64 `json:"ceilingSeconds"`
	CeilingActivities int     `json:"ceilingActivities,omitempty"`
	// QuotaMinSeconds is the quota-bound minimum: the largest of calls ÷ documented rate over the
	// operations the rollouts used, at QuotaTier; QuotaOp names that operation.
	QuotaMinSeconds float64 `json:"quotaMinSeconds"`
	QuotaOp         string  `json:"quotaOp"`

	HubCallsPerDevice float64 `json:"hubCallsPerDevice"`
	// EventsPerDevice is the events of all the rollouts' runs and of all their shard workflows
	// over the devices; ShardEvents is the shards' part of it, the rest the rollouts' share.
	// CeilingEventsPerDevice is the same of the ceiling's trivial workflows, Temporal's floor for
	// this shape of rollout.
	EventsPerDevice        float64 `json:"eventsPerDevice"`
	ShardEvents            float64 `json:"shardEvents"`
	CeilingEventsPerDevice float64 `json:"ceilingEventsPerDevice"`
	Throttled              int     `json:"throttled"` // 429s localhub counted during the rollouts

	// Admitted is, for each operation the hub budget covers, the most calls localhub admitted in
	// one of its metering windows during the rollouts, against the budget.
	Admitted []Admitted `json:"admitted,omitempty"`

	// CompletedLagP50 and P95: seconds from the device's completed report to its shard seeing
	// it, over Sampled devices.
	CompletedLagP50 float64 `json:"completedLagP50"`
	CompletedLagP95 float64 `json:"completedLagP95"`
	Sampled         int     `json:"sampled"`

	// StandIns is set when localhub played the devices (no simdevice fleet): where one process
	// cannot hold a connection per device.
	StandIns bool `json:"standIns,omitempty"`
	// RolloutRuns counts the rollouts' runs, Shards their shard workflows. MaxRunEvents and
	// MaxShardEvents are the most events of one rollout run and of one shard; MaxRunInputBytes
	// and MaxShardInputBytes the largest input of each (a run's: its state after continuing as
	// new).
	RolloutRuns        int `json:"rolloutRuns,omitempty"`
	Shards             int `json:"shards,omitempty"`
	MaxRunEvents       int `json:"maxRunEvents,omitempty"`
	MaxShardEvents     int `json:"maxShardEvents,omitempty"`
	MaxRunInputBytes   int `json:"maxRunInputBytes,omitempty"`
	MaxShardInputBytes int `json:"maxShardInputBytes,omitempty"`

	// WorkerPeakRSSKB is the largest peak of the workers.
	WorkerPeakRSSKB   int64 `json:"workerPeakRssKb"`
	LocalhubPeakRSSKB int64 `json:"localhubPeakRssKb"`
	FleetPeakRSSKB    int64 `json:"fleetPeakRssKb"`
}

// Admitted is what localhub admitted of one operation during a run: the most calls in one
// metering window, against the calls the workers' hub budget allows in it.
type Admitted struct {
	Op string `json:"op"`
	// WindowSeconds is the window: 1 for the operations IoT Hub meters per second, 60 for
	// queries, which it meters per minute (a sliding minute of whole seconds here).
	WindowSeconds int `json:"windowSeconds"`
	Peak          int `json:"peak"`
	// Budget is the calls the hub budget allows in a window; 0 when it does not cover the
	// operation.
	Budget float64 `json:"budget"`
	// Total is the calls admitted during the run.
	Total int `json:"total"`
}

// Within reports whether the peak stayed within the budget (true without a budget).
func (a Admitted) Within() bool { return a.Budget <= 0 || float64(a.Peak) <= a.Budget+1e-9 }

// String is the peak against the budget: "twinUpdates 48/s of 50", "queries 7/min of 20".
func (a Admitted) String() string {
	unit := "/s"
	if a.WindowSeconds == 60 {
		unit = "/min"
	} else if a.WindowSeconds != 1 {
		unit = fmt.Sprintf(" in %d s", a.WindowSeconds)
	}
	if a.Budget <= 0 {
		return fmt.Sprintf("%s %d%s (no budget)", a.Op, a.Peak, unit)
	}
	return fmt.Sprintf("%s %d%s of %g", a.Op, a.Peak, unit, a.Budget)
}

// PerMinute is the rollout's devices per minute.
func (r RolloutRun) PerMinute() float64 { return perMinute(r.Devices, r.Seconds) }

// CeilingPerMinute is Temporal's ceiling in devices per minute.
func (r RolloutRun) CeilingPerMinute() float64 { return perMinute(r.Devices, r.CeilingSeconds) }

// QuotaPerMinute is the quota-bound maximum pace in devices per minute.
func (r RolloutRun) QuotaPerMinute() float64 { return perMinute(r.Devices, r.QuotaMinSeconds) }

// CeilingRatio is the rollout's pace as a fraction of Temporal's ceiling.
func (r RolloutRun) CeilingRatio() float64 {
	if r.Seconds <= 0 || r.CeilingSeconds <= 0 {
		return 0
	}
	return r.CeilingSeconds / r.Seconds
}

// QuotaRatio is the rollout's time as a multiple of the quota-bound minimum.
func (r RolloutRun) QuotaRatio() float64 {
	if r.QuotaMinSeconds <= 0 {
		return 0
	}
	return r.Seconds / r.QuotaMinSeconds
}

// QuotaBinds reports whether the hub's quota, rather than Temporal, bounds the rollout: its
// minimum is longer than Temporal's ceiling took for as many devices on the same server. Without
// a ceiling measured, the regime says it.
func (r RolloutRun) QuotaBinds() bool {
	if r.CeilingSeconds <= 0 {
		return r.Regime == "quota"
	}
	return r.QuotaMinSeconds > r.CeilingSeconds
}

// Label names the run in the targets table.
func (r RolloutRun) Label() string {
	s := fmt.Sprintf("rollout of %s devices", Count(r.Devices))
	if r.Rollouts > 1 {
		s = fmt.Sprintf("%d rollouts of %s devices in all", r.Rollouts, Count(r.Devices))
	}
	s += ", localhub " + r.Tier
	if r.Workers > 1 {
		s += fmt.Sprintf(", %d workers", r.Workers)
	}
	if r.Rate > 0 {
		s += fmt.Sprintf(", --rate %g/s", r.Rate)
	}
	return s + ", " + r.Server + " dev server"
}

// SingleWorker reports whether one worker served all the devices.
func (r RolloutRun) SingleWorker() bool { return r.Workers <= 1 }

func perMinute(n int, seconds float64) float64 {
	if seconds <= 0 {
		return 0
	}
	return float64(n) / seconds * 60
}

// WriteFigures writes v as the figures file path.
func WriteFigures(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode figures for %s: %w", path, err)
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// readFigures reads the figures file path into v; ok is false when there is none.
func readFigures(path string, v any) (ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("read %s: %w (run the benchmark again to rewrite it)", path, err)
	}
	return true, nil
}

// Count formats a device count with thousands separators: 10,000.
func Count(n int) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + Count(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
