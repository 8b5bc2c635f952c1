//go:build integration

package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/common"
	"github.com/dmflow/dmflow/internal/hubconn"
	localhub "github.com/dmflow/dmflow/internal/sim/hub"
	"go.temporal.io/sdk/client"
)

// env is what TestMain sets up once for every test: binaries, a Temporal
// dev server and a localhub.
var env struct {
	bin          string // directory with worker, starter, simdevice, localhub
	temporalBin  string
	dir          string // scratch directory for state and logs
	temporalAddr string
	hubCS        string // service connection string of localhub
	hubHTTPS     string
	caFile       string
	broker       string // tls://127.0.0.1:port of localhub's MQTT listener
	localhub     *proc
}

// procs started by any test, stopped at the end even if a test forgot.
var (
	procsMu sync.Mutex
	procs   []*proc
)

func TestMain(m *testing.M) {
	code, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration setup:", err)
		code = 1
	} else {
		code = m.Run()
	}
	procsMu.Lock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop()
	}
	procsMu.Unlock()
	if env.dir != "" && code == 0 {
		os.RemoveAll(env.dir)
	} else if env.dir != "" {
		fmt.Fprintln(os.Stderr, "integration: logs kept in", env.dir)
	}
	os.Exit(code)
}

func setup() (int, error) {
	var err error
	env.dir, err = os.MkdirTemp("", "dmflow-it-")
	if err != nil {
		return 1, err
	}
	env.bin = os.Getenv("DMFLOW_BIN_DIR")
	if env.bin == "" {
		// Run by hand (`go test -tags integration ./test/`): build here.
		env.bin = filepath.Join(env.dir, "bin")
		cmd := exec.Command("go", "build", "-o", env.bin+"/", "../worker", "../starter", "../simdevice", "../localhub")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return 1, fmt.Errorf("build commands: %w", err)
		}
	}
	env.temporalBin = os.Getenv("DMFLOW_TEMPORAL_BIN")
	if env.temporalBin == "" {
		env.temporalBin = "../.bin/temporal"
	}
	if _, err := os.Stat(env.temporalBin); err != nil {
		return 1, fmt.Errorf("Temporal CLI not found at %s: run `make temporal` (or `make test`, which builds it)", env.temporalBin)
	}

	// Temporal dev server with a SQLite file, as `make up` runs it.
	port := freePort()
	env.temporalAddr = "127.0.0.1:" + strconv.Itoa(port)
	tp := startProc(nil, "temporal", nil, env.temporalBin, devServerArgs(filepath.Join(env.dir, "temporal.db"), port)...)
	if err := waitTemporal(tp, env.temporalAddr, 60*time.Second); err != nil {
		return 1, err
	}

	// localhub on free ports with its own state dir.
	mqttPort, httpsPort := freePort(), freePort()
	env.broker = "tls://127.0.0.1:" + strconv.Itoa(mqttPort)
	env.hubHTTPS = "127.0.0.1:" + strconv.Itoa(httpsPort)
	hubState := filepath.Join(env.dir, "localhub")
	env.localhub = startProc(nil, "localhub", nil, filepath.Join(env.bin, "localhub"),
		"--state-dir", hubState,
		"--mqtt-addr", "127.0.0.1:"+strconv.Itoa(mqttPort),
		"--https-addr", env.hubHTTPS)
	if err := env.localhub.waitFor("localhub ready", 30*time.Second); err != nil {
		return 1, err
	}
	out, err := exec.Command(filepath.Join(env.bin, "localhub"), "connection-string", "--state-dir", hubState).Output()
	if err != nil {
		return 1, fmt.Errorf("localhub connection-string: %w", err)
	}
	env.hubCS = strings.TrimSpace(string(out))
	env.caFile = filepath.Join(hubState, "ca.pem")
	return 0, nil
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// devServerArgs are the arguments of a Temporal dev server on the SQLite file db and port, with
// dmflow's search attributes.
func devServerArgs(db string, port int) []string {
	return []string{"server", "start-dev",
		"--db-filename", db,
		"--ip", "127.0.0.1", "--port", strconv.Itoa(port), "--headless",
		"--log-level", "warn",
		"--search-attribute", "DmflowDevice=Keyword",
		"--search-attribute", "DmflowOperation=Keyword",
		"--search-attribute", "DmflowTargetVersion=Keyword",
		"--search-attribute", "DmflowRollout=Keyword",
		"--search-attribute", "DmflowRolloutState=Keyword"}
}

