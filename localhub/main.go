// Command localhub runs an IoT Hub-compatible endpoint on this machine: MQTT
// over TLS for devices, HTTPS REST for services, with durable identities and
// twins in a state directory. See package internal/sim/hub.
//
//	localhub                                   serve (Ctrl-C stops)
//	localhub connection-string                 print the service connection string
//	localhub connection-string --policy NAME   print another policy's (service, registryRead, …)
//	localhub connection-string --device ID     print a device connection string
//	localhub connection-string --device ID --create
//
// Flags fall back to DMFLOW_LOCALHUB_* environment variables. Exit codes: 0
// stopped by SIGINT or SIGTERM, or done; 1 failed (a port in use, the state
// directory held by another localhub, no localhub running for --device); 2
// bad flags, environment or arguments, refused before anything started.
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

	"github.com/spf13/cobra"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/logging"
	"github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// Exit codes (cli's): 0 stopped by SIGINT or SIGTERM (or a command done), 1 failed (ports in use,
// state dir locked by another localhub, localhub not running for --device), 2 bad flags,
// environment or arguments, found before anything started.

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := execute(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// execute runs the command line, prints an error as one line and returns the exit code.
func execute(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	started := false
	root := newCommand(getenv, stdout, stderr, func() { started = true })
	return cli.Execute(ctx, root, args, stderr, func() bool { return started })
}

// newCommand builds the command line on getenv, stdout and stderr; started is called once a
// command's checks passed and it began its work.
func newCommand(getenv func(string) string, stdout, stderr io.Writer, started func()) *cobra.Command {
	// A bad environment fails whichever command runs, after the command line parsed.
	cfg, cfgErr := hub.ConfigFromEnv(getenv)
	root := &cobra.Command{
		Use:               "localhub",
		Short:             "Run an IoT Hub-compatible endpoint (MQTT devices, HTTPS service API)",
		Args:              cobra.NoArgs,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if cfgErr != nil {
				return cli.UsageError{Err: cfgErr}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.Validate(); err != nil {
				return cli.UsageError{Err: err}
			}
			started()
			return serve(cmd.Context(), cfg, stdout, stderr)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "directory of the store, TLS material and policy key (env "+hub.EnvStateDir+")")
	pf.StringVar(&cfg.Host, "host", cfg.Host, "host name clients use for the hub (env "+hub.EnvHost+")")
	pf.StringVar(&cfg.HTTPSAddr, "https-addr", cfg.HTTPSAddr, "listen address of the service REST API (env "+hub.EnvHTTPSAddr+")")
	f := root.Flags()
	f.StringVar(&cfg.MQTTAddr, "mqtt-addr", cfg.MQTTAddr, "listen address of the device MQTT endpoint; 0.0.0.0:PORT also accepts on 127.0.0.2, 127.0.0.3, …, for fleets larger than one address's ephemeral ports allow (env "+hub.EnvMQTTAddr+")")
	f.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "log format, "+logging.Formats+" (env "+hub.EnvLogFormat+")")
	f.StringVar(&cfg.Tier, "tier", cfg.Tier, "IoT Hub tier whose documented throttles apply: S1, S2 or S3; F1 and B1 throttle as S1 (env "+hub.EnvTier+")")
	f.IntVar(&cfg.Units, "units", cfg.Units, "units of the tier, scaling the per-unit quotas (env "+hub.EnvUnits+")")
	f.Var(&quotaFlag{q: &cfg.Quotas}, "quota", "override an operation's rate, op=N/s, op=N/min or op=off; repeatable; ops: methods (4 KB chunks), twinReads, twinUpdates, queries, registry, connections, telemetry (env "+hub.EnvQuotas+", comma-separated)")
	f.StringVar(&cfg.StandIns, "stand-ins", cfg.StandIns, "device ID prefix of stand-in devices, which localhub plays itself without a connection (firmwareUpdate and rebootDevice as the tutorials' devices), for fleets larger than this machine can connect (env "+hub.EnvStandIns+")")
	f.DurationVar(&cfg.StandInStage, "stand-in-stage", cfg.StandInStage, "how long a stand-in device's firmware stage and reboot take (env "+hub.EnvStandInStage+")")
	f.BoolVar(&cfg.NoThrottle, "no-throttle", cfg.NoThrottle, "turn throttling off, for tests and benchmarks (env "+hub.EnvNoThrottle+")")

	var device, policy string
	var create bool
	cs := &cobra.Command{
		Use:   "connection-string",
		Short: "Print the service connection string, or with --device a device connection string",
		Long: "Print the iothubowner service connection string read from the state directory " +
			"(with --policy that of another shared access policy: " + policyList() + "), " +
			"or with --device the connection string of that device, read (or with --create registered) " +
			"through the running localhub's REST API.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.Validate(); err != nil {
				return cli.UsageError{Err: err}
			}
			switch {
			case device != "" && cmd.Flags().Changed("policy"):
				return cli.UsageError{Err: errors.New("--policy and --device exclude each other: a device connection string uses the device's key")}
			case device != "":
				if err := hub.CheckDeviceID(device); err != nil {
					return cli.UsageError{Err: err}
				}
			case create:
				return cli.UsageError{Err: errors.New("--create needs --device: name the device to register")}
			default:
				if err := hub.CheckPolicyName(policy); err != nil {
					return cli.UsageError{Err: err}
				}
			}
			started()
			var s string
			var err error
			if device != "" {
				ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
				defer cancel()
				s, err = cfg.DeviceConnectionString(ctx, device, create)
			} else {
				s, err = cfg.PolicyConnectionString(policy)
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(stdout, s)
			return err
		},
	}
	cs.Flags().StringVar(&device, "device", "", "device ID; prints its connection string instead of the service one")
	cs.Flags().BoolVar(&create, "create", false, "register the device if it does not exist")
	cs.Flags().StringVar(&policy, "policy", hub.PolicyName, "shared access policy whose service connection string to print: "+policyList())
	root.AddCommand(cs)

	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return cli.UsageError{Err: fmt.Errorf("%w: see %s --help", err, cmd.CommandPath())}
	})
	root.SetOut(stdout)
	return root
}

