package hub

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/sim/hub/sas"
)

// Environment variables read by ConfigFromEnv; each backs the flag of the
// same name in the localhub command.
const (
	EnvStateDir     = "DMFLOW_LOCALHUB_STATE_DIR"
	EnvHost         = "DMFLOW_LOCALHUB_HOST"
	EnvMQTTAddr     = "DMFLOW_LOCALHUB_MQTT_ADDR"
	EnvHTTPSAddr    = "DMFLOW_LOCALHUB_HTTPS_ADDR"
	EnvLogFormat    = "DMFLOW_LOCALHUB_LOG_FORMAT"
	EnvTier         = "DMFLOW_LOCALHUB_TIER"
	EnvUnits        = "DMFLOW_LOCALHUB_UNITS"
	EnvQuotas       = "DMFLOW_LOCALHUB_QUOTAS"         // e.g. methods=500/s,twinReads=1000/s
	EnvNoThrottle   = "DMFLOW_LOCALHUB_NO_THROTTLE"    // true or 1
	EnvStandIns     = "DMFLOW_LOCALHUB_STAND_INS"      // a device ID prefix
	EnvStandInStage = "DMFLOW_LOCALHUB_STAND_IN_STAGE" // e.g. 1s
)

// DefaultStateDir is where localhub keeps its state unless told otherwise.
const DefaultStateDir = ".dmflow/localhub"

// Config is the localhub command's configuration: flags with environment
// fallbacks.
type Config struct {
	StateDir  string
	Host      string
	MQTTAddr  string
	HTTPSAddr string
	LogFormat string // text or json
	// Tier, Units, Quotas and NoThrottle set the throttles; see the
	// Options fields of the same names (NoThrottle is Unlimited).
	Tier       string
	Units      int
	Quotas     map[hubquota.Op]float64
	NoThrottle bool
	// StandIns and StandInStage: see the Options fields of the same names.
	StandIns     string
	StandInStage time.Duration
}

// ConfigFromEnv returns the defaults overridden by the environment, read
// through getenv so that tests need no real environment.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		StateDir:  DefaultStateDir,
		Host:      DefaultHostName,
		MQTTAddr:  DefaultMQTTAddr,
		HTTPSAddr: DefaultHTTPSAddr,
		LogFormat: "text",
		Tier:      hubquota.S1,
		Units:     1,
	}
	for env, dst := range map[string]*string{
		EnvStateDir: &c.StateDir, EnvHost: &c.Host, EnvMQTTAddr: &c.MQTTAddr,
		EnvHTTPSAddr: &c.HTTPSAddr, EnvLogFormat: &c.LogFormat,
	} {
		if v := getenv(env); v != "" {
			*dst = v
		}
	}
	if v := getenv(EnvTier); v != "" {
		c.Tier = v
	}
	if v := getenv(EnvUnits); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return c, fmt.Errorf("%s=%q is not a whole number: set it to the hub's units, e.g. 2, or unset it", EnvUnits, v)
		}
		c.Units = n
	}
	if v := getenv(EnvQuotas); v != "" {
		q, err := hubquota.ParseList(v)
		if err != nil {
			return c, fmt.Errorf("%s: %w", EnvQuotas, err)
		}
		c.Quotas = q
	}
	c.StandIns = getenv(EnvStandIns)
	c.StandInStage = DefaultStandInStage
	if v := getenv(EnvStandInStage); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return c, fmt.Errorf("%s=%q is not a duration: set it to how long a stand-in device's stage takes, e.g. 1s, or unset it", EnvStandInStage, v)
		}
		c.StandInStage = d
	}
	if v := getenv(EnvNoThrottle); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return c, fmt.Errorf("%s=%q is not a boolean: set it to true or false, or unset it", EnvNoThrottle, v)
		}
		c.NoThrottle = b
	}
	return c, nil
}

