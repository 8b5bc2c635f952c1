// Package metrics exposes a worker's metrics to Prometheus. The Temporal SDK's own metrics
// (workflow and activity task latencies, completions and failures, pollers, slots, sticky cache)
// and dmflow's (device operations, hub calls, rollout progress, emitted by workflow and activity
// code through the SDK's metrics handler) go through one [client.MetricsHandler] backed by tally
// and its Prometheus reporter into one registry, which [Server] serves at /metrics.
//
// Names follow Prometheus conventions: the SDK's contrib naming scope adds _total to counters and
// _seconds to timers (histograms), so the SDK's temporal_workflow_completed is exposed as
// temporal_workflow_completed_total and dmflow_hub_calls as dmflow_hub_calls_total.
package metrics

import (
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/uber-go/tally/v4"
	tallyprom "github.com/uber-go/tally/v4/prometheus"
	"go.temporal.io/sdk/client"
	sdktally "go.temporal.io/sdk/contrib/tally"
)

// reportInterval is how often tally hands what was counted to the Prometheus registry: a scrape
// sees values at most this old. Temporal's samples use a second; scrapes are 15 s or more apart.
const reportInterval = time.Second

// Buckets are the upper bounds, in seconds, of every histogram (the SDK's timers). tally's default
// stops at 10 s, which would put most of dmflow's durations in +Inf: an InvokeMethod waits for a
// device's answer (up to its method timeout, 30 s by default), FollowStages and WaitForReported
// run for minutes, and a device workflow's end-to-end latency is minutes. The low end keeps the
// SDK's millisecond task latencies (schedule-to-start, workflow task execution) apart.
var Buckets = []float64{
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
}

// sanitize keeps names and label names to what Prometheus accepts ([a-zA-Z0-9_]), as the SDK's
// contrib PrometheusSanitizeOptions do, but lets label values keep - . and : as well: the SDK's
// options would turn the rollout fw-2.1.0 into fw_2_1_0 and the namespace ns.acct into ns_acct.
// Any other character in a value becomes _, which also keeps invalid UTF-8 (which the Prometheus
// client refuses) out of the registry.
var sanitize = tally.SanitizeOptions{
	NameCharacters:       tally.ValidCharacters{Ranges: tally.AlphanumericRange, Characters: tally.UnderscoreCharacters},
	KeyCharacters:        tally.ValidCharacters{Ranges: tally.AlphanumericRange, Characters: tally.UnderscoreCharacters},
	ValueCharacters:      tally.ValidCharacters{Ranges: tally.AlphanumericRange, Characters: []rune{'_', '-', '.', ':'}},
	ReplacementCharacter: tally.DefaultReplacementCharacter,
}

// Registry is the worker's metrics: a Prometheus registry and the SDK metrics handler that
// reports into it.
type Registry struct {
	prom    *prometheus.Registry
	handler client.MetricsHandler
	closer  io.Closer
}

// New returns a Registry. Metrics that cannot be registered (a name reused with other labels)
// are dropped and logged at warning level on logger rather than crashing the worker, which is
// what the tally reporter does by default.
func New(logger *slog.Logger) (*Registry, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	// The process and Go runtime metrics (memory, goroutines, CPU, open files) cost nothing and
	// answer the first question about a slow worker.
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("metrics: register Go collector: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("metrics: register process collector: %w", err)
	}
	reporter := tallyprom.NewReporter(tallyprom.Options{
		Registerer:              reg,
		DefaultTimerType:        tallyprom.HistogramTimerType,
		DefaultHistogramBuckets: Buckets,
		OnRegisterError: func(err error) {
			logger.Warn("metric dropped: it cannot be registered with Prometheus", "error", err)
		},
	})
	scope, closer := tally.NewRootScope(tally.ScopeOptions{
		CachedReporter:  reporter,
		Separator:       tallyprom.DefaultSeparator,
		SanitizeOptions: &sanitize,
	}, reportInterval)
	return &Registry{
		prom:    reg,
		handler: sdktally.NewMetricsHandler(sdktally.NewPrometheusNamingScope(scope)),
		closer:  closer,
	}, nil
}

// Handler is the SDK metrics handler to set as client.Options.MetricsHandler.
func (r *Registry) Handler() client.MetricsHandler { return r.handler }

// Gatherer is the Prometheus registry, for the HTTP handler and tests.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.prom }

// Close reports what was counted since the last interval and stops the reporting.
func (r *Registry) Close() error {
	if err := r.closer.Close(); err != nil {
		return fmt.Errorf("metrics: close: %w", err)
	}
	return nil
}
