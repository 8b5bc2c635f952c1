//go:build integration && bench

package test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/hub"
	"github.com/dmflow/dmflow/workflows"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// TestMeasureRollout measures firmware rollouts of 1,000 and 10,000 simulated devices with short
// stages, each on a localhub of its own at an IoT Hub tier's throttles and a dmflow worker of its
// own, and beside each the raw Temporal ceiling on the same dev server: the same number of
// trivial child workflows under one parent, each running three no-op activities as a firmware
// update's device workflow runs GetTwin, InvokeMethod and FollowStages, at the rollout's
// concurrency and continue-as-new cadence, on a worker in this process. `make bench-rollout`
// runs it and writes the table to DMFLOW_BENCH_OUT.
//
// Settings (environment): DMFLOW_BENCH_ROLLOUT_SIZES (default "1000,10000"),
// DMFLOW_BENCH_ROLLOUT_TIER (S1, S2, S3 or "off" for an unthrottled localhub, default S1; the
// quota-bound minimum is computed for the tier, S1 when off), DMFLOW_BENCH_ROLLOUT_QUOTAS
// (localhub --quota overrides, comma-separated, default "queries=1000/min": see queryOverride;
// "none" for none), DMFLOW_BENCH_ROLLOUT_RATE (the
// rollout's --rate in hub calls per second, default 60), DMFLOW_BENCH_ROLLOUT_CONCURRENT
// (--max-concurrent, default 200), DMFLOW_BENCH_ROLLOUT_STAGE (the devices' stage duration,
// default 1s), DMFLOW_BENCH_ROLLOUT_CANARY and _GROWTH (default 10 and 2).
func TestMeasureRollout(t *testing.T) {
	cfg := rolloutBenchConfigFromEnv(t)
	var results []rolloutBenchResult
	for _, n := range cfg.sizes {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			r := measureRolloutOf(t, cfg, n)
			results = append(results, r)
			t.Logf("%d devices: rollout %s (%.0f devices/min), ceiling %s (%.0f devices/min)", n,
				r.wall.Round(time.Second), r.perMinute(), r.ceiling.wall.Round(time.Second), r.ceiling.perMinute(n))
		})
	}
	if len(results) == 0 {
		t.Fatal("no rollout measured")
	}
	table := rolloutBenchTable(cfg, results)
	t.Log("\n" + table)
	if out := os.Getenv("DMFLOW_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// rolloutBenchConfig is the benchmark's settings.
type rolloutBenchConfig struct {
	sizes         []int
	tier          string   // S1, S2, S3
	throttle      bool     // false: localhub --no-throttle
	quotas        []string // localhub --quota overrides
	rate          float64
	maxConcurrent int
	stage         time.Duration
	canary        int
	growth        float64
}

func rolloutBenchConfigFromEnv(t *testing.T) rolloutBenchConfig {
	t.Helper()
	get := func(key, def string) string {
		if v := strings.TrimSpace(os.Getenv(key)); v != "" {
			return v
		}
		return def
	}
	num := func(key, def string) float64 {
		v, err := strconv.ParseFloat(get(key, def), 64)
		if err != nil || v <= 0 {
			t.Fatalf("%s=%q: give a positive number", key, get(key, def))
		}
		return v
	}
	cfg := rolloutBenchConfig{
		tier:          strings.ToUpper(get("DMFLOW_BENCH_ROLLOUT_TIER", "S1")),
		throttle:      true,
		rate:          num("DMFLOW_BENCH_ROLLOUT_RATE", "60"),
		maxConcurrent: int(num("DMFLOW_BENCH_ROLLOUT_CONCURRENT", "200")),
		canary:        int(num("DMFLOW_BENCH_ROLLOUT_CANARY", "10")),
		growth:        num("DMFLOW_BENCH_ROLLOUT_GROWTH", "2"),
	}
	if cfg.tier == "OFF" {
		cfg.tier, cfg.throttle = hub.TierS1, false
	}
	if q := get("DMFLOW_BENCH_ROLLOUT_QUOTAS", queryOverride); q != "none" {
		cfg.quotas = strings.Split(q, ",")
	}
	if _, err := hub.DocumentedQuota(cfg.tier, 1, hub.OpMethods); err != nil {
		t.Fatalf("DMFLOW_BENCH_ROLLOUT_TIER: %v", err)
	}
	var err error
	if cfg.stage, err = time.ParseDuration(get("DMFLOW_BENCH_ROLLOUT_STAGE", "1s")); err != nil {
		t.Fatalf("DMFLOW_BENCH_ROLLOUT_STAGE: %v", err)
	}
	for _, s := range strings.Split(get("DMFLOW_BENCH_ROLLOUT_SIZES", "1000,10000"), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > workflows.MaxRolloutDevices {
			t.Fatalf("DMFLOW_BENCH_ROLLOUT_SIZES: %q is not a device count from 1 to %d", s, workflows.MaxRolloutDevices)
		}
		cfg.sizes = append(cfg.sizes, n)
	}
	return cfg
}

// queryOverride is the localhub quota override the benchmark applies by default: queries at S3's
// 1,000 a minute instead of S1's 20. The pinned service client reads query results 100 twins a
// page, one query each, so the targets of 10,000 devices are 100 queries; QueryDevices starts the
// query over when a page is throttled (the client keeps the continuation token), and at 20 a minute
// no attempt gets past about 20 pages. The other operations keep the tier's quotas, and the
// quota-bound minimum counts the pages at the tier's documented query rate.
const queryOverride = "queries=1000/min"

// rolloutBenchResult is what one size measured.
type rolloutBenchResult struct {
	devices int
	setup   time.Duration // fleet registered and connected

	wall     time.Duration // rollout started → ended
	progress workflows.RolloutProgress

	methods, twinReads int            // delivered / answered by localhub during the rollout
	throttled          map[string]int // 429s (and MQTT equivalents) during the rollout, by operation
	setupThrottled     int            // while the fleet connected

	rolloutRuns, rolloutEvents int     // all runs of the rollout workflow
	deviceEvents               float64 // mean over the sampled device workflows
	sampled                    int

	workerPeakRSS, workerRSS int64 // KB

	meanDeviceDuration time.Duration      // of the device workflows, from the report
	maxRunInput        int                // bytes: the largest input of a rollout run (its state after a continue-as-new)
	cpu                map[string]float64 // CPU seconds during the rollout, by process

	ceiling, ceilingMem ceilingResult
}

// ceilingResult is one run of the trivial stand-in rollout.
type ceilingResult struct {
	wall         time.Duration
	runs         int
	parentEvents int
	childEvents  float64
}

func (c ceilingResult) perMinute(n int) float64 { return float64(n) / c.wall.Minutes() }

func (r rolloutBenchResult) perMinute() float64 { return float64(r.devices) / r.wall.Minutes() }

// devicesPerRun is the rollout's continue-as-new cadence, which the ceiling's parent copies.
const devicesPerRun = workflows.DefaultDevicesPerRun

func measureRolloutOf(t *testing.T, cfg rolloutBenchConfig, n int) rolloutBenchResult {
	res := rolloutBenchResult{devices: n}
	tc := temporalClient(t)

	// The ceilings first, while nothing else runs: what Temporal alone allows, on the dev server
	// the rollout uses (a SQLite file, as `make up` runs it) and on one in memory.
	res.ceiling = measureCeiling(t, tc, cfg, n)
	t.Logf("ceiling: %d trivial device workflows in %s", n, res.ceiling.wall.Round(time.Second))
	res.ceilingMem = measureCeilingInMemory(t, cfg, n)
	t.Logf("ceiling on an in-memory dev server: %s", res.ceilingMem.wall.Round(time.Second))

	lh := startBenchHub(t, cfg)
	setupStart := time.Now()
	fleet := startProc(t, "bench-fleet", lh.env(),
		filepath.Join(env.bin, "simdevice"), "fleet", "--count", strconv.Itoa(n), "--prefix", "rb-",
		"--stage-duration", cfg.stage.String(), "--summary-interval", "30s",
		// 32 at a time keeps the standBy reports of connecting devices within S1's 50 twin
		// updates/s plus its one second of traffic shaping.
		"--connect-concurrency", "32")
	if err := fleet.waitFor(`msg="fleet started"`, 15*time.Minute); err != nil {
		t.Fatal(err)
	}
	res.setup = time.Since(setupStart)
	before := lh.stats(t)
	res.setupThrottled = sumCounts(before.Throttled)
	t.Logf("fleet of %d connected in %s", n, res.setup.Round(time.Second))

	queue := "bench-rollout-" + strconv.Itoa(n)
	w := startProc(t, "bench-worker", lh.env("DMFLOW_TASK_QUEUE="+queue), filepath.Join(env.bin, "worker"))
	if err := w.waitFor("worker ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}

	pids := map[string]int{"Temporal dev server": temporalServerPID(t), "worker": w.cmd.Process.Pid,
		"localhub": lh.proc.cmd.Process.Pid, "simdevice fleet": fleet.cmd.Process.Pid}
	cpuBefore := map[string]float64{}
	for k, pid := range pids {
		cpuBefore[k] = procCPUSeconds(t, pid)
	}

	name := fmt.Sprintf("bench-%d-%s", n, time.Now().UTC().Format("150405"))
	in := workflows.RolloutInput{
		Name:          name,
		Operation:     workflows.OperationFirmware,
		Query:         "SELECT * FROM devices",
		Firmware:      &workflows.RolloutFirmware{PackageURI: "https://fw.example/bench-2.0.0.bin", Version: "2.0.0"},
		Canary:        cfg.canary,
		Growth:        cfg.growth,
		MaxConcurrent: cfg.maxConcurrent,
		Rate:          cfg.rate,
		MaxFailures:   "1%",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	start := time.Now()
	run, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: workflows.RolloutWorkflowID(name), TaskQueue: queue,
	}, workflows.Rollout, in)
	if err != nil {
		t.Fatal(err)
	}
	firstRun := run.GetRunID()
	done := make(chan struct{})
	go logRolloutProgress(t, tc, name, start, done)
	err = run.Get(ctx, &res.progress)
	res.wall = time.Since(start)
	close(done)
	if err != nil {
		t.Fatalf("rollout %s: %v", name, err)
	}
	p := res.progress
	if p.State != workflows.RolloutCompleted || p.Succeeded != n {
		t.Errorf("rollout %s: %s, %d of %d succeeded, %d failed: %s", name, p.State, p.Succeeded, n, p.Failed, p.Reason)
	}

	res.cpu = map[string]float64{}
	for k, pid := range pids {
		res.cpu[k] = procCPUSeconds(t, pid) - cpuBefore[k]
	}
	res.workerRSS, res.workerPeakRSS = procMemKB(t, w.cmd.Process.Pid)
	after := lh.stats(t)
	res.methods = sumNested(after.MethodInvocations) - sumNested(before.MethodInvocations)
	res.twinReads = sumCounts(after.ServiceTwinReads) - sumCounts(before.ServiceTwinReads)
	res.throttled = map[string]int{}
	for op, c := range after.Throttled {
		if d := c - before.Throttled[op]; d > 0 {
			res.throttled[op] = d
		}
	}

	var chain runChain
	chain, res.rolloutEvents = countRunChainSizes(t, tc, workflows.RolloutWorkflowID(name), firstRun)
	res.rolloutRuns, res.maxRunInput = chain.runs, chain.maxInput
	rows := reportRows(t, tc, name)
	res.deviceEvents, res.sampled = sampleDeviceEvents(t, tc, name, rows)
	res.meanDeviceDuration = meanDeviceDuration(rows)
	return res
}

// meanDeviceDuration is the mean run time of the rollout's device workflows, from its report.
func meanDeviceDuration(rows []workflows.DeviceRow) time.Duration {
	var sum time.Duration
	for _, r := range rows {
		sum += r.Duration
	}
	if len(rows) == 0 {
		return 0
	}
	return sum / time.Duration(len(rows))
}

// runChain describes the runs of a workflow that continued as new.
type runChain struct {
	runs     int
	maxInput int // bytes of the largest run input
}

// countRunChainSizes is countRunChain that also measures each run's input.
func countRunChainSizes(t *testing.T, tc client.Client, id, runID string) (runChain, int) {
	t.Helper()
	var c runChain
	events := 0
	for first := true; first || runID != ""; first = false {
		c.runs++
		next := ""
		it := tc.GetWorkflowHistory(context.Background(), id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				t.Fatalf("history of %s run %s: %v", id, runID, err)
			}
			events++
			if a := ev.GetWorkflowExecutionStartedEventAttributes(); a != nil {
				size := 0
				for _, p := range a.GetInput().GetPayloads() {
					size += len(p.GetData())
				}
				c.maxInput = max(c.maxInput, size)
			}
			if a := ev.GetWorkflowExecutionContinuedAsNewEventAttributes(); a != nil {
				next = a.GetNewExecutionRunId()
			}
		}
		runID = next
	}
	return c, events
}

