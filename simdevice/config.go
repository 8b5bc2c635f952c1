package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/dmflow/dmflow/internal/device"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/logging"
	"github.com/dmflow/dmflow/internal/settings"
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
	envLogFormat              = settings.LogFormat

	// settingDeviceCS names the device connection string in errors.
	settingDeviceCS = envDeviceConnectionString + " (--connection-string)"
)

// Config is simdevice's whole configuration. The device is given either by
// its connection string or by its ID plus a service connection string, with
// which simdevice registers the device if needed.
type Config struct {
	ConnectionString        string
	DeviceID                string
	ServiceConnectionString string
	CAFile                  string
	Broker                  string
	RebootDuration          time.Duration
	RebootStyle             string
	LogFormat               string
}

// flagValues are the raw flag values; empty means "not given".
type flagValues struct {
	connectionString, deviceID, caFile, broker, rebootDuration, rebootStyle, logFormat string
}

func (f *flagValues) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.connectionString, "connection-string", "", "device connection string "+hubconn.DeviceForm+" (env "+envDeviceConnectionString+"); prefer the env: flags show in ps")
	fs.StringVar(&f.deviceID, "device-id", "", "device ID, registered through "+envHubConnectionString+" if new (env "+envDeviceID+"); used when no device connection string is given")
	fs.StringVar(&f.caFile, "ca-file", "", "PEM file of extra CA roots for the hub, e.g. localhub's ca.pem (env "+envHubCAFile+")")
	fs.StringVar(&f.broker, "broker", "", "MQTT broker URL, e.g. tls://127.0.0.1:8883 (env "+envBroker+", default tls://<HostName>:8883)")
	fs.StringVar(&f.rebootDuration, "reboot-duration", "", "how long a reboot takes (env "+envRebootDuration+", default 20s)")
	fs.StringVar(&f.rebootStyle, "reboot-style", "", "rebootDevice behaviour "+device.Styles+": tutorial answers after the reboot, realistic answers at once and goes offline (env "+envRebootStyle+", default tutorial)")
	fs.StringVar(&f.logFormat, "log-format", "", "log format "+logging.Formats+" (env "+envLogFormat+", default text)")
}

// resolve applies flags over the environment over the defaults.
func (f flagValues) resolve(getenv func(string) string) (Config, error) {
	pick := func(flag, env, def string) string { return settings.Pick(getenv, flag, env, def) }
	cfg := Config{
		ConnectionString:        pick(f.connectionString, envDeviceConnectionString, ""),
		DeviceID:                pick(f.deviceID, envDeviceID, ""),
		ServiceConnectionString: getenv(envHubConnectionString),
		CAFile:                  pick(f.caFile, envHubCAFile, ""),
		Broker:                  pick(f.broker, envBroker, ""),
		RebootStyle:             pick(f.rebootStyle, envRebootStyle, device.StyleTutorial),
		LogFormat:               pick(f.logFormat, envLogFormat, "text"),
	}
	d := pick(f.rebootDuration, envRebootDuration, device.DefaultRebootDuration.String())
	var err error
	if cfg.RebootDuration, err = time.ParseDuration(d); err != nil {
		return Config{}, fmt.Errorf("--reboot-duration (%s) %q is not a duration: use a positive duration such as 20s or 1m30s", envRebootDuration, d)
	}
	return cfg, cfg.Validate()
}

// Validate checks every setting and names the one to fix. Errors never
// quote a connection string.
func (c Config) Validate() error {
	if err := c.validateIdentity(); err != nil {
		return err
	}
	if c.CAFile != "" {
		if _, err := os.Stat(c.CAFile); err != nil {
			return fmt.Errorf("--ca-file (%s) %s cannot be read (%v): point it at localhub's ca.pem, or leave it empty for Azure IoT Hub", envHubCAFile, c.CAFile, err)
		}
	}
	if c.Broker != "" {
		if err := checkBroker(c.Broker); err != nil {
			return fmt.Errorf("--broker (%s) %q %v: expected tls://<host>:<port>, e.g. tls://127.0.0.1:8883", envBroker, c.Broker, err)
		}
	}
	if c.RebootDuration <= 0 {
		return fmt.Errorf("--reboot-duration (%s) %s is not positive: use a duration such as 20s", envRebootDuration, c.RebootDuration)
	}
	switch c.RebootStyle {
	case device.StyleTutorial, device.StyleRealistic:
	default:
		return fmt.Errorf("--reboot-style (%s) %q is not known: use %s", envRebootStyle, c.RebootStyle, device.Styles)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("--log-format (%s) %q is not known: use %s", envLogFormat, c.LogFormat, logging.Formats)
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
	if err := checkDeviceID(c.DeviceID); err != nil {
		return fmt.Errorf("--device-id (%s) %q %v", envDeviceID, c.DeviceID, err)
	}
	if strings.TrimSpace(c.ServiceConnectionString) == "" {
		return fmt.Errorf("%s is not set: with --device-id simdevice registers the device through a service connection string (%s); or export %s instead", envHubConnectionString, hubconn.ServiceForm, envDeviceConnectionString)
	}
	_, err := hubconn.ParseService(envHubConnectionString, c.ServiceConnectionString)
	return err
}

// deviceIDChars are the characters IoT Hub allows in a device ID besides
// ASCII letters and digits.
const deviceIDChars = "-.+%_#*?!(),:=@$'"

func checkDeviceID(id string) error {
	if len(id) > 128 {
		return fmt.Errorf("is longer than 128 characters")
	}
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune(deviceIDChars, r):
		default:
			return fmt.Errorf("has the character %q: use ASCII letters, digits and %s", r, deviceIDChars)
		}
	}
	return nil
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
