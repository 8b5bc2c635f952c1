// Package fleet runs a fleet of simulated devices (internal/sim/device) in one
// process, each with its own MQTT connection, for rollouts and failure
// tests at scale: `simdevice fleet` is a thin main around it, and tests
// start it in-process against localhub.
//
// A Fleet registers its identities through the service connection string
// (in bulk, see Register), assigns fault profiles and device contracts
// (a share of tutorial devices, Faults.Tutorial) from a seed (see Plan),
// connects its devices with bounded concurrency so that TLS handshakes do
// not pile up, and logs one summary line per interval. Devices are named
// <prefix><index>, the index zero-padded to the width of the count, at
// least three digits: dev-001 … dev-100.
package fleet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/sim/device"
)

// Defaults of Config.
const (
	DefaultPrefix = "dev-"
	// DefaultConnectConcurrency bounds the devices connecting at once. A
	// connect is a TLS handshake, an MQTT CONNECT, a twin read and patch
	// and two subscriptions; a few dozen at a time keep both the fleet and
	// the hub busy without timing handshakes out on two cores.
	DefaultConnectConcurrency = 64
	// DefaultRegisterConcurrency bounds concurrent registry requests.
	DefaultRegisterConcurrency = 8
	// MaxCount is the largest fleet Config accepts.
	MaxCount = 1_000_000
)

// startTimeout is how long a connect worker waits for one device before it
// moves on; the device keeps trying in the background.
const startTimeout = time.Minute

// logSample is how many device IDs a profile line lists.
const logSample = 5

// Config configures a Fleet.
type Config struct {
	// Count is the number of devices, 1 to MaxCount.
	Count int
	// Prefix starts every device ID. Default DefaultPrefix.
	Prefix string
	// Seed picks the devices of each fault profile (see Plan).
	Seed int64
	// Faults are the fault profiles' fractions.
	Faults Faults
	// Tags are set on the devices' twins after registering, before
	// connecting, as PlanTags assigns them by Seed (see ParseTags).
	Tags []TagRule
	// Service registers the identities (the iothubowner policy or one
	// with registry write rights).
	Service hubconn.Service
	// CAFile is a PEM file of extra trusted roots (localhub's ca.pem),
	// for the service and the devices.
	CAFile string
	// Brokers override the devices' MQTT broker URL (default
	// tls://<HostName>:8883): device i (its index in Members) dials
	// Brokers[i mod len(Brokers)]. A list spreads a large fleet over
	// several addresses of one hub, e.g. tls://127.0.0.1:8883 and
	// tls://127.0.0.2:8883 for a localhub listening on 0.0.0.0: Linux
	// gives connections from one source address to one address and port
	// some 28,000 ephemeral ports (net.ipv4.ip_local_port_range), fewer
	// than a fleet of 100,000 needs. Devices still check the hub's
	// certificate against the connection string's HostName, not the
	// address they dial (see hubconn.DeviceOptions.Broker).
	Brokers []string

	// RebootDuration, RebootStyle, StageDuration and FirmwareVersion are
	// every device's (see device.Config); slow devices multiply the
	// durations by Faults.SlowFactor. Devices on the tutorial contract
	// reboot in device.StyleTutorial whatever RebootStyle says, and have
	// no version to report.
	RebootDuration  time.Duration
	RebootStyle     string
	StageDuration   time.Duration
	FirmwareVersion string

	// ConnectConcurrency bounds the devices connecting at once. Default
	// DefaultConnectConcurrency.
	ConnectConcurrency int
	// RegisterConcurrency bounds concurrent registry requests. Default
	// DefaultRegisterConcurrency.
	RegisterConcurrency int
	// SummaryInterval is how often Run logs a summary line; zero: never.
	SummaryInterval time.Duration

	// Logger receives the fleet's own log: profiles, registration,
	// summaries. Default: discard.
	Logger *slog.Logger
	// DeviceLogger receives the devices' logs. Default: discard; a fleet
	// of thousands logs a lot at info level.
	DeviceLogger *slog.Logger
}

// Fleet is a set of simulated devices. Create it with New and start it
// with Run.
type Fleet struct {
	cfg     Config
	log     *slog.Logger
	members []Member
	// tls is the devices' shared TLS configuration.
	tls *tls.Config

	ready     chan struct{}
	readyOnce sync.Once

	mu      sync.Mutex
	devices []*device.Device // by member index; nil while not built or offline
	byID    map[string]int

	connectFailed atomic.Int64
}