// logRolloutProgress logs the rollout's progress every 30 s until done is closed, so that a long
// run shows it is alive.
func logRolloutProgress(t *testing.T, tc client.Client, name string, start time.Time, done <-chan struct{}) {
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		v, err := tc.QueryWorkflow(ctx, workflows.RolloutWorkflowID(name), "", workflows.QueryProgress)
		var p workflows.RolloutProgress
		if err == nil {
			err = v.Get(&p)
		}
		cancel()
		if err != nil {
			t.Logf("+%s progress: %v", time.Since(start).Round(time.Second), err)
			continue
		}
		t.Logf("+%s wave %d/%d: %d succeeded, %d failed, %d running, %d pending, %d hub calls",
			time.Since(start).Round(time.Second), p.Wave, p.Waves, p.Succeeded, p.Failed, p.Running, p.Pending, p.HubCalls)
	}
}

// countRunChain counts the runs of a workflow that continued as new, from its first run (an empty
// runID: the latest run, for a workflow that did not continue as new), and the events of all of
// them.
func countRunChain(t *testing.T, tc client.Client, id, runID string) (runs, events int) {
	t.Helper()
	c, events := countRunChainSizes(t, tc, id, runID)
	return c.runs, events
}

// deviceEventSample is how many device workflows the history count reads.
const deviceEventSample = 50

