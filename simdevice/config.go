package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/pflag"

	"github.com/dmflow/dmflow/internal/deviceid"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/logging"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/internal/sim/device"
)

// Setting names, quoted in errors so a user knows what to change.
const (
	envDeviceConnectionString = settings.DeviceConnectionString
	envHubConnectionString    = settings.HubConnectionString
	envDeviceID               = "DMFLOW_DEVICE_ID"
	envHubCAFile              = settings.HubCAFile
	envBroker                 = settings.MQTTBroker
	envRebootDuration         = "DMFLOW_REBOOT_DURATION"
	envRebootStyle            = "DMFLOW_REBOOT_STYLE"
	envStageDuration          = "DMFLOW_STAGE_DURATION"
	envFirmwareVersion        = "DMFLOW_FIRMWARE_VERSION"
	envFailStage              = "DMFLOW_FAIL_STAGE"
	// The contract settings name the simulator: a stack shares one
	// environment, and "contract" alone could mean anything there.
	envContract  = "DMFLOW_SIM_CONTRACT"
	envAnswer    = "DMFLOW_SIM_ANSWER"
	envLogFormat = settings.LogFormat

	// settingDeviceCS names the device connection string in errors.
	settingDeviceCS = envDeviceConnectionString + " (--connection-string)"
)

// Config is simdevice's whole configuration. The device is given either by
// its connection string or by its ID plus a service connection string, with
// which simdevice registers the device if needed.
type Config struct {
	ConnectionString string
	DeviceID         string
	deviceSettings
	// FailStage makes every firmware update fail in this stage.
	FailStage string
	// Contract is device.ContractDmflow or device.ContractTutorial.
	Contract string
	// Answer is the tutorial device's firmwareUpdate answer form,
	// device.AnswerObject or device.AnswerString.
	Answer string
}

// deviceSettings are the settings one device and a fleet share.
type deviceSettings struct {
	ServiceConnectionString string
	CAFile                  string
	Broker                  string
	RebootDuration          time.Duration
	RebootStyle             string
	StageDuration           time.Duration
	FirmwareVersion         string
	LogFormat               string
}

// flagValues are the raw flag values; empty means "not given".
type flagValues struct {
	connectionString, deviceID, caFile, broker, rebootDuration, rebootStyle, logFormat string
	stageDuration, firmwareVersion, failStage, contract, answer                        string
}

func (f *flagValues) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.connectionString, "connection-string", "", "device connection string "+hubconn.DeviceForm+" (env "+envDeviceConnectionString+"); prefer the env: flags show in ps")
	fs.StringVar(&f.deviceID, "device-id", "", "device ID, registered through "+envHubConnectionString+" if new (env "+envDeviceID+"); used when no device connection string is given")
	fs.StringVar(&f.caFile, "ca-file", "", "PEM file of extra CA roots for the hub, e.g. localhub's ca.pem (env "+envHubCAFile+")")
	fs.StringVar(&f.broker, "broker", "", "MQTT broker URL, e.g. tls://127.0.0.1:8883; for a fleet a comma-separated list the devices take in turn, to spread it over addresses (env "+envBroker+", default tls://<HostName>:8883)")
	fs.StringVar(&f.rebootDuration, "reboot-duration", "", "how long a reboot takes (env "+envRebootDuration+", default 20s)")
	fs.StringVar(&f.rebootStyle, "reboot-style", "", "rebootDevice behaviour "+device.Styles+": tutorial answers after the reboot, realistic answers at once and goes offline (env "+envRebootStyle+", default tutorial)")
	fs.StringVar(&f.stageDuration, "stage-duration", "", "how long each firmware-update stage (downloading, applying, completed) takes (env "+envStageDuration+", default 15s)")
	fs.StringVar(&f.firmwareVersion, "firmware-version", "", "firmware version the device runs until an update installs another; a version in the twin wins (env "+envFirmwareVersion+", default "+device.DefaultFirmwareVersion+")")
	fs.StringVar(&f.failStage, "fail-stage", "", "make every firmware update fail in this stage, "+device.FailStages+" (env "+envFailStage+", default none)")
	fs.StringVar(&f.contract, "contract", "", "device contract "+device.Contracts+": dmflow adds request and update IDs, versions and error states to the tutorials' methods; tutorial plays the tutorials' device apps exactly (env "+envContract+", default "+device.ContractDmflow+")")
	fs.StringVar(&f.answer, "answer", "", "how a tutorial device answers firmwareUpdate, "+device.Answers+`: the object {"Response": …} or a JSON string holding that text (env `+envAnswer+", default "+device.AnswerObject+")")
	fs.StringVar(&f.logFormat, "log-format", "", "log format "+logging.Formats+" (env "+envLogFormat+", default text)")
}