// waitTemporal waits until the dev server p answers at addr.
func waitTemporal(p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("temporal dev server exited:\n%s", p.tail(20))
		}
		c, err := client.Dial(client.Options{HostPort: addr, Logger: quietLogger{}})
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(300 * time.Millisecond)
	}
	return fmt.Errorf("temporal dev server not up after %s:\n%s", timeout, p.tail(20))
}

// proc is a child process whose combined output goes to a log file and to
// an in-memory buffer that waitFor searches.
type proc struct {
	name string
	cmd  *exec.Cmd
	logf *os.File

	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error
}

// startProc starts a process; with t set it is stopped when the test ends.
// extraEnv is added to a minimal environment: tests must not depend on (or
// leak) the developer's IOTHUB_* or TEMPORAL_* settings.
func startProc(t *testing.T, name string, extraEnv []string, path string, args ...string) *proc {
	if t != nil {
		t.Helper()
	}
	logPath := filepath.Join(env.dir, name+"-"+strconv.FormatInt(time.Now().UnixNano(), 36)+".log")
	f, err := os.Create(logPath)
	if err != nil {
		panic(err)
	}
	p := &proc{name: name, logf: f, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"TEMPORAL_CONFIG_FILE=" + filepath.Join(env.dir, "no-temporal-profile.toml")}, extraEnv...)
	// Backstop: if the test binary dies, so do its children.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		panic(fmt.Sprintf("start %s: %v", name, err))
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.out.WriteString(line + "\n")
			p.mu.Unlock()
			fmt.Fprintln(f, line)
		}
	}()
	go func() {
		p.err = p.cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	if t != nil {
		t.Cleanup(func() {
			p.stop()
			if t.Failed() {
				t.Logf("%s output (log %s):\n%s", name, logPath, p.tail(40))
			}
		})
	}
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *proc) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.output(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (p *proc) waitFor(pattern string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.output(), pattern) {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited (%v) before %q:\n%s", p.name, p.err, pattern, p.tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s: no %q after %s:\n%s", p.name, pattern, timeout, p.tail(20))
}

// stop ends the process gracefully (SIGTERM, then SIGKILL after 10 s).
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.logf.Close()
}

// kill ends the process at once, as a crash would.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// hubEnv is the environment a worker or simdevice needs for localhub.
func hubEnv(extra ...string) []string {
	return append([]string{
		"IOTHUB_CONNECTION_STRING=" + env.hubCS,
		"DMFLOW_HUB_CA_FILE=" + env.caFile,
		"DMFLOW_MQTT_BROKER=" + env.broker,
		"TEMPORAL_ADDRESS=" + env.temporalAddr,
	}, extra...)
}

func startWorker(t *testing.T, taskQueue string) *proc {
	t.Helper()
	return startWorkerWith(t, hubEnv("DMFLOW_TASK_QUEUE="+taskQueue))
}