// sampleDeviceEvents counts the history events of deviceEventSample device workflows spread
// evenly over the report's rows and returns their mean.
func sampleDeviceEvents(t *testing.T, tc client.Client, name string, rows []workflows.DeviceRow) (float64, int) {
	t.Helper()
	if len(rows) == 0 {
		return 0, 0
	}
	step := max(1, len(rows)/deviceEventSample)
	total, sampled := 0, 0
	for i := 0; i < len(rows) && sampled < deviceEventSample; i += step {
		_, ev := countRunChain(t, tc, workflows.RolloutDeviceWorkflowID(name, rows[i].DeviceID), "")
		total += ev
		sampled++
	}
	return float64(total) / float64(sampled), sampled
}

// reportRows reads the rollout's whole report, page by page. The worker answers the query by
// replaying the rollout's last run when it is no longer cached, which takes a while on a busy
// machine: each page gets two minutes and three tries.
func reportRows(t *testing.T, tc client.Client, name string) []workflows.DeviceRow {
	t.Helper()
	var rows []workflows.DeviceRow
	for off := 0; ; {
		var page workflows.ReportPage
		var err error
		for try := 0; try < 3; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			var v converter.EncodedValue
			v, err = tc.QueryWorkflow(ctx, workflows.RolloutWorkflowID(name), "", workflows.QueryReport,
				workflows.ReportRequest{Offset: off, Limit: workflows.MaxReportPage})
			if err == nil {
				err = v.Get(&page)
			}
			cancel()
			if err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("report of %s at row %d: %v", name, off, err)
		}
		rows = append(rows, page.Rows...)
		if page.Next == 0 {
			return rows
		}
		off = page.Next
	}
}

