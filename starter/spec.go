package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/pflag"
)

// A rollout spec is what a rollout does: its targets, its operation, its waves and limits and its
// maintenance windows. rollout start and schedule create take it the same way, as flags or as a
// spec file (--spec), whose fields map one to one onto the flags (specFields); a flag given on the
// command line overrides the file's field.

// specFlags are the rollout spec's flags, after the spec file's fields were merged in.
type specFlags struct {
	spec string // --spec FILE

	name        string
	query       string
	devices     []string
	devicesFile string

	firmware      string
	version       string
	reboot        bool
	stageTimeout  time.Duration
	deadline      time.Duration
	methodTimeout time.Duration

	canary        int
	growth        float64
	maxConcurrent int
	rate          string
	maxFailures   string
	minDevices    int
	retryFailed   bool
	devicesPerRun int

	reconcile bool
	windows   []string
	// fileWindows are the spec file's windows, checked; used unless --window is given.
	fileWindows []workflows.Window
	// fromFile names the flags whose value came from the spec file: flag → field ("firmware.version").
	fromFile map[string]string

	// Approval gates, success condition and end time (spec_gates.go); clock tells --end-at's
	// "now" and time zone.
	approveAfterWave string
	pauseBelow       string
	endAt            string
	endAfter         time.Duration
	endBehavior      string
	clock            clock
	// Retries by failure type (rollout_retries.go).
	retries      int
	retryOn      []string
	retryBackoff time.Duration
	maxTimeouts  string
	maxOffline   string
	// rollback (policy 1): --rollback-firmware, --rollback-version, --rollback-include.
	rollbackFirmware string
	rollbackVersion  string
	rollbackInclude  string
	// Start rate (spec_rate.go): --max-per-minute, --ramp, --ramp-max.
	maxPerMinute int
	ramp         string
	rampMax      int
	// Continuous targeting (policy 3): --continuous, --until, --look-every (rollout_continuous.go).
	continuous   bool
	until        string
	lookEvery    time.Duration
	lookInterval time.Duration
}

// addSpecFlags defines the spec flags; withName adds --name (rollout start: a schedule names its
// rollouts itself).
func addSpecFlags(fl *pflag.FlagSet, f *specFlags, withName bool) {
	fl.StringVar(&f.spec, "spec", "", `rollout spec file, YAML or JSON ("-" for standard input): the same fields as these flags, which override it`)
	if withName {
		fl.StringVarP(&f.name, "name", "n", "", "rollout name: letters, digits and -._: up to 64 characters, e.g. fw-2.0 (required)")
	}
	fl.StringVarP(&f.query, "query", "q", "", `targets by IoT Hub device query: SELECT * FROM devices [WHERE …]`)
	fl.StringSliceVar(&f.devices, "devices", nil, "targets by device ID, comma-separated")
	fl.StringVar(&f.devicesFile, "devices-file", "", `targets from a file of device IDs, one per line ("-" for standard input)`)
	fl.StringVar(&f.firmware, "firmware", "", "firmware update: http(s) URI of the image, without credentials")
	fl.StringVar(&f.version, "version", "", "firmware update: the version the image holds (required with --firmware)")
	fl.BoolVar(&f.reboot, "reboot", false, "with --firmware: reboot each device after its update; alone: a reboot rollout")
	fl.DurationVar(&f.stageTimeout, "stage-timeout", 0, "firmware update: how long a device may take for each stage (default 2m)")
	fl.DurationVar(&f.deadline, "deadline", 0, "time budget per device, a firmware update's reboot included (default 15m for a firmware update, 5m for a reboot)")
	fl.DurationVar(&f.methodTimeout, "method-timeout", 0, "reboot: how long the hub waits for rebootDevice's answer (5s–300s; default 60s)")
	fl.IntVar(&f.canary, "canary", 0, fmt.Sprintf("devices in the first wave (default %d)", workflows.DefaultCanary))
	fl.Float64Var(&f.growth, "growth", 0, fmt.Sprintf("each wave is this many times the size of the one before, 1–100 (default %g)", workflows.DefaultGrowth))
	fl.IntVar(&f.maxConcurrent, "max-concurrent", 0, fmt.Sprintf("most devices in flight at once, up to %d (default %d)", workflows.MaxConcurrentLimit, workflows.DefaultMaxConcurrent))
	fl.StringVar(&f.rate, "rate", "", `most IoT Hub calls per second for the whole rollout: 100/s, 6000/min or 100 (per second); default no limit`)
	fl.StringVar(&f.maxFailures, "max-failures", "", fmt.Sprintf(`failure threshold: a device count (5) or a percentage (5%%) (default %s)`, workflows.DefaultMaxFailures))
	fl.IntVar(&f.minDevices, "min-devices", 0, fmt.Sprintf("devices that must have finished before the overall percentage applies (default %d)", workflows.DefaultMinDevices))
	fl.BoolVar(&f.retryFailed, "retry-failed", false, "run the failed devices once more at the end")
	fl.BoolVar(&f.reconcile, "reconcile", false, "firmware update: target only the devices whose reported firmwareVersion differs from --version or is missing, among --query (default: every device)")
	// StringArray, not StringSlice: a cron start holds commas (0 2 * * SAT,SUN).
	fl.StringArrayVar(&f.windows, "window", nil, `maintenance window, repeatable: "0 2 * * SUN for 4h in Europe/Warsaw" (cron start, duration, time zone) or "2026-11-29T02:00:00Z/4h" (start/end or start/duration)`)
	fl.IntVar(&f.devicesPerRun, "devices-per-run", 0, "devices a workflow run starts before it continues as new")
	_ = fl.MarkHidden("devices-per-run")
	addGateFlags(fl, f)
	addRetryFlags(fl, f)
	addRollbackFlags(fl, f) // rollback (policy 1)
	addStartRateFlags(fl, f)
	addContinuousFlags(fl, f)
}

