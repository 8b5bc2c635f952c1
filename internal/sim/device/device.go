// Package device simulates an IoT Hub device that serves the remote-reboot
// and firmware-update tutorials' direct methods, so simdevice, tests and a
// fleet of simulated devices (internal/sim/fleet) share one implementation. The
// method names, payload fields and reported properties are those of
// internal/protocol.
//
// A Device connects over MQTT with the unchanged amenzhinsky/iothub client
// and registers rebootDevice and firmwareUpdate.
//
// # Contracts
//
// Config.Contract chooses what the device promises:
//
//   - ContractDmflow (the default) is described below and in firmware.go:
//     the tutorials' methods plus request and update IDs that make a
//     repeated call harmless, firmware versions, error states and RFC 3339
//     times in UTC.
//   - ContractTutorial plays the tutorials' device apps exactly, as do the
//     devices in the field built from them: no IDs (a repeated call reboots
//     or updates again), Python-style local timestamps, no version, no
//     error state, and optionally a JSON-string answer to firmwareUpdate.
//     See tutorial.go. The rest of this comment is about ContractDmflow;
//     the fault settings (Unresponsive, FlapInterval) apply to both.
//
// # rebootDevice
//
// The method is answered in one of two styles:
//
//   - StyleTutorial (the default) answers like the tutorial's device: it
//     "reboots" (sleeps RebootDuration), reports the twin property
//     rebootTime and only then answers 200 with
//     {"Response": "This is the response from the device"}, so the method
//     call lasts as long as the reboot.
//   - StyleRealistic does what real devices do: it answers 200
//     {"Response": "Rebooting"} at once, goes offline for RebootDuration,
//     connects again with a new client and then reports rebootTime, so the
//     caller has to wait for the twin.
//
// A payload may carry "requestId". A repeated call with a request ID that is
// being or has been served does not reboot again; it answers 200 with the
// state of that reboot. Served request IDs are remembered in memory for the
// life of the Device (across simulated reboots), and the last one is
// reported as lastRebootRequestId next to rebootTime, from where a restarted
// process reads it back.
//
// # firmwareUpdate
//
// See firmware.go: the tutorial's stages (downloading, applying, completed)
// reported StageDuration apart, plus the running version, update IDs that
// make a repeated call harmless, and injected failures.
//
// # Faults
//
// For fault profiles a Device can be Unresponsive (it connects and
// subscribes but never answers a method, so the hub times calls out) and
// can flap (FlapInterval: it drops its connection and comes back, again and
// again). A device that never connects is simply one that is not run.
//
// Methods the device does not implement are answered 404 at once rather
// than left to the hub's timeout.
package device

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/protocol"
)

const (
	// ackGrace is how long a realistic device stays online after its
	// handler returned: the client publishes the answer after the handler
	// returns and offers no hook for "answer sent", and closing the
	// connection before the publish is queued would lose it. Real devices
	// likewise schedule the reboot a moment after acknowledging it.
	ackGrace = 500 * time.Millisecond
	// reportMaxElapsed bounds the retries of a realistic device's
	// rebootTime report after it is back online; after that the report is
	// retried when the same request ID is called again.
	reportMaxElapsed = time.Minute
)

// Config configures a Device.
type Config struct {
	// ConnectionString identifies the device and holds its key.
	ConnectionString hubconn.Device
	// CAFile is a PEM file of extra trusted roots (localhub's ca.pem).
	CAFile string
	// TLSConfig, when set, replaces CAFile: the roots the device trusts,
	// built once with hubconn.TLSConfig and shared by a fleet's devices
	// (each clone of the system roots costs some 30 KB).
	TLSConfig *tls.Config
	// Broker overrides the MQTT broker URL (default tls://<HostName>:8883).
	Broker string
	// RebootDuration is how long a reboot takes. Default
	// DefaultRebootDuration.
	RebootDuration time.Duration
	// RebootStyle is StyleTutorial (default) or StyleRealistic. A device
	// on ContractTutorial reboots in StyleTutorial only.
	RebootStyle string

	// Contract is ContractDmflow (default) or ContractTutorial, which
	// plays the tutorials' device apps exactly (see the package
	// documentation and tutorial.go). ContractTutorial takes no FailStage:
	// the tutorial's device has no error state.
	Contract string
	// Answer is how a device on ContractTutorial answers firmwareUpdate:
	// AnswerObject (default), {"Response": "Firmware update started"}, or
	// AnswerString, the JSON string FirmwareStartedText. ContractDmflow
	// answers objects only.
	Answer string

	// FirmwareVersion is the version the device runs when its twin does
	// not say otherwise: the factory image. Once an update completed, the
	// reported firmwareVersion wins, so a restarted process keeps running
	// the updated version. Default DefaultFirmwareVersion.
	FirmwareVersion string
	// StageDuration is how long each firmware-update stage takes. Default
	// DefaultStageDuration, the tutorial's 15 s.
	StageDuration time.Duration
	// FailStage makes every firmware update fail in this stage
	// (protocol.StatusDownloading or protocol.StatusApplying); empty: no
	// failure. See firmware.go.
	FailStage string
	// FailReason is the firmwareError a failing update reports. Default: a
	// reason that names the stage and says it was injected.
	FailReason string

	// Unresponsive makes the device connect and subscribe to its methods
	// but never answer them, so every call times out at the hub.
	Unresponsive bool
	// FlapInterval, when positive, makes the device drop its connection
	// about every FlapInterval (±20%) and come back FlapDowntime later.
	FlapInterval time.Duration
	// FlapDowntime is how long a flapping device stays offline. Default
	// FlapInterval/4, at least 100 ms.
	FlapDowntime time.Duration

	// Logger receives the device's log; "device" is added to every record.
	// Default: discard.
	Logger *slog.Logger
	// Now is the clock for reported timestamps. Default time.Now.
	Now func() time.Time
}