// procMemKB returns a process's current and peak resident set size in KB.
func procMemKB(t *testing.T, pid int) (rss, hwm int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

func sumCounts(m map[string]int) int {
	s := 0
	for _, v := range m {
		s += v
	}
	return s
}

func sumNested(m map[string]map[string]int) int {
	s := 0
	for _, inner := range m {
		s += sumCounts(inner)
	}
	return s
}

// startBenchHub starts a localhub of the benchmark's own at the tier's throttles.
func startBenchHub(t *testing.T, cfg rolloutBenchConfig) ownHub {
	t.Helper()
	var args []string
	if cfg.throttle {
		args = append(args, "--tier", cfg.tier)
		for _, q := range cfg.quotas {
			args = append(args, "--quota", strings.TrimSpace(q))
		}
	} else {
		args = append(args, "--no-throttle")
	}
	return startOwnHub(t, "bench-localhub", args...)
}

// The ceiling: trivial stand-ins for Rollout, FirmwareUpdate and its three activities, on a worker
// in this process with a task queue of its own.

const (
	ceilingParentName = "BenchCeilingRollout"
	ceilingChildName  = "BenchCeilingDevice"
)

// ceilingActivities are the stand-ins for FirmwareUpdate's activities, in its order.
var ceilingActivities = []string{"BenchGetTwin", "BenchInvokeMethod", "BenchFollowStages"}

// ceilingInput is the stand-in rollout's input: Total children, at most Concurrency at a time,
// PerRun per run before it continues as new; Next is where a continued run goes on.
type ceilingInput struct {
	Prefix      string `json:"prefix"`
	Total       int    `json:"total"`
	Concurrency int    `json:"concurrency"`
	PerRun      int    `json:"perRun"`
	Next        int    `json:"next"`
	Failed      int    `json:"failed"`
}

func ceilingRollout(ctx workflow.Context, in ceilingInput) (int, error) {
	running, started := 0, 0
	for in.Next < in.Total && started < in.PerRun {
		if err := workflow.Await(ctx, func() bool { return running < in.Concurrency }); err != nil {
			return 0, err
		}
		cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
			WorkflowID: fmt.Sprintf("%s/%05d", in.Prefix, in.Next),
		})
		f := workflow.ExecuteChildWorkflow(cctx, ceilingChildName)
		running++
		started++
		in.Next++
		workflow.Go(ctx, func(gctx workflow.Context) {
			if err := f.Get(gctx, nil); err != nil {
				in.Failed++
			}
			running--
		})
	}
	if err := workflow.Await(ctx, func() bool { return running == 0 }); err != nil {
		return 0, err
	}
	if in.Next < in.Total {
		return 0, workflow.NewContinueAsNewError(ctx, ceilingParentName, in)
	}
	return in.Failed, nil
}

