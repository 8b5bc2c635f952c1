//go:build integration && bench

package test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/benchreport"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/workflows"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
)

// TestMeasureRollout measures firmware rollouts of 1,000 and 10,000 simulated devices with short
// stages, in two regimes, each run on a localhub of its own and a dmflow worker of its own:
//
//   - unbound: localhub at S3, whose quotas lie far above what Temporal allows here, no --rate,
//     on the shared dev server with a SQLite file (as `make up` runs it). Held to Temporal's
//     ceiling.
//   - quota: localhub at S1 with the rollout's --rate at the pace S1's quotas allow, on a dev
//     server in memory, whose ceiling lies above that pace. Held to the quota-bound minimum.
//
// Beside each rollout, on the same dev server and before it, Temporal's ceiling: trivial
// stand-ins of the sharded shape (measure_ceiling_test.go), a parent with children of up to 250
// devices, two no-op activities a device, at the rollout's concurrency and continue-as-new
// cadence, on a worker in this process. Which bound a rollout is
// held to follows from the measurements (benchreport.RolloutRun.QuotaBinds). `make bench-rollout`
// runs it and writes the table to DMFLOW_BENCH_OUT and the figures beside it (.json).
//
// Settings (environment): DMFLOW_BENCH_ROLLOUT_SIZES (default "1000,10000"),
// DMFLOW_BENCH_ROLLOUT_REGIMES (default "unbound,quota"), and per regime, REGIME being UNBOUND or
// QUOTA: DMFLOW_BENCH_ROLLOUT_REGIME_TIER (S1, S2, S3, or "off" for an unthrottled localhub, whose
// quota-bound minimum is computed for S1; default S3 and S1), _QUOTAS (localhub --quota overrides,
// comma-separated, "none" for none; default none and "queries=1000/min", see queryOverride), _RATE
// (the rollout's --rate in hub calls per second, 0 for none; default 0 and 60, see quotaRate),
// _SERVER ("sqlite" or "memory"; default sqlite and memory). For all: DMFLOW_BENCH_ROLLOUT_CONCURRENT
// (--max-concurrent, default 200), DMFLOW_BENCH_ROLLOUT_STAGE (the devices' stage duration, default
// 1s), DMFLOW_BENCH_ROLLOUT_CANARY and _GROWTH (default 10 and 2), DMFLOW_BENCH_ROLLOUT_SAMPLE (how
// many device workflows' histories are read for the event count and the completed lag, default
// 1000).
func TestMeasureRollout(t *testing.T) {
	cfg := rolloutBenchConfigFromEnv(t)
	var results []rolloutBenchResult
	for _, n := range cfg.sizes {
		for _, rg := range cfg.regimes {
			t.Run(fmt.Sprintf("%d-%s", n, rg.name), func(t *testing.T) {
				r := measureRolloutOf(t, cfg, rg, n)
				results = append(results, r)
				t.Logf("%d devices, %s: rollout %s (%.0f devices/min), ceiling %s (%.0f devices/min), quota-bound minimum %s",
					n, rg.name, r.wall.Round(time.Second), r.perMinute(), r.ceiling.wall.Round(time.Second),
					r.ceiling.perMinute(n), fmtSecs(r.quotaMin()))
			})
		}
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
		var figs benchreport.RolloutFigures
		for _, r := range results {
			figs.Runs = append(figs.Runs, r.figures())
		}
		if err := benchreport.WriteFigures(benchreport.FiguresPathFor(out), figs); err != nil {
			t.Fatal(err)
		}
	}
}

// rolloutBenchConfig is the benchmark's settings.
type rolloutBenchConfig struct {
	sizes         []int
	regimes       []benchRegime
	maxConcurrent int
	stage         time.Duration
	canary        int
	growth        float64
	sample        int
}

