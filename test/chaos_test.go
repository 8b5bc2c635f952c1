//go:build integration

package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/device"
	"github.com/dmflow/dmflow/internal/sim/fleet"
	localhub "github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/workflows"
	"go.temporal.io/sdk/client"
)

// Chaos: firmware rollouts against real processes while one of them is killed or restarted, the
// hub throttles far below the rollout's rate, or devices misbehave. Every case ends with the same
// check (checkChaos): the rollout completed, every device ended in a terminal state and in the
// one its fault profile implies, the report agrees with localhub's method log (what reached each
// device), with what the devices themselves logged (what each device did: "applied" is a device
// starting the update, which it does once per update ID and logs) and with their twins, and no
// device applied the update twice.
//
// Sizes: `make test` runs each case short (tens of devices, each case about a minute);
// DMFLOW_CHAOS=long (`make chaos`) runs them with 500 to 1,000 devices. Durations in these tests
// bound failures only: nothing asserts how fast a rollout went.

// chaosLong reports whether DMFLOW_CHAOS=long asks for the long cases.
func chaosLong() bool { return os.Getenv("DMFLOW_CHAOS") == "long" }

// sized is short in `make test`, long under DMFLOW_CHAOS=long.
func sized[T any](short, long T) T {
	if chaosLong() {
		return long
	}
	return short
}

// Firmware every chaos rollout installs.
const (
	chaosPackage = "https://fw.example/chaos-2.0.0.bin"
	chaosVersion = "2.0.0"
)

// chaosStack is what a case runs against: a Temporal server (the shared one or its own), a
// localhub (the shared one or its own), a task queue and the worker on it. name prefixes the
// devices, tags them (ring=name) and names the rollout.
type chaosStack struct {
	name         string
	temporalAddr string
	hub          ownHub
	queue        string
	worker       *proc
}

// sharedHub is the localhub TestMain started, as an ownHub.
func sharedHub() ownHub {
	return ownHub{cs: env.hubCS, caFile: env.caFile, https: env.hubHTTPS,
		mqtt: strings.TrimPrefix(env.broker, "tls://"), proc: env.localhub, name: "localhub"}
}

// newChaosStack starts the worker of a case on hub and server (nil: the shared server).
func newChaosStack(t *testing.T, name string, hub ownHub, server *devServer) *chaosStack {
	t.Helper()
	s := &chaosStack{name: name, temporalAddr: env.temporalAddr, hub: hub, queue: "it-" + name}
	if server != nil {
		s.temporalAddr = server.addr
	}
	s.worker = startWorkerWith(t, s.env("DMFLOW_TASK_QUEUE="+s.queue))
	return s
}

// env is the environment of a worker or fleet of the stack.
func (s *chaosStack) env(extra ...string) []string {
	return append([]string{
		"IOTHUB_CONNECTION_STRING=" + s.hub.cs,
		"DMFLOW_HUB_CA_FILE=" + s.hub.caFile,
		"DMFLOW_MQTT_BROKER=tls://" + s.hub.mqtt,
		"TEMPORAL_ADDRESS=" + s.temporalAddr,
	}, extra...)
}

// restartWorker kills the worker (SIGKILL, as a crash) and starts another after down.
func (s *chaosStack) restartWorker(t *testing.T, down time.Duration) {
	t.Helper()
	s.worker.kill()
	time.Sleep(down)
	s.worker = startWorkerWith(t, s.env("DMFLOW_TASK_QUEUE="+s.queue))
}

// starter runs the starter against the stack's Temporal server.
func (s *chaosStack) starter(t *testing.T, timeout time.Duration, args ...string) (string, string, int) {
	t.Helper()
	return runStarterAt(t, s.temporalAddr, timeout, args...)
}

// devServer is a Temporal dev server of a test's own, on a SQLite file and port it keeps across
// restarts.
type devServer struct {
	addr string
	args []string
	proc *proc
}

func startDevServer(t *testing.T) *devServer {
	t.Helper()
	dir, err := os.MkdirTemp(env.dir, "temporal-")
	if err != nil {
		t.Fatal(err)
	}
	port := freePort()
	s := &devServer{addr: "127.0.0.1:" + strconv.Itoa(port), args: devServerArgs(filepath.Join(dir, "temporal.db"), port)}
	s.start(t)
	return s
}

func (s *devServer) start(t *testing.T) {
	t.Helper()
	s.proc = startProc(t, "temporal-own", nil, env.temporalBin, s.args...)
	if err := waitTemporal(s.proc, s.addr, 90*time.Second); err != nil {
		t.Fatal(err)
	}
}

// restart stops the server, with SIGTERM or (kill) SIGKILL, and starts it again after down on
// the same file and port.
func (s *devServer) restart(t *testing.T, kill bool, down time.Duration) {
	t.Helper()
	if kill {
		s.proc.kill()
	} else {
		s.proc.stop()
	}
	time.Sleep(down)
	s.start(t)
}

// chaosFleet is the `simdevice fleet` processes of a stack and the plan of their devices.
type chaosFleet struct {
	procs []*proc
	plan  map[string]fleet.Member
	want  map[string]wantRow // the row each device's profile implies
	ids   []string           // in device-ID order, the report's
}

// output is what the fleet processes logged.
func (f *chaosFleet) output() string {
	var b strings.Builder
	for _, p := range f.procs {
		b.WriteString(p.output())
	}
	return b.String()
}

// add takes in the devices of g, another fleet of the stack.
func (f *chaosFleet) add(g *chaosFleet) {
	f.procs = append(f.procs, g.procs...)
	for id, m := range g.plan {
		f.plan[id], f.want[id] = m, g.want[id]
	}
	f.ids = append(f.ids, g.ids...)
	slices.Sort(f.ids)
}