func ceilingDevice(ctx workflow.Context) error {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute})
	for _, a := range ceilingActivities {
		if err := workflow.ExecuteActivity(ctx, a).Get(ctx, nil); err != nil {
			return err
		}
	}
	return nil
}

func ceilingNoop(context.Context) error { return nil }

// measureCeilingInMemory runs the ceiling on a dev server of its own without a database file.
func measureCeilingInMemory(t *testing.T, cfg rolloutBenchConfig, n int) ceilingResult {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(freePort())
	p := startProc(t, "bench-temporal-mem", nil, env.temporalBin, "server", "start-dev", "--ip", "127.0.0.1",
		"--port", strings.TrimPrefix(addr, "127.0.0.1:"), "--headless", "--log-level", "warn")
	defer p.stop()
	deadline := time.Now().Add(time.Minute)
	for {
		tc, err := client.Dial(client.Options{HostPort: addr, Logger: quietLogger{}})
		if err == nil {
			defer tc.Close()
			return measureCeiling(t, tc, cfg, n)
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("in-memory dev server not up: %v\n%s", err, p.tail(10))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// measureCeiling runs n trivial device workflows under one parent at the rollout's concurrency and
// continue-as-new cadence.
func measureCeiling(t *testing.T, tc client.Client, cfg rolloutBenchConfig, n int) ceilingResult {
	t.Helper()
	queue := fmt.Sprintf("bench-ceiling-%d-%d", n, time.Now().UnixNano())
	w := worker.New(tc, queue, worker.Options{})
	w.RegisterWorkflowWithOptions(ceilingRollout, workflow.RegisterOptions{Name: ceilingParentName})
	w.RegisterWorkflowWithOptions(ceilingDevice, workflow.RegisterOptions{Name: ceilingChildName})
	for _, a := range ceilingActivities {
		w.RegisterActivityWithOptions(ceilingNoop, activity.RegisterOptions{Name: a})
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	id := "bench-ceiling/" + queue
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	start := time.Now()
	run, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue}, ceilingParentName,
		ceilingInput{Prefix: id, Total: n, Concurrency: cfg.maxConcurrent, PerRun: devicesPerRun})
	if err != nil {
		t.Fatal(err)
	}
	var failed int
	if err := run.Get(ctx, &failed); err != nil {
		t.Fatalf("ceiling: %v", err)
	}
	wall := time.Since(start)
	if failed > 0 {
		t.Errorf("ceiling: %d of %d trivial device workflows failed", failed, n)
	}
	runs, events := countRunChain(t, tc, id, run.GetRunID())
	// GetRunID is the first run's: the chain follows the continued runs from it.
	childEvents := 0
	samples := 0
	for i := 0; i < n && samples < 10; i += max(1, n/10) {
		_, ev := countRunChain(t, tc, fmt.Sprintf("%s/%05d", id, i), "")
		childEvents += ev
		samples++
	}
	return ceilingResult{wall: wall, runs: runs, parentEvents: events, childEvents: float64(childEvents) / float64(samples)}
}

// temporalServerPID finds the shared dev server's process by its port.
func temporalServerPID(t *testing.T) int {
	t.Helper()
	port := env.temporalAddr[strings.LastIndex(env.temporalAddr, ":")+1:]
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "--port" && args[i+1] == port && strings.Contains(strings.Join(args, " "), "start-dev") {
				pid, _ := strconv.Atoi(filepath.Base(d))
				return pid
			}
		}
	}
	t.Fatalf("no Temporal dev server process on port %s", port)
	return 0
}

