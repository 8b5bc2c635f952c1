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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/benchreport"
	"github.com/dmflow/dmflow/internal/budget"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/sim/fleet"
	"github.com/dmflow/dmflow/workflows"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
)

// TestMeasureRollout measures firmware rollouts of 1,000 and 10,000 simulated devices with short
// stages, in two regimes, each run on a localhub of its own and workers of its own:
//
//   - unbound: localhub at S3, whose quotas lie far above what Temporal allows here, one worker
//     with the hub budget of S3, one rollout over the whole fleet, no --rate, on the shared dev
//     server with a SQLite file (as `make up` runs it). Held to 1,000 devices a minute and to
//     Temporal's ceiling.
//   - quota: localhub at S1, two workers with DMFLOW_HUB_TIER=S1 (the hub budget, shared through
//     the hub's HubBudget workflow, does the pacing), two rollouts started at once over the two
//     halves of the fleet (device-ID ranges), no --rate, on a dev server in memory, whose ceiling
//     lies above S1's pace. Held to the quota-bound minimum, to zero 429s, and to the budget in
//     every second of localhub's per-second counts.
//
// Beside each regime, on the same dev server and before it, Temporal's ceiling: trivial stand-ins
// of the same shape (measure_ceiling_test.go), as many devices split over as many stand-in
// rollouts, on a worker in this process. Which bound a run is held to follows from the
// measurements (benchreport.RolloutRun.QuotaBinds). History events per device are those of all
// the rollouts' runs and all their shards' histories; the completed lag is read from the shards'
// histories (measure_shards_test.go). `make bench-rollout` runs it and writes the table to
// DMFLOW_BENCH_OUT and the figures beside it (.json).
//
// Settings (environment): DMFLOW_BENCH_ROLLOUT_SIZES (default "1000,10000", the devices of all a
// regime's rollouts), DMFLOW_BENCH_ROLLOUT_REGIMES (default "unbound,quota"; "cluster" is the
// unbound regime on the Temporal server on PostgreSQL of `make up-cluster`, brought up for the
// run), and per regime, REGIME being UNBOUND, QUOTA or CLUSTER: DMFLOW_BENCH_ROLLOUT_REGIME_TIER (S1, S2, S3, or "off" for an
// unthrottled localhub and workers without a hub budget, whose quota-bound minimum is computed for
// S1; default S3 and S1), _QUOTAS (localhub --quota overrides, comma-separated, also given to the
// workers' budget for the operations it covers; "none" for none, the default), _RATE (each
// rollout's --rate in hub calls per second, 0 for none, the default), _SERVER ("sqlite",
// "memory" or "cluster"; default sqlite, memory and cluster), _WORKERS (worker processes; default 1 and 2) and
// _ROLLOUTS (rollouts at once, each over its part of the fleet; default 1 and 2). For all:
// DMFLOW_BENCH_ROLLOUT_CONCURRENT (each rollout's --max-concurrent, default 200),
// DMFLOW_BENCH_ROLLOUT_STAGE (the devices' stage duration, default 1s), DMFLOW_BENCH_ROLLOUT_CANARY
// and _GROWTH (default 10 and 2), DMFLOW_BENCH_ROLLOUT_SAMPLE (how many devices' completed lag is
// read from the shards' histories, default 1000), DMFLOW_BENCH_ROLLOUT_CEILING (the no-op
// activities a device of Temporal's ceiling runs: 1, the default and issue 16's yardstick, or 2,
// as many as a shard's device; "off" measures no ceiling, as `make bench-scale` does).
// DMFLOW_BENCH_FLEET_PER_ADDRESS (default 20000, also the baseline's): a fleet larger than that
// dials several loopback addresses of localhub, 127.0.0.1, 127.0.0.2, …, that many devices each,
// since one source address has only some 28,000 ephemeral ports towards one address and port.
func TestMeasureRollout(t *testing.T) {
	cfg := rolloutBenchConfigFromEnv(t)
	var results []rolloutBenchResult
	for _, n := range cfg.sizes {
		for _, rg := range cfg.regimes {
			t.Run(fmt.Sprintf("%d-%s", n, rg.name), func(t *testing.T) {
				r := measureRolloutOf(t, cfg, rg, n)
				results = append(results, r)
				t.Logf("%d devices, %s: rollouts %s (%.0f devices/min), ceiling %s (%.0f devices/min), quota-bound minimum %s",
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
	// ceiling is how many no-op activities a device of Temporal's ceiling runs; 0 measures none.
	ceiling int
}

// ceilingWhat describes a ceiling device of n no-op activities.
func ceilingWhat(n int) string {
	switch n {
	case 0:
		return "no-op activities"
	case 1:
		return "1 no-op activity"
	}
	return fmt.Sprintf("%d no-op activities", n)
}

// benchRegime is a configuration of hub, workers, rollouts and Temporal server that every size
// runs in.
type benchRegime struct {
	name     string
	tier     string   // S1, S2, S3: localhub's, the workers' budget's and the quota-bound minimum's
	throttle bool     // false: localhub --no-throttle and no hub budget (the minimum is then computed for S1)
	quotas   []string // localhub --quota overrides, and the budget's of the operations it covers
	rate     float64  // each rollout's --rate; 0 for none
	server   string   // serverSQLite, serverMemory or serverCluster
	workers  int      // worker processes
	rollouts int      // rollouts at once, each over its part of the fleet
}

// The Temporal dev servers a regime can run on.
const (
	// serverSQLite is the dev server TestMain starts, with a database file, as `make up` runs it.
	serverSQLite = "sqlite"
	// serverMemory is a dev server of the run's own without a database file: several times the
	// SQLite server's ceiling on this kind of machine, which persists every event to one file.
	serverMemory = "memory"
	// serverCluster is the Temporal server on PostgreSQL that `make up-cluster` runs, brought up
	// for the run (upCluster): the production shape.
	serverCluster = "cluster"
)

func defaultRegime(name string) (benchRegime, bool) {
	switch name {
	case "unbound":
		return benchRegime{name: name, tier: hubquota.S3, throttle: true, server: serverSQLite, workers: 1, rollouts: 1}, true
	case "quota":
		return benchRegime{name: name, tier: hubquota.S1, throttle: true, server: serverMemory, workers: 2, rollouts: 2}, true
	case "cluster":
		// The unbound regime on the production shape, to set beside it.
		return benchRegime{name: name, tier: hubquota.S3, throttle: true, server: serverCluster, workers: 1, rollouts: 1}, true
	}
	return benchRegime{}, false
}

// rolloutBenchConfigFromEnv reads the benchmark's settings.
func rolloutBenchConfigFromEnv(t *testing.T) rolloutBenchConfig {
	t.Helper()
	cfg := rolloutSettingsFromEnv(t)
	for _, s := range strings.Split(envOr("DMFLOW_BENCH_ROLLOUT_SIZES", "1000,10000"), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			t.Fatalf("DMFLOW_BENCH_ROLLOUT_SIZES: %q is not a device count of 1 or more", s)
		}
		cfg.sizes = append(cfg.sizes, n)
	}
	switch c := strings.ToLower(envOr("DMFLOW_BENCH_ROLLOUT_CEILING", "1")); c {
	case "off":
	case "1", "2":
		cfg.ceiling = int(c[0] - '0')
	default:
		t.Fatalf("DMFLOW_BENCH_ROLLOUT_CEILING=%q: give 1 or 2 (no-op activities a device) or off", c)
	}
	for _, name := range strings.Split(envOr("DMFLOW_BENCH_ROLLOUT_REGIMES", "unbound,quota"), ",") {
		cfg.regimes = append(cfg.regimes, regimeFromEnv(t, strings.ToLower(strings.TrimSpace(name))))
	}
	for _, n := range cfg.sizes {
		for _, rg := range cfg.regimes {
			if n < rg.rollouts {
				t.Fatalf("%d devices cannot be split over the %s regime's %d rollouts", n, rg.name, rg.rollouts)
			}
		}
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
		t.Fatalf("DMFLOW_BENCH_ROLLOUT_REGIMES: no regime %q: give unbound, quota or cluster, comma-separated", name)
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
	if q := get("QUOTAS", "none"); q != "none" {
		for _, item := range strings.Split(q, ",") {
			if _, _, err := hubquota.Parse(item); err != nil {
				t.Fatalf("%sQUOTAS: %v", key, err)
			}
			rg.quotas = append(rg.quotas, strings.TrimSpace(item))
		}
	}
	var err error
	if rg.rate, err = strconv.ParseFloat(get("RATE", "0"), 64); err != nil || rg.rate < 0 || math.IsInf(rg.rate, 0) {
		t.Fatalf("%sRATE=%q: give hub calls per second, or 0 for no --rate", key, get("RATE", "0"))
	}
	rg.server = strings.ToLower(get("SERVER", rg.server))
	if rg.server != serverSQLite && rg.server != serverMemory && rg.server != serverCluster {
		t.Fatalf("%sSERVER=%q: give %s, %s or %s", key, rg.server, serverSQLite, serverMemory, serverCluster)
	}
	count := func(suffix string, def int) int {
		n, err := strconv.Atoi(get(suffix, strconv.Itoa(def)))
		if err != nil || n < 1 {
			t.Fatalf("%s%s=%q: give a count of 1 or more", key, suffix, get(suffix, strconv.Itoa(def)))
		}
		return n
	}
	rg.workers, rg.rollouts = count("WORKERS", rg.workers), count("ROLLOUTS", rg.rollouts)
	return rg
}

// budgetOps are the operations a worker's hub budget covers (worker/config.go).
var budgetOps = []hubquota.Op{hubquota.Methods, hubquota.TwinReads, hubquota.TwinUpdates, hubquota.Queries}

// budget is the regime's hub budget in calls per second by operation, as its workers resolve it:
// the tier's documented rates (localhub's throttles) with localhub's overrides of the operations
// the budget covers; nil for an unthrottled hub.
func (rg benchRegime) budget() map[hubquota.Op]float64 {
	if !rg.throttle {
		return nil
	}
	out := map[hubquota.Op]float64{}
	for _, op := range budgetOps {
		q, _ := hubquota.Documented(rg.tier, 1, op) // the tier was checked when read
		out[op] = q.Rate
	}
	for _, op := range budgetOps {
		for _, item := range rg.quotas {
			if o, r, err := hubquota.Parse(item); err == nil && o == op {
				if math.IsInf(r, 1) {
					delete(out, op)
				} else {
					out[op] = r
				}
			}
		}
	}
	return out
}

// budgetOverrides are localhub's overrides of the operations the hub budget covers.
func (rg benchRegime) budgetOverrides() []string {
	var out []string
	for _, item := range rg.quotas {
		if op, _, err := hubquota.Parse(item); err == nil && slices.Contains(budgetOps, op) {
			out = append(out, item)
		}
	}
	return out
}

// workerBudgetEnv is the environment that gives the regime's workers its hub budget.
func (rg benchRegime) workerBudgetEnv() []string {
	if !rg.throttle {
		return []string{"DMFLOW_HUB_BUDGET=off"}
	}
	env := []string{"DMFLOW_HUB_TIER=" + rg.tier, "DMFLOW_HUB_UNITS=1"}
	if o := rg.budgetOverrides(); len(o) > 0 {
		env = append(env, "DMFLOW_HUB_BUDGET="+strings.Join(o, ","))
	}
	return env
}

// budgetLabel describes the workers' hub budget.
func (rg benchRegime) budgetLabel() string {
	if !rg.throttle {
		return "off"
	}
	s := rg.tier
	if o := rg.budgetOverrides(); len(o) > 0 {
		s += ", " + strings.Join(o, ",")
	}
	return s
}

// rolloutBenchResult is what one size measured in one regime.
type rolloutBenchResult struct {
	regime  benchRegime
	devices int   // of all the rollouts
	parts   []int // devices of each rollout
	setup   time.Duration

	wall     time.Duration   // the first rollout's start → the last one's end
	walls    []time.Duration // each rollout's, from the same start
	progress []workflows.RolloutProgress

	// methods and twinReads: delivered / answered by localhub during the rollouts; queries the
	// query pages it admitted (its per-second counts).
	methods, twinReads, queries int
	throttled                   map[string]int // 429s (and MQTT equivalents) during the rollouts, by operation
	setupThrottled              int            // while the fleet connected
	admitted                    []benchreport.Admitted
	// shares is the hub budget's ledger, sampled while every rollout ran (the last such sample).
	shares []budget.KeyView

	rolloutRuns, rolloutEvents int // all runs of all the rollouts
	maxRunEvents, maxRunInput  int // the most events, and bytes of input, of one rollout run
	shards                     shardHistories

	// rss and peak (VmHWM) in KB, by process: the workers (procWorker + " 1", …), localhub, the
	// simdevice fleet.
	rss, peak map[string]int64
	cpu       map[string]float64 // CPU seconds during the rollouts, by process

	ceiling ceilingResult
	// standIns is set when localhub played the devices (standInFleet).
	standIns bool
	// ceilingActivities is what a device of the ceiling ran (0: no ceiling measured).
	ceilingActivities int
}

// Process names, for CPU and memory.
const (
	procTemporal = "Temporal dev server"
	procPostgres = "PostgreSQL"
	procWorker   = "worker"
	procLocalhub = "localhub"
	procFleet    = "simdevice fleet"
)

// workerProc names worker i (from 1).
func workerProc(i int) string { return procWorker + " " + strconv.Itoa(i) }

func (r rolloutBenchResult) perMinute() float64 { return float64(r.devices) / r.wall.Minutes() }

// succeeded and failed sum the rollouts' devices.
func (r rolloutBenchResult) succeeded() int {
	n := 0
	for _, p := range r.progress {
		n += p.Succeeded
	}
	return n
}

func (r rolloutBenchResult) failed() int {
	n := 0
	for _, p := range r.progress {
		n += p.Failed
	}
	return n
}

// workerPeak is the largest peak RSS of the workers, in KB.
func (r rolloutBenchResult) workerPeak() int64 {
	var m int64
	for i := 1; i <= r.regime.workers; i++ {
		m = max(m, r.peak[workerProc(i)])
	}
	return m
}

// quotaMin is the quota-bound minimum of the rollouts at their regime's tier.
func (r rolloutBenchResult) quotaMin() time.Duration {
	return time.Duration(quotaBound(quotaLines(r.regime.tier, r)).seconds() * float64(time.Second))
}

// hubCalls counts localhub's methods, service twin reads and query pages.
func (r rolloutBenchResult) hubCalls() int { return r.methods + r.twinReads + r.queries }

func (r rolloutBenchResult) hubCallsPerDevice() float64 {
	return float64(r.hubCalls()) / float64(r.devices)
}

// eventsPerDevice is the rollouts' runs' and their shards' events shared out over the devices.
func (r rolloutBenchResult) eventsPerDevice() float64 {
	return float64(r.rolloutEvents+r.shards.events) / float64(r.devices)
}

func (r rolloutBenchResult) shardEventsPerDevice() float64 {
	return float64(r.shards.events) / float64(r.devices)
}

func (r rolloutBenchResult) figures() benchreport.RolloutRun {
	tier := r.regime.tier
	if !r.regime.throttle {
		tier = "off"
	}
	q := quotaBound(quotaLines(r.regime.tier, r))
	return benchreport.RolloutRun{
		Regime: r.regime.name, Devices: r.devices, Tier: tier, QuotaTier: r.regime.tier,
		Rate: r.regime.rate, Budget: r.regime.budgetLabel(), Workers: r.regime.workers, Rollouts: r.regime.rollouts,
		Server: r.regime.server, Succeeded: r.succeeded(), Failed: r.failed(),
		Seconds: r.wall.Seconds(), CeilingSeconds: r.ceiling.wall.Seconds(),
		QuotaMinSeconds: q.seconds(), QuotaOp: string(q.op),
		HubCallsPerDevice: r.hubCallsPerDevice(), EventsPerDevice: r.eventsPerDevice(), ShardEvents: r.shardEventsPerDevice(),
		CeilingEventsPerDevice: r.ceiling.eventsPerDevice(r.devices),
		CeilingActivities:      r.ceilingActivities,
		StandIns:               r.standIns,
		RolloutRuns:            r.rolloutRuns, Shards: r.shards.shards,
		MaxRunEvents: r.maxRunEvents, MaxShardEvents: r.shards.maxEvents,
		MaxRunInputBytes: r.maxRunInput, MaxShardInputBytes: r.shards.maxInput,
		Throttled:       sumCounts(r.throttled),
		Admitted:        r.admitted,
		CompletedLagP50: percentile(r.shards.lag, 50).Seconds(),
		CompletedLagP95: percentile(r.shards.lag, 95).Seconds(),
		Sampled:         len(r.shards.lag),
		WorkerPeakRSSKB: r.workerPeak(), LocalhubPeakRSSKB: r.peak[procLocalhub], FleetPeakRSSKB: r.peak[procFleet],
	}
}

// devicesPerRun is the rollout's continue-as-new cadence, which the ceiling's parent copies.
const devicesPerRun = workflows.DefaultDevicesPerRun

// benchServer is the Temporal server a regime runs on.
type benchServer struct {
	addr string
	tc   client.Client
	pid  int
	// db is PostgreSQL's postmaster on the cluster, 0 elsewhere.
	db int
}

// serverFor returns the shared dev server, or starts one in memory for this (sub)test.
func serverFor(t *testing.T, kind string) benchServer {
	t.Helper()
	switch kind {
	case serverSQLite:
		return benchServer{addr: env.temporalAddr, tc: temporalClient(t), pid: serverPID(t, env.temporalAddr)}
	case serverCluster:
		cs := upCluster(t)
		return benchServer{addr: cs.addr, tc: temporalClientAt(t, cs.addr), pid: cs.pid(t, "temporal-server"), db: cs.pid(t, "postgresql")}
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

// fleetPrefix names the benchmark's simulated devices: rb-00001 … rb-10000.
const fleetPrefix = "rb-"

func measureRolloutOf(t *testing.T, cfg rolloutBenchConfig, rg benchRegime, n int) rolloutBenchResult {
	res := rolloutBenchResult{regime: rg, devices: n, parts: splitCount(n, rg.rollouts), ceilingActivities: cfg.ceiling}
	srv := serverFor(t, rg.server)
	tc := srv.tc

	// The ceiling first, while nothing else runs: what Temporal alone allows on the server the
	// rollouts use, in as many stand-in rollouts.
	if cfg.ceiling > 0 {
		res.ceiling = measureCeiling(t, tc, cfg, n, rg.rollouts)
		t.Logf("ceiling (%s dev server): %d trivial devices in %d stand-in rollouts, %d children, in %s",
			rg.server, n, rg.rollouts, res.ceiling.children, res.ceiling.wall.Round(time.Second))
	}

	res.standIns = standInFleet(t, n)
	lh, brokerArgs := startBenchHub(t, rg, n, res.standIns, cfg.stage)
	setupStart := time.Now()
	pids := map[string]int{procTemporal: srv.pid, procLocalhub: lh.proc.cmd.Process.Pid}
	if srv.db != 0 {
		pids[procPostgres] = srv.db
	}
	if res.standIns {
		registerStandIns(t, lh, n)
		t.Logf("%d stand-in devices registered in %s: localhub plays them", n, time.Since(setupStart).Round(time.Second))
	} else {
		fl := startProc(t, "bench-fleet", lh.env(),
			filepath.Join(env.bin, "simdevice"), append([]string{"fleet", "--count", strconv.Itoa(n), "--prefix", fleetPrefix,
				"--stage-duration", cfg.stage.String(), "--summary-interval", "30s",
				// 32 at a time keeps the standBy reports of connecting devices within S1's 50 twin
				// updates/s plus its one second of traffic shaping.
				"--connect-concurrency", "32"}, brokerArgs...)...)
		if err := fl.waitFor(`msg="fleet started"`, 15*time.Minute); err != nil {
			t.Fatal(err)
		}
		pids[procFleet] = fl.cmd.Process.Pid
		t.Logf("fleet of %d connected in %s", n, time.Since(setupStart).Round(time.Second))
	}
	res.setup = time.Since(setupStart)
	waitHubQuiet(t, lh, 2*time.Minute)
	before := lh.stats(t)
	res.setupThrottled = sumCounts(before.Throttled)

	queue := "bench-rollout-" + strconv.Itoa(n) + "-" + rg.name
	workerEnv := withTemporal(lh.env(append([]string{"DMFLOW_TASK_QUEUE=" + queue}, rg.workerBudgetEnv()...)...), srv.addr)
	for i := 1; i <= rg.workers; i++ {
		w := startProc(t, "bench-worker-"+strconv.Itoa(i), workerEnv, filepath.Join(env.bin, "worker"))
		if err := w.waitFor("worker ready", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		pids[workerProc(i)] = w.cmd.Process.Pid
	}
	cpuBefore := map[string]float64{}
	for k, pid := range pids {
		cpuBefore[k] = cpuOf(t, k, pid)
	}

	stamp := time.Now().UTC().Format("150405")
	queries := partQueries(fleetPrefix, res.parts)
	names := make([]string, rg.rollouts)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Hour)
	defer cancel()
	start := time.Now()
	admitted := newAdmittedSeconds(lh, start)
	var (
		started   []client.WorkflowRun
		firstRuns []string
	)
	for i := range names {
		names[i] = fmt.Sprintf("bench-%d-%s-%s", n, rg.name, stamp)
		if rg.rollouts > 1 {
			names[i] += "-" + strconv.Itoa(i+1)
		}
		run, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID: workflows.RolloutWorkflowID(names[i]), TaskQueue: queue,
		}, workflows.Rollout, workflows.RolloutInput{
			Name:          names[i],
			Operation:     workflows.OperationFirmware,
			Query:         queries[i],
			Firmware:      &workflows.RolloutFirmware{PackageURI: "https://fw.example/bench-2.0.0.bin", Version: "2.0.0"},
			Canary:        cfg.canary,
			Growth:        cfg.growth,
			MaxConcurrent: cfg.maxConcurrent,
			Rate:          rg.rate,
			MaxFailures:   "1%",
		})
		if err != nil {
			t.Fatal(err)
		}
		started = append(started, run)
		// Get follows the continued runs and GetRunID then names the last one: keep the first.
		firstRuns = append(firstRuns, run.GetRunID())
	}
	res.walls = make([]time.Duration, len(started))
	res.progress = make([]workflows.RolloutProgress, len(started))
	errs := make([]error, len(started))
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		ended int
	)
	for i, run := range started {
		wg.Go(func() {
			errs[i] = run.Get(ctx, &res.progress[i])
			res.walls[i] = time.Since(start)
			mu.Lock()
			ended++
			mu.Unlock()
		})
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	// Every 30 s: localhub's per-second counts (it keeps ten minutes of them), the progress, and
	// the budget's shares while every rollout runs.
	tick := time.NewTicker(30 * time.Second)
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-tick.C:
			admitted.read(t)
			logRolloutProgress(t, tc, names, start)
			mu.Lock()
			all := ended == 0
			mu.Unlock()
			if rg.throttle && all {
				if keys := budgetShares(t, tc, lh); keys != nil {
					res.shares = keys
					t.Logf("hub budget: %s", fmtShares(keys))
				}
			}
		}
	}
	tick.Stop()
	res.wall = slices.Max(res.walls)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("rollout %s: %v", names[i], err)
		}
	}
	for i, p := range res.progress {
		if p.State != workflows.RolloutCompleted || p.Succeeded != res.parts[i] {
			t.Errorf("rollout %s: %s, %d of %d succeeded, %d failed: %s", names[i], p.State, p.Succeeded, res.parts[i], p.Failed, p.Reason)
		}
	}

	res.cpu = map[string]float64{}
	for k, pid := range pids {
		res.cpu[k] = cpuOf(t, k, pid) - cpuBefore[k]
	}
	res.rss, res.peak = map[string]int64{}, map[string]int64{}
	for k, pid := range pids {
		// The shared dev server's memory holds every earlier test's too; PostgreSQL's
		// processes share their buffers, which a sum of RSS would count many times.
		if (k != procTemporal || rg.server != serverSQLite) && k != procPostgres {
			res.rss[k], res.peak[k] = procMemKB(t, pid)
		}
	}
	admitted.read(t)
	after := lh.stats(t)
	res.methods = sumNested(after.MethodInvocations) - sumNested(before.MethodInvocations)
	res.twinReads = sumCounts(after.ServiceTwinReads) - sumCounts(before.ServiceTwinReads)
	res.queries = admitted.total(hubquota.Queries)
	res.admitted = admitted.figures(rg.budget())
	res.throttled = map[string]int{}
	for op, c := range after.Throttled {
		if d := c - before.Throttled[op]; d > 0 {
			res.throttled[op] = d
		}
	}

	for i, name := range names {
		// The chain follows the continued runs from the first.
		chain, events := countRunChainSizes(t, tc, workflows.RolloutWorkflowID(name), firstRuns[i])
		res.rolloutRuns += chain.runs
		res.rolloutEvents += events
		res.maxRunEvents = max(res.maxRunEvents, chain.maxEvents)
		res.maxRunInput = max(res.maxRunInput, chain.maxInput)
		refs := rolloutShards(t, tc, name)
		res.shards.add(readShardHistories(t, tc, refs, res.parts[i], max(1, cfg.sample*res.parts[i]/n)))
	}
	return res
}

// partQueries are the target queries of rollouts over the parts of a fleet named by
// fleet.DeviceID (parts: the devices of each, in index order): device-ID ranges, which sort as
// the indexes do (the IDs are zero-padded), or the whole fleet for one part.
func partQueries(prefix string, parts []int) []string {
	const all = "SELECT * FROM devices"
	if len(parts) == 1 {
		return []string{all}
	}
	n := 0
	for _, p := range parts {
		n += p
	}
	var out []string
	lo := 0 // devices in the parts before
	for i, size := range parts {
		var conds []string
		if i > 0 {
			conds = append(conds, fmt.Sprintf("deviceId > '%s'", fleet.DeviceID(prefix, lo, n)))
		}
		if i < len(parts)-1 {
			conds = append(conds, fmt.Sprintf("deviceId <= '%s'", fleet.DeviceID(prefix, lo+size, n)))
		}
		out = append(out, all+" WHERE "+strings.Join(conds, " AND "))
		lo += size
	}
	return out
}

// waitHubQuiet waits until the hub has admitted no twin reads or updates for two whole seconds,
// so that the fleet's start-up traffic (a twin read and a report a device) is over before the
// rollouts' seconds are counted. After timeout it goes on, and says so.
func waitHubQuiet(t *testing.T, hub ownHub, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p := hub.perSecondSince(t, time.Now().Add(-2*time.Second).Truncate(time.Second))
		if p[string(hubquota.TwinReads)].Total+p[string(hubquota.TwinUpdates)].Total == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("the fleet's start-up traffic did not end within %s: the per-second counts include some of it", timeout)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// budgetShares reads the hub budget's ledger: each key's rate and the workers' shares of it; nil
// when it cannot be read now.
func budgetShares(t *testing.T, tc client.Client, hub ownHub) []budget.KeyView {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := tc.QueryWorkflow(ctx, workflows.HubBudgetWorkflowID(hubHost(t, hub)), "", workflows.QueryBudget)
	var keys []budget.KeyView
	if err == nil {
		err = v.Get(&keys)
	}
	if err != nil {
		t.Logf("hub budget: %v", err)
		return nil
	}
	return keys
}

// fmtShares formats the budget's keys: "methods 40/s: 20 + 20".
func fmtShares(keys []budget.KeyView) string {
	var parts []string
	for _, k := range keys {
		holders := make([]string, 0, len(k.Shares))
		for h := range k.Shares {
			holders = append(holders, h)
		}
		slices.Sort(holders)
		shares := make([]string, len(holders))
		for i, h := range holders {
			shares[i] = strconv.FormatFloat(math.Round(k.Shares[h]*100)/100, 'f', -1, 64)
		}
		parts = append(parts, fmt.Sprintf("%s %s: %s", k.Key, fmtRate(k.Rate), strings.Join(shares, " + ")))
	}
	if len(parts) == 0 {
		return "no live lease"
	}
	return strings.Join(parts, "; ")
}

// logRolloutProgress logs each rollout's progress, so that a long run shows it is alive.
func logRolloutProgress(t *testing.T, tc client.Client, names []string, start time.Time) {
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		v, err := tc.QueryWorkflow(ctx, workflows.RolloutWorkflowID(name), "", workflows.QueryProgress)
		var p workflows.RolloutProgress
		if err == nil {
			err = v.Get(&p)
		}
		cancel()
		if err != nil {
			t.Logf("+%s %s progress: %v", time.Since(start).Round(time.Second), name, err)
			continue
		}
		t.Logf("+%s %s wave %d/%d: %d succeeded, %d failed, %d running, %d pending, %d hub calls",
			time.Since(start).Round(time.Second), name, p.Wave, p.Waves, p.Succeeded, p.Failed, p.Running, p.Pending, p.HubCalls)
	}
}

// runChain describes the runs of a workflow that continued as new.
type runChain struct {
	runs      int
	maxInput  int // bytes of the largest run input
	maxEvents int // the most events of one run
}

// countRunChainSizes is countRunChain that also measures each run's input and events.
func countRunChainSizes(t *testing.T, tc client.Client, id, runID string) (runChain, int) {
	t.Helper()
	var c runChain
	events := 0
	for first := true; first || runID != ""; first = false {
		c.runs++
		next := ""
		runEvents := 0
		it := tc.GetWorkflowHistory(context.Background(), id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				t.Fatalf("history of %s run %s: %v", id, runID, err)
			}
			events++
			runEvents++
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
		c.maxEvents = max(c.maxEvents, runEvents)
		runID = next
	}
	return c, events
}

// countRunChain counts the runs of a workflow that continued as new, from its first run (an empty
// runID: the latest run, for a workflow that did not continue as new), and the events of all of
// them.
func countRunChain(t *testing.T, tc client.Client, id, runID string) (runs, events int) {
	t.Helper()
	c, events := countRunChainSizes(t, tc, id, runID)
	return c.runs, events
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

// startBenchHub starts a localhub of the benchmark's own at the regime's throttles for a fleet of
// n devices, and returns it with the fleet's --broker flag: none when one address of localhub
// serves the fleet, else localhub listens on 0.0.0.0 and the flag spreads the fleet over
// 127.0.0.1, 127.0.0.2, … (fleet.LoopbackBrokers).
func startBenchHub(t *testing.T, rg benchRegime, n int, standIns bool, stage time.Duration) (ownHub, []string) {
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
	if standIns {
		// localhub plays the devices: no connections, no fleet, no addresses to spread over.
		return startOwnHub(t, "bench-localhub", append(args, "--stand-ins", fleetPrefix, "--stand-in-stage", stage.String())...), nil
	}
	perAddress := fleetPerAddress(t)
	if n <= perAddress {
		return startOwnHub(t, "bench-localhub", args...), nil
	}
	// On 0.0.0.0 localhub's MQTT port is open to the network too for the benchmark's length;
	// devices still need their keys.
	lh := startOwnHubOn(t, "bench-localhub", "0.0.0.0", args...)
	brokers, err := fleet.LoopbackBrokers(lh.mqtt, n, perAddress)
	if err != nil {
		t.Fatalf("DMFLOW_BENCH_FLEET_PER_ADDRESS=%d: %v", perAddress, err)
	}
	t.Logf("fleet of %d spread over %d addresses of localhub, %d devices or fewer each", n, len(brokers), (n+len(brokers)-1)/len(brokers))
	return lh, []string{"--broker", strings.Join(brokers, ",")}
}

// standInFleet reports whether the benchmark's n devices are stand-ins that localhub plays
// (internal/sim/hub/standin.go) rather than a simdevice fleet: DMFLOW_BENCH_FLEET_STAND_INS on,
// off, or auto (the default), which takes stand-ins when n connections would not fit the
// open-files limit of one process (localhub holds every device's connection, the fleet as many).
func standInFleet(t *testing.T, n int) bool {
	t.Helper()
	switch v := strings.ToLower(envOr("DMFLOW_BENCH_FLEET_STAND_INS", "auto")); v {
	case "on":
		return true
	case "off":
		return false
	case "auto":
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatalf("open-files limit: %v", err)
		}
		// Room for the process's own files, the HTTPS clients and TIME_WAIT reconnects.
		return uint64(n)+5000 > lim.Max
	default:
		t.Fatalf("DMFLOW_BENCH_FLEET_STAND_INS=%q: give on, off or auto", v)
		return false
	}
}

// registerStandIns registers the benchmark's n devices in localhub, as the fleet names them, for
// localhub to play.
func registerStandIns(t *testing.T, lh ownHub, n int) {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fleet.DeviceID(fleetPrefix, i+1, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if _, err := fleet.Register(ctx, serviceClientOf(t, lh.cs, lh.caFile), ids, 4, nil); err != nil {
		t.Fatalf("registering %d stand-in devices: %v", n, err)
	}
}

// defaultFleetPerAddress is how many devices of a benchmark's fleet dial one address of localhub
// by default: all dial from 127.0.0.1, and Linux gives one source address 28,232 ephemeral ports
// towards one address and port (net.ipv4.ip_local_port_range 32768–60999); 20,000 leaves room
// for flapping devices' reconnects while their old connections linger in TIME_WAIT.
const defaultFleetPerAddress = 20000

// fleetPerAddress reads DMFLOW_BENCH_FLEET_PER_ADDRESS, the devices a benchmark's fleet puts
// on one address of localhub.
func fleetPerAddress(t *testing.T) int {
	t.Helper()
	v := envOr("DMFLOW_BENCH_FLEET_PER_ADDRESS", strconv.Itoa(defaultFleetPerAddress))
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("DMFLOW_BENCH_FLEET_PER_ADDRESS=%q: give a device count of 1 or more, e.g. %d (below the 28,232 ephemeral ports one source address has towards one address)", v, defaultFleetPerAddress)
	}
	return n
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

// cpuOf is the CPU seconds of the benchmark's process name: PostgreSQL's are its postmaster's and
// every backend's (each connection is a process of its own).
func cpuOf(t *testing.T, name string, pid int) float64 {
	t.Helper()
	if name != procPostgres {
		return procCPUSeconds(t, pid)
	}
	sum := procCPUSeconds(t, pid)
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 12 && f[1] == strconv.Itoa(pid) {
			u, _ := strconv.ParseFloat(f[11], 64)
			s, _ := strconv.ParseFloat(f[12], 64)
			sum += (u + s) / 100
		}
	}
	return sum
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
	return []quotaLine{
		{hubquota.Methods, "direct methods", r.methods, rate(hubquota.Methods)},
		{hubquota.TwinReads, "service twin reads", r.twinReads, rate(hubquota.TwinReads)},
		{hubquota.TwinUpdates, "device twin updates (3 reported patches per update)", deviceReportsPerUpdate * r.succeeded(), rate(hubquota.TwinUpdates)},
		{hubquota.Queries, "query pages (1,000 twins each)", r.queries, rate(hubquota.Queries)},
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
	fmt.Fprintf(&b, "Firmware rollouts: stages %s; each rollout --max-concurrent %d, --canary %d, --growth %g, continuing as new every %d devices; shards of up to %d devices; the completed lag of up to %d devices per column, from the shards' histories.\n\n",
		cfg.stage, cfg.maxConcurrent, cfg.canary, cfg.growth, devicesPerRun, workflows.ShardSize, cfg.sample)
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
	secs := func(s float64) string { return fmtSecs(time.Duration(s * float64(time.Second))) }
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
	row("devices", func(r rolloutBenchResult) string {
		if r.standIns {
			return "stand-ins played by localhub (`--stand-ins`: no connections, no device processes; its reports metered as the devices' twin updates)"
		}
		return "a simdevice fleet, one MQTT connection each"
	})
	row("workers; their hub budget (DMFLOW_HUB_TIER, DMFLOW_HUB_BUDGET)", func(r rolloutBenchResult) string {
		if !r.regime.throttle {
			return fmt.Sprintf("%d; none (DMFLOW_HUB_BUDGET=off)", r.regime.workers)
		}
		return fmt.Sprintf("%d; %s's documented rates, 1 unit", r.regime.workers, r.regime.budgetLabel())
	})
	row("rollouts at once", func(r rolloutBenchResult) string {
		if len(r.parts) == 1 {
			return "1, over the whole fleet"
		}
		parts := make([]string, len(r.parts))
		for i, p := range r.parts {
			parts[i] = benchreport.Count(p)
		}
		return fmt.Sprintf("%d, over device-ID ranges of %s", len(r.parts), strings.Join(parts, " + "))
	})
	row("rollout --rate", func(r rolloutBenchResult) string {
		if r.regime.rate == 0 {
			return "none"
		}
		return fmtRate(r.regime.rate) + " each"
	})
	// The row keeps its name (reports merge tables by row); a cluster is named in the value.
	row("Temporal dev server", func(r rolloutBenchResult) string {
		switch r.regime.server {
		case serverMemory:
			return "in memory"
		case serverCluster:
			return "none: the Temporal server on PostgreSQL (as `make up-cluster`)"
		}
		return "SQLite file (as `make up`)"
	})
	row("result", func(r rolloutBenchResult) string {
		parts := make([]string, len(r.progress))
		for i, p := range r.progress {
			parts[i] = fmt.Sprintf("%s: %d updated, %d failed", p.State, p.Succeeded, p.Failed)
		}
		return strings.Join(parts, "; ")
	})
	row("**rollout time** (the first start → the last rollout completed)", func(r rolloutBenchResult) string {
		waves := 0
		for _, p := range r.progress {
			waves = max(waves, p.Waves)
		}
		s := fmt.Sprintf("**%s** (%d waves)", fmtSecs(r.wall), waves)
		if len(r.walls) > 1 {
			each := make([]string, len(r.walls))
			for i, w := range r.walls {
				each[i] = fmtSecs(w)
			}
			s += "; each: " + strings.Join(each, ", ")
		}
		return s
	})
	row("**devices per minute**", func(r rolloutBenchResult) string { return fmt.Sprintf("**%.0f**", r.perMinute()) })
	row(fmt.Sprintf("**Temporal ceiling**: trivial stand-ins of the same shape (a parent per rollout, children of %d devices, %s a device, the concurrency shared among the children, same continue-as-new), same dev server", workflows.ShardSize, ceilingWhat(cfg.ceiling)), func(r rolloutBenchResult) string {
		if cfg.ceiling == 0 {
			return "not measured (DMFLOW_BENCH_ROLLOUT_CEILING=off)"
		}
		return fmt.Sprintf("%s = **%.0f devices/min**", fmtSecs(r.ceiling.wall), r.ceiling.perMinute(r.devices))
	})
	row("**ratio to the ceiling** (rollout pace ÷ ceiling pace)", func(r rolloutBenchResult) string {
		if cfg.ceiling == 0 {
			return "—"
		}
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
		if cfg.ceiling == 0 {
			return "— (no ceiling measured)"
		}
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
				parts = append(parts, fmt.Sprintf("%s %d ÷ %s = %s", l.op, l.calls, fmtRate(l.rate), secs(l.seconds())))
			}
		}
		return strings.Join(parts, "; ")
	})
	row("rate-bound minimum (hub calls ÷ the rollouts' --rate)", func(r rolloutBenchResult) string {
		if r.regime.rate == 0 {
			return "—"
		}
		s := float64(r.hubCalls()) / (r.regime.rate * float64(len(r.parts)))
		return fmt.Sprintf("%s = %.0f devices/min", secs(s), float64(r.devices)/s*60)
	})
	row("**admitted by localhub, peak** per second (per minute for queries) **against the hub budget**", func(r rolloutBenchResult) string {
		parts := make([]string, len(r.admitted))
		for i, a := range r.admitted {
			parts[i] = a.String()
			if !a.Within() {
				parts[i] = "**" + parts[i] + "**"
			}
		}
		return strings.Join(parts, "; ")
	})
	row("— admitted on average over the rollout time", func(r rolloutBenchResult) string {
		parts := make([]string, len(r.admitted))
		for i, a := range r.admitted {
			perSecond := float64(a.Total) / r.wall.Seconds()
			if a.WindowSeconds == 60 {
				parts[i] = fmt.Sprintf("%s %.1f/min", a.Op, perSecond*60)
			} else {
				parts[i] = fmt.Sprintf("%s %.1f/s", a.Op, perSecond)
			}
		}
		return strings.Join(parts, "; ")
	})
	row("hub budget's shares by worker (its ledger, the last sample while every rollout ran)", func(r rolloutBenchResult) string {
		if !r.regime.throttle {
			return "—"
		}
		if r.shares == nil {
			return "not sampled"
		}
		return fmtShares(r.shares)
	})
	row(fmt.Sprintf("concurrency bound: --max-concurrent %d × rollouts ÷ mean device time in its shard", cfg.maxConcurrent), func(r rolloutBenchResult) string {
		mean := r.shards.meanDeviceDuration()
		if mean <= 0 {
			return "—"
		}
		return fmt.Sprintf("%.0f devices/min (mean %.1f s)", float64(cfg.maxConcurrent*len(r.parts))/mean.Minutes(), mean.Seconds())
	})
	row("**hub calls per device** (localhub: methods + service twin reads + query pages)", func(r rolloutBenchResult) string {
		counted := 0
		for _, p := range r.progress {
			counted += p.HubCalls
		}
		return fmt.Sprintf("**%.2f** (%d + %d + %d); the rollouts counted %d", r.hubCallsPerDevice(), r.methods, r.twinReads,
			r.queries, counted)
	})
	row("**history events per device** ((the rollouts' runs + their shards) ÷ devices)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("**%.1f** = (%d in %s + %d in %d shards) ÷ %d: the rollouts' share %.2f, the shards' %.1f",
			r.eventsPerDevice(), r.rolloutEvents, runs(r.rolloutRuns), r.shards.events, r.shards.shards, r.devices,
			r.eventsPerDevice()-r.shardEventsPerDevice(), r.shardEventsPerDevice())
	})
	row("history events per device, ceiling", func(r rolloutBenchResult) string {
		c := r.ceiling
		if cfg.ceiling == 0 {
			return "—"
		}
		return fmt.Sprintf("%.1f = (%d in %s + %d in %d children) ÷ %d", c.eventsPerDevice(r.devices),
			c.parentEvents, runs(c.runs), c.childEvents, c.children, r.devices)
	})
	row("most events in one history (Temporal warns at 10,240): a rollout run / a shard", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%d / %d", r.maxRunEvents, r.shards.maxEvents)
	})
	row("**device's `completed` → its shard sees it**, p50 / p95 (lastFirmwareUpdate → the WorkflowTaskStarted after FollowStages' completion)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("**%s** (%d devices)", fmtLag(r.shards.lag), len(r.shards.lag))
	})
	row("— of which the twin poll (→ the read that showed it), p50 / p95", func(r rolloutBenchResult) string {
		return fmtLag(r.shards.poll)
	})
	row("largest input (Temporal warns at 256 KB): a rollout run (its state after a continue-as-new) / a shard (its devices)", func(r rolloutBenchResult) string {
		return fmt.Sprintf("%.0f KB / %.0f KB", float64(r.maxRunInput)/1024, float64(r.shards.maxInput)/1024)
	})
	row("CPU during the rollouts, s: Temporal dev server / workers / localhub / fleet", func(r rolloutBenchResult) string {
		workers := make([]string, r.regime.workers)
		for i := range workers {
			workers[i] = fmt.Sprintf("%.0f", r.cpu[workerProc(i+1)])
		}
		fleetCPU := fmt.Sprintf("%.0f", r.cpu[procFleet])
		if r.standIns {
			fleetCPU = "—"
		}
		server := fmt.Sprintf("%.0f", r.cpu[procTemporal])
		if r.regime.server == serverCluster {
			server = fmt.Sprintf("server %.0f + PostgreSQL %.0f", r.cpu[procTemporal], r.cpu[procPostgres])
		}
		return fmt.Sprintf("%s / %s / %.0f / %s (of %.0f s × %d cores)", server, strings.Join(workers, " + "),
			r.cpu[procLocalhub], fleetCPU, r.wall.Seconds(), runtime.NumCPU())
	})
	row("**RSS, peak** (VmHWM; at the end): **workers** / localhub / simdevice fleet", func(r rolloutBenchResult) string {
		mb := func(k string) string { return fmt.Sprintf("%d MB (%d MB)", r.peak[k]/1024, r.rss[k]/1024) }
		workers := make([]string, r.regime.workers)
		for i := range workers {
			workers[i] = mb(workerProc(i + 1))
		}
		fleetMB := mb(procFleet)
		if r.standIns {
			fleetMB = "—"
		}
		out := fmt.Sprintf("**%s** / %s / %s", strings.Join(workers, " and "), mb(procLocalhub), fleetMB)
		if r.regime.server == serverCluster {
			out += "; Temporal server " + mb(procTemporal)
		}
		return out
	})
	row("**429s during the rollouts** (localhub throttled, by operation)", func(r rolloutBenchResult) string {
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