// benchRegime is a configuration of hub, rollout and Temporal server that every size runs in.
type benchRegime struct {
	name     string
	tier     string   // S1, S2, S3: localhub's, and the quota-bound minimum's
	throttle bool     // false: localhub --no-throttle (the minimum is then computed for S1)
	quotas   []string // localhub --quota overrides
	rate     float64  // the rollout's --rate; 0 for none
	server   string   // serverSQLite or serverMemory
}

// The Temporal dev servers a regime can run on.
const (
	// serverSQLite is the dev server TestMain starts, with a database file, as `make up` runs it.
	serverSQLite = "sqlite"
	// serverMemory is a dev server of the run's own without a database file: several times the
	// SQLite server's ceiling on this kind of machine, which persists every event to one file.
	serverMemory = "memory"
)

// quotaRate is the quota regime's default --rate: the pace S1's quotas allow, in the rollout's
// own hub calls. Each device costs one method call and, with 1 s stages, about 2.7 twin reads
// (3.7 calls), and its device reports three stages (3 twin updates). S1's tightest quota for that
// mix is the 50 twin updates/s: 16.7 devices/s, which is 62 calls/s. 60/s keeps the devices'
// reports just under S1's quota; the method quota (40/s, 1 per device) and the twin reads' (100/s)
// have room.
const quotaRate = "60"

func defaultRegime(name string) (benchRegime, bool) {
	switch name {
	case "unbound":
		return benchRegime{name: name, tier: hubquota.S3, throttle: true, server: serverSQLite}, true
	case "quota":
		return benchRegime{name: name, tier: hubquota.S1, throttle: true, quotas: []string{queryOverride}, server: serverMemory}, true
	}
	return benchRegime{}, false
}

// rolloutBenchConfigFromEnv reads the benchmark's settings.
func rolloutBenchConfigFromEnv(t *testing.T) rolloutBenchConfig {
	t.Helper()
	cfg := rolloutSettingsFromEnv(t)
	for _, s := range strings.Split(envOr("DMFLOW_BENCH_ROLLOUT_SIZES", "1000,10000"), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > workflows.MaxRolloutDevices {
			t.Fatalf("DMFLOW_BENCH_ROLLOUT_SIZES: %q is not a device count from 1 to %d", s, workflows.MaxRolloutDevices)
		}
		cfg.sizes = append(cfg.sizes, n)
	}
	for _, name := range strings.Split(envOr("DMFLOW_BENCH_ROLLOUT_REGIMES", "unbound,quota"), ",") {
		cfg.regimes = append(cfg.regimes, regimeFromEnv(t, strings.ToLower(strings.TrimSpace(name))))
	}
	return cfg
}

// rolloutSettingsFromEnv reads the settings of the rollouts and devices, the same for every size
// and regime (and for the baseline's rollout).
func rolloutSettingsFromEnv(t *testing.T) rolloutBenchConfig {
	t.Helper()
	num := func(key, def string) float64 {
		v, err := strconv.ParseFloat(envOr(key, def), 64)
		if err != nil || v <= 0 || math.IsInf(v, 0) {
			t.Fatalf("%s=%q: give a positive number", key, envOr(key, def))
		}
		return v
	}
	cfg := rolloutBenchConfig{
		maxConcurrent: int(num("DMFLOW_BENCH_ROLLOUT_CONCURRENT", "200")),
		canary:        int(num("DMFLOW_BENCH_ROLLOUT_CANARY", "10")),
		growth:        num("DMFLOW_BENCH_ROLLOUT_GROWTH", "2"),
		sample:        int(num("DMFLOW_BENCH_ROLLOUT_SAMPLE", "1000")),
	}
	var err error
	if cfg.stage, err = time.ParseDuration(envOr("DMFLOW_BENCH_ROLLOUT_STAGE", "1s")); err != nil || cfg.stage <= 0 {
		t.Fatalf("DMFLOW_BENCH_ROLLOUT_STAGE=%q: give a duration, e.g. 1s", envOr("DMFLOW_BENCH_ROLLOUT_STAGE", "1s"))
	}
	return cfg
}