// specHelp documents the spec flags and the spec file, for the commands' long help.
var specHelp = `Targets, one of:
  --query "SELECT * FROM devices WHERE tags.ring = 'beta'"
        an IoT Hub device query (whole twins: SELECT * FROM devices [WHERE …])
  --devices a,b,c
        device IDs
  --devices-file ids.txt
        one device ID per line; blank lines and lines starting with # are
        ignored, as is a # comment after the ID; "-" reads standard input
The targets are resolved a page of 1,000 at a time, as the waves need them, with
no limit on their number (a device list: at most ` + strconv.Itoa(workflows.MaxDeviceListBytes/1024) + ` KB of IDs), and run
in device-ID order within each page.

Operation, one of:
  --firmware URI --version V [--reboot] [--stage-timeout D] [--deadline D]
        a firmware update per device (see starter firmware --help); devices
        that already report V are skipped; with --reboot each device is
        rebooted after its update and must then report V
  --reboot [--method-timeout D] [--deadline D]
        a reboot per device (see starter reboot --help)

Reconcile: --reconcile (firmware only) targets only the devices whose reported
firmwareVersion differs from --version or was never reported: those of
--query, or every device of the hub without one. Made for recurring use: a
weekly schedule with --reconcile updates the devices that drifted or joined
since the last run, and a run with nothing to do completes at once.

Waves: the first wave has --canary devices, each next one --growth times as
many. The rollout aborts when more devices of a wave fail than --max-failures
allows of the wave's size, or more of all devices finished so far, once
--min-devices have finished. --retry-failed runs the failed devices once more
at the end (unless the rollout aborted or was cancelled).

` + retrySpecHelp + `
` + rollbackHelp + `
Start rate: --max-per-minute N starts at most N devices a minute over the
whole rollout (on top of the hub budget, which paces hub calls); --ramp 2x@50
doubles it each time 50 more devices have succeeded, up to --ramp-max N
starts a minute. A ramp needs --max-per-minute, the rate it starts from.

Maintenance windows (--window, repeatable): devices start only while a window
is open; devices in flight finish. Recurring: "<cron> for <duration> [in
<time zone>]", e.g. "0 2 * * SUN for 4h in Europe/Warsaw" (time zone default
UTC); absolute: "<start>/<end>" or "<start>/<duration>" in RFC 3339, e.g.
"2026-11-29T02:00:00+01:00/4h".

` + gatesHelp + `
` + continuousHelp + `

Spec file (--spec rollout.yaml, YAML or JSON, "-" for standard input): the
same fields as the flags, camelCase, e.g.
  query: SELECT * FROM devices WHERE tags.ring = 'beta'
  firmware: {uri: https://fw.example/v2.1.bin, version: 2.1.0, reboot: false,
             stageTimeout: 2m, deadline: 15m}
  canary: 5
  growth: 2
  maxConcurrent: 50
  rate: 50/s
  maxFailures: 10%
  reconcile: true
  rollback: {uri: https://fw.example/v2.0.bin, version: 2.0.0, include: updated}
  maxPerMinute: 20
  ramp: {factor: 2, every: 50, max: 1000}   # or ramp: 2x@50
  windows: ["0 2 * * SUN for 4h in Europe/Warsaw",
            {cron: "0 2 * * SAT", duration: 4h, timeZone: Europe/Warsaw},
            {start: "2026-12-24T00:00:00Z", end: "2026-12-27T00:00:00Z"}]
  approveAfterWave: 1          # or each
  pauseBelow: 95%
  endAt: 2026-11-29T18:00:00+01:00   # or endAfter: 4h
  endBehavior: stop            # or cancel
` + retryFieldsHelp + `
Also name, devices (a list), devicesFile (relative to the spec file),
minDevices, retryFailed, and for a reboot rollout reboot: true or
reboot: {methodTimeout: 60s, deadline: 5m}. Durations are Go durations (90s,
2m, 1h30m). Unknown fields and bad values are refused, naming the field. A
flag given on the command line overrides the file's field (--window and
--devices replace the file's list; any target flag replaces the file's
targets). examples/rollout.yaml is a commented example.`

