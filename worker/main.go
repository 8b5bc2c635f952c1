// Command worker runs dmflow's workflows and activities: it polls the dmflow
// task queue on Temporal and reaches IoT Hub with the service connection
// string from its own environment.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	// The time zone database, for maintenance windows in a time zone (workflows.Window): the
	// system's is used when there is one, this copy when there is none (a distroless or scratch
	// image), so that a window "in Europe/Warsaw" validates and opens alike on every worker. The
	// boundaries a rollout computed are recorded in its history, so a replay on a worker with
	// other rules does not diverge (see the Rollout workflow's window).
	_ "time/tzdata"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/budget"
	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/logging"
	"github.com/dmflow/dmflow/internal/metrics"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
	"go.temporal.io/sdk/worker"
)

// Exit codes (cli's): 0 stopped by SIGINT or SIGTERM; 1 failed while starting or running (IoT Hub
// or Temporal unreachable or refusing, metrics address in use); 2 bad flags, environment or files,
// found before anything started.

func main() {
	os.Exit(execute(os.Args[1:], os.Getenv, os.Stderr))
}

// execute runs the command line and returns the exit code.
func execute(args []string, getenv func(string) string, stderr io.Writer) int {
	started := false
	cmd := newCommand(getenv, func() { started = true })
	return cli.Execute(context.Background(), cmd, args, stderr, func() bool { return started })
}