// Validate checks the configuration; its errors name the flag, the
// environment variable and an example.
func (c Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.StateDir) == "" {
		errs = append(errs, fmt.Errorf("--state-dir is empty: set --state-dir or %s to a directory, e.g. %s", EnvStateDir, DefaultStateDir))
	} else if st, err := os.Stat(c.StateDir); err == nil && !st.IsDir() {
		errs = append(errs, fmt.Errorf("--state-dir %s is a file: set --state-dir or %s to a directory (created if missing), e.g. %s", c.StateDir, EnvStateDir, DefaultStateDir))
	}
	if err := validHost(c.Host); err != nil {
		errs = append(errs, fmt.Errorf("--host %q %v: set --host or %s to a bare host name, e.g. localhost", c.Host, err, EnvHost))
	}
	for _, a := range []struct{ flag, env, value, example string }{
		{"--mqtt-addr", EnvMQTTAddr, c.MQTTAddr, DefaultMQTTAddr},
		{"--https-addr", EnvHTTPSAddr, c.HTTPSAddr, DefaultHTTPSAddr},
	} {
		if err := validListenAddr(a.value); err != nil {
			errs = append(errs, fmt.Errorf("%s %q %v: set %s or %s to [host]:port, e.g. %s", a.flag, a.value, err, a.flag, a.env, a.example))
		}
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("--log-format %q is not known: use text or json (or set %s)", c.LogFormat, EnvLogFormat))
	}
	if _, err := hubquota.NormalTier(c.Tier); err != nil {
		errs = append(errs, fmt.Errorf("--tier: %w (or set %s)", err, EnvTier))
	}
	if c.StandInStage <= 0 {
		errs = append(errs, fmt.Errorf("--stand-in-stage %v: give a positive duration, e.g. 1s (or set %s)", c.StandInStage, EnvStandInStage))
	}
	if c.Units < 1 {
		errs = append(errs, fmt.Errorf("--units %d: a hub has at least 1 unit (or set %s)", c.Units, EnvUnits))
	}
	return errors.Join(errs...)
}

func validHost(h string) error {
	switch {
	case h == "":
		return errors.New("is empty")
	case strings.ContainsAny(h, "/:;= \t@"):
		return errors.New("must not contain a scheme, port, path or separators")
	}
	return nil
}

func validListenAddr(a string) error {
	_, port, err := net.SplitHostPort(a)
	if err != nil {
		return errors.New("is not host:port")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return errors.New("has no port number from 0 to 65535")
	}
	return nil
}

// Options turns the configuration into hub options.
func (c Config) Options(log *slog.Logger) Options {
	return Options{
		StateDir:     c.StateDir,
		HostName:     c.Host,
		MQTTAddr:     c.MQTTAddr,
		HTTPSAddr:    c.HTTPSAddr,
		Logger:       log,
		Tier:         c.Tier,
		Units:        c.Units,
		Quotas:       c.Quotas,
		Unlimited:    c.NoThrottle,
		StandIns:     c.StandIns,
		StandInStage: c.StandInStage,
	}
}

// ServiceConnectionString reads the iothubowner connection string from the
// state directory. It works while localhub runs (the key is in a file of its
// own, not in the locked store) and after it stopped; the port is the one
// the running (or last) localhub published, else the one of HTTPSAddr.
func (c Config) ServiceConnectionString() (string, error) {
	return c.PolicyConnectionString(PolicyName)
}

// CheckDeviceID applies IoT Hub's rule for device IDs to the --device flag.
func CheckDeviceID(id string) error {
	if err := validDeviceID(id); err != nil {
		return fmt.Errorf("--device: %s", err.(*Error).Message)
	}
	return nil
}

// CheckPolicyName checks the --policy flag.
func CheckPolicyName(policy string) error {
	if _, ok := lookupPolicy(policy); !ok {
		return fmt.Errorf("--policy %q is not a shared access policy of localhub: use one of %s", policy, policyNames())
	}
	return nil
}

// PolicyConnectionString is ServiceConnectionString for any of the shared
// access policies (see Policies).
func (c Config) PolicyConnectionString(policy string) (string, error) {
	if err := CheckPolicyName(policy); err != nil {
		return "", err
	}
	key, err := readPolicyKey(c.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no localhub state in %s: start localhub once with --state-dir %s", c.StateDir, c.StateDir)
	}
	if err != nil {
		return "", err
	}
	host, addr := c.Host, c.HTTPSAddr
	if rt, err := readRuntime(c.StateDir); err == nil {
		host, addr = rt.HostName, rt.HTTPSAddr
	}
	if policy == PolicyName {
		return serviceConnectionString(hostPort(host, addr), key), nil
	}
	raw, err := sas.DecodeKey(key)
	if err != nil {
		return "", err
	}
	return policyConnectionString(hostPort(host, addr), raw, policy)
}