// input checks the spec (the file, then the flags over it) and builds the workflow input; every
// problem is a usage error, all of them at once. stdin is read for --spec - or --devices-file -.
// changed tells which flags the command line set. schedule, when set, is the name of the schedule
// the rollout belongs to: the input then has no Name (each run names itself), and the spec none.
func (f *specFlags) input(stdin io.Reader, changed func(flag string) bool, schedule string) (workflows.RolloutInput, error) {
	if f.spec != "" {
		if err := f.mergeFile(stdin, changed, schedule != ""); err != nil {
			return workflows.RolloutInput{}, err
		}
	}
	var problems []string
	in := workflows.RolloutInput{
		Name:          f.name,
		Query:         strings.TrimSpace(f.query),
		Canary:        f.canary,
		Growth:        f.growth,
		MaxConcurrent: f.maxConcurrent,
		MaxFailures:   strings.TrimSpace(f.maxFailures),
		MinDevices:    f.minDevices,
		RetryFailed:   f.retryFailed,
		DevicesPerRun: f.devicesPerRun,
		Reconcile:     f.reconcile,
	}
	if schedule == "" && f.name == "" {
		problems = append(problems, "--name is required: name the rollout, e.g. --name fw-2.0")
	}

	var given []string
	for _, t := range []struct {
		flag string
		set  bool
	}{{"query", in.Query != ""}, {"devices", len(f.devices) > 0}, {"devices-file", f.devicesFile != ""}} {
		if t.set {
			given = append(given, f.field(t.flag))
		}
	}
	switch {
	case len(given) == 0 && f.reconcile:
		// Every device of the hub whose version differs.
	case len(given) == 0:
		problems = append(problems, `no targets: give --query "SELECT * FROM devices WHERE tags.ring = 'beta'", --devices a,b,c or --devices-file ids.txt`)
	case len(given) > 1:
		problems = append(problems, fmt.Sprintf("%s: give the targets one way only", strings.Join(given, " and ")))
	case len(f.devices) > 0:
		ids, err := checkDeviceIDs(f.devices)
		if err != nil {
			problems = append(problems, f.field("devices")+": "+err.Error())
		}
		in.Devices = ids
	case f.devicesFile != "":
		if f.devicesFile == "-" && f.spec == "-" {
			problems = append(problems, "--spec - and --devices-file - both read standard input: give one of them as a file")
			break
		}
		ids, err := readDeviceFile(f.devicesFile, stdin)
		if err != nil {
			problems = append(problems, f.field("devices-file")+" "+err.Error())
		}
		in.Devices = ids
	}

	switch {
	case f.firmware != "":
		in.Operation = workflows.OperationFirmware
		in.Firmware = &workflows.RolloutFirmware{PackageURI: f.firmware, Version: f.version,
			StageTimeout: f.stageTimeout, Deadline: f.deadline, Reboot: f.reboot}
		if f.version == "" {
			problems = append(problems, fmt.Sprintf("%s needs %s: the version the image holds, e.g. 2.0.0 (devices already on it are skipped)",
				f.field("firmware"), f.fieldLike("version", "firmware")))
		}
		if f.methodTimeout != 0 {
			problems = append(problems, f.field("method-timeout")+" belongs to a reboot rollout (--reboot without --firmware); the reboot after a firmware update uses the default")
		}
	case f.reboot:
		in.Operation = workflows.OperationReboot
		if f.methodTimeout != 0 || f.deadline != 0 {
			in.Reboot = &workflows.RolloutReboot{MethodTimeout: f.methodTimeout, Deadline: f.deadline}
		}
		if f.version != "" || f.stageTimeout != 0 {
			problems = append(problems, "--version and --stage-timeout belong to a firmware update: add --firmware URI, or drop them for a reboot rollout")
		}
		if f.reconcile {
			problems = append(problems, f.field("reconcile")+" belongs to a firmware update: it targets the devices whose firmwareVersion differs from --version")
		}
	default:
		problems = append(problems, "no operation: give --firmware URI --version V for a firmware update (add --reboot to reboot afterwards), or --reboot alone for a reboot")
	}

	rate, err := parseRate(f.rate)
	if err != nil {
		problems = append(problems, fmt.Sprintf("%s %q: %v", f.field("rate"), strings.TrimSpace(f.rate), err))
	}
	in.Rate = rate
	problems = append(problems, f.startRateInput(&in)...)

	if _, ok := f.fromFile["window"]; ok {
		in.Windows = f.fileWindows
	} else {
		for _, s := range f.windows {
			w, err := workflows.ParseWindow(s)
			if err != nil {
				problems = append(problems, "--window: "+err.Error())
				continue
			}
			in.Windows = append(in.Windows, w)
		}
	}

	problems = append(problems, f.gatesInput(&in, schedule != "")...)

	problems = append(problems, f.retryInput(&in, changed)...)
	problems = append(problems, f.rollbackInput(&in)...) // rollback (policy 1)

	problems = append(problems, f.continuousInput(&in)...)
	if len(problems) > 0 {
		return workflows.RolloutInput{}, cli.UsageError{Err: errors.New(strings.Join(problems, "; "))}
	}
	if schedule != "" {
		// Validate the input as the schedule's runs will start it: named <schedule>-<time>.
		in.Schedule, in.Name = schedule, schedule+"-2006-01-02T15:04:05Z"
	}
	if err := in.Validate(); err != nil {
		return workflows.RolloutInput{}, cli.UsageError{Err: err}
	}
	if schedule != "" {
		in.Name = ""
	}
	return in, nil
}