// startFleet runs count devices named <stack name>-<index> with faults chosen by seed; see
// startFleetAs.
func (s *chaosStack) startFleet(t *testing.T, count int, seed int64, faults fleet.Faults, args ...string) *chaosFleet {
	t.Helper()
	return s.startFleetAs(t, s.name+"-", chaosOldVersion, count, seed, faults, args...)
}

// Versions of chaos fleets: the one devices run before the rollout, unless they already run
// chaosVersion.
const chaosOldVersion = "1.0.0"

// startFleetAs runs count devices named prefix<index> on firmware version, with faults chosen by
// seed, tagged ring=<stack name>, at info level (checkChaos reads what each device did from their
// log), and waits until every device that connects is connected.
func (s *chaosStack) startFleetAs(t *testing.T, prefix, version string, count int, seed int64, faults fleet.Faults, args ...string) *chaosFleet {
	t.Helper()
	f := &chaosFleet{plan: map[string]fleet.Member{}, want: map[string]wantRow{}}
	planned := map[string]int{}
	for _, m := range fleet.Plan(prefix, count, seed, faults) {
		f.plan[m.ID] = m
		f.want[m.ID] = wantFor(m)
		if version == chaosVersion && m.Profile != fleet.Offline && m.Profile != fleet.Unresponsive {
			// Already there: the device workflow reads the version and makes no call.
			f.want[m.ID] = wantRow{result: workflows.DeviceSkipped}
		}
		f.ids = append(f.ids, m.ID)
		planned[string(m.Profile)]++
	}
	slices.Sort(f.ids)
	num := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	flags := []string{"fleet", "--count", strconv.Itoa(count), "--prefix", prefix, "--seed", strconv.FormatInt(seed, 10),
		"--firmware-version", version, "--tags", "ring=" + s.name, "--device-log-level", "info", "--summary-interval", "10s",
		"--offline", num(faults.Offline), "--flapping", num(faults.Flapping), "--slow", num(faults.Slow),
		"--failing", num(faults.Failing), "--unresponsive", num(faults.Unresponsive), "--tutorial", num(faults.Tutorial)}
	if faults.SlowFactor != 0 {
		flags = append(flags, "--slow-factor", num(faults.SlowFactor))
	}
	if faults.FlapInterval != 0 {
		flags = append(flags, "--flap-interval", faults.FlapInterval.String())
	}
	p := startProc(t, "fleet-"+strings.TrimSuffix(prefix, "-"), s.env(), filepath.Join(env.bin, "simdevice"), append(flags, args...)...)
	f.procs = []*proc{p}
	if err := p.waitFor(`msg="fleet started"`, 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	// The process logs how many devices each profile got: it must be this plan, or the
	// expectations below are about other devices.
	got := map[string]int{}
	for _, m := range regexp.MustCompile(`msg="fleet profile" profile=(\w+) count=(\d+)`).FindAllStringSubmatch(p.output(), -1) {
		n, _ := strconv.Atoi(m[2])
		got[m[1]] += n
	}
	if !mapsEqual(got, planned) {
		t.Fatalf("the fleet runs profiles %v, the test's plan %v: internal/sim/fleet.Plan and simdevice fleet disagree", got, planned)
	}
	t.Logf("fleet of %d on %s: %v", count, version, planned)
	return f
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// rolloutWithWorkerKill starts the stack's rollout with args and kills (SIGKILL) and replaces its
// worker once a quarter of the count devices finished with at least 5 in flight. It returns the
// client it watched the rollout with.
func (s *chaosStack) rolloutWithWorkerKill(t *testing.T, count int, args ...string) client.Client {
	t.Helper()
	s.startChaosRollout(t, args...)
	c := temporalClient(t)
	at := s.waitUntil(t, c, "midway", 5*time.Minute, func(p workflows.RolloutProgress) bool {
		return midway(count/4)(p) && p.Running >= 5
	})
	s.restartWorker(t, 2*time.Second)
	t.Logf("worker killed and replaced at %+v", at)
	return c
}

// startChaosRollout starts the firmware rollout named after the stack on its fleet (ring=<name>)
// without waiting; args add limits (canary, concurrency, rate, deadlines).
func (s *chaosStack) startChaosRollout(t *testing.T, args ...string) {
	t.Helper()
	stdout, stderr, code := s.starter(t, time.Minute, append([]string{"rollout", "start", "-o", "json",
		"--name", s.name, "--query", "SELECT * FROM devices WHERE tags.ring = '" + s.name + "'",
		"--firmware", chaosPackage, "--version", chaosVersion, "--task-queue", s.queue}, args...)...)
	var out rolloutLaunch
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || code != 0 || out.RunID == "" {
		t.Fatalf("rollout start: exit %d, output %q, stderr %q (%v)", code, stdout, stderr, err)
	}
}

// waitUntil polls the rollout's progress until cond holds, through server restarts (a failed
// query is tried again); timeout only bounds a failure.
func (s *chaosStack) waitUntil(t *testing.T, c client.Client, what string, timeout time.Duration, cond func(workflows.RolloutProgress) bool) workflows.RolloutProgress {
	t.Helper()
	return waitProgress(t, c, s.name, what, timeout, cond)
}

// midway is a condition for a fault injected mid-rollout: at least done devices finished, and
// some in flight.
func midway(done int) func(workflows.RolloutProgress) bool {
	return func(p workflows.RolloutProgress) bool {
		return p.Succeeded+p.Failed+p.Skipped >= done && p.Running > 0
	}
}

// chaosExpect is what a case tells the checker beyond the fleet's plan.
type chaosExpect struct {
	// deadline is the rollout's per-device deadline: every failed device's workflow must have
	// failed within it (and FollowStages' grace); 0 leaves it unchecked.
	deadline time.Duration
	// lossless says the hub ran throughout: every firmwareUpdate it delivered to a healthy or
	// slow device reached the device's handler, so the device logged a start or a repeat for each.
	lossless bool
}

// deadlineGrace is how long after its deadline a FirmwareUpdate may fail: FollowStages' last read
// (workflows' followGrace, 30 s) and the workflow task that takes in the failure.
const deadlineGrace = 45 * time.Second

// wantRow is the row a device's fault profile implies.
type wantRow struct {
	result     string
	errorTypes []string // for a failed device: one of these
	errorHas   string   // for a failed device: in the error
	// orHas are other texts that may stand in the error instead of errorHas.
	orHas []string
	// busyWith is the update ID of another update the device runs when the rollout reaches it,
	// started by the test: the device refuses the rollout's with 409.
	busyWith string
}

func wantFor(m fleet.Member) wantRow {
	switch m.Profile {
	case fleet.Failing:
		// The device reports firmwareStatus error in its stage: FollowStages fails at once.
		return wantRow{result: workflows.DeviceFailed, errorTypes: []string{activities.ErrDeviceError}, errorHas: m.FailStage}
	case fleet.Offline:
		// Every invocation answered DeviceNotOnline, retried until the deadline.
		return wantRow{result: workflows.DeviceFailed, errorTypes: []string{activities.ErrDeadlineExceeded}, errorHas: "DeviceNotOnline"}
	case fleet.Unresponsive:
		// Every invocation delivered and answered GatewayTimeout by the hub, retried until the
		// deadline.
		return wantRow{result: workflows.DeviceFailed, errorTypes: []string{activities.ErrDeadlineExceeded}, errorHas: "GatewayTimeout"}
	}
	// Healthy, slow (within the stage timeout) and flapping devices (reconnecting within it) end
	// updated.
	return wantRow{result: workflows.DeviceUpdated}
}

// checkChaos waits for the rollout of s to end and checks it against the fleet's plan, localhub's
// method log and the devices' own log. It returns the final progress.
func checkChaos(t *testing.T, s *chaosStack, c client.Client, fl *chaosFleet, timeout time.Duration, x chaosExpect) workflows.RolloutProgress {
	t.Helper()
	name, n := s.name, len(fl.ids)
	s.waitUntil(t, c, "ended", timeout, workflows.RolloutProgress.Done)
	// The operator's view of the end: watch returns the final progress at once.
	stdout, stderr, code := s.starter(t, 2*time.Minute, "rollout", "watch", name, "-o", "json")
	var p workflows.RolloutProgress
	if err := json.Unmarshal([]byte(stdout), &p); err != nil {
		t.Fatalf("rollout watch: exit %d, output %q, stderr %q: %v", code, stdout, stderr, err)
	}
	if p.State != workflows.RolloutCompleted || p.Total != n || p.Running+p.Pending+p.NotStarted+p.Cancelled != 0 {
		t.Errorf("final progress %+v: want completed with all %d devices finished", p, n)
	}
	if wantCode := min(p.Failed, 1); code != wantCode {
		t.Errorf("watch exited %d with %d failed devices, want %d", code, p.Failed, wantCode)
	}

	// The report: one row per device, terminal, in the state its profile implies, explained.
	stdout, stderr, code = s.starter(t, 2*time.Minute, "rollout", "report", name, "-f", "json")
	var rows []reportRow
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil || code != 0 {
		t.Fatalf("rollout report: exit %d, output %q, stderr %q (%v)", code, stdout, stderr, err)
	}
	if len(rows) != n {
		t.Fatalf("report has %d rows, want %d", len(rows), n)
	}
	problems := newProblems(t, "report")
	results := map[string]int{}
	byDevice := map[string]reportRow{}
	for i, r := range rows {
		byDevice[r.Device] = r
		results[r.Result]++
		m, ok := fl.plan[r.Device]
		if !ok || r.Device != fl.ids[i] {
			problems.add(r.Device, "row %d: want %s (device-ID order)", i, fl.ids[i])
			continue
		}
		want := fl.want[r.Device]
		switch r.Result {
		case workflows.DeviceUpdated:
			if !slices.Equal(r.Stages, protocol.FirmwareStages) || r.Error != "" {
				problems.add(r.Device, "updated with stages %v and error %q", r.Stages, r.Error)
			}
		case workflows.DeviceSkipped:
			if r.Note == "" {
				problems.add(r.Device, "skipped without a note")
			}
		case workflows.DeviceFailed:
			if r.Error == "" || r.ErrorType == "" {
				problems.add(r.Device, "failed without an error (%q) or its type (%q)", r.Error, r.ErrorType)
			}
		default:
			problems.add(r.Device, "ended %s, not a terminal result of a completed rollout", r.Result)
		}
		if r.Result != want.result {
			problems.add(r.Device, "%s: %s (%s %q), want %s", m.Profile, r.Result, r.ErrorType, r.Error, want.result)
		} else if want.result == workflows.DeviceFailed && (!slices.Contains(want.errorTypes, r.ErrorType) ||
			!slices.ContainsFunc(append([]string{want.errorHas}, want.orHas...), func(s string) bool { return strings.Contains(r.Error, s) })) {
			problems.add(r.Device, "%s: failed with %s %q, want one of %v naming %q", m.Profile, r.ErrorType, r.Error, want.errorTypes, want.errorHas)
		}
		// A device on the version is skipped when the targets are resolved (no attempt) or by its
		// device workflow (one).
		if r.Attempts != 1 && (r.Result != workflows.DeviceSkipped || r.Attempts != 0) {
			problems.add(r.Device, "%s: %d attempts, want 1", r.Result, r.Attempts)
		}
	}
	problems.report()
	if x.deadline > 0 {
		checkDeadlines(t, c, s.name, rows, x.deadline)
	}
	if results[workflows.DeviceUpdated] != p.Succeeded || results[workflows.DeviceFailed] != p.Failed || results[workflows.DeviceSkipped] != p.Skipped {
		t.Errorf("report results %v disagree with the progress %+v", results, p)
	}

	checkMethodLog(t, s, fl, byDevice, x)
	checkTwins(t, s, fl, byDevice)
	return p
}

// checkDeadlines holds each failed device to its deadline by its shard's clock: the row's start
// and duration are the shard's workflow times around the device's activities, so the device must
// have failed within its deadline and the grace FollowStages has for its last read.
func checkDeadlines(t *testing.T, _ client.Client, _ string, rows []reportRow, deadline time.Duration) {
	t.Helper()
	problems := newProblems(t, "deadline")
	var latest time.Duration
	for _, r := range rows {
		if r.Result != workflows.DeviceFailed {
			continue
		}
		took := time.Duration(r.DurationSeconds * float64(time.Second))
		latest = max(latest, took-deadline)
		if r.Started.IsZero() || took > deadline+deadlineGrace {
			problems.add(r.Device, "started %s, failed after %s: want failed by the deadline (%s) and %s grace",
				r.Started.Format(time.RFC3339), took, deadline, deadlineGrace)
		}
	}
	problems.report()
	t.Logf("failed devices ended at most %s after their deadline, by their shards' clocks", latest.Round(100*time.Millisecond))
}

// reportRow is a row of `starter rollout report -f json`, with the fields reportLine leaves out.
type reportRow struct {
	reportLine
	Note string `json:"note"`
}

// checkMethodLog holds the report against localhub's method log and the devices' log: what each
// device got (delivered firmwareUpdate calls, with their update IDs), what it did with them
// (started the update, recognised a repeat), and that none started the update twice.
func checkMethodLog(t *testing.T, s *chaosStack, fl *chaosFleet, rows map[string]reportRow, x chaosExpect) {
	t.Helper()
	entries, dropped := s.hub.methodLog(t)
	if dropped != 0 {
		t.Fatalf("localhub's method log dropped %d entries: it no longer holds every call of the rollout", dropped)
	}
	calls := map[string][]localhub.MethodLogEntry{}
	for _, e := range entries {
		if _, ok := fl.plan[e.DeviceID]; ok {
			calls[e.DeviceID] = append(calls[e.DeviceID], e)
		}
	}
	out := fl.output()
	started := deviceLog(out, "firmware update started")
	completed := deviceLog(out, "firmware update completed")
	failed := deviceLog(out, "firmware update failed")
	repeated := deviceLog(out, "repeated firmware update: not applying again")
	refused := deviceLog(out, "firmware update refused: another one is in progress")
	updateID := workflows.RolloutUpdateID(s.name, 1)

	problems := newProblems(t, "method log")
	var delivered, throttled, notOnline, timedOut, repeats int
	for _, id := range fl.ids {
		m, r, want := fl.plan[id], rows[id], fl.want[id]
		var del, startAnswers, answered, conflicts int
		if want.busyWith != "" {
			// The test's own update, which keeps the device busy, is not the rollout's.
			calls[id] = slices.DeleteFunc(calls[id], func(e localhub.MethodLogEntry) bool { return e.RequestID == want.busyWith })
			started[id] = slices.DeleteFunc(started[id], func(u string) bool { return u == want.busyWith })
		}
		for _, e := range calls[id] {
			if e.Method != protocol.MethodFirmwareUpdate || e.RequestID != updateID {
				problems.add(id, "localhub got %s with request ID %q; the rollout sends only firmwareUpdate %s", e.Method, e.RequestID, updateID)
			}
			if e.Delivered {
				del++
			}
			if e.Status != 0 {
				answered++
			}
			if e.Status == 200 && strings.Contains(e.Response, device.FirmwareStartedResponse) {
				startAnswers++
			}
			if e.Status == http.StatusConflict {
				conflicts++
			}
			switch e.Error {
			case localhub.ErrThrottling:
				throttled++
			case localhub.ErrDeviceNotOnline:
				notOnline++
			case localhub.ErrGatewayTimeout:
				timedOut++
			}
		}
		delivered += del
		repeats += len(repeated[id])
		// No device applied the update twice, nor any other.
		if len(started[id]) > 1 || slices.ContainsFunc(started[id], func(u string) bool { return u != updateID }) {
			problems.add(id, "started updates %v: want %s at most once", started[id], updateID)
		}
		// The hub's and the device's accounts agree: each start or recognised repeat was a
		// delivery, and each "started" answer a start.
		if len(started[id])+len(repeated[id]) > del {
			problems.add(id, "the device handled %d calls (%d starts, %d repeats), localhub delivered %d", len(started[id])+len(repeated[id]), len(started[id]), len(repeated[id]), del)
		}
		if startAnswers > len(started[id]) {
			problems.add(id, "localhub relayed %d \"started\" answers, the device logged %d starts", startAnswers, len(started[id]))
		}
		if x.lossless && want.busyWith == "" && (m.Profile == fleet.Healthy || m.Profile == fleet.Slow) && del != len(started[id])+len(repeated[id]) {
			problems.add(id, "localhub delivered %d calls, the device handled %d (%d starts, %d repeats)", del, len(started[id])+len(repeated[id]), len(started[id]), len(repeated[id]))
		}
		switch {
		case want.busyWith != "":
			// Refused once, not called again: a refusal is the device's answer, not a fault.
			if conflicts != 1 || del != 1 || len(started[id]) != 0 || !slices.Equal(refused[id], []string{updateID}) {
				problems.add(id, "busy with %s: %d calls delivered, %d answered 409, %d started, refusals logged %v; want the rollout's refused once",
					want.busyWith, del, conflicts, len(started[id]), refused[id])
			}
		case r.Result == workflows.DeviceUpdated:
			if len(started[id]) != 1 || !slices.Equal(completed[id], []string{updateID}) {
				problems.add(id, "updated, but the device started %v and completed %v", started[id], completed[id])
			}
		case m.Profile == fleet.Failing:
			if len(started[id]) != 1 || !slices.Equal(failed[id], []string{updateID}) {
				problems.add(id, "failing: the device started %v and failed %v, want %s once", started[id], failed[id], updateID)
			}
		case m.Profile == fleet.Offline:
			if del != 0 || len(calls[id]) == 0 {
				problems.add(id, "offline: %d calls delivered of %d, want attempts and none delivered", del, len(calls[id]))
			}
		case m.Profile == fleet.Unresponsive:
			if del == 0 || answered != 0 || len(started[id]) != 0 {
				problems.add(id, "unresponsive: %d delivered, %d answered, %d started; want deliveries and no answer", del, answered, len(started[id]))
			}
		case r.Result == workflows.DeviceSkipped:
			if len(calls[id]) != 0 {
				problems.add(id, "skipped (%s), but localhub got %d calls", r.Note, len(calls[id]))
			}
		}
	}
	problems.report()
	t.Logf("method log: %d firmwareUpdate calls, %d delivered (%d repeats recognised by the devices), %d throttled, %d not online, %d timed out",
		countCalls(calls), delivered, repeats, throttled, notOnline, timedOut)
}

func countCalls(calls map[string][]localhub.MethodLogEntry) int {
	n := 0
	for _, es := range calls {
		n += len(es)
	}
	return n
}

// checkTwins holds the report against the devices' twins: an updated device reports the version
// and the rollout's update ID, a failing one the error under that ID.
func checkTwins(t *testing.T, s *chaosStack, fl *chaosFleet, rows map[string]reportRow) {
	t.Helper()
	c := serviceClientOf(t, s.hub.cs, s.hub.caFile)
	reported := map[string]map[string]any{}
	var err error
	query := "SELECT * FROM devices WHERE tags.ring = '" + s.name + "'"
	// Queries are scarce (S1: 20 a minute, shared with the rollouts): a throttled one is tried
	// again.
	for attempt := 1; ; attempt++ {
		clear(reported)
		err = c.QueryDevices(context.Background(), query, func(v map[string]any) error {
			id, _ := v["deviceId"].(string)
			props, _ := v["properties"].(map[string]any)
			rep, _ := props["reported"].(map[string]any)
			reported[id] = rep
			return nil
		})
		if err == nil || attempt == 5 {
			break
		}
		t.Logf("query twins: %v; again in 15 s", err)
		time.Sleep(15 * time.Second)
	}
	if err != nil {
		t.Fatalf("query twins: %v", err)
	}
	updateID := workflows.RolloutUpdateID(s.name, 1)
	problems := newProblems(t, "twin")
	for _, id := range fl.ids {
		rep, m, busyWith := reported[id], fl.plan[id], fl.want[id].busyWith
		switch {
		case busyWith != "":
			// Still in the other update's first stage (reported with its first report, after the
			// stage): nothing of the rollout's.
			if rep[protocol.PropFirmwareUpdateID] == updateID || rep[protocol.PropFirmwareVersion] == chaosVersion {
				problems.add(id, "busy with %s, but reports %v", busyWith, rep)
			}
		case rows[id].Result == workflows.DeviceUpdated && m.Contract == device.ContractTutorial:
			// The tutorial's device reports the stages and nothing of the update's identity.
			if rep[protocol.PropFirmwareStatus] != protocol.StatusCompleted || rep[protocol.PropFirmwareVersion] != nil || rep[protocol.PropFirmwareUpdateID] != nil {
				problems.add(id, "updated on the tutorials' contract, but reports %v", rep)
			}
			if rows[id].Note != workflows.NoteVersionNotReported {
				problems.add(id, "updated on the tutorials' contract with note %q, want %q", rows[id].Note, workflows.NoteVersionNotReported)
			}
		case rows[id].Result == workflows.DeviceUpdated:
			if rep[protocol.PropFirmwareVersion] != chaosVersion || rep[protocol.PropFirmwareUpdateID] != updateID || rep[protocol.PropFirmwareStatus] != protocol.StatusCompleted {
				problems.add(id, "updated, but reports %s %v, %s %v, %s %v", protocol.PropFirmwareVersion, rep[protocol.PropFirmwareVersion],
					protocol.PropFirmwareUpdateID, rep[protocol.PropFirmwareUpdateID], protocol.PropFirmwareStatus, rep[protocol.PropFirmwareStatus])
			}
		case m.Profile == fleet.Failing:
			if rep[protocol.PropFirmwareStatus] != protocol.StatusError || rep[protocol.PropFirmwareUpdateID] != updateID || rep[protocol.PropFirmwareVersion] == chaosVersion {
				problems.add(id, "failing, but reports %v", rep)
			}
		case rows[id].Result == workflows.DeviceSkipped:
			if rep[protocol.PropFirmwareVersion] != chaosVersion || rep[protocol.PropFirmwareUpdateID] != nil {
				problems.add(id, "skipped, but reports %v", rep)
			}
		case m.Profile == fleet.Offline, m.Profile == fleet.Unresponsive:
			if rep[protocol.PropFirmwareUpdateID] != nil || rep[protocol.PropFirmwareVersion] == chaosVersion ||
				(m.Contract == device.ContractTutorial && rep[protocol.PropFirmwareStatus] != nil && rep[protocol.PropFirmwareStatus] != protocol.StatusStandBy) {
				problems.add(id, "%s, but reports %v", m.Profile, rep)
			}
		}
	}
	problems.report()
}

// problems collects a check's findings per device and reports the first few, so that a broken
// rollout of 1,000 devices does not print 1,000 lines.
type problems struct {
	t    *testing.T
	what string
	n    int
}

func newProblems(t *testing.T, what string) *problems { return &problems{t: t, what: what} }

func (p *problems) add(device, format string, args ...any) {
	p.t.Helper()
	if p.n++; p.n <= 15 {
		p.t.Errorf("%s: %s: %s", p.what, device, fmt.Sprintf(format, args...))
	}
}

func (p *problems) report() {
	p.t.Helper()
	if p.n > 15 {
		p.t.Errorf("%s: %d problems in all", p.what, p.n)
	}
}

// methodLog reads localhub h's whole method log and how many entries it dropped.
func (h ownHub) methodLog(t *testing.T) ([]localhub.MethodLogEntry, uint64) {
	t.Helper()
	var out []localhub.MethodLogEntry
	var after uint64
	for {
		body := hubGet(t, h.cs, h.caFile, h.https, fmt.Sprintf("/_localhub/methods?after=%d&limit=%d", after, localhub.MaxMethodLogPage))
		var p localhub.MethodLogPage
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatalf("method log page %.200s: %v", body, err)
		}
		out = append(out, p.Entries...)
		if !p.More {
			return out, p.Dropped
		}
		after = p.Next
	}
}

// busyUpdateID is the update startBusy starts.
const busyUpdateID = "chaos-other-update"

// startBusy runs count healthy devices named prefix<index>, with 10-minute stages, and starts on
// each an update of its own (busyUpdateID) by a direct method, as another tool would: they are
// still in its first stage when the rollout reaches them.
func (s *chaosStack) startBusy(t *testing.T, prefix string, count int, seed int64) *chaosFleet {
	t.Helper()
	f := s.startFleetAs(t, prefix, chaosOldVersion, count, seed, fleet.Faults{}, "--stage-duration", "10m")
	c := serviceClientOf(t, s.hub.cs, s.hub.caFile)
	for _, id := range f.ids {
		res, err := c.CallDeviceMethod(context.Background(), id, &iotservice.MethodCall{
			MethodName: protocol.MethodFirmwareUpdate, ResponseTimeout: 30,
			Payload: map[string]any{protocol.FieldPackageURI: "https://fw.example/1.5.0.bin", protocol.FieldVersion: "1.5.0",
				protocol.FieldUpdateID: busyUpdateID},
		})
		if err != nil || res.Status != http.StatusOK {
			t.Fatalf("start the other update on %s: %v %+v", id, err, res)
		}
		f.want[id] = wantRow{result: workflows.DeviceFailed, errorTypes: []string{activities.ErrMethodFailed},
			errorHas: "status 409: firmware update " + busyUpdateID + " in progress", busyWith: busyUpdateID}
	}
	return f
}

// deviceLog collects, per device, the update IDs of the fleet's device log lines with msg.
func deviceLog(out, msg string) map[string][]string {
	res := map[string][]string{}
	dev := regexp.MustCompile(` device=(\S+)`)
	upd := regexp.MustCompile(` update_id=(\S+)`)
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) {
			continue
		}
		d, u := dev.FindStringSubmatch(line), upd.FindStringSubmatch(line)
		if d == nil || u == nil {
			continue
		}
		res[d[1]] = append(res[d[1]], u[1])
	}
	return res
}