// DeviceConnectionString asks the running localhub for the identity of
// deviceID, registering it first if create is set, and returns the device
// connection string. It talks REST with the iothubowner key, like any
// service.
func (c Config) DeviceConnectionString(ctx context.Context, deviceID string, create bool) (string, error) {
	if err := CheckDeviceID(deviceID); err != nil {
		return "", err
	}
	rt, err := readRuntime(c.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("localhub is not running with state dir %s: start it with `localhub --state-dir %s`", c.StateDir, c.StateDir)
	}
	if err != nil {
		return "", err
	}
	key, err := readPolicyKey(c.StateDir)
	if err != nil {
		return "", err
	}
	cl, err := newRESTClient(c.StateDir, rt, key)
	if err != nil {
		return "", err
	}
	var dev deviceView
	status, err := cl.do(ctx, http.MethodGet, "devices/"+url.PathEscape(deviceID), nil, &dev)
	if err == nil && status == http.StatusNotFound && create {
		status, err = cl.do(ctx, http.MethodPut, "devices/"+url.PathEscape(deviceID), map[string]string{"deviceId": deviceID}, &dev)
	}
	switch {
	case err != nil:
		return "", err
	case status == http.StatusNotFound:
		return "", fmt.Errorf("device %q is not registered: add --create to register it", deviceID)
	case dev.Authentication.SymmetricKey == nil:
		return "", fmt.Errorf("device %q has no symmetric key", deviceID)
	}
	return deviceConnectionString(rt.HostName, deviceID, dev.Authentication.SymmetricKey.PrimaryKey), nil
}

// restClient is the minimal service client the command needs.
type restClient struct {
	http    *http.Client
	host    string // host[:port] as the hub names itself, for URLs and tokens
	key     []byte
	baseURL string
}

func newRESTClient(stateDir string, rt runtimeInfo, key string) (*restClient, error) {
	caPEM, err := os.ReadFile(filepath.Join(stateDir, caCertFile))
	if err != nil {
		return nil, fmt.Errorf("read localhub CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no certificate", filepath.Join(stateDir, caCertFile))
	}
	raw, err := sas.DecodeKey(key)
	if err != nil {
		return nil, err
	}
	host := hostPort(rt.HostName, rt.HTTPSAddr)
	// Dial the published address whatever the host name resolves to: the
	// hub may be named after a host that only its clients' DNS knows.
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: rt.HostName, MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, rt.HTTPSAddr)
		},
	}
	return &restClient{
		http:    &http.Client{Transport: transport, Timeout: 30 * time.Second},
		host:    host,
		key:     raw,
		baseURL: "https://" + host + "/",
	}, nil
}

// do sends a request and decodes a 200 answer into out. It returns the
// status; 404 is a status, not an error, other failures are errors.
func (c *restClient) do(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.baseURL+path+"?api-version=2020-09-30", body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", sas.Sign(c.host, c.key, time.Now().Add(time.Hour), PolicyName))
	req.Header.Set("Content-Type", "application/json")
	res, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("localhub is not reachable at %s (is it running?): %w", strings.TrimSuffix(c.baseURL, "/"), err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, maxBodyBytes))
	if err != nil {
		return 0, fmt.Errorf("read localhub answer: %w", err)
	}
	switch res.StatusCode {
	case http.StatusOK:
		if err := json.Unmarshal(raw, out); err != nil {
			return 0, fmt.Errorf("decode localhub answer: %w", err)
		}
		return res.StatusCode, nil
	case http.StatusNotFound:
		return res.StatusCode, nil
	}
	var e errorBody
	if json.Unmarshal(raw, &e) == nil && e.Message != "" {
		return 0, fmt.Errorf("localhub refused %s %s: %s", method, path, e.Message)
	}
	return 0, fmt.Errorf("localhub answered %s %s with HTTP %d", method, path, res.StatusCode)
}