// field names a flag's value for a message: the spec file's field when it came from there
// ("firmware.version in rollout.yaml"), else the flag ("--version").
func (f *specFlags) field(flag string) string {
	if path, ok := f.fromFile[flag]; ok {
		return path + " in " + specSource(f.spec)
	}
	return "--" + flag
}

// fieldLike names a flag that was not given in the form its partner was given: a spec file's
// firmware.uri lacks firmware.version, a --firmware lacks --version.
func (f *specFlags) fieldLike(flag, partner string) string {
	if _, ok := f.fromFile[partner]; ok {
		return specFields[flag] + " in " + specSource(f.spec)
	}
	return "--" + flag
}

// specSource names the spec file in messages.
func specSource(path string) string {
	if path == "-" {
		return "the spec on standard input"
	}
	return path
}

// targetFlags select the targets: one of them on the command line replaces the file's targets.
var targetFlags = []string{"query", "devices", "devices-file"}

// mergeFile reads the spec file and takes each of its fields whose flag the command line did not
// set.
func (f *specFlags) mergeFile(stdin io.Reader, changed func(string) bool, scheduled bool) error {
	var data []byte
	var err error
	dir := "."
	if f.spec == "-" {
		data, err = io.ReadAll(io.LimitReader(stdin, maxSpecSize+1))
	} else {
		data, err = os.ReadFile(f.spec)
		dir = filepath.Dir(f.spec)
		if err != nil {
			err = fileProblem(err, "a rollout spec file (YAML or JSON, see examples/rollout.yaml), or - for standard input")
		}
	}
	if err != nil {
		return cli.UsageError{Err: fmt.Errorf("--spec %s: %w", f.spec, err)}
	}
	doc, err := parseSpec(data, f.spec)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	if scheduled && doc.set["name"] != "" {
		return cli.UsageError{Err: fmt.Errorf("%s: name: a schedule's rollouts are named <schedule>-<time>: remove name from the spec, or start it with starter rollout start", specSource(f.spec))}
	}
	if doc.set["devices-file"] != "" && doc.v.devicesFile != "-" && !filepath.IsAbs(doc.v.devicesFile) {
		doc.v.devicesFile = filepath.Join(dir, doc.v.devicesFile)
	}
	targetsOnCommandLine := false
	for _, fl := range targetFlags {
		targetsOnCommandLine = targetsOnCommandLine || changed(fl)
	}
	f.fromFile = map[string]string{}
	for flag, path := range doc.set {
		if changed(flag) || targetsOnCommandLine && contains(targetFlags, flag) {
			continue
		}
		f.fromFile[flag] = path
		if f.mergeStartRate(flag, doc.v) {
			continue
		}
		switch flag {
		case "name":
			f.name = doc.v.name
		case "query":
			f.query = doc.v.query
		case "devices":
			f.devices = doc.v.devices
		case "devices-file":
			f.devicesFile = doc.v.devicesFile
		case "firmware":
			f.firmware = doc.v.firmware
		case "version":
			f.version = doc.v.version
		case "reboot":
			f.reboot = doc.v.reboot
		case "stage-timeout":
			f.stageTimeout = doc.v.stageTimeout
		case "deadline":
			f.deadline = doc.v.deadline
		case "method-timeout":
			f.methodTimeout = doc.v.methodTimeout
		case "canary":
			f.canary = doc.v.canary
		case "growth":
			f.growth = doc.v.growth
		case "max-concurrent":
			f.maxConcurrent = doc.v.maxConcurrent
		case "rate":
			f.rate = doc.v.rate
		case "max-failures":
			f.maxFailures = doc.v.maxFailures
		case "min-devices":
			f.minDevices = doc.v.minDevices
		case "retry-failed":
			f.retryFailed = doc.v.retryFailed
		case "reconcile":
			f.reconcile = doc.v.reconcile
		case "window":
			f.fileWindows = doc.v.fileWindows
		case "retries", "retry-on", "retry-backoff", "max-timeouts", "max-offline":
			f.mergeRetryField(flag, &doc.v)
		case "rollback-firmware", "rollback-version", "rollback-include": // rollback (policy 1)
			f.mergeRollback(flag, doc.v)
		default:
			if !f.mergeGateField(flag, &doc.v) && !f.mergeContinuous(flag, &doc.v) {
				panic("spec field without a flag: " + flag)
			}
		}
	}
	return nil
}

// parseRate reads --rate: calls per second ("100/s", "100"), per minute ("6000/min") or per hour
// ("3600/h"), as calls per second; "" and "0" mean no limit. The error says what is expected; the
// caller names the flag or field.
func parseRate(s string) (float64, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return 0, nil
	}
	num, unit, _ := strings.Cut(s, "/")
	var per float64
	switch strings.TrimSpace(unit) {
	case "", "s", "sec", "second":
		per = 1
	case "m", "min", "minute":
		per = 60
	case "h", "hour":
		per = 3600
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if per == 0 || err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, errors.New("give IoT Hub calls per second or minute, e.g. 100/s, 6000/min or 100 (per second); 0 for no limit")
	}
	return v / per, nil
}

// formatRate writes a rate in calls per second as parseRate reads it.
func formatRate(perSecond float64) string {
	return strconv.FormatFloat(perSecond, 'f', -1, 64) + "/s"
}
