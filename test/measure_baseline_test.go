//go:build integration && bench

package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/benchreport"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/workflows"
	"go.temporal.io/sdk/client"
)

// TestMeasureBaseline measures dmflow against the tutorials' way of updating a fleet: the
// firmware-update service app's loop (bench/tutorial: invoke firmwareUpdate, read the twin at a
// fixed interval until the device reports completed, then the next device) over a fleet of
// simulated devices, and a dmflow rollout over the same devices. Both use the rollout benchmark's
// short stages (DMFLOW_BENCH_ROLLOUT_STAGE) and its rollout settings; the hub, the worker's hub
// budget and the rollout's --rate are the quota regime's (S1, paced by the budget, no --rate by
// default; no quota overrides), with one worker and one rollout, on the dev server as `make up`
// runs it. dmflow updates the devices to 2.0.0 first, then the loop to 3.0.0: a simulated device
// takes a new update once the last one completed. `make bench-baseline` runs it and writes the
// table to DMFLOW_BENCH_OUT and the figures beside it (.json).
//
// Settings (environment): DMFLOW_BENCH_BASELINE_DEVICES (default 100), DMFLOW_BENCH_BASELINE_INTERVAL
// (the loop's twin-read interval, default 5s: the tutorials read every 5 to 6 s, and the shorter
// interval favours the loop), and the rollout benchmark's DMFLOW_BENCH_ROLLOUT_STAGE, _CONCURRENT,
// _CANARY, _GROWTH and DMFLOW_BENCH_ROLLOUT_QUOTA_TIER, _QUOTAS and _RATE.
func TestMeasureBaseline(t *testing.T) {
	cfg := rolloutSettingsFromEnv(t)
	rg := regimeFromEnv(t, "quota")
	// The dev server as `make up` runs it, and the tier as Azure has it: resolving the fleet is
	// one query page, which S1's 20 a minute allow.
	rg.server, rg.quotas = serverSQLite, nil
	n, err := strconv.Atoi(envOr("DMFLOW_BENCH_BASELINE_DEVICES", "100"))
	if err != nil || n < 1 || n > workflows.MaxRolloutDevices {
		t.Fatalf("DMFLOW_BENCH_BASELINE_DEVICES=%q: give a device count from 1 to %d", os.Getenv("DMFLOW_BENCH_BASELINE_DEVICES"), workflows.MaxRolloutDevices)
	}
	interval, err := time.ParseDuration(envOr("DMFLOW_BENCH_BASELINE_INTERVAL", "5s"))
	if err != nil || interval <= 0 {
		t.Fatalf("DMFLOW_BENCH_BASELINE_INTERVAL=%q: give a duration, e.g. 5s", os.Getenv("DMFLOW_BENCH_BASELINE_INTERVAL"))
	}
	tutorial := filepath.Join(env.dir, "tutorial")
	if out, err := exec.Command("go", "build", "-o", tutorial, "../bench/tutorial").CombinedOutput(); err != nil {
		t.Fatalf("build bench/tutorial: %v\n%s", err, out)
	}

	lh, brokerArgs := startBenchHub(t, rg, n, false, 0)
	const prefix = "tb-"
	fleet := startProc(t, "baseline-fleet", lh.env(), filepath.Join(env.bin, "simdevice"), append([]string{"fleet",
		"--count", strconv.Itoa(n), "--prefix", prefix, "--stage-duration", cfg.stage.String(),
		"--summary-interval", "30s", "--connect-concurrency", "32"}, brokerArgs...)...)
	if err := fleet.waitFor(`msg="fleet started"`, 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	queue := "bench-baseline"
	w := startProc(t, "baseline-worker", lh.env(append([]string{"DMFLOW_TASK_QUEUE=" + queue}, rg.workerBudgetEnv()...)...), filepath.Join(env.bin, "worker"))
	if err := w.waitFor("worker ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	calls := func() int {
		s := lh.stats(t)
		return sumNested(s.MethodInvocations) + sumCounts(s.ServiceTwinReads)
	}

	// dmflow: one rollout over the fleet.
	tc := temporalClient(t)
	name := "baseline-" + time.Now().UTC().Format("150405")
	before := calls()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	start := time.Now()
	run, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.RolloutWorkflowID(name), TaskQueue: queue},
		workflows.Rollout, workflows.RolloutInput{
			Name:          name,
			Operation:     workflows.OperationFirmware,
			Query:         "SELECT * FROM devices",
			Firmware:      &workflows.RolloutFirmware{PackageURI: "https://fw.example/baseline-2.0.0.bin", Version: "2.0.0"},
			Canary:        cfg.canary,
			Growth:        cfg.growth,
			MaxConcurrent: cfg.maxConcurrent,
			Rate:          rg.rate,
			MaxFailures:   "1%",
		})
	if err != nil {
		t.Fatal(err)
	}
	var p workflows.RolloutProgress
	if err := run.Get(ctx, &p); err != nil {
		t.Fatalf("rollout %s: %v", name, err)
	}
	dmflowWall := time.Since(start)
	dmflowCalls := calls() - before + queryPages(n)
	if p.Succeeded != n {
		t.Errorf("rollout %s: %s, %d of %d succeeded, %d failed: %s", name, p.State, p.Succeeded, n, p.Failed, p.Reason)
	}
	t.Logf("dmflow: %d devices in %s", n, dmflowWall.Round(100*time.Millisecond))

	// The tutorial's loop over the same devices, one after another.
	t.Logf("tutorial loop over %d devices, twin every %s (about %s)", n, interval, time.Duration(n)*interval)
	before = calls()
	lctx, lcancel := context.WithTimeout(context.Background(), time.Duration(n)*(2*interval+3*cfg.stage+10*time.Second)+time.Minute)
	defer lcancel()
	cmd := exec.CommandContext(lctx, tutorial, "--prefix", prefix, "--count", strconv.Itoa(n),
		"--interval", interval.String(), "--uri", "https://fw.example/baseline-3.0.0.bin", "--version", "3.0.0")
	cmd.Env = lh.env()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	if err != nil {
		t.Fatalf("tutorial loop: %v\n%s", err, stderr.String())
	}
	var loop struct {
		HubCalls  int           `json:"hubCalls"`
		Duration  time.Duration `json:"duration"`
		Completed int           `json:"completed"`
	}
	if err := json.Unmarshal(outb, &loop); err != nil {
		t.Fatalf("tutorial loop output: %v\n%s", err, outb)
	}
	loopCalls := calls() - before
	if loop.Completed != n {
		t.Errorf("tutorial loop: %d of %d devices completed", loop.Completed, n)
	}
	if loopCalls != loop.HubCalls {
		t.Logf("tutorial loop counted %d hub calls, localhub %d: the table gives localhub's", loop.HubCalls, loopCalls)
	}

	figs := benchreport.BaselineFigures{
		Devices: n, IntervalSeconds: interval.Seconds(), StageSeconds: cfg.stage.Seconds(),
		LoopSeconds: loop.Duration.Seconds(), LoopHubCalls: loopCalls, LoopCompleted: loop.Completed,
		DmflowSeconds: dmflowWall.Seconds(), DmflowHubCalls: dmflowCalls, DmflowSucceeded: p.Succeeded,
	}
	table := baselineTable(figs, rg, cfg)
	t.Log("\n" + table)
	if out := os.Getenv("DMFLOW_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := benchreport.WriteFigures(benchreport.FiguresPathFor(out), figs); err != nil {
			t.Fatal(err)
		}
	}
}