// 1. A worker killed (SIGKILL) mid-rollout, with devices finished and devices in flight, is
// replaced; the rollout completes across several runs (continue-as-new), and no device applied
// the update twice.
//
// Why a device may get firmwareUpdate more than once, and why that is fine: an InvokeMethod in
// flight when the worker dies is retried after its heartbeat timeout; the retry first reads the
// twin and does not call when the device already reports the update's firmwareUpdateId, but
// before the device's first report it calls again, reaching the device a second time with the
// same updateId, which the device recognises and does not apply. So the method log may hold
// more than one delivery per device, and the devices' log must show each extra one as a repeat.
func TestChaosWorkerKill(t *testing.T) {
	count := sized(60, 1000)
	perRun := sized(20, 300)
	s := newChaosStack(t, "chaos-kill", sharedHub(), nil)
	fl := s.startFleet(t, count, 3, fleet.Faults{}, "--stage-duration", "500ms")
	// A call in flight when the worker dies may have reached the device: its retry looks for the
	// device's first stage for a stage timeout before calling again. These devices report it
	// within half a second; 15 s keeps a call that never left from waiting the default 2 minutes.
	args := []string{"--canary", "5", "--growth", "2", "--max-concurrent", sized("15", "100"),
		"--devices-per-run", strconv.Itoa(perRun), "--stage-timeout", "15s"}
	if chaosLong() {
		// S1's 40 methods and 100 twin reads a second, which the shared hub enforces.
		args = append(args, "--rate", "40/s")
	}
	c := s.rolloutWithWorkerKill(t, count, args...)

	p := checkChaos(t, s, c, fl, sized(5*time.Minute, 20*time.Minute), chaosExpect{lossless: true})
	if p.Succeeded != count || p.Runs < 3 {
		t.Errorf("progress %+v: want all %d updated, in at least 3 runs (%d devices per run)", p, count, perRun)
	}
	t.Logf("rollout completed in %d runs, active %s", p.Runs, p.Active.Round(time.Second))
	// Each run is an execution of its own in visibility, all under the rollout's workflow ID: the
	// UI's search lists the runs and the shards.
	q := fmt.Sprintf("DmflowRollout = %q", s.name)
	shards := (count + workflows.ShardSize - 1) / workflows.ShardSize
	if n := countVisible(t, c, q, int64(shards+p.Runs)); n != int64(shards+p.Runs) {
		t.Errorf("visibility %s counts %d executions, want %d shards and %d runs", q, n, shards, p.Runs)
	} else if runs := listVisible(t, c, q)["Rollout"]; len(runs) != p.Runs || len(slices.Compact(runs)) != 1 {
		t.Errorf("Rollout executions %v: want %d runs of %s", runs, p.Runs, workflows.RolloutWorkflowID(s.name))
	}
}