// envOr is the environment variable key, trimmed, or def when it is empty.
func envOr(key, def string) string {
	if v := strings.TrimSpace(os.Getenv(key)); v != "" {
		return v
	}
	return def
}

// regimeFromEnv is the regime name with the DMFLOW_BENCH_ROLLOUT_<NAME>_* settings applied.
func regimeFromEnv(t *testing.T, name string) benchRegime {
	t.Helper()
	rg, ok := defaultRegime(name)
	if !ok {
		t.Fatalf("DMFLOW_BENCH_ROLLOUT_REGIMES: no regime %q: give unbound, quota or both, comma-separated", name)
	}
	key := "DMFLOW_BENCH_ROLLOUT_" + strings.ToUpper(name) + "_"
	get := func(suffix, def string) string { return envOr(key+suffix, def) }
	if tier := strings.ToUpper(get("TIER", rg.tier)); tier == "OFF" {
		rg.tier, rg.throttle = hubquota.S1, false
	} else {
		rg.tier = tier
	}
	if _, err := hubquota.Documented(rg.tier, 1, hubquota.Methods); err != nil {
		t.Fatalf("%sTIER: %v", key, err)
	}
	defQuotas := strings.Join(rg.quotas, ",")
	if defQuotas == "" {
		defQuotas = "none"
	}
	rg.quotas = nil
	if q := get("QUOTAS", defQuotas); q != "none" {
		rg.quotas = strings.Split(q, ",")
	}
	defRate := "0"
	if name == "quota" {
		defRate = quotaRate
	}
	var err error
	if rg.rate, err = strconv.ParseFloat(get("RATE", defRate), 64); err != nil || rg.rate < 0 || math.IsInf(rg.rate, 0) {
		t.Fatalf("%sRATE=%q: give hub calls per second, or 0 for no --rate", key, get("RATE", defRate))
	}
	rg.server = strings.ToLower(get("SERVER", rg.server))
	if rg.server != serverSQLite && rg.server != serverMemory {
		t.Fatalf("%sSERVER=%q: give %s or %s", key, rg.server, serverSQLite, serverMemory)
	}
	return rg
}

// queryOverride is the localhub quota override the quota regime applies by default: queries at
// S3's 1,000 a minute instead of S1's 20. It dates from QueryDevices reading 100 twins a page
// through the pinned service client: the targets of 10,000 devices were 100 queries, and at 20 a
// minute no attempt got past about 20 pages. QueryDevices now reads 1,000 twins a page, so the
// same targets are 10 queries, within S1's minute; the override stays until a bench run measures
// the regime without it, so that the results stay comparable. The other operations keep the
// tier's quotas, and the quota-bound minimum counts the pages at the tier's documented query rate.
const queryOverride = "queries=1000/min"

// rolloutBenchResult is what one size measured in one regime.
type rolloutBenchResult struct {
	regime  benchRegime
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

	// completedLag is, per sampled device workflow, the time from the device's completed report
	// to the workflow task that took FollowStages' result; pollLag its part up to the twin read
	// that showed the report.
	completedLag, pollLag []time.Duration

	// rss and peak (VmHWM) in KB, by process: worker, localhub, simdevice fleet.
	rss, peak map[string]int64

	meanDeviceDuration time.Duration      // of the device workflows, from the report
	maxRunInput        int                // bytes: the largest input of a rollout run (its state after a continue-as-new)
	cpu                map[string]float64 // CPU seconds during the rollout, by process

	ceiling ceilingResult
}

// Process names, for CPU and memory.
const (
	procTemporal = "Temporal dev server"
	procWorker   = "worker"
	procLocalhub = "localhub"
	procFleet    = "simdevice fleet"
)

func (r rolloutBenchResult) perMinute() float64 { return float64(r.devices) / r.wall.Minutes() }

// quotaMin is the quota-bound minimum of the rollout at its regime's tier.
func (r rolloutBenchResult) quotaMin() time.Duration {
	return time.Duration(quotaBound(quotaLines(r.regime.tier, r)).seconds() * float64(time.Second))
}

