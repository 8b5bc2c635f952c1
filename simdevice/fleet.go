package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/logging"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/internal/sim/fleet"
)

// Fleet settings: each flag --x-y falls back to DMFLOW_FLEET_X_Y.
const envFleetPrefix = "DMFLOW_FLEET_"

// FleetConfig is `simdevice fleet`'s configuration.
type FleetConfig struct {
	deviceSettings
	// Brokers is --broker split at commas: device i dials Brokers[i mod
	// len(Brokers)]; none dial the hub's own broker.
	Brokers []string

	Count              int
	Prefix             string
	Seed               int64
	SummaryInterval    time.Duration
	ConnectConcurrency int
	Faults             fleet.Faults
	Tags               []fleet.TagRule
	// DeviceLogLevel is the level of the devices' own logs.
	DeviceLogLevel slog.Level
}

// fleetFlags are the raw fleet flag values; empty means "not given".
type fleetFlags map[string]*string

// fleetFlagDefs lists the fleet flags: name, default, help.
var fleetFlagDefs = []struct{ name, def, help string }{
	{"count", "", "number of devices (required)"},
	{"prefix", fleet.DefaultPrefix, "device ID prefix; IDs are <prefix><index>, e.g. dev-001"},
	{"seed", "1", "seed of the fault assignment: the same seed gives the same devices the same faults"},
	{"summary-interval", "10s", "how often to log a summary line; 0 for never"},
	{"connect-concurrency", strconv.Itoa(fleet.DefaultConnectConcurrency), "devices connecting at once"},
	{"offline", "0", "fraction of devices that are registered but never connect"},
	{"flapping", "0", "fraction of devices that disconnect and reconnect every --flap-interval"},
	{"flap-interval", fleet.DefaultFlapInterval.String(), "how long a flapping device stays connected (±20%)"},
	{"slow", "0", "fraction of devices whose firmware stages and reboots take --slow-factor times as long"},
	{"slow-factor", strconv.FormatFloat(fleet.DefaultSlowFactor, 'g', -1, 64), "how many times slower slow devices are"},
	{"failing", "0", "fraction of devices that fail every firmware update, in downloading or applying (chosen by seed)"},
	{"unresponsive", "0", "fraction of devices that connect but never answer a method"},
	{"tutorial", "0", "share of devices on the tutorial contract (chosen by seed among those not failing, half of them answering firmwareUpdate with a JSON string), e.g. 0.5 or 50%"},
	{"tags", "", "twin tags to set, key=value[:N%] items applied in order by --seed, e.g. ring=beta:10%,ring=prod,site.city=Oslo"},
	{"device-log-level", "warn", "level of the devices' own logs: debug, info, warn or error"},
}