// 2. The Temporal dev server stopped mid-rollout (SIGTERM) and started again on the same SQLite
// file and port, then later killed (SIGKILL) and started again: the worker reconnects, the
// rollout and its device workflows carry on from their histories, and no device applied the
// update twice. Activities that finished while the server was down are retried after their
// timeouts; the retried invocations find the update running and do not start it again.
func TestChaosTemporalRestart(t *testing.T) {
	count := sized(60, 1000)
	server := startDevServer(t)
	s := newChaosStack(t, "chaos-temporal", sharedHub(), server)
	fl := s.startFleet(t, count, 4, fleet.Faults{}, "--stage-duration", "500ms")
	// A call in flight when the server went down may have reached the device: its retry looks
	// for the device's first stage for a stage timeout before calling again. These devices
	// report it within half a second; 15 s keeps a call that never left from waiting the
	// default 2 minutes.
	args := []string{"--canary", "5", "--growth", "2", "--max-concurrent", sized("15", "100"), "--stage-timeout", "15s"}
	if chaosLong() {
		args = append(args, "--rate", "40/s")
	}
	s.startChaosRollout(t, args...)
	c := temporalClientAt(t, server.addr)

	at := s.waitUntil(t, c, "a third done", 5*time.Minute, midway(count/3))
	server.restart(t, false, 3*time.Second)
	t.Logf("dev server stopped and started again at %+v", at)
	at = s.waitUntil(t, c, "two thirds done", 5*time.Minute, midway(2*count/3))
	server.restart(t, true, 3*time.Second)
	t.Logf("dev server killed and started again at %+v", at)

	p := checkChaos(t, s, c, fl, sized(5*time.Minute, 20*time.Minute), chaosExpect{lossless: true})
	if p.Succeeded != count {
		t.Errorf("progress %+v: want all %d updated", p, count)
	}
}