// New checks cfg, fills its defaults and plans the profiles.
func New(cfg Config) (*Fleet, error) {
	if cfg.Count < 1 || cfg.Count > MaxCount {
		return nil, fmt.Errorf("count %d is out of range: use 1 to %d devices", cfg.Count, MaxCount)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if err := validPrefix(cfg.Prefix); err != nil {
		return nil, err
	}
	if err := cfg.Faults.fill(); err != nil {
		return nil, err
	}
	if cfg.Service.HostName == "" {
		return nil, fmt.Errorf("service connection string is missing: parse it with hubconn.ParseService (%s)", hubconn.ServiceForm)
	}
	if cfg.RebootDuration == 0 {
		cfg.RebootDuration = device.DefaultRebootDuration
	}
	if cfg.StageDuration == 0 {
		cfg.StageDuration = device.DefaultStageDuration
	}
	if cfg.RebootDuration < 0 || cfg.StageDuration < 0 {
		return nil, errors.New("reboot and stage durations must be positive: use e.g. 20s and 15s")
	}
	if cfg.ConnectConcurrency <= 0 {
		cfg.ConnectConcurrency = DefaultConnectConcurrency
	}
	if cfg.RegisterConcurrency <= 0 {
		cfg.RegisterConcurrency = DefaultRegisterConcurrency
	}
	for i, b := range cfg.Brokers {
		if strings.TrimSpace(b) == "" {
			return nil, fmt.Errorf("broker %d of %d is empty: give broker URLs such as tls://127.0.0.1:8883, or none for tls://<HostName>:8883", i+1, len(cfg.Brokers))
		}
	}
	if cfg.SummaryInterval < 0 {
		return nil, fmt.Errorf("summary interval %s is negative: use e.g. 10s, or 0 for none", cfg.SummaryInterval)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DeviceLogger == nil {
		cfg.DeviceLogger = slog.New(slog.DiscardHandler)
	}
	tlsCfg, err := hubconn.TLSConfig(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	// Connecting thousands of devices is TLS-bound on both ends. Plain
	// X25519 spares the post-quantum hybrid key share Go offers by
	// default, and a shared session cache lets every device after the
	// first resume a session (no certificate chain to verify, no server
	// signature): the MQTT CONNECT, not TLS, authenticates the device.
	// One configuration serves every broker of Brokers: each device's
	// client sets ServerName to the hub's host name, which also keys the
	// session cache, so a session from one address of the hub resumes on
	// the others.
	tlsCfg.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	tlsCfg.ClientSessionCache = tls.NewLRUClientSessionCache(0)
	f := &Fleet{
		cfg:     cfg,
		tls:     tlsCfg,
		log:     cfg.Logger,
		members: Plan(cfg.Prefix, cfg.Count, cfg.Seed, cfg.Faults),
		ready:   make(chan struct{}),
		devices: make([]*device.Device, cfg.Count),
		byID:    make(map[string]int, cfg.Count),
	}
	for i, m := range f.members {
		f.byID[m.ID] = i
	}
	// Fail now, not per device in Run, on a setting every device shares
	// (style, version).
	if _, err := device.New(f.deviceConfig(0, Member{ID: "check", Profile: Healthy}, hubconn.Device{HostName: "check", DeviceID: "check"})); err != nil {
		return nil, err
	}
	return f, nil
}

// Members returns the devices and their profiles, in ID order.
func (f *Fleet) Members() []Member { return append([]Member(nil), f.members...) }

// Device returns the running device id, or nil when it is offline, not
// started yet or not a member.
func (f *Fleet) Device(id string) *device.Device {
	i, ok := f.byID[id]
	if !ok {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.devices[i]
}

// Ready is closed once every device that connects has been started and
// has connected or given up (a device still trying goes on in the
// background).
func (f *Fleet) Ready() <-chan struct{} { return f.ready }

// Stats is a snapshot of the fleet.
type Stats struct {
	Devices int // members, offline ones included
	Running int // devices started (all but offline)
	// Connected counts devices with an MQTT connection now.
	Connected int
	// Updating counts devices with a firmware update in progress.
	Updating int
	// Completed and Failed count firmware updates since start.
	Completed, Failed int64
	Reboots           int64
	MethodCalls       int64
	// Connections counts MQTT connections established, reconnects
	// included.
	Connections int64
	// ConnectFailed counts devices that stopped because they could not
	// connect for good (refused credentials, untrusted certificate).
	ConnectFailed int64
}

// Stats sums the devices' counters.
func (f *Fleet) Stats() Stats {
	f.mu.Lock()
	devices := append([]*device.Device(nil), f.devices...)
	f.mu.Unlock()
	s := Stats{Devices: len(f.members), ConnectFailed: f.connectFailed.Load()}
	for _, d := range devices {
		if d == nil {
			continue
		}
		s.Running++
		if d.Connected() {
			s.Connected++
		}
		if d.Firmware().Updating {
			s.Updating++
		}
		s.Completed += d.FirmwareApplies()
		s.Failed += d.FirmwareFailures()
		s.Reboots += d.Reboots()
		s.MethodCalls += d.MethodCalls()
		s.Connections += d.Connections()
	}
	return s
}

// Run registers the fleet, connects its devices and serves their methods
// until ctx is done, then stops every device and returns nil. It returns
// an error when registration fails.
func (f *Fleet) Run(ctx context.Context) error {
	f.logProfiles()
	svc, err := hubconn.NewServiceClient(f.cfg.Service, f.cfg.CAFile)
	if err != nil {
		return err
	}
	ids := make([]string, len(f.members))
	for i, m := range f.members {
		ids[i] = m.ID
	}
	reg, err := Register(ctx, svc, ids, f.cfg.RegisterConcurrency, f.log)
	if err == nil {
		if err = ApplyTags(ctx, svc, PlanTags(ids, f.cfg.Seed, f.cfg.Tags), f.cfg.RegisterConcurrency, f.log); err != nil {
			err = fmt.Errorf("tag the fleet: %w", err)
		}
	} else {
		err = fmt.Errorf("register the fleet: %w", err)
	}
	_ = svc.Close()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	go f.summarize(ctx)
	f.start(ctx, reg.Conns, &wg)
	<-ctx.Done()
	f.log.Info("fleet stopping", statsAttrs(f.Stats())...)
	return nil
}

// start builds and runs the devices, ConnectConcurrency at a time, and
// closes Ready when all are started.
func (f *Fleet) start(ctx context.Context, conns []hubconn.Device, wg *sync.WaitGroup) {
	begin := time.Now()
	next := make(chan int)
	var workers sync.WaitGroup
	for range f.cfg.ConnectConcurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for i := range next {
				f.startOne(ctx, i, conns[i], wg)
			}
		}()
	}
	for i, m := range f.members {
		if m.Profile == Offline {
			continue
		}
		select {
		case next <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	workers.Wait()
	st := f.Stats()
	f.log.Info("fleet started", append(statsAttrs(st), "took", time.Since(begin).Round(time.Millisecond).String())...)
	f.readyOnce.Do(func() { close(f.ready) })
}

// startOne runs member i and waits until it is ready, stopped or late.
func (f *Fleet) startOne(ctx context.Context, i int, conn hubconn.Device, wg *sync.WaitGroup) {
	m := f.members[i]
	d, err := device.New(f.deviceConfig(i, m, conn))
	if err != nil {
		f.connectFailed.Add(1)
		f.log.Error("device not started", "device", m.ID, "error", err)
		return
	}
	f.mu.Lock()
	f.devices[i] = d
	f.mu.Unlock()
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(done)
		if err := d.Run(ctx); err != nil {
			f.connectFailed.Add(1)
			f.log.Error("device stopped", "device", m.ID, "error", err)
		}
	}()
	t := time.NewTimer(startTimeout)
	defer t.Stop()
	select {
	case <-d.Ready():
	case <-done:
	case <-ctx.Done():
	case <-t.C:
		f.log.Warn("device not connected yet: moving on", "device", m.ID, "waited", startTimeout.String())
	}
}

// deviceConfig is the device configuration of member m, the i-th.
func (f *Fleet) deviceConfig(i int, m Member, conn hubconn.Device) device.Config {
	c := device.Config{
		ConnectionString: conn,
		TLSConfig:        f.tls,
		Broker:           f.broker(i),
		RebootDuration:   f.cfg.RebootDuration,
		RebootStyle:      f.cfg.RebootStyle,
		StageDuration:    f.cfg.StageDuration,
		FirmwareVersion:  f.cfg.FirmwareVersion,
		Contract:         m.Contract,
		Logger:           f.cfg.DeviceLogger,
	}
	switch m.Profile {
	case Slow:
		c.StageDuration = scale(c.StageDuration, f.cfg.Faults.SlowFactor)
		c.RebootDuration = scale(c.RebootDuration, f.cfg.Faults.SlowFactor)
	case Failing:
		c.FailStage = m.FailStage
	case Flapping:
		c.FlapInterval = f.cfg.Faults.FlapInterval
	case Unresponsive:
		c.Unresponsive = true
	}
	if m.Contract == device.ContractTutorial {
		// The tutorial's device answers after its reboot; Plan never
		// makes a tutorial device Failing.
		c.Answer, c.RebootStyle = m.Answer, device.StyleTutorial
	}
	return c
}

// broker is the broker URL member i dials: Brokers round robin, so that
// every address carries an equal share; empty for the hub's own.
func (f *Fleet) broker(i int) string {
	if len(f.cfg.Brokers) == 0 {
		return ""
	}
	return f.cfg.Brokers[i%len(f.cfg.Brokers)]
}

func scale(d time.Duration, k float64) time.Duration {
	return time.Duration(float64(d) * k)
}

// logProfiles logs one line per profile with its count and first IDs.
func (f *Fleet) logProfiles() {
	type group struct {
		profile Profile
		stage   string
	}
	counts, ids := groupMembers(f.members, func(m Member) group { return group{m.Profile, m.FailStage} })
	for _, p := range Profiles {
		for _, stage := range []string{"", "downloading", "applying"} {
			g := group{p, stage}
			if counts[g] == 0 {
				continue
			}
			attrs := []any{"profile", string(p), "count", counts[g], "devices", ids[g]}
			if stage != "" {
				attrs = append(attrs, "fail_stage", stage)
			}
			f.log.Info("fleet profile", attrs...)
		}
	}
	f.logContracts()
	f.logBrokers()
}

// logBrokers logs, for a fleet spread over several brokers, how many
// devices dial each.
func (f *Fleet) logBrokers() {
	if len(f.cfg.Brokers) < 2 {
		return
	}
	counts := make([]int, len(f.cfg.Brokers))
	for i, m := range f.members {
		if m.Profile != Offline {
			counts[i%len(counts)]++
		}
	}
	for i, b := range f.cfg.Brokers {
		f.log.Info("fleet broker", "broker", b, "devices", counts[i])
	}
}

// logContracts logs one line per contract and answer form with its count
// and first IDs.
func (f *Fleet) logContracts() {
	type group struct{ contract, answer string }
	counts, ids := groupMembers(f.members, func(m Member) group { return group{m.Contract, m.Answer} })
	for _, g := range []group{{device.ContractDmflow, ""}, {device.ContractTutorial, device.AnswerObject}, {device.ContractTutorial, device.AnswerString}} {
		if counts[g] == 0 {
			continue
		}
		attrs := []any{"contract", g.contract, "count", counts[g], "devices", ids[g]}
		if g.answer != "" {
			attrs = []any{"contract", g.contract, "answer", g.answer, "count", counts[g], "devices", ids[g]}
		}
		f.log.Info("fleet contract", attrs...)
	}
}

// groupMembers counts members by key and lists the first logSample IDs of each group, with "…"
// when there are more, for a log line.
func groupMembers[K comparable](members []Member, key func(Member) K) (map[K]int, map[K]string) {
	counts := map[K]int{}
	samples := map[K][]string{}
	for _, m := range members {
		k := key(m)
		counts[k]++
		if len(samples[k]) < logSample {
			samples[k] = append(samples[k], m.ID)
		}
	}
	ids := make(map[K]string, len(samples))
	for k, s := range samples {
		ids[k] = strings.Join(s, ",")
		if counts[k] > len(s) {
			ids[k] += ",…"
		}
	}
	return counts, ids
}

// summarize logs a summary line every SummaryInterval until ctx is done.
func (f *Fleet) summarize(ctx context.Context) {
	if f.cfg.SummaryInterval <= 0 {
		return
	}
	t := time.NewTicker(f.cfg.SummaryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f.log.Info("fleet summary", statsAttrs(f.Stats())...)
		}
	}
}

// statsAttrs are a summary line's attributes: the fleet's counters and
// the process's Go heap and goroutines, to watch a large fleet's cost.
func statsAttrs(s Stats) []any {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return []any{
		"devices", s.Devices, "running", s.Running, "connected", s.Connected,
		"updating", s.Updating, "completed", s.Completed, "failed", s.Failed,
		"reboots", s.Reboots, "method_calls", s.MethodCalls,
		"connections", s.Connections, "connect_failed", s.ConnectFailed,
		"heap_mb", m.HeapInuse >> 20, "goroutines", runtime.NumGoroutine(),
	}
}