// resolve applies flags over the environment over the defaults.
func (f flagValues) resolve(getenv func(string) string) (Config, error) {
	shared, err := f.resolveShared(getenv)
	if err != nil {
		return Config{}, err
	}
	pick := func(flag, env, def string) string { return settings.Pick(getenv, flag, env, def) }
	cfg := Config{
		ConnectionString: pick(f.connectionString, envDeviceConnectionString, ""),
		DeviceID:         pick(f.deviceID, envDeviceID, ""),
		deviceSettings:   shared,
		FailStage:        pick(f.failStage, envFailStage, ""),
		Contract:         pick(f.contract, envContract, device.ContractDmflow),
		Answer:           pick(f.answer, envAnswer, device.AnswerObject),
	}
	return cfg, cfg.Validate()
}

// resolveShared resolves the settings one device and a fleet share: flags over the environment
// over the defaults.
func (f flagValues) resolveShared(getenv func(string) string) (deviceSettings, error) {
	pick := func(flag, env, def string) string { return settings.Pick(getenv, flag, env, def) }
	s := deviceSettings{
		ServiceConnectionString: getenv(envHubConnectionString),
		CAFile:                  pick(f.caFile, envHubCAFile, ""),
		Broker:                  pick(f.broker, envBroker, ""),
		RebootStyle:             pick(f.rebootStyle, envRebootStyle, device.StyleTutorial),
		FirmwareVersion:         pick(f.firmwareVersion, envFirmwareVersion, device.DefaultFirmwareVersion),
		LogFormat:               pick(f.logFormat, envLogFormat, "text"),
	}
	var err error
	if s.RebootDuration, err = parseDuration(pick(f.rebootDuration, envRebootDuration, device.DefaultRebootDuration.String()), "--reboot-duration", envRebootDuration); err != nil {
		return deviceSettings{}, err
	}
	if s.StageDuration, err = parseDuration(pick(f.stageDuration, envStageDuration, device.DefaultStageDuration.String()), "--stage-duration", envStageDuration); err != nil {
		return deviceSettings{}, err
	}
	return s, nil
}

func parseDuration(s, flag, env string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s (%s) %q is not a duration: use a positive duration such as 20s or 1m30s", flag, env, s)
	}
	return d, nil
}

// Validate checks every setting and names the one to fix. Errors never
// quote a connection string.
func (c Config) Validate() error {
	if err := c.validateIdentity(); err != nil {
		return err
	}
	if err := c.validateFailStage(); err != nil {
		return err
	}
	if err := c.validateContract(); err != nil {
		return err
	}
	if strings.Contains(c.Broker, ",") {
		return fmt.Errorf("--broker (%s) %q is a list: one device dials one broker, e.g. tls://127.0.0.1:8883; lists spread a fleet (simdevice fleet) over addresses", envBroker, c.Broker)
	}
	return validateCommon(c.CAFile, c.Broker, c.RebootDuration, c.RebootStyle, c.StageDuration, c.FirmwareVersion, c.LogFormat)
}

func (c Config) validateFailStage() error {
	switch c.FailStage {
	case "", protocol.StatusDownloading, protocol.StatusApplying:
		return nil
	}
	return fmt.Errorf("--fail-stage (%s) %q is not known: use %s, or leave it empty", envFailStage, c.FailStage, device.FailStages)
}

// validateContract checks the contract, the answer form and what goes
// with the tutorial contract.
func (c Config) validateContract() error {
	switch c.Contract {
	case device.ContractDmflow, device.ContractTutorial:
	default:
		return fmt.Errorf("--contract (%s) %q is not known: use %s", envContract, c.Contract, device.Contracts)
	}
	switch c.Answer {
	case device.AnswerObject, device.AnswerString:
	default:
		return fmt.Errorf("--answer (%s) %q is not known: use %s", envAnswer, c.Answer, device.Answers)
	}
	if c.Contract == device.ContractDmflow {
		if c.Answer != device.AnswerObject {
			return fmt.Errorf("--answer (%s) %s needs --contract %s (%s): the dmflow contract answers objects", envAnswer, c.Answer, device.ContractTutorial, envContract)
		}
		return nil
	}
	if c.RebootStyle != device.StyleTutorial {
		return fmt.Errorf("--reboot-style (%s) %s does not go with --contract tutorial (%s): the tutorial's device answers after its reboot; leave --reboot-style at %s", envRebootStyle, c.RebootStyle, envContract, device.StyleTutorial)
	}
	if c.FailStage != "" {
		return fmt.Errorf("--fail-stage (%s) does not go with --contract tutorial (%s): the tutorial's device has no error state", envFailStage, envContract)
	}
	return nil
}