// 3. localhub stopped mid-rollout and started again on the same state directory and ports after
// a few seconds without a hub: the devices reconnect by themselves, twins and identities
// survive, the worker's calls fail meanwhile (connection refused, retried), calls in flight end
// with 503; the rollout completes and no device applied the update twice. localhub saves its
// method log when it stops, so the check sees the calls of both lives.
func TestChaosLocalhubRestart(t *testing.T) {
	count := sized(60, 1000)
	hub := startOwnHub(t, "chaos-localhub", sized([]string{}, []string{"--tier", "S3"})...)
	s := newChaosStack(t, "chaos-hub", hub, nil)
	fl := s.startFleet(t, count, 5, fleet.Faults{}, "--stage-duration", "500ms")
	s.startChaosRollout(t, "--canary", "5", "--growth", "2", "--max-concurrent", sized("15", "100"))
	c := temporalClient(t)

	at := s.waitUntil(t, c, "a third done", 5*time.Minute, midway(count/3))
	s.hub = restartHub(t, s.hub, 5*time.Second)
	t.Logf("localhub restarted at %+v", at)

	p := checkChaos(t, s, c, fl, sized(5*time.Minute, 20*time.Minute), chaosExpect{})
	if p.Succeeded != count {
		t.Errorf("progress %+v: want all %d updated", p, count)
	}
	if n := regexp.MustCompile(`msg="connection restored"`).FindAllStringIndex(fl.output(), -1); len(n) < count {
		t.Errorf("%d devices logged a restored connection, want all %d", len(n), count)
	}
}