// Device is a simulated device. Create it with New and start it with Run.
type Device struct {
	cfg Config
	log *slog.Logger

	ready     chan struct{}
	readyOnce sync.Once
	// reboot is the reboot protocol's state; see reboot.go.
	reboot *rebootState
	// updates tracks the background firmware updates, which Run waits for.
	updates sync.WaitGroup

	mu sync.Mutex
	// current is the session in use, nil while offline.
	current *session
	// booted is set once a boot of this process read the twin.
	booted bool
	// stopped is set when Run returns; no update starts after it.
	stopped bool
	fw      firmwareState

	connected   atomic.Bool
	reboots     atomic.Int64
	methodCalls atomic.Int64
	connections atomic.Int64
	applies     atomic.Int64
	failures    atomic.Int64
}

// New checks cfg, fills its defaults and returns a Device.
func New(cfg Config) (*Device, error) {
	if cfg.ConnectionString.DeviceID == "" || cfg.ConnectionString.HostName == "" {
		return nil, fmt.Errorf("device connection string is missing: parse it with hubconn.ParseDevice (%s)", hubconn.DeviceForm)
	}
	switch cfg.RebootStyle {
	case "":
		cfg.RebootStyle = StyleTutorial
	case StyleTutorial, StyleRealistic:
	default:
		return nil, fmt.Errorf("reboot style %q is not known: use %s", cfg.RebootStyle, Styles)
	}
	for _, v := range []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"reboot duration", &cfg.RebootDuration, DefaultRebootDuration},
		{"stage duration", &cfg.StageDuration, DefaultStageDuration},
		{"flap interval", &cfg.FlapInterval, 0},
		{"flap downtime", &cfg.FlapDowntime, 0},
	} {
		if *v.d < 0 {
			return nil, fmt.Errorf("%s %s is negative: use a positive duration such as 20s", v.name, *v.d)
		}
		if *v.d == 0 {
			*v.d = v.def
		}
	}
	if cfg.FlapInterval > 0 && cfg.FlapDowntime == 0 {
		cfg.FlapDowntime = max(cfg.FlapInterval/4, minFlapDowntime)
	}
	if cfg.FirmwareVersion == "" {
		cfg.FirmwareVersion = DefaultFirmwareVersion
	}
	if err := checkText(protocol.FieldVersion, cfg.FirmwareVersion); err != nil {
		return nil, fmt.Errorf("firmware version: %w", err)
	}
	switch cfg.FailStage {
	case "", protocol.StatusDownloading, protocol.StatusApplying:
	default:
		return nil, fmt.Errorf("fail stage %q is not known: use %s", cfg.FailStage, FailStages)
	}
	if err := checkContract(&cfg); err != nil {
		return nil, err
	}
	if cfg.FailStage != "" && cfg.FailReason == "" {
		cfg.FailReason = fmt.Sprintf("simulated failure while %s (injected fault)", cfg.FailStage)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := cfg.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return &Device{
		cfg:    cfg,
		log:    l.With("device", cfg.ConnectionString.DeviceID),
		ready:  make(chan struct{}),
		reboot: newRebootState(),
		fw:     firmwareState{version: cfg.FirmwareVersion, served: map[string]*fwUpdate{}},
	}, nil
}

// checkContract fills the contract and answer form and refuses settings
// the contract cannot honour. It runs after the reboot style and fail stage
// are checked.
func checkContract(cfg *Config) error {
	switch cfg.Contract {
	case "":
		cfg.Contract = ContractDmflow
	case ContractDmflow, ContractTutorial:
	default:
		return fmt.Errorf("contract %q is not known: use %s", cfg.Contract, Contracts)
	}
	switch cfg.Answer {
	case "":
		cfg.Answer = AnswerObject
	case AnswerObject, AnswerString:
	default:
		return fmt.Errorf("answer form %q is not known: use %s", cfg.Answer, Answers)
	}
	if cfg.Contract == ContractDmflow {
		if cfg.Answer != AnswerObject {
			return fmt.Errorf("answer form %q needs the tutorial contract: the dmflow contract answers objects", cfg.Answer)
		}
		return nil
	}
	if cfg.RebootStyle != StyleTutorial {
		return fmt.Errorf("reboot style %q does not go with the tutorial contract: the tutorial's device answers after the reboot (style %s)", cfg.RebootStyle, StyleTutorial)
	}
	if cfg.FailStage != "" {
		return fmt.Errorf("fail stage %q does not go with the tutorial contract: the tutorial's device has no error state", cfg.FailStage)
	}
	return nil
}