// validateCommon checks the settings a single device and a fleet share.
func validateCommon(caFile, broker string, rebootDuration time.Duration, rebootStyle string, stageDuration time.Duration, firmwareVersion, logFormat string) error {
	if caFile != "" {
		if _, err := os.Stat(caFile); err != nil {
			return fmt.Errorf("--ca-file (%s) %s cannot be read (%v): point it at localhub's ca.pem, or leave it empty for Azure IoT Hub", envHubCAFile, caFile, err)
		}
		if _, err := hubconn.TLSConfig(caFile); err != nil {
			return fmt.Errorf("--ca-file (%s): %w", envHubCAFile, err)
		}
	}
	if _, err := parseBrokers(broker); err != nil {
		return err
	}
	if rebootDuration <= 0 {
		return fmt.Errorf("--reboot-duration (%s) %s is not positive: use a duration such as 20s", envRebootDuration, rebootDuration)
	}
	if stageDuration <= 0 {
		return fmt.Errorf("--stage-duration (%s) %s is not positive: use a duration such as 15s", envStageDuration, stageDuration)
	}
	switch rebootStyle {
	case device.StyleTutorial, device.StyleRealistic:
	default:
		return fmt.Errorf("--reboot-style (%s) %q is not known: use %s", envRebootStyle, rebootStyle, device.Styles)
	}
	if firmwareVersion == "" || len(firmwareVersion) > 128 || strings.IndexFunc(firmwareVersion, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return fmt.Errorf("--firmware-version (%s) %q is not a version: use up to 128 printable characters, e.g. 1.0.0", envFirmwareVersion, firmwareVersion)
	}
	switch logFormat {
	case "text", "json":
	default:
		return fmt.Errorf("--log-format (%s) %q is not known: use %s", envLogFormat, logFormat, logging.Formats)
	}
	return nil
}

func (c Config) validateIdentity() error {
	if c.ConnectionString != "" {
		d, err := hubconn.ParseDevice(settingDeviceCS, c.ConnectionString)
		if err != nil {
			return err
		}
		if c.DeviceID != "" && c.DeviceID != d.DeviceID {
			return fmt.Errorf("--device-id (%s) %q differs from the DeviceId %q in %s: give only one of them", envDeviceID, c.DeviceID, d.DeviceID, settingDeviceCS)
		}
		return nil
	}
	if c.DeviceID == "" {
		return fmt.Errorf("%s is not set: export the device connection string (%s), or set --device-id (%s) together with %s to register the device", settingDeviceCS, hubconn.DeviceForm, envDeviceID, envHubConnectionString)
	}
	if err := deviceid.Check(c.DeviceID); err != nil {
		return fmt.Errorf("--device-id (%s): %w", envDeviceID, err)
	}
	if strings.TrimSpace(c.ServiceConnectionString) == "" {
		return fmt.Errorf("%s is not set: with --device-id simdevice registers the device through a service connection string (%s); or export %s instead", envHubConnectionString, hubconn.ServiceForm, envDeviceConnectionString)
	}
	_, err := hubconn.ParseService(envHubConnectionString, c.ServiceConnectionString)
	return err
}

// parseBrokers splits --broker at commas into its URLs: none when it is
// empty (the hub's own broker), else one for a device and one or more for
// a fleet, which spreads its devices over them (fleet.Config.Brokers).
func parseBrokers(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	brokers := make([]string, 0, len(parts))
	for i, b := range parts {
		b = strings.TrimSpace(b)
		err := fmt.Errorf("is empty")
		if b != "" {
			err = checkBroker(b)
		}
		if err != nil {
			if len(parts) == 1 {
				return nil, fmt.Errorf("--broker (%s) %q %v: expected tls://<host>:<port>, e.g. tls://127.0.0.1:8883", envBroker, s, err)
			}
			return nil, fmt.Errorf("--broker (%s) %q: URL %d of %d %q %v: expected comma-separated tls://<host>:<port>, e.g. tls://127.0.0.1:8883,tls://127.0.0.2:8883", envBroker, s, i+1, len(parts), b, err)
		}
		brokers = append(brokers, b)
	}
	return brokers, nil
}

func checkBroker(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("is not a URL")
	}
	switch u.Scheme {
	case "tls", "ssl", "mqtts", "tcp", "mqtt", "ws", "wss":
	default:
		return fmt.Errorf("has no known scheme")
	}
	if _, port, err := net.SplitHostPort(u.Host); err != nil || port == "" {
		return fmt.Errorf("has no host:port")
	}
	return nil
}