// 4. A 429 storm: localhub's method and twin-read quotas far below the rollout's --rate, so most
// of the rollout's calls are refused with 429 ThrottlingException at first. The rollout slows
// down (its activities back off and retry) and completes with every device updated: throttling
// fails no device, and refused calls are never delivered, so none is applied twice.
func TestChaos429Storm(t *testing.T) {
	count := sized(40, 500)
	// Long: the rollout's own pace (children started, activities scheduled) stays near 25 calls a
	// second on two cores, so the quotas must lie well below that for a storm.
	hub := startOwnHub(t, "chaos-429-localhub", "--quota", sized("methods=2/s", "methods=5/s"), "--quota", sized("twinReads=5/s", "twinReads=10/s"))
	s := newChaosStack(t, "chaos-429", hub, nil)
	fl := s.startFleet(t, count, 6, fleet.Faults{}, "--stage-duration", "500ms")
	before := s.hub.stats(t)
	s.startChaosRollout(t, "--canary", strconv.Itoa(count/4), "--growth", "3", "--max-concurrent", strconv.Itoa(count), "--rate", "500/s")
	c := temporalClient(t)

	p := checkChaos(t, s, c, fl, sized(8*time.Minute, 30*time.Minute), chaosExpect{lossless: true})
	if p.Succeeded != count || p.Failed != 0 {
		t.Errorf("progress %+v: want all %d updated, none failed for throttling", p, count)
	}
	after := s.hub.stats(t)
	methods, reads := after.Throttled["methods"]-before.Throttled["methods"], after.Throttled["twinReads"]-before.Throttled["twinReads"]
	if methods == 0 || reads == 0 {
		t.Errorf("localhub throttled %d method calls and %d twin reads: the storm did not happen", methods, reads)
	}
	t.Logf("localhub refused %d method calls and %d twin reads with 429; %d hub calls for %d devices", methods, reads, p.HubCalls, count)
}

