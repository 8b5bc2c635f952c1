package main

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/logging"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/internal/temporalconn"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/pflag"
)

// Setting names, quoted in errors so a user knows what to change.
const (
	envHubConnectionString = settings.HubConnectionString
	envHubCAFile           = settings.HubCAFile
	envTaskQueue           = settings.TaskQueue
	envLogFormat           = settings.LogFormat
	envMetricsAddress      = settings.MetricsAddress
	envHubTier             = "DMFLOW_HUB_TIER"
	envHubUnits            = "DMFLOW_HUB_UNITS"
	envHubBudget           = "DMFLOW_HUB_BUDGET"
)

// Config is the worker's whole configuration. The hub connection string lives
// here and only here: workflows never see it, so it never reaches history.
type Config struct {
	Hub       hubconn.Service
	CAFile    string
	TaskQueue string
	LogFormat string
	// MetricsAddress is where /metrics and /healthz are served (host:port); empty serves
	// nothing. Off by default: a worker opens no port it was not asked to, and which interface
	// to expose metrics on is the deployment's choice (make up and the compose file set it).
	MetricsAddress string
	Limits         Limits
	Temporal       temporalconn.Config
	// Budget is the hub's call budget in calls per second by operation, which every worker of
	// the hub shares (internal/budget); empty for none.
	Budget map[hubquota.Op]float64
}

// budgetOps are the operations dmflow's activities call the hub with, and so budget.
var budgetOps = []hubquota.Op{hubquota.Methods, hubquota.TwinReads, hubquota.TwinUpdates, hubquota.Queries}

// BudgetRates is the budget as the leaser takes it.
func (c Config) BudgetRates() map[string]float64 {
	if len(c.Budget) == 0 {
		return nil
	}
	out := make(map[string]float64, len(c.Budget))
	for op, r := range c.Budget {
		out[string(op)] = r
	}
	return out
}

// Limits are the worker's concurrency settings; zero keeps the SDK's default.
type Limits struct {
	// Activities caps the activity executions at once (SDK default 1,000). Each device in
	// flight holds one, mostly waiting on the hub.
	Activities int
	// WorkflowTasks caps the workflow tasks processed at once (SDK default 1,000).
	WorkflowTasks int
	// ActivityPollers and WorkflowPollers are the goroutines that long-poll the task queue
	// (SDK default 2 each, or the namespace's poller autoscaling when it enrolls workers in it).
	ActivityPollers, WorkflowPollers int
	// StickyCacheSize is how many workflow executions the worker keeps in memory between tasks
	// (SDK default 10,000); one evicted is rebuilt by replaying its history at its next task.
	StickyCacheSize int
}

// limit describes one field of Limits: its flag, environment variable and bounds.
type limit struct {
	flag, env string
	// least is the smallest value allowed, and why when it is above 1.
	least int
	why   string
	// what the number is, and the SDK's default, for the help and for errors.
	what, sdkDefault string
	field            func(*Limits) *int
}

// limits are the worker's concurrency settings. The SDK takes 0 for its default and panics on
// 1 where the minimum is 2, so values are checked here, with the reason, instead.
var limits = []limit{
	{
		flag: "max-concurrent-activities", env: "DMFLOW_MAX_CONCURRENT_ACTIVITIES", least: 1,
		what: "maximum number of activity executions at once", sdkDefault: "1000",
		field: func(l *Limits) *int { return &l.Activities },
	},
	{
		flag: "max-concurrent-workflow-tasks", env: "DMFLOW_MAX_CONCURRENT_WORKFLOW_TASKS", least: 2,
		why:  "the worker polls its sticky queue and the task queue, each needing a slot",
		what: "maximum number of workflow tasks processed at once", sdkDefault: "1000",
		field: func(l *Limits) *int { return &l.WorkflowTasks },
	},
	{
		flag: "activity-pollers", env: "DMFLOW_ACTIVITY_POLLERS", least: 1,
		what: "number of goroutines polling for activity tasks", sdkDefault: "2",
		field: func(l *Limits) *int { return &l.ActivityPollers },
	},
	{
		flag: "workflow-pollers", env: "DMFLOW_WORKFLOW_POLLERS", least: 2,
		why:  "one poller would only ever poll the sticky queue, never the task queue",
		what: "number of goroutines polling for workflow tasks", sdkDefault: "2",
		field: func(l *Limits) *int { return &l.WorkflowPollers },
	},
	{
		flag: "sticky-cache-size", env: "DMFLOW_STICKY_CACHE_SIZE", least: 1,
		what: "number of workflow executions kept in memory between tasks", sdkDefault: "10000",
		field: func(l *Limits) *int { return &l.StickyCacheSize },
	},
}