// hubCallsPerDevice counts localhub's methods and service twin reads and the query pages.
func (r rolloutBenchResult) hubCallsPerDevice() float64 {
	return float64(r.methods+r.twinReads+queryPages(r.devices)) / float64(r.devices)
}

// eventsPerDevice is the rollout's runs' events shared out, plus a device workflow's.
func (r rolloutBenchResult) eventsPerDevice() float64 {
	return float64(r.rolloutEvents)/float64(r.devices) + r.deviceEvents
}

func (r rolloutBenchResult) figures() benchreport.RolloutRun {
	tier := r.regime.tier
	if !r.regime.throttle {
		tier = "off"
	}
	q := quotaBound(quotaLines(r.regime.tier, r))
	return benchreport.RolloutRun{
		Regime: r.regime.name, Devices: r.devices, Tier: tier, QuotaTier: r.regime.tier,
		Rate: r.regime.rate, Server: r.regime.server,
		Succeeded: r.progress.Succeeded, Failed: r.progress.Failed,
		Seconds: r.wall.Seconds(), CeilingSeconds: r.ceiling.wall.Seconds(),
		QuotaMinSeconds: q.seconds(), QuotaOp: string(q.op),
		HubCallsPerDevice: r.hubCallsPerDevice(), EventsPerDevice: r.eventsPerDevice(), DeviceEvents: r.deviceEvents,
		CeilingEventsPerDevice: r.ceiling.eventsPerDevice(r.devices),
		Throttled:              sumCounts(r.throttled),
		CompletedLagP50:        percentile(r.completedLag, 50).Seconds(),
		CompletedLagP95:        percentile(r.completedLag, 95).Seconds(),
		Sampled:                len(r.completedLag),
		WorkerPeakRSSKB:        r.peak[procWorker], LocalhubPeakRSSKB: r.peak[procLocalhub], FleetPeakRSSKB: r.peak[procFleet],
	}
}

// devicesPerRun is the rollout's continue-as-new cadence, which the ceiling's parent copies.
const devicesPerRun = workflows.DefaultDevicesPerRun

// benchServer is the Temporal dev server a regime runs on.
type benchServer struct {
	addr string
	tc   client.Client
	pid  int
}

