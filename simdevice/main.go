// Command simdevice simulates IoT Hub devices that serve the remote-reboot
// and firmware-update tutorials' direct methods, rebootDevice and
// firmwareUpdate (see internal/sim/device), against Azure IoT Hub or localhub:
// one device (the default command, or run), or a fleet of them with fault
// profiles in one process (fleet, see internal/sim/fleet).
//
// A device keeps dmflow's contract (request and update IDs, versions,
// error states) or, with --contract tutorial, plays the tutorials' device
// apps exactly, as devices in the field built from them do; --answer
// string makes such a device answer firmwareUpdate with a JSON string. A
// fleet runs a share of its devices on the tutorial contract (--tutorial).
//
// Exit status: 0 after SIGINT/SIGTERM, 2 for bad input, 1 for other errors.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/logging"
	"github.com/dmflow/dmflow/internal/sim/device"
)

func main() {
	os.Exit(execute(os.Args[1:], os.Getenv, os.Stderr))
}

// execute runs the command line args and returns the exit status (cli's: 2 for bad input).
func execute(args []string, getenv func(string) string, stderr io.Writer) int {
	started := false
	cmd := newCommand(getenv, stderr, func() { started = true })
	cmd.SetOut(stderr)
	return cli.Execute(context.Background(), cmd, args, stderr, func() bool { return started })
}

// newCommand builds the command line; started is called when a command
// begins to run.
func newCommand(getenv func(string) string, stderr io.Writer, started func()) *cobra.Command {
	var flags flagValues
	runE := func(cmd *cobra.Command, _ []string) error {
		started()
		cfg, err := flags.resolve(getenv)
		if err != nil {
			return cli.UsageError{Err: err}
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return run(ctx, cfg, stderr)
	}
	root := &cobra.Command{
		Use:   "simdevice",
		Short: "Simulate IoT Hub devices that serve rebootDevice and firmwareUpdate",
		Long: `Simulates one IoT Hub device serving the remote-reboot and firmware-update
tutorials' direct methods, rebootDevice and firmwareUpdate. Without a
subcommand it runs the device; "simdevice fleet" runs many (see its help).

The device is given by IOTHUB_DEVICE_CONNECTION_STRING, or by --device-id
(DMFLOW_DEVICE_ID) plus IOTHUB_CONNECTION_STRING, a service connection string
with which simdevice registers the device if it is new. For localhub also set
DMFLOW_HUB_CA_FILE to its ca.pem and DMFLOW_MQTT_BROKER to its MQTT address.

rebootDevice: the tutorial style reboots (--reboot-duration) and then
answers; the realistic style answers at once and goes offline meanwhile. A
repeated requestId does not reboot again.

firmwareUpdate with {"fwPackageUri": "https://…", "version": "2.0.0",
"updateId": "u1"}: answers "Firmware update started" at once, then reports
firmwareStatus downloading, applying and completed (with firmwareVersion),
--stage-duration apart, each with firmwareUpdateId. A repeated updateId is
not applied again; another one while an update runs answers 409; a missing
or malformed fwPackageUri answers 400. At start the device reports standBy
with the version it runs (--firmware-version, or the one its twin names).
--fail-stage downloading|applying makes every update fail there.

That is the dmflow contract (--contract dmflow, the default). With
--contract tutorial (DMFLOW_SIM_CONTRACT) the device plays the remote-reboot
and firmware-update tutorials' device apps exactly, as devices in the field
built from them do:
  rebootDevice    ignores requestId; reboots (--reboot-duration) while staying
                  connected, reports rebootTime only, then answers 200
                  {"Response": "This is the response from the device"}.
                  Every call reboots again.
  firmwareUpdate  at start reports standBy with logTime; a call with
                  fwPackageUri (version and updateId are ignored) is answered
                  200 at once, then downloading, applying and completed are
                  reported --stage-duration apart with the tutorial's
                  timestamps, without firmwareVersion, firmwareUpdateId or
                  any error state. Every call updates again; a call
                  without fwPackageUri answers 400.
  --answer object answers {"Response": "Firmware update started"}; --answer
  string (DMFLOW_SIM_ANSWER) answers a JSON string holding that text.
Its timestamps are Python's str(datetime.now()): local time (TZ) such as
2026-12-06 18:34:08.808000. It takes no --fail-stage and only the tutorial
--reboot-style.

It logs "simdevice ready device=<id>" once it is connected and serves the
methods, and stops on SIGINT or SIGTERM.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          runE,
	}
	flags.register(root.PersistentFlags())
	root.AddCommand(&cobra.Command{
		Use:           "run",
		Short:         "Run the device (the default)",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          runE,
	})
	root.AddCommand(newFleetCommand(&flags, getenv, stderr, started))
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return cli.UsageError{Err: fmt.Errorf("%w: see %s --help", err, cmd.CommandPath())}
	})
	root.CompletionOptions.DisableDefaultCmd = true
	return root
}

func run(ctx context.Context, cfg Config, stderr io.Writer) error {
	logger, err := logging.New(cfg.LogFormat, stderr, slog.LevelInfo)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	conn, err := deviceConnection(ctx, cfg)
	if err != nil {
		return err
	}
	d, err := device.New(device.Config{
		ConnectionString: conn,
		CAFile:           cfg.CAFile,
		Broker:           cfg.Broker,
		RebootDuration:   cfg.RebootDuration,
		RebootStyle:      cfg.RebootStyle,
		StageDuration:    cfg.StageDuration,
		FirmwareVersion:  cfg.FirmwareVersion,
		FailStage:        cfg.FailStage,
		Contract:         cfg.Contract,
		Answer:           cfg.Answer,
		Logger:           logger,
	})
	if err != nil {
		return cli.UsageError{Err: err}
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-d.Ready():
		attrs := []any{"device", d.ID(), "contract", cfg.Contract}
		if cfg.Contract == device.ContractTutorial {
			attrs = append(attrs, "answer", cfg.Answer)
		}
		logger.Info("simdevice ready", append(attrs, "style", cfg.RebootStyle, "reboot_duration", cfg.RebootDuration.String(),
			"firmware_version", d.Firmware().Version, "stage_duration", cfg.StageDuration.String())...)
	case err := <-done:
		return err
	}
	err = <-done
	logger.Info("simdevice stopped", "device", d.ID(), "reboots", d.Reboots(), "firmware_applies", d.FirmwareApplies(),
		"method_calls", d.MethodCalls())
	return err
}

// deviceConnection returns the device's connection string, registering the
// device through the service connection string when only its ID is given.
func deviceConnection(ctx context.Context, cfg Config) (hubconn.Device, error) {
	if cfg.ConnectionString != "" {
		d, err := hubconn.ParseDevice(settingDeviceCS, cfg.ConnectionString)
		if err != nil {
			return hubconn.Device{}, cli.UsageError{Err: err}
		}
		return d, nil
	}
	s, err := hubconn.ParseService(envHubConnectionString, cfg.ServiceConnectionString)
	if err != nil {
		return hubconn.Device{}, cli.UsageError{Err: err}
	}
	svc, err := hubconn.NewServiceClient(s, cfg.CAFile)
	if err != nil {
		return hubconn.Device{}, err
	}
	defer svc.Close()
	if err := hubconn.Check(ctx, svc, envHubConnectionString); err != nil {
		return hubconn.Device{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return device.Provision(ctx, svc, cfg.DeviceID)
}