// flagValues are the raw flag values; empty means "not given".
type flagValues struct {
	caFile, taskQueue, logFormat, address, namespace, metricsAddress string
	hubTier, hubUnits, hubBudget                                     string
	limits                                                           map[string]*string
}

func (f *flagValues) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.caFile, "ca-file", "", "PEM file of extra CA roots for the hub, e.g. localhub's ca.pem (env "+envHubCAFile+")")
	fs.StringVar(&f.taskQueue, "task-queue", "", "task queue to poll (env "+envTaskQueue+", default "+workflows.TaskQueue+")")
	fs.StringVar(&f.logFormat, "log-format", "", "log format "+logging.Formats+" (env "+envLogFormat+", default text)")
	fs.StringVar(&f.address, "temporal-address", "", "Temporal frontend host:port (overrides TEMPORAL_ADDRESS)")
	fs.StringVar(&f.namespace, "temporal-namespace", "", "Temporal namespace (overrides TEMPORAL_NAMESPACE)")
	fs.StringVar(&f.metricsAddress, "metrics-address", "", "serve Prometheus metrics at http://ADDRESS/metrics and a health check at /healthz, e.g. 127.0.0.1:9464 or :9464 (env "+envMetricsAddress+"; default: no endpoint)")
	fs.StringVar(&f.hubTier, "hub-tier", "", "the IoT Hub's tier, S1, S2 or S3 (F1 and B1 as S1), whose documented throttles make the hub budget every worker shares (env "+envHubTier+", default S1)")
	fs.StringVar(&f.hubUnits, "hub-units", "", "the IoT Hub's units (env "+envHubUnits+", default 1)")
	fs.StringVar(&f.hubBudget, "hub-budget", "", "override the budget of an operation, op=N/s or op=N/min or op=off, comma-separated (ops: methods, twinReads, twinUpdates, queries), or off for no hub budget (env "+envHubBudget+")")
	f.limits = make(map[string]*string, len(limits))
	for _, l := range limits {
		least := ""
		if l.least > 1 {
			least = fmt.Sprintf(", at least %d", l.least)
		}
		v := new(string)
		f.limits[l.flag] = v
		fs.Var(rawFlag{v, "int"}, l.flag, fmt.Sprintf("%s%s (env %s; default: the SDK's, %s)", l.what, least, l.env, l.sdkDefault))
	}
}

// rawFlag is a flag kept as given, so that an unset one falls back to the environment and the
// value is checked with the rest of the configuration; typ is the type the help shows.
type rawFlag struct {
	v   *string
	typ string
}

func (f rawFlag) String() string     { return *f.v }
func (f rawFlag) Set(s string) error { *f.v = s; return nil }
func (f rawFlag) Type() string       { return f.typ }