// startWorkerWith starts a worker with the environment workerEnv and waits until it is ready.
func startWorkerWith(t *testing.T, workerEnv []string) *proc {
	t.Helper()
	p := startProc(t, "worker", workerEnv, filepath.Join(env.bin, "worker"))
	if err := p.waitFor("worker ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return p
}

// workerMetricsRE finds the metrics URL on the ready line of a worker started with
// DMFLOW_METRICS_ADDRESS (port 0 gets a free one, which only the line tells).
var workerMetricsRE = regexp.MustCompile(`msg="worker ready" .*metrics=(http://\S+)`)

// metricsURL is the metrics URL of worker p.
func metricsURL(t *testing.T, p *proc) string {
	t.Helper()
	m := workerMetricsRE.FindStringSubmatch(p.output())
	if m == nil {
		t.Fatalf("worker ready line without metrics=: %s", p.tail(5))
	}
	return m[1]
}

// ownHub is a localhub of a test's own: fresh state, free ports, flags (throttles) of its own.
type ownHub struct {
	cs, caFile, https, mqtt string
	// mqttHost is the host its MQTT listener binds: 127.0.0.1, or 0.0.0.0 to accept on every
	// loopback address (fleet.LoopbackBrokers); empty: the host of mqtt.
	mqttHost string
	proc     *proc
	// name, state and args (the flags beyond state and addresses) start it again (restartHub).
	name, state string
	args        []string
}

var localhubReady = regexp.MustCompile(`localhub ready host=\S+ mqtt=(\S+) https=(\S+)`)

// startOwnHub starts a localhub with args added to its state directory and ports.
func startOwnHub(t *testing.T, name string, args ...string) ownHub {
	t.Helper()
	return startOwnHubOn(t, name, "127.0.0.1", args...)
}

// startOwnHubOn is startOwnHub with its MQTT listener on mqttHost: 0.0.0.0 accepts on every
// loopback address, for a fleet spread over them (fleet.LoopbackBrokers). localhub's ready line,
// and so the hub's mqtt, still name 127.0.0.1.
func startOwnHubOn(t *testing.T, name, mqttHost string, args ...string) ownHub {
	t.Helper()
	state, err := os.MkdirTemp(env.dir, name+"-")
	if err != nil {
		t.Fatal(err)
	}
	h := runHub(t, ownHub{name: name, state: state, args: args, mqttHost: mqttHost, mqtt: net.JoinHostPort(mqttHost, "0"), https: "127.0.0.1:0"})
	out, err := exec.Command(filepath.Join(env.bin, "localhub"), "connection-string", "--state-dir", state).Output()
	if err != nil {
		t.Fatalf("localhub connection-string: %v", err)
	}
	h.cs, h.caFile = strings.TrimSpace(string(out)), filepath.Join(state, "ca.pem")
	return h
}

// runHub starts localhub h on h.mqtt (bound to h.mqttHost when set) and h.https (port 0: free
// ones) and returns h with the process and the addresses it listens on.
func runHub(t *testing.T, h ownHub) ownHub {
	t.Helper()
	mqttAddr := h.mqtt
	if _, port, err := net.SplitHostPort(h.mqtt); err == nil && h.mqttHost != "" {
		// A restart binds the wildcard again, not the loopback address the ready line named.
		mqttAddr = net.JoinHostPort(h.mqttHost, port)
	}
	args := append([]string{"--state-dir", h.state, "--mqtt-addr", mqttAddr, "--https-addr", h.https, "--log-format", "text"}, h.args...)
	p := startProc(t, h.name, nil, filepath.Join(env.bin, "localhub"), args...)
	if err := p.waitFor("localhub ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	m := localhubReady.FindStringSubmatch(p.output())
	if m == nil {
		t.Fatalf("localhub: no addresses in %q", p.tail(5))
	}
	h.proc, h.mqtt, h.https = p, m[1], m[2]
	return h
}

// restartHub stops localhub h (SIGTERM: it saves its method log) and starts it again on the same
// state directory and ports: devices reconnect to it, service clients find it where it was.
func restartHub(t *testing.T, h ownHub, down time.Duration) ownHub {
	t.Helper()
	h.proc.stop()
	time.Sleep(down)
	was := h
	h = runHub(t, h)
	if h.mqtt != was.mqtt || h.https != was.https {
		t.Fatalf("localhub restarted on %s and %s, not %s and %s", h.mqtt, h.https, was.mqtt, was.https)
	}
	return h
}

// env is the environment of a worker or fleet on this hub and the shared Temporal dev server.
func (h ownHub) env(extra ...string) []string {
	return append([]string{
		"IOTHUB_CONNECTION_STRING=" + h.cs,
		"DMFLOW_HUB_CA_FILE=" + h.caFile,
		"DMFLOW_MQTT_BROKER=tls://" + h.mqtt,
		"TEMPORAL_ADDRESS=" + env.temporalAddr,
	}, extra...)
}

// stats reads the hub's stats, with the throttling counts.
func (h ownHub) stats(t *testing.T) hubStats {
	t.Helper()
	return statsOf(t, h.cs, h.caFile, h.https)
}

// perSecondSince is, by operation, what the hub admitted per whole second from since on (see
// perSecondSince).
func (h ownHub) perSecondSince(t *testing.T, since time.Time) map[string]localhub.PeakRecord {
	t.Helper()
	return perSecondSince(t, h.cs, h.caFile, h.https, since)
}

func startDevice(t *testing.T, deviceID string, args ...string) *proc {
	t.Helper()
	p := startProc(t, "simdevice-"+deviceID, hubEnv(),
		filepath.Join(env.bin, "simdevice"), append([]string{"--device-id", deviceID}, args...)...)
	if err := p.waitFor("simdevice ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return p
}

// runStarter runs the starter to completion and returns stdout, stderr and
// the exit code.
func runStarter(t *testing.T, timeout time.Duration, args ...string) (string, string, int) {
	t.Helper()
	return runStarterAt(t, env.temporalAddr, timeout, args...)
}

// runStarterAt runs the starter against the Temporal server at temporalAddr.
func runStarterAt(t *testing.T, temporalAddr string, timeout time.Duration, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(env.bin, "starter"), args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"TEMPORAL_ADDRESS=" + temporalAddr,
		"TEMPORAL_CONFIG_FILE=" + filepath.Join(env.dir, "no-temporal-profile.toml")}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("starter %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

func temporalClient(t *testing.T) client.Client {
	t.Helper()
	return temporalClientAt(t, env.temporalAddr)
}

// temporalClientAt is a client of the Temporal server at addr, closed when the test ends.
func temporalClientAt(t *testing.T, addr string) client.Client {
	t.Helper()
	c, err := client.Dial(client.Options{HostPort: addr, Logger: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// hubStats is what localhub's stats endpoint says.
type hubStats struct {
	MethodInvocations map[string]map[string]int `json:"methodInvocations"`
	ServiceTwinReads  map[string]int            `json:"serviceTwinReads"`
	// Throttled counts requests refused (429) by operation: methods,
	// twinReads, twinUpdates, queries, registry, connections, telemetry.
	Throttled map[string]int `json:"throttled"`
	// PerSecond is, by operation, the requests admitted (not throttled) per whole second of the
	// hub's clock: the peak, its second and the total since the hub started (see perSecondSince
	// for a later start).
	PerSecond map[string]localhub.PeakRecord `json:"perSecond"`
}

// stats reads the test localhub's stats endpoint with the service key.
func stats(t *testing.T) hubStats {
	t.Helper()
	return statsOf(t, env.hubCS, env.caFile, env.hubHTTPS)
}

// statsOf reads the stats endpoint of the localhub at httpsAddr, whose service connection string
// is cs and CA caFile.
func statsOf(t *testing.T, cs, caFile, httpsAddr string) hubStats {
	t.Helper()
	return readStats(t, cs, caFile, httpsAddr, "/_localhub/stats")
}

// perSecondSince is, by operation, what the localhub at httpsAddr admitted per whole second from
// since on (the second since falls in included), with the seconds listed: a test takes since
// before the phase it checks and compares each Peak with the budget. A record's From is later
// than since when since is beyond the ten minutes localhub keeps.
func perSecondSince(t *testing.T, cs, caFile, httpsAddr string, since time.Time) map[string]localhub.PeakRecord {
	t.Helper()
	return readStats(t, cs, caFile, httpsAddr, "/_localhub/stats?since="+url.QueryEscape(since.Format(time.RFC3339Nano))).PerSecond
}

func readStats(t *testing.T, cs, caFile, httpsAddr, path string) hubStats {
	t.Helper()
	body := hubGet(t, cs, caFile, httpsAddr, path)
	var st hubStats
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("stats %s: %v", body, err)
	}
	return st
}

// hubGet reads path of the localhub at httpsAddr with a service token and returns the body of a
// 200 answer.
func hubGet(t *testing.T, cs, caFile, httpsAddr, path string) []byte {
	t.Helper()
	s, err := hubconn.ParseService("hub", cs)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := hubconn.TLSConfig(caFile)
	if err != nil {
		t.Fatal(err)
	}
	sak, err := common.ParseConnectionString(s.String(), "HostName", "SharedAccessKeyName", "SharedAccessKey")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := common.NewSharedAccessSignature(sak["HostName"], sak["SharedAccessKeyName"], sak["SharedAccessKey"], time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+httpsAddr+path, nil)
	req.Header.Set("Authorization", tok.String())
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tlsCfg.RootCAs, ServerName: "localhost"}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d: %s", path, resp.StatusCode, body)
	}
	return body
}

// methodInvocations is how many times localhub delivered a method to a device.
func methodInvocations(t *testing.T, deviceID, method string) int {
	t.Helper()
	return stats(t).MethodInvocations[deviceID][method]
}

// serviceTwinReads is how many times the service side read a device's twin.
func serviceTwinReads(t *testing.T, deviceID string) int {
	t.Helper()
	return stats(t).ServiceTwinReads[deviceID]
}

// quietLogger keeps the SDK's connection chatter out of test output.
type quietLogger struct{}

func (quietLogger) Debug(string, ...any) {}
func (quietLogger) Info(string, ...any)  {}
func (quietLogger) Warn(string, ...any)  {}
func (quietLogger) Error(string, ...any) {}