// ID returns the device ID.
func (d *Device) ID() string { return d.cfg.ConnectionString.DeviceID }

// Ready is closed once the device is first connected with its methods
// registered.
func (d *Device) Ready() <-chan struct{} { return d.ready }

// Connected reports whether the device has an MQTT connection now.
func (d *Device) Connected() bool { return d.connected.Load() }

// Reboots returns the number of reboots performed.
func (d *Device) Reboots() int64 { return d.reboots.Load() }

// MethodCalls returns the number of direct method calls received, known or
// not, repeats included.
func (d *Device) MethodCalls() int64 { return d.methodCalls.Load() }

// Connections returns how many times an MQTT connection was established:
// first connects, automatic reconnects and connects after a realistic
// reboot or a flap.
func (d *Device) Connections() int64 { return d.connections.Load() }

// Run connects and serves direct methods until ctx is done, then
// disconnects and returns nil once its background firmware updates have
// stopped. It returns an error when the device cannot connect for good
// (refused credentials, untrusted certificate); transient failures of the
// first connect are retried with exponential backoff, and a lost connection
// is re-established by the MQTT client. Call Run once.
func (d *Device) Run(ctx context.Context) error {
	defer d.stop()
	s, err := d.connect(ctx, true)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	d.readyOnce.Do(func() { close(d.ready) })
	d.log.Info("device ready", "contract", d.cfg.Contract, "answer", d.cfg.Answer, "style", d.cfg.RebootStyle,
		"reboot_duration", d.cfg.RebootDuration.String(), "firmware_version", d.Firmware().Version,
		"stage_duration", d.cfg.StageDuration.String())
	for {
		var flap <-chan time.Time
		if d.cfg.FlapInterval > 0 {
			// A timer per round; flap is drained or the round ends with
			// the device, so nothing leaks.
			flap = time.After(jitter(d.cfg.FlapInterval))
		}
		restart := false
		select {
		case <-ctx.Done():
			d.closeSession(s)
			d.log.Info("device stopped")
			return nil
		case <-d.reboot.offline:
			// A realistic reboot: answer first (see ackGrace), then go
			// offline.
			if !sleep(ctx, ackGrace) {
				d.closeSession(s)
				return nil
			}
			d.closeSession(s)
			d.log.Info("rebooting: offline", "duration", d.cfg.RebootDuration.String())
			if !sleep(ctx, d.cfg.RebootDuration) {
				return nil
			}
			restart = true
		case <-flap:
			d.closeSession(s)
			d.log.Info("flapping: offline", "duration", d.cfg.FlapDowntime.String())
			if !sleep(ctx, d.cfg.FlapDowntime) {
				return nil
			}
		}
		if s, err = d.connect(ctx, restart); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if restart {
			d.log.Info("device back online after reboot")
		} else {
			d.log.Info("device back online after flapping")
		}
	}
}

// stop waits for the background firmware updates, which end with Run's
// context, and refuses new ones.
func (d *Device) stop() {
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	d.updates.Wait()
}

// jitter spreads d by ±20% so that a fleet's flapping devices do not all
// drop at once.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + rand.N(2*d/5+1)
}

// the first twin request of the session, see session). On the first boot
// of the process it restores what the twin remembers; after a (re)start it
// completes a realistic reboot and reports its firmware state. A device on
// ContractTutorial boots as the tutorial's does (see bootTutorial).
func (d *Device) boot(s *session, restart bool) {
	if d.tutorial() {
		d.bootTutorial(s)
		return
	}
	var reported iotdevice.TwinState
	err := s.call(twinTimeout, func(ctx context.Context) error {
		var err error
		_, reported, err = s.client.RetrieveTwinState(ctx)
		return err
	})
	d.mu.Lock()
	first := !d.booted
	d.booted = d.booted || err == nil
	d.mu.Unlock()
	if err != nil {
		// Not fatal: the device serves methods without it and only lacks
		// what it reported before a process restart. Until a read
		// succeeds it does not report its firmware either, which could
		// overwrite a newer version with the configured one.
		d.log.Warn("read twin failed", "error", err)
	} else {
		d.log.Debug("twin read", "reported_version", reported.Version())
		d.restore(reported)
		if first {
			d.restoreFirmware(reported)
		}
	}
	if !restart {
		return
	}
	d.finishReboot(s)
	if err == nil {
		d.reportFirmwareStart(s)
	}
}

// sleep waits for d or ctx and reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