func baselineTable(f benchreport.BaselineFigures, rg benchRegime, cfg rolloutBenchConfig) string {
	var b strings.Builder
	rate := "no --rate"
	if rg.rate > 0 {
		rate = "--rate " + fmtRate(rg.rate)
	}
	fmt.Fprintf(&b, "%s simulated devices with %s firmware stages; localhub %s, 1 unit; dmflow: one worker with the hub budget %s, one rollout (--canary %d, --growth %g, --max-concurrent %d, %s); the loop: twin every %s.\n\n",
		benchreport.Count(f.Devices), cfg.stage, rg.tier, rg.budgetLabel(), cfg.canary, cfg.growth, cfg.maxConcurrent, rate,
		time.Duration(f.IntervalSeconds*float64(time.Second)))
	b.WriteString("| measure | tutorial loop (one device after another) | dmflow rollout |\n|---|---|---|\n")
	perDevice := func(calls int) string {
		return fmt.Sprintf("%d (%.2f per device)", calls, float64(calls)/float64(f.Devices))
	}
	fmt.Fprintf(&b, "| devices updated (reported %s) | %d of %d | %d of %d |\n", protocol.StatusCompleted, f.LoopCompleted, f.Devices, f.DmflowSucceeded, f.Devices)
	fmt.Fprintf(&b, "| **time** | **%s** | **%s** |\n", benchreport.Secs(f.LoopSeconds), benchreport.Secs(f.DmflowSeconds))
	fmt.Fprintf(&b, "| devices per minute | %.1f | %.0f |\n", float64(f.Devices)/f.LoopSeconds*60, float64(f.Devices)/f.DmflowSeconds*60)
	fmt.Fprintf(&b, "| hub calls (localhub: methods + service twin reads; dmflow + query pages) | %s | %s |\n", perDevice(f.LoopHubCalls), perDevice(f.DmflowHubCalls))
	fmt.Fprintf(&b, "\n**dmflow took %.1f× less time than the loop** (%s against %s).\n", f.Speedup(),
		benchreport.Secs(f.DmflowSeconds), benchreport.Secs(f.LoopSeconds))
	return b.String()
}