// procCPUSeconds is the user and system CPU time a process used so far (Linux clock ticks are
// 1/100 s).
func procCPUSeconds(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name (field 2) may hold spaces; the fields after its ')' are fixed.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}

// Device-side twin updates: a simulated device reports downloading, applying and completed, one
// reported-property patch each (internal/device/firmware.go); localhub does not count them.
const deviceReportsPerUpdate = 3

// quotaLine is one operation's share of the quota-bound minimum.
type quotaLine struct {
	op    hub.Operation
	what  string
	calls int
	rate  float64 // per second
}

func (q quotaLine) seconds() float64 { return float64(q.calls) / q.rate }

func quotaLines(tier string, r rolloutBenchResult) []quotaLine {
	rate := func(op hub.Operation) float64 {
		q, _ := hub.DocumentedQuota(tier, 1, op) // the tier was checked at the start
		return q.Rate
	}
	pages := queryPages(r.devices)
	return []quotaLine{
		{hub.OpMethods, "direct methods", r.methods, rate(hub.OpMethods)},
		{hub.OpTwinReads, "service twin reads", r.twinReads, rate(hub.OpTwinReads)},
		{hub.OpTwinUpdates, "device twin updates (3 reported patches per update)", deviceReportsPerUpdate * r.progress.Succeeded, rate(hub.OpTwinUpdates)},
		{hub.OpQueries, "query pages (100 twins each)", pages, rate(hub.OpQueries)},
	}
}