// resolve applies flags over the environment and validates the result.
func (f flagValues) resolve(getenv func(string) string) (Config, error) {
	pick := func(flag, env, def string) string { return settings.Pick(getenv, flag, env, def) }
	cfg := Config{
		CAFile:         pick(f.caFile, envHubCAFile, ""),
		TaskQueue:      pick(f.taskQueue, envTaskQueue, workflows.TaskQueue),
		LogFormat:      pick(f.logFormat, envLogFormat, "text"),
		MetricsAddress: pick(f.metricsAddress, envMetricsAddress, ""),
		Temporal:       temporalconn.Config{Address: f.address, Namespace: f.namespace},
	}
	if err := checkAddress(cfg.MetricsAddress, f.metricsAddress != ""); err != nil {
		return Config{}, err
	}
	for _, l := range limits {
		var flag string
		if p := f.limits[l.flag]; p != nil {
			flag = *p
		}
		n, err := l.parse(flag, getenv(l.env))
		if err != nil {
			return Config{}, err
		}
		*l.field(&cfg.Limits) = n
	}
	budget, err := resolveBudget(pick(f.hubTier, envHubTier, hubquota.S1), pick(f.hubUnits, envHubUnits, "1"), pick(f.hubBudget, envHubBudget, ""))
	if err != nil {
		return Config{}, err
	}
	cfg.Budget = budget
	hub, err := hubconn.ParseService(envHubConnectionString, getenv(envHubConnectionString))
	if err != nil {
		return Config{}, err
	}
	cfg.Hub = hub
	return cfg, nil
}

// resolveBudget is the hub budget of a hub of units units of tier, its documented throttles, with
// the overrides of budget ("op=rate,…", or "off" for none) applied.
func resolveBudget(tier, units, budget string) (map[hubquota.Op]float64, error) {
	if strings.EqualFold(strings.TrimSpace(budget), "off") {
		return nil, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(units))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("%s (--hub-units) %q is not a number of units: set it to the hub's units, e.g. 1", envHubUnits, units)
	}
	out := map[hubquota.Op]float64{}
	for _, op := range budgetOps {
		q, err := hubquota.Documented(tier, n, op)
		if err != nil {
			return nil, fmt.Errorf("%s (--hub-tier): %w", envHubTier, err)
		}
		out[op] = q.Rate
	}
	overrides, err := hubquota.ParseList(budget)
	if err != nil {
		return nil, fmt.Errorf("%s (--hub-budget): %w; or off for no hub budget", envHubBudget, err)
	}
	for op, r := range overrides {
		if !slices.Contains(budgetOps, op) {
			return nil, fmt.Errorf("%s (--hub-budget): %s is not an operation dmflow calls the hub with: budget methods, twinReads, twinUpdates or queries", envHubBudget, op)
		}
		if math.IsInf(r, 1) {
			delete(out, op)
			continue
		}
		out[op] = r
	}
	return out, nil
}

// check reads the files the configuration names and checks what resolve
// does not, so that a bad file or format is refused before anything starts:
// the CA file, the log format and the Temporal client configuration (its
// profile file and TLS files).
func (c Config) check() error {
	if _, err := hubconn.TLSConfig(c.CAFile); err != nil {
		return err
	}
	if _, err := logging.New(c.LogFormat, io.Discard, slog.LevelInfo); err != nil {
		return fmt.Errorf("%w (or set %s)", err, envLogFormat)
	}
	if _, err := c.Temporal.ClientOptions(nil); err != nil {
		return err
	}
	return nil
}

// parse reads the limit from the flag, else the environment; 0 when neither is set.
func (l limit) parse(flag, env string) (int, error) {
	v, source := flag, "--"+l.flag
	if v == "" {
		v, source = env, l.env
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < l.least {
		msg := fmt.Sprintf("%s %q is not a whole number of at least %d", source, v, l.least)
		if l.why != "" {
			msg += " (" + l.why + ")"
		}
		return 0, fmt.Errorf("%s: it is the %s; unset, the SDK's default (%s) applies", msg, l.what, l.sdkDefault)
	}
	return n, nil
}

// checkAddress checks a metrics address before anything starts, naming where it came from.
func checkAddress(addr string, fromFlag bool) error {
	if addr == "" {
		return nil
	}
	source := envMetricsAddress
	if fromFlag {
		source = "--metrics-address"
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return fmt.Errorf("%s %q is not host:port: set it to e.g. 127.0.0.1:9464 (this machine only) or :9464 (every interface), or leave it empty for no metrics endpoint", source, addr)
	}
	return nil
}