func fleetEnv(flag string) string {
	return envFleetPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

func (ff fleetFlags) register(fs *pflag.FlagSet) {
	for _, d := range fleetFlagDefs {
		v := new(string)
		ff[d.name] = v
		help := d.help + " (env " + fleetEnv(d.name)
		if d.def != "" {
			help += ", default " + d.def
		}
		fs.StringVar(v, d.name, "", help+")")
	}
}

func newFleetCommand(flags *flagValues, getenv func(string) string, stderr io.Writer, started func()) *cobra.Command {
	ff := fleetFlags{}
	cmd := &cobra.Command{
		Use:   "fleet --count N",
		Short: "Run a fleet of simulated devices with fault profiles",
		Long: `Runs N simulated devices in one process, one MQTT connection each, named
<prefix><index> with the index zero-padded to the width of N (at least 3
digits): dev-001 … dev-100. Missing identities are registered through
IOTHUB_CONNECTION_STRING (the service connection string), in bulk; existing
ones keep their keys. Devices connect --connect-concurrency at a time.

--broker may list K URLs, comma-separated: device i dials URL i mod K.
Linux gives one source address some 28,000 ephemeral ports towards one
address and port (net.ipv4.ip_local_port_range), so a fleet of more devices
spreads over several addresses of the hub; localhub listening on 0.0.0.0
is reached on 127.0.0.1, 127.0.0.2, … alike:
  --broker tls://127.0.0.1:8883,tls://127.0.0.2:8883,tls://127.0.0.3:8883
Devices check the hub's certificate against the HostName of their
connection string, whichever address they dial.

Every device serves rebootDevice and firmwareUpdate as "simdevice run" does,
with --reboot-duration, --reboot-style, --stage-duration and
--firmware-version. Fault profiles take a fraction of the devices each
(together at most 1), chosen by --seed:
  --offline       registered, never connects
  --flapping      disconnects and reconnects every --flap-interval
  --slow          stages and reboots take --slow-factor times as long
  --failing       every firmware update fails, in downloading or applying
  --unresponsive  connects and subscribes, never answers a method

--tutorial SHARE (0.5 or 50%) runs that share of the devices, chosen by
--seed among those not failing, on the tutorial contract (see --contract in
"simdevice --help"): no request or update IDs, so a repeated call reboots
or updates again, Python-style local timestamps, no firmwareVersion, no
error state, and the tutorial reboot whatever --reboot-style says. Half of
them (rounded down, by --seed) answer firmwareUpdate with a JSON string,
the others with an object. They keep their fault profile: a tutorial device
may also be offline, flapping, slow or unresponsive.

--tags sets twin tags after registering, before connecting: key=value[:N%]
items, in order, each on N% of the devices not yet tagged for that key (by
--seed), or on all left without a percentage; dots nest keys:
  --tags ring=beta:10%,ring=prod,site.city=Oslo

At start it logs one line per profile ("fleet profile") and one per
contract and answer form ("fleet contract") with its count and first device
IDs, then "fleet registered" and "fleet started" (how long registering and
connecting took), and every --summary-interval a line with the devices
connected and updating, firmware updates completed and failed, reboots and
method calls. It stops on SIGINT or SIGTERM.`,
		Example: `  IOTHUB_CONNECTION_STRING=$(localhub connection-string) DMFLOW_HUB_CA_FILE=.dmflow/localhub/ca.pem \
    DMFLOW_MQTT_BROKER=tls://127.0.0.1:8883 simdevice fleet --count 1000 --stage-duration 2s \
    --offline 0.02 --failing 0.05 --unresponsive 0.01 --tutorial 20% --seed 7`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			started()
			cfg, err := resolveFleet(*flags, ff, getenv)
			if err != nil {
				return cli.UsageError{Err: err}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runFleet(ctx, cfg, stderr)
		},
	}
	ff.register(cmd.Flags())
	return cmd
}

// resolveFleet applies flags over the environment over the defaults.
func resolveFleet(f flagValues, ff fleetFlags, getenv func(string) string) (FleetConfig, error) {
	switch {
	case f.connectionString != "" || f.deviceID != "":
		return FleetConfig{}, fmt.Errorf("--connection-string and --device-id name one device: a fleet names its devices --prefix<index>")
	case f.failStage != "":
		return FleetConfig{}, fmt.Errorf("--fail-stage applies to one device: use --failing to make a fraction of the fleet fail")
	case f.contract != "" || f.answer != "":
		return FleetConfig{}, fmt.Errorf("--contract and --answer apply to one device: use --tutorial (e.g. 50%%) to run a share of the fleet on the tutorial contract, half of it answering strings")
	}
	shared, err := f.resolveShared(getenv)
	if err != nil {
		return FleetConfig{}, err
	}
	cfg := FleetConfig{deviceSettings: shared}
	if cfg.Brokers, err = parseBrokers(cfg.Broker); err != nil {
		return FleetConfig{}, err
	}
	pick := func(flag, env, def string) string { return settings.Pick(getenv, flag, env, def) }

	vals := map[string]string{}
	for _, d := range fleetFlagDefs {
		vals[d.name] = pick(*ff[d.name], fleetEnv(d.name), d.def)
	}
	bad := func(flag, why, example string) error {
		return fmt.Errorf("--%s (%s) %q %s: use %s", flag, fleetEnv(flag), vals[flag], why, example)
	}
	if vals["count"] == "" {
		return FleetConfig{}, fmt.Errorf("--count (%s) is not set: give the number of devices, e.g. --count 1000", fleetEnv("count"))
	}
	if cfg.Count, err = strconv.Atoi(vals["count"]); err != nil || cfg.Count < 1 || cfg.Count > fleet.MaxCount {
		return FleetConfig{}, bad("count", "is not a number of devices", fmt.Sprintf("1 to %d", fleet.MaxCount))
	}
	cfg.Prefix = vals["prefix"]
	if cfg.Seed, err = strconv.ParseInt(vals["seed"], 10, 64); err != nil {
		return FleetConfig{}, bad("seed", "is not an integer", "e.g. 42")
	}
	if cfg.SummaryInterval, err = time.ParseDuration(vals["summary-interval"]); err != nil || cfg.SummaryInterval < 0 {
		return FleetConfig{}, bad("summary-interval", "is not a duration", "e.g. 10s, or 0 for none")
	}
	if cfg.ConnectConcurrency, err = strconv.Atoi(vals["connect-concurrency"]); err != nil || cfg.ConnectConcurrency < 1 {
		return FleetConfig{}, bad("connect-concurrency", "is not a positive number", "e.g. 64")
	}
	for _, fr := range []struct {
		flag string
		dst  *float64
	}{
		{"offline", &cfg.Faults.Offline}, {"flapping", &cfg.Faults.Flapping}, {"slow", &cfg.Faults.Slow},
		{"failing", &cfg.Faults.Failing}, {"unresponsive", &cfg.Faults.Unresponsive},
	} {
		v, err := strconv.ParseFloat(vals[fr.flag], 64)
		if err != nil || v < 0 || v > 1 || math.IsNaN(v) {
			return FleetConfig{}, bad(fr.flag, "is not a fraction", "a number from 0 to 1, e.g. 0.05 for 5% of the devices")
		}
		*fr.dst = v
	}
	if cfg.Faults.Tutorial, err = fleet.ParseShare(vals["tutorial"]); err != nil {
		return FleetConfig{}, fmt.Errorf("--tutorial (%s): %w", fleetEnv("tutorial"), err)
	}
	if cfg.Faults.SlowFactor, err = strconv.ParseFloat(vals["slow-factor"], 64); err != nil || !(cfg.Faults.SlowFactor >= 1) || math.IsInf(cfg.Faults.SlowFactor, 0) {
		return FleetConfig{}, bad("slow-factor", "is not a factor of at least 1", "e.g. 3")
	}
	if cfg.Faults.FlapInterval, err = time.ParseDuration(vals["flap-interval"]); err != nil || cfg.Faults.FlapInterval <= 0 {
		return FleetConfig{}, bad("flap-interval", "is not a positive duration", "e.g. 30s")
	}
	if cfg.Tags, err = fleet.ParseTags(vals["tags"]); err != nil {
		return FleetConfig{}, fmt.Errorf("--tags (%s) %q: %w", fleetEnv("tags"), vals["tags"], err)
	}
	if err := cfg.DeviceLogLevel.UnmarshalText([]byte(vals["device-log-level"])); err != nil {
		return FleetConfig{}, bad("device-log-level", "is not a level", "debug, info, warn or error")
	}
	return cfg, cfg.Validate()
}

// Validate checks the settings New does not: the service connection
// string and the shared device settings.
func (c FleetConfig) Validate() error {
	if strings.TrimSpace(c.ServiceConnectionString) == "" {
		return fmt.Errorf("%s is not set: a fleet registers its devices through a service connection string (%s)", envHubConnectionString, hubconn.ServiceForm)
	}
	if _, err := hubconn.ParseService(envHubConnectionString, c.ServiceConnectionString); err != nil {
		return err
	}
	if err := validateCommon(c.CAFile, c.Broker, c.RebootDuration, c.RebootStyle, c.StageDuration, c.FirmwareVersion, c.LogFormat); err != nil {
		return err
	}
	_, err := c.newFleet(nil, nil)
	return err
}

// newFleet builds the fleet, which checks the rest of the configuration.
func (c FleetConfig) newFleet(logger, deviceLogger *slog.Logger) (*fleet.Fleet, error) {
	svc, err := hubconn.ParseService(envHubConnectionString, c.ServiceConnectionString)
	if err != nil {
		return nil, err
	}
	fc := fleet.Config{
		Count:              c.Count,
		Prefix:             c.Prefix,
		Seed:               c.Seed,
		Faults:             c.Faults,
		Tags:               c.Tags,
		Service:            svc,
		CAFile:             c.CAFile,
		Brokers:            c.Brokers,
		RebootDuration:     c.RebootDuration,
		RebootStyle:        c.RebootStyle,
		StageDuration:      c.StageDuration,
		FirmwareVersion:    c.FirmwareVersion,
		ConnectConcurrency: c.ConnectConcurrency,
		SummaryInterval:    c.SummaryInterval,
		Logger:             logger,
		DeviceLogger:       deviceLogger,
	}
	f, err := fleet.New(fc)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	return f, nil
}

func runFleet(ctx context.Context, cfg FleetConfig, stderr io.Writer) error {
	logger, err := logging.New(cfg.LogFormat, stderr, slog.LevelInfo)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	deviceLogger, err := logging.New(cfg.LogFormat, stderr, cfg.DeviceLogLevel)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	f, err := cfg.newFleet(logger, deviceLogger)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	logger.Info("simdevice fleet starting", "devices", cfg.Count, "prefix", cfg.Prefix, "seed", cfg.Seed,
		"tutorial", cfg.Faults.Tutorial, "stage_duration", cfg.StageDuration.String(), "reboot_duration", cfg.RebootDuration.String())
	if err := f.Run(ctx); err != nil {
		return err
	}
	logger.Info("simdevice fleet stopped")
	return nil
}