// serverFor returns the shared dev server, or starts one in memory for this (sub)test.
func serverFor(t *testing.T, kind string) benchServer {
	t.Helper()
	if kind == serverSQLite {
		return benchServer{addr: env.temporalAddr, tc: temporalClient(t), pid: serverPID(t, env.temporalAddr)}
	}
	port := freePort()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := []string{"server", "start-dev", "--ip", "127.0.0.1", "--port", strconv.Itoa(port), "--headless", "--log-level", "warn"}
	for _, sa := range []string{"DmflowDevice", "DmflowOperation", "DmflowTargetVersion", "DmflowRollout", "DmflowRolloutState"} {
		args = append(args, "--search-attribute", sa+"=Keyword")
	}
	p := startProc(t, "bench-temporal-mem", nil, env.temporalBin, args...)
	deadline := time.Now().Add(time.Minute)
	for {
		tc, err := client.Dial(client.Options{HostPort: addr, Logger: quietLogger{}})
		if err == nil {
			t.Cleanup(tc.Close)
			return benchServer{addr: addr, tc: tc, pid: p.cmd.Process.Pid}
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("in-memory dev server not up: %v\n%s", err, p.tail(10))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// withTemporal points an environment built by ownHub.env at the Temporal server addr.
func withTemporal(environ []string, addr string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "TEMPORAL_ADDRESS=") {
			out = append(out, kv)
		}
	}
	return append(out, "TEMPORAL_ADDRESS="+addr)
}

func measureRolloutOf(t *testing.T, cfg rolloutBenchConfig, rg benchRegime, n int) rolloutBenchResult {
	res := rolloutBenchResult{regime: rg, devices: n}
	srv := serverFor(t, rg.server)
	tc := srv.tc

	// The ceiling first, while nothing else runs: what Temporal alone allows on the server the
	// rollout uses.
	res.ceiling = measureCeiling(t, tc, cfg, n, 1)
	t.Logf("ceiling (%s dev server): %d trivial devices, %d children, in %s", rg.server, n, res.ceiling.children, res.ceiling.wall.Round(time.Second))

	lh := startBenchHub(t, rg)
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

	queue := "bench-rollout-" + strconv.Itoa(n) + "-" + rg.name
	w := startProc(t, "bench-worker", withTemporal(lh.env("DMFLOW_TASK_QUEUE="+queue), srv.addr), filepath.Join(env.bin, "worker"))
	if err := w.waitFor("worker ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}

	pids := map[string]int{procTemporal: srv.pid, procWorker: w.cmd.Process.Pid,
		procLocalhub: lh.proc.cmd.Process.Pid, procFleet: fleet.cmd.Process.Pid}
	cpuBefore := map[string]float64{}
	for k, pid := range pids {
		cpuBefore[k] = procCPUSeconds(t, pid)
	}

	name := fmt.Sprintf("bench-%d-%s-%s", n, rg.name, time.Now().UTC().Format("150405"))
	in := workflows.RolloutInput{
		Name:          name,
		Operation:     workflows.OperationFirmware,
		Query:         "SELECT * FROM devices",
		Firmware:      &workflows.RolloutFirmware{PackageURI: "https://fw.example/bench-2.0.0.bin", Version: "2.0.0"},
		Canary:        cfg.canary,
		Growth:        cfg.growth,
		MaxConcurrent: cfg.maxConcurrent,
		Rate:          rg.rate,
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
	res.rss, res.peak = map[string]int64{}, map[string]int64{}
	for _, k := range []string{procWorker, procLocalhub, procFleet} {
		res.rss[k], res.peak[k] = procMemKB(t, pids[k])
	}
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
	s := sampleDevices(t, tc, name, rows, cfg.sample)
	res.deviceEvents, res.sampled, res.completedLag, res.pollLag = s.meanEvents(), s.workflows, s.lag, s.poll
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

// deviceSample is what the histories of a sample of a rollout's device workflows say.
type deviceSample struct {
	workflows, events int
	// lag and poll: see rolloutBenchResult.completedLag and pollLag; one per device workflow that
	// followed an update to completed.
	lag, poll []time.Duration
}

func (s deviceSample) meanEvents() float64 {
	if s.workflows == 0 {
		return 0
	}
	return float64(s.events) / float64(s.workflows)
}

// followStagesType is the activity type FollowStages runs under: the worker registers the
// Activities struct's methods by their names.
const followStagesType = "FollowStages"

// sampleDevices reads the histories of up to size device workflows spread evenly over the report's
// rows: their events, and when each saw its device complete.
//
// The completed lag runs from the device's own timestamp of completed (lastFirmwareUpdate, which
// FollowStages returns as the stage's ReportedAt; simulated devices and the Temporal server share
// this machine's clock) to the WorkflowTaskStarted event after FollowStages' ActivityTaskCompleted:
// the moment the device workflow's code runs with the result, which is what "the workflow sees it"
// means. Its parts: the twin poll (up to FollowStages' read that showed completed, its SeenAt) and
// the way back through Temporal (activity completion recorded, workflow task dispatched).
func sampleDevices(t *testing.T, tc client.Client, name string, rows []workflows.DeviceRow, size int) deviceSample {
	t.Helper()
	var s deviceSample
	if len(rows) == 0 {
		return s
	}
	step := max(1, len(rows)/size)
	dc := converter.GetDefaultDataConverter()
	for i := 0; i < len(rows) && s.workflows < size; i += step {
		id := workflows.RolloutDeviceWorkflowID(name, rows[i].DeviceID)
		it := tc.GetWorkflowHistory(context.Background(), id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		var follow int64 // FollowStages' scheduled event
		var completed activities.StageSeen
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				t.Fatalf("history of %s: %v", id, err)
			}
			s.events++
			switch {
			case ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName() == followStagesType:
				follow = ev.GetEventId()
			case follow != 0 && ev.GetActivityTaskCompletedEventAttributes().GetScheduledEventId() == follow:
				var res activities.FollowStagesResult
				if err := dc.FromPayloads(ev.GetActivityTaskCompletedEventAttributes().GetResult(), &res); err != nil {
					t.Fatalf("FollowStages result in %s: %v", id, err)
				}
				for _, st := range res.Stages {
					if st.Status == protocol.StatusCompleted {
						completed = st
					}
				}
			case ev.GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_TASK_STARTED && !completed.ReportedAt.IsZero():
				s.lag = append(s.lag, ev.GetEventTime().AsTime().Sub(completed.ReportedAt))
				s.poll = append(s.poll, completed.SeenAt.Sub(completed.ReportedAt))
				completed = activities.StageSeen{}
			}
		}
		s.workflows++
	}
	return s
}

// percentile is the p-th percentile (nearest rank) of ds, or 0 for none.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
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

// startBenchHub starts a localhub of the benchmark's own at the regime's throttles.
func startBenchHub(t *testing.T, rg benchRegime) ownHub {
	t.Helper()
	var args []string
	if rg.throttle {
		args = append(args, "--tier", rg.tier)
		for _, q := range rg.quotas {
			args = append(args, "--quota", strings.TrimSpace(q))
		}
	} else {
		args = append(args, "--no-throttle")
	}
	return startOwnHub(t, "bench-localhub", args...)
}

// serverPID finds a dev server's process by the port of its address.
func serverPID(t *testing.T, addr string) int {
	t.Helper()
	port := addr[strings.LastIndex(addr, ":")+1:]
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
// reported-property patch each (internal/sim/device/firmware.go); localhub does not count them.
const deviceReportsPerUpdate = 3

// quotaLine is one operation's share of the quota-bound minimum.
type quotaLine struct {
	op    hubquota.Op
	what  string
	calls int
	rate  float64 // per second
}

func (q quotaLine) seconds() float64 { return float64(q.calls) / q.rate }

func quotaLines(tier string, r rolloutBenchResult) []quotaLine {
	rate := func(op hubquota.Op) float64 {
		q, _ := hubquota.Documented(tier, 1, op) // the tier was checked at the start
		return q.Rate
	}
	pages := queryPages(r.devices)
	return []quotaLine{
		{hubquota.Methods, "direct methods", r.methods, rate(hubquota.Methods)},
		{hubquota.TwinReads, "service twin reads", r.twinReads, rate(hubquota.TwinReads)},
		{hubquota.TwinUpdates, "device twin updates (3 reported patches per update)", deviceReportsPerUpdate * r.progress.Succeeded, rate(hubquota.TwinUpdates)},
		{hubquota.Queries, "query pages (1,000 twins each)", pages, rate(hubquota.Queries)},
	}
}

// queryPages is the query pages that resolving n devices costs: QueryDevices reads pages of the
// most twins IoT Hub returns.
func queryPages(n int) int { return int(math.Ceil(float64(n) / hubconn.MaxQueryPageSize)) }

func quotaBound(lines []quotaLine) quotaLine {
	var worst quotaLine
	for _, l := range lines {
		if l.seconds() > worst.seconds() || worst.rate == 0 {
			worst = l
		}
	}
	return worst
}

// fmtRate formats a rate per second, per minute when that is the round figure (IoT Hub gives
// queries and registry operations per minute).
func fmtRate(perSecond float64) string {
	if perSecond != math.Trunc(perSecond) {
		return strconv.FormatFloat(math.Round(perSecond*60*1000)/1000, 'f', -1, 64) + "/min"
	}
	return strconv.FormatFloat(perSecond, 'f', -1, 64) + "/s"
}

// runs formats a count of workflow runs.
func runs(n int) string {
	if n == 1 {
		return "1 run"
	}
	return strconv.Itoa(n) + " runs"
}

func fmtSecs(d time.Duration) string { return benchreport.Secs(d.Seconds()) }

// fmtLag formats the p50 / p95 of ds.
func fmtLag(ds []time.Duration) string {
	if len(ds) == 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f s / %.1f s", percentile(ds, 50).Seconds(), percentile(ds, 95).Seconds())
}

// rolloutBenchTable is the Markdown table of the results, one column per size and regime.
func rolloutBenchTable(cfg rolloutBenchConfig, rs []rolloutBenchResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Firmware rollouts: stages %s; --max-concurrent %d, --canary %d, --growth %g; %d devices per workflow run; histories of up to %d device workflows sampled per rollout.\n\n",
		cfg.stage, cfg.maxConcurrent, cfg.canary, cfg.growth, devicesPerRun, cfg.sample)
	b.WriteString("| measure |")
	for _, r := range rs {
		fmt.Fprintf(&b, " %s devices, %s |", benchreport.Count(r.devices), r.regime.name)
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
	row("localhub", func(r rolloutBenchResult) string {
		if !r.regime.throttle {
			return "unthrottled (--no-throttle)"
		}
		s := r.regime.tier + ", 1 unit"
		if len(r.regime.quotas) > 0 {
			s += ", --quota " + strings.Join(r.regime.quotas, " --quota ")
		}
		return s
	})
	row("rollout --rate", func(r rolloutBenchResult) string {
		if r.regime.rate == 0 {
			return "none"
		}
		return fmtRate(r.regime.rate)
	})
	row("Temporal dev server", func(r rolloutBenchResult) string {
		if r.regime.server == serverMemory {
			return "in memory"
		}
		return "SQLite file (as `make up`)"
	})
	row("result", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%s: %d updated, %d failed", r.progress.State, r.progress.Succeeded, r.progress.Failed)
	})
	row("**rollout time** (start → completed)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("**%s** (%d waves)", fmtSecs(r.wall), r.progress.Waves)
	})
	row("**devices per minute**", func(r rolloutBenchResult) string { return fmt.Sprintf("**%.0f**", r.perMinute()) })
	row(fmt.Sprintf("**Temporal ceiling**: trivial stand-ins of the sharded shape (a parent, children of %d devices, 2 no-op activities a device, the concurrency shared among the children, same continue-as-new), same dev server", workflows.ShardSize), func(r rolloutBenchResult) string {
		return fmt.Sprintf("%s = **%.0f devices/min**", fmtSecs(r.ceiling.wall), r.ceiling.perMinute(r.devices))
	})
	row("**ratio to the ceiling** (rollout pace ÷ ceiling pace)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("**%.0f%%**", r.ceiling.wall.Seconds()/r.wall.Seconds()*100)
	})
	row("quota-bound minimum at the tier (calls ÷ documented limit, largest)", func(r rolloutBenchResult) string {
		q := quotaBound(quotaLines(r.regime.tier, r))
		return fmt.Sprintf("%s = %.0f devices/min (%s at %s: %d ÷ %s)", fmtSecs(r.quotaMin()),
			float64(r.devices)/q.seconds()*60, q.what, r.regime.tier, q.calls, fmtRate(q.rate))
	})
	row("**ratio to the quota-bound minimum** (rollout time ÷ minimum)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("**%.2f×**", r.wall.Seconds()/r.quotaMin().Seconds())
	})
	row("bound that applies: the quota binds when its minimum exceeds the ceiling's time", func(r rolloutBenchResult) string {
		if r.quotaMin() > r.ceiling.wall {
			return "quota"
		}
		return "Temporal"
	})
	row("— the other operations at the tier", func(r rolloutBenchResult) string {
		lines := quotaLines(r.regime.tier, r)
		worst := quotaBound(lines)
		var parts []string
		for _, l := range lines {
			if l.op != worst.op {
				parts = append(parts, fmt.Sprintf("%s %d ÷ %s = %s", l.op, l.calls, fmtRate(l.rate), fmtSecs(time.Duration(l.seconds()*float64(time.Second)))))
			}
		}
		return strings.Join(parts, "; ")
	})
	row("rate-bound minimum (hub calls ÷ --rate)", func(r rolloutBenchResult) string {
		if r.regime.rate == 0 {
			return "—"
		}
		calls := r.methods + r.twinReads + queryPages(r.devices)
		s := float64(calls) / r.regime.rate
		return fmt.Sprintf("%s = %.0f devices/min", fmtSecs(time.Duration(s*float64(time.Second))), float64(r.devices)/s*60)
	})
	row(fmt.Sprintf("concurrency bound: --max-concurrent %d ÷ mean device workflow time", cfg.maxConcurrent), func(r rolloutBenchResult) string {
		if r.meanDeviceDuration <= 0 {
			return "—"
		}
		return fmt.Sprintf("%.0f devices/min (mean %.1f s)", float64(cfg.maxConcurrent)/r.meanDeviceDuration.Minutes(), r.meanDeviceDuration.Seconds())
	})
	row("**hub calls per device** (localhub: methods + service twin reads, + query pages)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("**%.2f** (%d + %d + %d); the rollout counted %d", r.hubCallsPerDevice(), r.methods, r.twinReads,
			queryPages(r.devices), r.progress.HubCalls)
	})
	row("**history events per device** (rollout runs ÷ devices + device workflow)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("**%.1f** = %d ÷ %d (%s) + %.1f (mean of %d)", r.eventsPerDevice(), r.rolloutEvents, r.devices,
			runs(r.rolloutRuns), r.deviceEvents, r.sampled)
	})
	row("history events per device, ceiling", func(r rolloutBenchResult) string {
		c := r.ceiling
		return fmt.Sprintf("%.1f = (%d in %s + %d in %d children) ÷ %d", c.eventsPerDevice(r.devices),
			c.parentEvents, runs(c.runs), c.childEvents, c.children, r.devices)
	})
	row("**device's `completed` → the workflow sees it**, p50 / p95 (lastFirmwareUpdate → WorkflowTaskStarted after FollowStages)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("**%s** (%d devices)", fmtLag(r.completedLag), len(r.completedLag))
	})
	row("— of which the twin poll (→ the read that showed it), p50 / p95", func(r rolloutBenchResult) string {
		return fmtLag(r.pollLag)
	})
	row("largest rollout run input (the state carried by continue-as-new; Temporal refuses payloads over 2 MB)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%.0f KB", float64(r.maxRunInput)/1024)
	})
	row("CPU during the rollout, s: Temporal dev server / worker / localhub / fleet", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%.0f / %.0f / %.0f / %.0f (of %.0f s × %d cores)", r.cpu[procTemporal], r.cpu[procWorker],
			r.cpu[procLocalhub], r.cpu[procFleet], r.wall.Seconds(), runtime.NumCPU())
	})
	row("**RSS, peak** (VmHWM; at the end): **worker** / localhub / simdevice fleet", func(r rolloutBenchResult) string {
		mb := func(k string) string { return fmt.Sprintf("%d MB (%d MB)", r.peak[k]/1024, r.rss[k]/1024) }
		return fmt.Sprintf("**%s** / %s / %s", mb(procWorker), mb(procLocalhub), mb(procFleet))
	})
	row("**429s during the rollout** (localhub throttled, by operation)", func(r rolloutBenchResult) string {
		if len(r.throttled) == 0 {
			return "**0**"
		}
		var parts []string
		for _, op := range hubquota.Ops {
			if c := r.throttled[string(op)]; c > 0 {
				parts = append(parts, fmt.Sprintf("%s %d", op, c))
			}
		}
		return "**" + strings.Join(parts, ", ") + "**"
	})
	row("fleet setup: register, connect (429s meanwhile)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%s (%d)", fmtSecs(r.setup), r.setupThrottled)
	})
	return b.String()
}