// 5. Devices offline, flapping, slow, unresponsive and failing, in one wave with a short deadline,
// and some already on the version: each lands in the result its profile implies within its
// deadline (offline and unresponsive devices fail with DeadlineExceeded once their invocations
// were retried until the deadline, naming the last failure; failing devices with DeviceError
// naming the stage; devices on the version skipped with a note and no call; the others updated),
// and the method log shows why.
func TestChaosDeviceFaults(t *testing.T) {
	count := sized(50, 1000)
	// Long enough for a call a flapping device drops (the hub's 30 s wait) to be followed by a
	// full look for evidence (the 15 s stage timeout) and another call before the deadline: with
	// less, such a device fails at its deadline rather than risk a second call.
	const deadline = 90 * time.Second
	faults := fleet.Faults{Offline: 0.1, Flapping: 0.1, Slow: 0.1, Failing: 0.1, Unresponsive: 0.1, SlowFactor: 3, FlapInterval: 3 * time.Second}
	if chaosLong() {
		faults = fleet.Faults{Offline: 0.03, Flapping: 0.05, Slow: 0.05, Failing: 0.05, Unresponsive: 0.03, SlowFactor: 3, FlapInterval: 3 * time.Second}
	}
	s := newChaosStack(t, "chaos-faults", sharedHub(), nil)
	fl := s.startFleet(t, count, 7, faults, "--stage-duration", "500ms")
	// And devices that already run the version: skipped without a call, with a note.
	fl.add(s.startFleetAs(t, s.name+"-current-", chaosVersion, sized(5, 50), 8, fleet.Faults{}))
	// And devices busy with another update when the rollout reaches them: they refuse with 409,
	// and fail at once, naming the update in progress.
	fl.add(s.startBusy(t, s.name+"-busy-", sized(3, 20), 9))
	count = len(fl.ids)
	// One wave, so that the devices that fail only at their deadline do not hold up the next; a
	// threshold the planned failures stay under.
	args := []string{"--canary", strconv.Itoa(count), "--max-concurrent", sized("60", "300"), "--max-failures", "50%",
		"--stage-timeout", "15s", "--deadline", deadline.String()}
	if chaosLong() {
		args = append(args, "--rate", "40/s")
	}
	s.startChaosRollout(t, args...)
	c := temporalClient(t)

	p := checkChaos(t, s, c, fl, sized(5*time.Minute, 20*time.Minute), chaosExpect{deadline: deadline})
	want := map[string]int{}
	for _, w := range fl.want {
		want[w.result]++
	}
	if p.Failed != want[workflows.DeviceFailed] || p.Skipped != want[workflows.DeviceSkipped] || p.Succeeded != want[workflows.DeviceUpdated] {
		t.Errorf("progress %+v: the profiles imply %v", p, want)
	}
}