func policyList() string {
	var names []string
	for _, p := range hub.Policies {
		names = append(names, p.Name+" ("+p.Permissions.String()+")")
	}
	return strings.Join(names, ", ")
}

// quotaFlag is the repeatable --quota op=rate flag. The first use on the
// command line replaces quotas from the environment; later ones add.
type quotaFlag struct {
	q   *map[hubquota.Op]float64
	set bool
}

func (f *quotaFlag) String() string {
	if f.q == nil || len(*f.q) == 0 {
		return ""
	}
	return hubquota.FormatList(*f.q)
}

func (f *quotaFlag) Set(v string) error {
	parsed, err := hubquota.ParseList(v)
	if err != nil {
		return err
	}
	if !f.set || *f.q == nil {
		*f.q = map[hubquota.Op]float64{}
		f.set = true
	}
	for op, r := range parsed {
		(*f.q)[op] = r
	}
	return nil
}

func (f *quotaFlag) Type() string { return "op=rate" }

// serve runs localhub until ctx ends; cfg is valid.
func serve(ctx context.Context, cfg hub.Config, stdout, stderr io.Writer) error {
	log, err := logging.New(cfg.LogFormat, stderr, slog.LevelInfo)
	if err != nil {
		return err
	}
	h, err := hub.New(cfg.Options(log))
	if err != nil {
		return explain(err, cfg)
	}
	if err := h.Start(ctx); err != nil {
		_ = h.Close()
		return explain(err, cfg)
	}
	if cfg.NoThrottle {
		log.Info("throttling off")
	} else {
		log.Info("throttling as IoT Hub", "tier", cfg.Tier, "units", cfg.Units, "quotas", hubquota.FormatList(cfg.Quotas))
	}
	fmt.Fprintf(stdout, "localhub ready host=%s mqtt=%s https=%s ca=%s\n", h.HostName(), h.MQTTAddr(), h.HTTPSAddr(), h.CACertFile())
	<-ctx.Done()
	log.Info("shutting down")
	return h.Close()
}

// explain adds the fix to errors a user can act on.
func explain(err error, cfg hub.Config) error {
	switch {
	case errors.Is(err, store.ErrLocked):
		return fmt.Errorf("state dir %s is in use by another localhub: stop it or pass another --state-dir (%w)", cfg.StateDir, err)
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%w: another process listens there; stop it or pick free ports with --mqtt-addr and --https-addr", err)
	case errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%w: check the permissions of --state-dir %s, or use ports above 1023", err, cfg.StateDir)
	}
	return err
}