// newCommand builds the command line; started is called once the
// configuration is valid, before anything starts.
func newCommand(getenv func(string) string, started func()) *cobra.Command {
	var flags flagValues
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run dmflow's workflows and activities",
		Long: `Runs dmflow's workflows (Reboot, FirmwareUpdate) and their activities.

Temporal is configured the standard way (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE). IoT Hub is reached with
IOTHUB_CONNECTION_STRING (a service policy connection string); for localhub
also set DMFLOW_HUB_CA_FILE to its ca.pem.

With --metrics-address (DMFLOW_METRICS_ADDRESS) the worker serves Prometheus
metrics at /metrics, the Temporal SDK's and dmflow's (device operations, hub
calls by status, 429s, rollout progress), and /healthz.

Exit codes: 0 stopped by SIGINT or SIGTERM, 1 failed while starting or
running (IoT Hub or Temporal unreachable, metrics address in use), 2 bad
flags, environment or files (nothing was started).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return cli.UsageError{Err: fmt.Errorf("worker takes no arguments, got %q: settings are flags (see worker --help) or environment variables", args[0])}
			}
			return nil
		},
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := flags.resolve(getenv)
			if err != nil {
				return cli.UsageError{Err: err}
			}
			if err := cfg.check(); err != nil {
				return cli.UsageError{Err: err}
			}
			started()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, cfg)
		},
	}
	flags.register(cmd.Flags())
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return cli.UsageError{Err: fmt.Errorf("%w: see worker --help", err)}
	})
	return cmd
}

// heartbeatThrottle is the worker's MaxHeartbeatThrottleInterval; see run.
const heartbeatThrottle = time.Second

func run(ctx context.Context, cfg Config) error {
	logger, err := logging.New(cfg.LogFormat, os.Stderr, slog.LevelInfo)
	if err != nil {
		return err
	}
	// The endpoint comes first: an address in use fails here, before any connection is made.
	var endpoint *metrics.Server
	if cfg.MetricsAddress != "" {
		reg, err := metrics.New(logger)
		if err != nil {
			return err
		}
		endpoint, err = metrics.Listen(cfg.MetricsAddress, reg, logger)
		if err != nil {
			return fmt.Errorf("%s (--metrics-address) %s: %w: choose a free host:port, or leave it empty for no endpoint", envMetricsAddress, cfg.MetricsAddress, err)
		}
		defer func() {
			// The registry reports what was counted last before the endpoint goes.
			if err := reg.Close(); err != nil {
				logger.Warn("closing the metrics", "error", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := endpoint.Shutdown(ctx); err != nil {
				logger.Warn("stopping the metrics endpoint", "error", err)
			}
		}()
		// The SDK's metrics and dmflow's (workflows and activities emit through the SDK's
		// handler) go to the one registry.
		cfg.Temporal.MetricsHandler = reg.Handler()
	}

	hub, err := hubconn.NewServiceHub(cfg.Hub, cfg.CAFile)
	if err != nil {
		return err
	}
	defer hub.Close()
	if err := hubconn.Check(ctx, hub.Client, envHubConnectionString); err != nil {
		return err
	}
	tc, err := cfg.Temporal.Dial(ctx, logger)
	if err != nil {
		return err
	}
	defer tc.Close()

	lim := cfg.Limits
	if lim.StickyCacheSize > 0 {
		// Process-wide, and read when the first worker starts.
		worker.SetStickyWorkflowCacheSize(lim.StickyCacheSize)
	}
	w := worker.New(tc, cfg.TaskQueue, worker.Options{
		// Heartbeats reach the server at most this long after an activity records them (default:
		// 80% of the heartbeat timeout, 24 s for FollowStages). The firmware stages a client shows
		// live are read from FollowStages' heartbeat details, so they should arrive within a second.
		// The cost is small: the polls heartbeat once per twin read anyway, and InvokeMethod's
		// heartbeats while a call is in flight (every ~3 s) are sent each instead of one per 8 s.
		MaxHeartbeatThrottleInterval: heartbeatThrottle,
		// Zero keeps each SDK default.
		MaxConcurrentActivityExecutionSize:     lim.Activities,
		MaxConcurrentWorkflowTaskExecutionSize: lim.WorkflowTasks,
		MaxConcurrentActivityTaskPollers:       lim.ActivityPollers,
		MaxConcurrentWorkflowTaskPollers:       lim.WorkflowPollers,
	})
	w.RegisterWorkflow(workflows.Reboot)
	w.RegisterWorkflow(workflows.FirmwareUpdate)
	w.RegisterWorkflow(workflows.Rollout)
	w.RegisterWorkflow(workflows.RolloutShard)
	w.RegisterWorkflow(workflows.FleetVersions) // compliance: starter fleet versions
	// The hub budget's workflows run on a task queue of their own, which every worker polls. It
	// starts first and stops last: the lease is given back through it.
	bw := worker.New(tc, workflows.BudgetTaskQueue, worker.Options{})
	bw.RegisterWorkflow(workflows.HubBudget)
	if err := bw.Start(); err != nil {
		return fmt.Errorf("start worker on task queue %s: %w", workflows.BudgetTaskQueue, err)
	}
	defer bw.Stop()
	host, _ := os.Hostname()
	leaser := budget.New(budget.Config{
		// Unique while the process runs; a restart on the same host takes the old lease's place.
		Worker:  fmt.Sprintf("%d@%s", os.Getpid(), host),
		Budget:  cfg.BudgetRates(),
		Granter: hubBudget{tc: tc, hub: hub.HostName()},
		Logger:  logger,
	})
	// After w.Stop, when no activity draws on it any more: the shares go back to the other workers.
	defer leaser.Close()
	w.RegisterActivity(&activities.Activities{Hub: activities.MeteredHub(hub), Pacer: leaser, Heartbeats: tc, Workflows: tc})

	if err := w.Start(); err != nil {
		return fmt.Errorf("start worker on task queue %s: %w", cfg.TaskQueue, err)
	}
	ready := []any{"task_queue", cfg.TaskQueue, "hub", hub.HostName(), "hub_budget", budgetText(cfg.Budget)}
	if endpoint != nil {
		endpoint.SetReady(true)
		ready = append(ready, "metrics", endpoint.URL())
	}
	for _, l := range limits {
		if n := *l.field(&lim); n > 0 {
			ready = append(ready, strings.ReplaceAll(l.flag, "-", "_"), n)
		}
	}
	logger.Info("worker ready", ready...)
	<-ctx.Done()
	logger.Info("worker stopping")
	if endpoint != nil {
		endpoint.SetReady(false)
	}
	// Stop waits for running activities up to WorkerStopTimeout; unfinished
	// ones are retried elsewhere, their heartbeats telling where to resume.
	w.Stop()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// budgetText shows the hub budget in the ready line.
func budgetText(b map[hubquota.Op]float64) string {
	if len(b) == 0 {
		return "off"
	}
	return hubquota.FormatList(b)
}