// 7. A mixed fleet: half the devices speak only the tutorials' contract (no update ID, no
// version, Python's local times; half of them answer firmwareUpdate with a JSON string), with
// seeded faults on both contracts and a worker killed mid-rollout. Devices on the tutorials'
// contract apply every call they get, so the method log and their log must show exactly one
// start each; their twins show the update completed, and the report says their version is not
// reported.
func TestChaosMixedContracts(t *testing.T) {
	count := 200
	// Long enough for a call in flight when the worker dies to be followed by a full look for
	// evidence (the 15 s stage timeout) and another call (30 s) before the deadline: with less,
	// such a device fails at its deadline rather than risk a second call.
	const deadline = 90 * time.Second
	faults := fleet.Faults{Offline: 0.03, Flapping: 0.05, Slow: 0.05, Failing: 0.05, Unresponsive: 0.03,
		SlowFactor: 3, FlapInterval: 3 * time.Second, Tutorial: 0.5}
	s := newChaosStack(t, "chaos-mixed", sharedHub(), nil)
	fl := s.startFleet(t, count, 11, faults, "--stage-duration", "500ms")
	tutorial := 0
	for _, m := range fl.plan {
		if m.Contract == device.ContractTutorial {
			tutorial++
		}
	}
	if tutorial != count/2 {
		t.Fatalf("%d of %d devices on the tutorials' contract, want half", tutorial, count)
	}
	for id, w := range fl.want {
		if fl.plan[id].Profile == fleet.Unresponsive {
			// One whose call was in flight when the worker was killed: the retry looks for
			// evidence until too little time is left for another call, and says so.
			w.orHas = []string{"stopped during its call, which may have reached the device"}
			fl.want[id] = w
		}
	}
	// One wave, so that the devices that fail only at their deadline do not hold up the next.
	args := []string{"--canary", strconv.Itoa(count), "--max-concurrent", "50", "--max-failures", "50%",
		"--stage-timeout", "15s", "--deadline", deadline.String()}
	if chaosLong() {
		args = append(args, "--rate", "40/s")
	}
	c := s.rolloutWithWorkerKill(t, count, args...)

	p := checkChaos(t, s, c, fl, 8*time.Minute, chaosExpect{deadline: deadline, lossless: true})
	want := map[string]int{}
	for _, w := range fl.want {
		want[w.result]++
	}
	if p.Failed != want[workflows.DeviceFailed] || p.Succeeded != want[workflows.DeviceUpdated] {
		t.Errorf("progress %+v: the profiles imply %v", p, want)
	}
}