// queryPages is the query pages that resolving n devices costs: the pinned client reads 100 twins
// a page.
func queryPages(n int) int { return int(math.Ceil(float64(n) / 100)) }

func quotaBound(lines []quotaLine) quotaLine {
	var worst quotaLine
	for _, l := range lines {
		if l.seconds() > worst.seconds() || worst.rate == 0 {
			worst = l
		}
	}
	return worst
}

func fmtRate(perSecond float64) string {
	if perSecond < 1 {
		return strconv.FormatFloat(perSecond*60, 'f', -1, 64) + "/min"
	}
	return strconv.FormatFloat(perSecond, 'f', -1, 64) + "/s"
}

func fmtSecs(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
}

// rolloutBenchTable is the Markdown table of the results, one column per size.
func rolloutBenchTable(cfg rolloutBenchConfig, rs []rolloutBenchResult) string {
	var b strings.Builder
	hubTier := cfg.tier + ", 1 unit"
	if len(cfg.quotas) > 0 {
		hubTier += " with --quota " + strings.Join(cfg.quotas, " --quota ")
	}
	if !cfg.throttle {
		hubTier = "unthrottled (--no-throttle); quotas below for S1, 1 unit"
	}
	fmt.Fprintf(&b, "Firmware rollouts: localhub %s; stages %s; --rate %g/s, --max-concurrent %d, --canary %d, --growth %g; %d devices per workflow run.\n\n",
		hubTier, cfg.stage, cfg.rate, cfg.maxConcurrent, cfg.canary, cfg.growth, devicesPerRun)
	b.WriteString("| measure |")
	for _, r := range rs {
		fmt.Fprintf(&b, " %d devices |", r.devices)
	}
	b.WriteString("\n|---|")
	for range rs {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	row := func(name string, cell func(r rolloutBenchResult) string) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, r := range rs {
			fmt.Fprintf(&b, " %s |", cell(r))
		}
		b.WriteString("\n")
	}
	row("result", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%s: %d updated, %d failed", r.progress.State, r.progress.Succeeded, r.progress.Failed)
	})
	row("**rollout time** (start → completed)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("**%s** (%d waves)", fmtSecs(r.wall), r.progress.Waves)
	})
	row("**devices per minute**", func(r rolloutBenchResult) string { return fmt.Sprintf("**%.0f**", r.perMinute()) })
	row("**Temporal ceiling**: trivial parent + children (3 no-op activities each), same concurrency and continue-as-new, same dev server", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%s = **%.0f devices/min**", fmtSecs(r.ceiling.wall), r.ceiling.perMinute(r.devices))
	})
	row("— the same on an in-memory dev server (no SQLite file)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%s = %.0f devices/min", fmtSecs(r.ceilingMem.wall), r.ceilingMem.perMinute(r.devices))
	})
	row(fmt.Sprintf("concurrency bound: --max-concurrent %d ÷ mean device workflow time", cfg.maxConcurrent), func(r rolloutBenchResult) string {
		if r.meanDeviceDuration <= 0 {
			return "—"
		}
		return fmt.Sprintf("%.0f devices/min (mean %.1f s)", float64(cfg.maxConcurrent)/r.meanDeviceDuration.Minutes(), r.meanDeviceDuration.Seconds())
	})
	row(fmt.Sprintf("quota-bound minimum at %s (calls ÷ documented limit, largest)", cfg.tier), func(r rolloutBenchResult) string {
		q := quotaBound(quotaLines(cfg.tier, r))
		return fmt.Sprintf("%s = %.0f devices/min (%s: %d ÷ %s)", fmtSecs(time.Duration(q.seconds()*float64(time.Second))),
			float64(r.devices)/q.seconds()*60, q.what, q.calls, fmtRate(q.rate))
	})
	row(fmt.Sprintf("— the others at %s", cfg.tier), func(r rolloutBenchResult) string {
		lines := quotaLines(cfg.tier, r)
		worst := quotaBound(lines)
		var parts []string
		for _, l := range lines {
			if l.op != worst.op {
				parts = append(parts, fmt.Sprintf("%s %d ÷ %s = %s", l.op, l.calls, fmtRate(l.rate), fmtSecs(time.Duration(l.seconds()*float64(time.Second)))))
			}
		}
		return strings.Join(parts, "; ")
	})
	row(fmt.Sprintf("rate-bound minimum (hub calls ÷ --rate %g/s)", cfg.rate), func(r rolloutBenchResult) string {
		calls := r.methods + r.twinReads
		s := float64(calls) / cfg.rate
		return fmt.Sprintf("%s = %.0f devices/min", fmtSecs(time.Duration(s*float64(time.Second))), float64(r.devices)/s*60)
	})
	row("hub calls per device (localhub: methods + service twin reads)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%.2f (%d + %d); the rollout counted %d incl. %d query pages",
			float64(r.methods+r.twinReads)/float64(r.devices), r.methods, r.twinReads, r.progress.HubCalls, queryPages(r.devices))
	})
	row("history events per device (rollout runs ÷ devices + device workflow)", func(r rolloutBenchResult) string {
		per := float64(r.rolloutEvents)/float64(r.devices) + r.deviceEvents
		return fmt.Sprintf("%.1f = %d ÷ %d (%d runs) + %.1f (mean of %d)", per, r.rolloutEvents, r.devices, r.rolloutRuns, r.deviceEvents, r.sampled)
	})
	row("history events per device, ceiling", func(r rolloutBenchResult) string {
		c := r.ceiling
		return fmt.Sprintf("%.1f = %d ÷ %d (%d runs) + %.1f", float64(c.parentEvents)/float64(r.devices)+c.childEvents,
			c.parentEvents, r.devices, c.runs, c.childEvents)
	})
	row("largest rollout run input (the state carried by continue-as-new; Temporal refuses payloads over 2 MB)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%.0f KB", float64(r.maxRunInput)/1024)
	})
	row("CPU during the rollout, s: Temporal dev server / worker / localhub / fleet", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%.0f / %.0f / %.0f / %.0f (of %.0f s × %d cores)", r.cpu["Temporal dev server"], r.cpu["worker"],
			r.cpu["localhub"], r.cpu["simdevice fleet"], r.wall.Seconds(), runtime.NumCPU())
	})
	row("**worker RSS, peak** (VmHWM; at the end)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("**%d MB** (%d MB)", r.workerPeakRSS/1024, r.workerRSS/1024)
	})
	row("**429s during the rollout** (localhub throttled, by operation)", func(r rolloutBenchResult) string {
		if len(r.throttled) == 0 {
			return "**0**"
		}
		var parts []string
		for _, op := range hub.Operations {
			if c := r.throttled[string(op)]; c > 0 {
				parts = append(parts, fmt.Sprintf("%s %d", op, c))
			}
		}
		return "**" + strings.Join(parts, ", ") + "**"
	})
	row("fleet setup: register, connect (throttled meanwhile)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%s (%d)", fmtSecs(r.setup), r.setupThrottled)
	})
	return b.String()
}
