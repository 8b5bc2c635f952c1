// Command worker runs dmflow's workflows and activities: it polls the dmflow
// task queue on Temporal and reaches IoT Hub with the service connection
// string from its own environment.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
	// The time zone database, for maintenance windows in a time zone (workflows.Window): the
	// system's is used when there is one, this copy when there is none (a distroless or scratch
	// image), so that a window "in Europe/Warsaw" validates and opens alike on every worker. The
	// boundaries a rollout computed are recorded in its history, so a replay on a worker with
	// other rules does not diverge (see the Rollout workflow's window).
	_ "time/tzdata"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/logging"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
	"go.temporal.io/sdk/worker"
)

func main() {
	if err := newCommand(os.Getenv).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func newCommand(getenv func(string) string) *cobra.Command {
	var flags flagValues
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run dmflow's workflows and activities",
		Long: `Runs dmflow's workflows (Reboot, FirmwareUpdate) and their activities.

Temporal is configured the standard way (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE). IoT Hub is reached with
IOTHUB_CONNECTION_STRING (a service policy connection string); for localhub
also set DMFLOW_HUB_CA_FILE to its ca.pem.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := flags.resolve(getenv)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, cfg)
		},
	}
	flags.register(cmd.Flags())
	return cmd
}

// heartbeatThrottle is the worker's MaxHeartbeatThrottleInterval; see run.
const heartbeatThrottle = time.Second

func run(ctx context.Context, cfg Config) error {
	logger, err := logging.New(cfg.LogFormat, os.Stderr, slog.LevelInfo)
	if err != nil {
		return err
	}
	hub, err := hubconn.NewServiceClient(cfg.Hub, cfg.CAFile)
	if err != nil {
		return err
	}
	defer hub.Close()
	if err := hubconn.Check(ctx, hub, envHubConnectionString); err != nil {
		return err
	}
	tc, err := cfg.Temporal.Dial(ctx, logger)
	if err != nil {
		return err
	}
	defer tc.Close()

	w := worker.New(tc, cfg.TaskQueue, worker.Options{
		// Heartbeats reach the server at most this long after an activity records them (default:
		// 80% of the heartbeat timeout, 24 s for FollowStages). The firmware stages a client shows
		// live are read from FollowStages' heartbeat details, so they should arrive within a second.
		// The cost is small: the polls heartbeat once per twin read anyway, and InvokeMethod's
		// heartbeats while a call is in flight (every ~3 s) are sent each instead of one per 8 s.
		MaxHeartbeatThrottleInterval: heartbeatThrottle,
	})
	w.RegisterWorkflow(workflows.Reboot)
	w.RegisterWorkflow(workflows.FirmwareUpdate)
	w.RegisterWorkflow(workflows.Rollout)
	w.RegisterActivity(&activities.Activities{Hub: hub})

	if err := w.Start(); err != nil {
		return fmt.Errorf("start worker on task queue %s: %w", cfg.TaskQueue, err)
	}
	logger.Info("worker ready", "task_queue", cfg.TaskQueue, "hub", hub.HostName())
	<-ctx.Done()
	logger.Info("worker stopping")
	// Stop waits for running activities up to WorkerStopTimeout; unfinished
	// ones are retried elsewhere, their heartbeats telling where to resume.
	w.Stop()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
