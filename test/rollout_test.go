//go:build integration

package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/fleet"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
)

// Rollouts end to end: the operator drives them with `starter rollout …`
// against a simdevice fleet; the tests check the facts through Temporal
// (queries, visibility, histories) and localhub's stats. Every fleet is
// planned with internal/sim/fleet from the same flags and seed the simdevice
// process gets, so a test knows which devices fail, and every wave plan and
// threshold verdict is computed before the rollout runs: nothing here
// depends on the order in which devices happen to finish.

// rolloutLaunch is what `starter rollout start -o json` prints.
type rolloutLaunch struct {
	WorkflowID string                     `json:"workflowId"`
	RunID      string                     `json:"runId"`
	URL        string                     `json:"url"`
	Existing   string                     `json:"existing"`
	Result     *workflows.RolloutProgress `json:"result"`
	Error      string                     `json:"error"`
}

// reportLine is a row of `starter rollout report -f json`.
type reportLine struct {
	Device   string    `json:"device"`
	Wave     int       `json:"wave"` // 1-based
	Result   string    `json:"result"`
	Attempts int       `json:"attempts"`
	Stages   []string  `json:"stages"`
	Started  time.Time `json:"started"`
	// DurationSeconds is how long the device workflow ran.
	DurationSeconds float64 `json:"durationSeconds"`
	ErrorType       string  `json:"errorType"`
	Error           string  `json:"error"`
}

// rolloutFleet is a `simdevice fleet` process and the plan of its devices.
type rolloutFleet struct {
	proc *proc
	plan []fleet.Member
}

// startRolloutFleet runs count devices named prefix+index, a fraction
// failing of them failing every firmware update (chosen by seed), and waits
// until all are connected. args add flags (stage duration, tags).
func startRolloutFleet(t *testing.T, prefix string, count int, seed int64, failing float64, args ...string) *rolloutFleet {
	t.Helper()
	f := &rolloutFleet{plan: fleet.Plan(prefix, count, seed, fleet.Faults{Failing: failing})}
	f.proc = startProc(t, "fleet-"+strings.TrimSuffix(prefix, "-"), hubEnv(), filepath.Join(env.bin, "simdevice"),
		append([]string{"fleet", "--count", strconv.Itoa(count), "--prefix", prefix, "--seed", strconv.FormatInt(seed, 10),
			"--failing", strconv.FormatFloat(failing, 'f', -1, 64), "--summary-interval", "5s"}, args...)...)
	// Registering, tagging and connecting 1,000 devices under localhub's S1
	// quotas (registry 100/min in bulks of 100, twin updates 50/s,
	// connections 100/s) takes well under a minute; the bound is generous.
	if err := f.proc.waitFor(`msg="fleet started"`, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	// The process logs how many devices each profile got: it must be the
	// plan this test computed, or every assertion below is about other
	// devices.
	n := 0
	for _, m := range regexp.MustCompile(`msg="fleet profile" profile=failing count=(\d+)`).FindAllStringSubmatch(f.proc.output(), -1) {
		k, _ := strconv.Atoi(m[1])
		n += k
	}
	if want := len(f.failing()); n != want {
		t.Fatalf("the fleet runs %d failing devices, the test's plan %d: internal/sim/fleet.Plan and simdevice fleet disagree", n, want)
	}
	return f
}

// failing maps each failing device to the stage it fails in.
func (f *rolloutFleet) failing() map[string]string {
	out := map[string]string{}
	for _, m := range f.plan {
		if m.Profile == fleet.Failing {
			out[m.ID] = m.FailStage
		}
	}
	return out
}

// ids are the fleet's device IDs in device-ID order, the order of a
// rollout's rows.
func (f *rolloutFleet) ids() []string {
	ids := make([]string, len(f.plan))
	for i, m := range f.plan {
		ids[i] = m.ID
	}
	slices.Sort(ids)
	return ids
}

// startRollout runs `starter rollout start … -o json` and decodes its output.
func startRollout(t *testing.T, timeout time.Duration, args ...string) (rolloutLaunch, string, int) {
	t.Helper()
	stdout, stderr, code := runStarter(t, timeout, append([]string{"rollout", "start", "-o", "json"}, args...)...)
	var out rolloutLaunch
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("starter rollout start: exit %d, output %q (stderr %q): %v", code, stdout, stderr, err)
	}
	return out, stderr, code
}

// rolloutReport runs `starter rollout report NAME -f json`.
func rolloutReport(t *testing.T, name string) []reportLine {
	t.Helper()
	stdout, stderr, code := runStarter(t, time.Minute, "rollout", "report", name, "-f", "json")
	if code != 0 {
		t.Fatalf("starter rollout report %s: exit %d: %s", name, code, stderr)
	}
	var rows []reportLine
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatalf("report %q: %v", stdout, err)
	}
	return rows
}

// rolloutControl runs `starter rollout pause|resume|cancel NAME -o json`;
// the progress is decoded when the command succeeded.
func rolloutControl(t *testing.T, action, name string, args ...string) (workflows.RolloutProgress, string, int) {
	t.Helper()
	stdout, stderr, code := runStarter(t, 2*time.Minute, append([]string{"rollout", action, name, "-o", "json"}, args...)...)
	var p workflows.RolloutProgress
	if code == 0 {
		if err := json.Unmarshal([]byte(stdout), &p); err != nil {
			t.Fatalf("rollout %s %s: output %q: %v", action, name, stdout, err)
		}
	}
	return p, stderr, code
}

// queryProgress asks the rollout's progress query, as watch does.
func queryProgress(c client.Client, name string) (workflows.RolloutProgress, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var p workflows.RolloutProgress
	v, err := c.QueryWorkflow(ctx, workflows.RolloutWorkflowID(name), "", workflows.QueryProgress)
	if err == nil {
		err = v.Get(&p)
	}
	return p, err
}

// waitProgress polls the progress until cond holds; timeout only bounds a
// failure.
func waitProgress(t *testing.T, c client.Client, name, what string, timeout time.Duration, cond func(workflows.RolloutProgress) bool) workflows.RolloutProgress {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last workflows.RolloutProgress
	var lastErr error
	for time.Now().Before(deadline) {
		p, err := queryProgress(c, name)
		if err == nil {
			last = p
			if cond(p) {
				return p
			}
		}
		lastErr = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("rollout %s: not %s after %s (last progress %+v, error %v)", name, what, timeout, last, lastErr)
	return last
}

// historyMark is a point in a workflow run's history: its run and the last
// event recorded when the mark was taken.
type historyMark struct {
	workflowID, runID string
	lastEvent         int64
}

// markHistory marks the current run's history as it stands now.
func markHistory(t *testing.T, c client.Client, workflowID string) historyMark {
	t.Helper()
	desc, err := c.DescribeWorkflowExecution(context.Background(), workflowID, "")
	if err != nil {
		t.Fatalf("describe %s: %v", workflowID, err)
	}
	m := historyMark{workflowID: workflowID, runID: desc.GetWorkflowExecutionInfo().GetExecution().GetRunId()}
	h, _ := runHistory(t, c, workflowID, m.runID)
	if len(h.Events) > 0 {
		m.lastEvent = h.Events[len(h.Events)-1].GetEventId()
	}
	return m
}

// workSince lists the work the marked run's history records after the mark:
// child workflows initiated (a rollout's devices) and activities scheduled.
// A run that continued as new since is reported too, as its successor's
// work would not be in the marked run's history.
func (m historyMark) workSince(t *testing.T, c client.Client) []string {
	t.Helper()
	h, _ := runHistory(t, c, m.workflowID, m.runID)
	var work []string
	for _, ev := range h.Events {
		if ev.GetEventId() <= m.lastEvent {
			continue
		}
		switch ev.GetEventType() {
		case enumspb.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
			work = append(work, fmt.Sprintf("child workflow %s initiated (event %d)",
				ev.GetStartChildWorkflowExecutionInitiatedEventAttributes().GetWorkflowId(), ev.GetEventId()))
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
			work = append(work, fmt.Sprintf("activity %s scheduled (event %d)",
				ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName(), ev.GetEventId()))
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
			work = append(work, fmt.Sprintf("a continue-as-new (event %d)", ev.GetEventId()))
		}
	}
	return work
}

// invoked is how many firmwareUpdate calls localhub delivered to each device.
func invoked(st hubStats, ids []string) map[string]int {
	out := make(map[string]int, len(ids))
	for _, id := range ids {
		out[id] = st.MethodInvocations[id][protocol.MethodFirmwareUpdate]
	}
	return out
}

// callCount adds up invoked's counts.
func callCount(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// waveOf maps each device (rows in device-ID order) to its wave, 0-based.
func waveOf(ids []string, waves []int) map[string]int {
	out := map[string]int{}
	i := 0
	for w, size := range waves {
		for range size {
			out[ids[i]] = w
			i++
		}
	}
	return out
}

// Threshold verdicts for one wave.
const (
	verdictPasses  = "passes"  // no finishing order aborts in this wave
	verdictAborts  = "aborts"  // every finishing order aborts in this wave
	verdictDepends = "depends" // the finishing order decides: a test must not rely on it
)

// thresholdVerdicts judges each wave against the Rollout's threshold check
// (workflows.rollout.checkThreshold), given which devices fail: the wave's
// own failures against its size, and — at every failure, once minDevices
// have finished — all failures against all devices finished. That second
// check depends on the order devices finish in, so each wave is judged in
// the worst order (its failures finish first) and the best (last).
func thresholdVerdicts(waves, failures []int, th workflows.Threshold, minDevices int) []string {
	overall := func(failed, finished int) bool { // true: within the threshold
		return (th.IsPct && finished < minDevices) || failed <= th.Allowed(finished)
	}
	var out []string
	doneBefore, failedBefore := 0, 0
	for w, size := range waves {
		f := failures[w]
		worstOK, bestOK := true, true
		for k := 1; k <= f; k++ {
			worstOK = worstOK && overall(failedBefore+k, doneBefore+k)
			bestOK = bestOK && overall(failedBefore+k, doneBefore+size-f+k)
		}
		waveOK := f <= th.Allowed(size)
		switch {
		case waveOK && worstOK:
			out = append(out, verdictPasses)
		case !waveOK || !bestOK:
			out = append(out, verdictAborts)
		default:
			out = append(out, verdictDepends)
		}
		doneBefore, failedBefore = doneBefore+size, failedBefore+f
	}
	return out
}

// failuresPerWave counts the failing devices of each wave.
func failuresPerWave(ids []string, waves []int, failing map[string]string) []int {
	out := make([]int, len(waves))
	for id, w := range waveOf(ids, waves) {
		if _, ok := failing[id]; ok {
			out[w]++
		}
	}
	return out
}

// countVisible polls visibility (eventually consistent) until query counts
// want executions, and returns the count last seen.
func countVisible(t *testing.T, c client.Client, query string, want int64) int64 {
	t.Helper()
	var n int64 = -1
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		resp, err := c.CountWorkflow(context.Background(), &workflowservice.CountWorkflowExecutionsRequest{Query: query})
		if err != nil {
			t.Logf("count %q: %v", query, err)
			continue
		}
		if n = resp.GetCount(); n == want {
			break
		}
	}
	return n
}

// listVisible lists the executions query finds, by workflow type.
func listVisible(t *testing.T, c client.Client, query string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	var token []byte
	for {
		resp, err := c.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{
			Query: query, PageSize: 1000, NextPageToken: token})
		if err != nil {
			t.Fatalf("list %q: %v", query, err)
		}
		for _, e := range resp.GetExecutions() {
			typ := e.GetType().GetName()
			out[typ] = append(out[typ], e.GetExecution().GetWorkflowId())
		}
		if token = resp.GetNextPageToken(); len(token) == 0 {
			return out
		}
	}
}

// A firmware rollout to 1,000 devices selected by a tag query, 2% of them
// failing, against localhub at IoT Hub's S1 quotas with the rollout's --rate
// keeping it under them: the rollout completes with exactly the planned
// devices failed, each device got exactly one firmwareUpdate, localhub
// refused none of the rollout's calls, and the Temporal UI's search for the
// rollout lists it with its 1,000 device workflows.
func TestRollout1000Devices(t *testing.T) {
	const (
		count   = 1000
		prefix  = "rb-"
		seed    = 1
		name    = "fw-beta-1k"
		canary  = 10
		growth  = 2.0
		maxFail = "5%"
		version = "2.0.0"
	)
	queue := "it-rollout-1k"
	startWorker(t, queue)
	// 100 ms stages: a device finishes in a third of a second, so the
	// rollout's speed is set by the hub's quotas and --rate, as in the field.
	fl := startRolloutFleet(t, prefix, count, seed, 0.02, "--stage-duration", "100ms", "--tags", "ring=beta")
	failing := fl.failing()
	ids := fl.ids()
	waves := workflows.PlanWaves(count, canary, growth)
	th, err := workflows.ParseThreshold(maxFail)
	if err != nil {
		t.Fatal(err)
	}
	perWave := failuresPerWave(ids, waves, failing)
	for w, v := range thresholdVerdicts(waves, perWave, th, workflows.DefaultMinDevices) {
		if v != verdictPasses {
			t.Fatalf("test setup: with seed %d the %d failing devices (per wave %v of %v) make wave %d %s under --max-failures %s: choose a seed or threshold under which every finishing order passes",
				seed, len(failing), perWave, waves, w+1, v, maxFail)
		}
	}
	t.Logf("%d devices, %d failing, waves %v, failures per wave %v", count, len(failing), waves, perWave)

	before := stats(t)
	begin := time.Now()
	// --rate 40/s: S1 delivers 40 direct methods a second (160 KB/s per unit
	// in 4 KB chunks) and 100 twin reads, and queues a request up to a second
	// before refusing it. A rollout bucket of 40/s (burst 40) can never send
	// more methods than the hub admits, even if every call were a method; at
	// 80/s a burst of invocations could meet 429s. The devices' own reported
	// properties (twin updates, 50/s on S1) are not the rollout's calls: they
	// are throttled and retried by the devices, and only slow them down.
	out, stderr, code := startRollout(t, 8*time.Minute, "--name", name,
		"--query", "SELECT * FROM devices WHERE tags.ring = 'beta'",
		"--firmware", "https://fw.example/v2.bin", "--version", version,
		"--canary", strconv.Itoa(canary), "--growth", "2", "--max-concurrent", "200", "--rate", "40/s",
		"--max-failures", maxFail, "--task-queue", queue, "--wait")
	t.Logf("rollout of %d devices took %s", count, time.Since(begin).Round(time.Second))
	p := out.Result
	if p == nil {
		t.Fatalf("no result: exit %d, output %+v, stderr %q", code, out, stderr)
	}
	// A rollout that completed with failed devices (within the threshold)
	// exits 1 and points at the report.
	wantMsg := fmt.Sprintf("completed with %d failed devices", len(failing))
	if code != 1 || !strings.Contains(stderr, wantMsg) {
		t.Errorf("exit %d, stderr %q: want 1 and %q", code, stderr, wantMsg)
	}
	if p.State != workflows.RolloutCompleted || p.Total != count || p.Failed != len(failing) ||
		p.Succeeded != count-len(failing) || p.Skipped+p.Cancelled+p.NotStarted+p.Running+p.Pending != 0 {
		t.Errorf("progress %+v: want completed, %d succeeded, %d failed", p, count-len(failing), len(failing))
	}
	if p.Waves != len(waves) || p.Runs != 1 || p.Rate != 40 || p.MaxConcurrent != 200 {
		t.Errorf("progress %+v: want %d waves, one run, rate 40, max concurrent 200", p, len(waves))
	}

	rows := rolloutReport(t, name)
	if len(rows) != count {
		t.Fatalf("report has %d rows, want %d", len(rows), count)
	}
	t.Logf("hub calls: %d (%.1f per device)", p.HubCalls, float64(p.HubCalls)/count)
	wave := waveOf(ids, waves)
	bad := 0
	for i, r := range rows {
		problem := ""
		stage, fails := failing[r.Device]
		switch {
		case r.Device != ids[i]:
			problem = fmt.Sprintf("row %d is %s, want %s (device-ID order)", i, r.Device, ids[i])
		case r.Wave != wave[r.Device]+1 || r.Attempts != 1:
			problem = fmt.Sprintf("wave %d attempts %d, want wave %d, 1 attempt", r.Wave, r.Attempts, wave[r.Device]+1)
		case fails && (r.Result != workflows.DeviceFailed || r.ErrorType != activities.ErrDeviceError || !strings.Contains(r.Error, stage)):
			problem = fmt.Sprintf("fails in %s: got %s %s %q, want failed with %s naming the stage", stage, r.Result, r.ErrorType, r.Error, activities.ErrDeviceError)
		case !fails && (r.Result != workflows.DeviceUpdated || !slices.Equal(r.Stages, protocol.FirmwareStages) || r.Error != ""):
			problem = fmt.Sprintf("got %s, stages %v, error %q; want updated through %v", r.Result, r.Stages, r.Error, protocol.FirmwareStages)
		}
		if problem != "" {
			if bad++; bad <= 10 {
				t.Errorf("%s: %s", r.Device, problem)
			}
		}
	}
	if bad > 10 {
		t.Errorf("… %d rows wrong in all", bad)
	}

	// Exactly one firmwareUpdate delivered to each device: none retried
	// into a second delivery, none run twice.
	after := stats(t)
	calls := invoked(after, ids)
	var wrong []string
	for _, id := range ids {
		if calls[id] != 1 {
			wrong = append(wrong, fmt.Sprintf("%s:%d", id, calls[id]))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%d devices did not get exactly one firmwareUpdate: %v", len(wrong), wrong[:min(len(wrong), 20)])
	}
	// None of the rollout's kinds of call was refused (429): the rate kept
	// them under the quotas. Twin updates and connections are the devices'.
	for _, op := range []string{"methods", "twinReads", "queries"} {
		if d := after.Throttled[op] - before.Throttled[op]; d != 0 {
			t.Errorf("localhub throttled %d %s requests during the rollout: --rate 40/s must keep the rollout under S1's quotas", d, op)
		}
	}
	t.Logf("throttled during the rollout (devices' own traffic included): %v → %v", before.Throttled, after.Throttled)

	// The Temporal UI's search DmflowRollout = "<name>" lists the rollout
	// and its shards, which run the 1,000 devices 250 at most each.
	c := temporalClient(t)
	q := fmt.Sprintf("DmflowRollout = %q", name)
	shards := int64(count+workflows.ShardSize-1) / workflows.ShardSize
	if n := countVisible(t, c, q, shards+1); n != shards+1 {
		t.Fatalf("visibility %s counts %d executions, want %d", q, n, shards+1)
	}
	byType := listVisible(t, c, q)
	if got := byType["Rollout"]; len(got) != 1 || got[0] != workflows.RolloutWorkflowID(name) {
		t.Errorf("Rollout executions %v, want [%s]", got, workflows.RolloutWorkflowID(name))
	}
	got := byType["RolloutShard"]
	slices.Sort(got)
	var want []string
	for i := range shards {
		want = append(want, workflows.RolloutShardWorkflowID(name, int(i)))
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("RolloutShard executions %v, want %v", got, want)
	}
	if n := countVisible(t, c, q+` AND DmflowRolloutState = "completed"`, 1); n != 1 {
		t.Errorf("DmflowRolloutState of the rollout: %d executions completed, want 1", n)
	}
}

// A fleet in which 30% of the devices fail every update: the rollout aborts
// in its first waves, leaves every later device untouched (no method call
// reached it) and reports it "not started"; the workflow fails with
// RolloutAborted, and `--wait` exits 1 with the reason.
func TestRolloutAbortsOnFailures(t *testing.T) {
	const (
		count   = 200
		prefix  = "ra-"
		seed    = 1
		name    = "fw-abort"
		canary  = 5
		growth  = 2.0
		maxFail = "20%"
	)
	queue := "it-rollout-abort"
	startWorker(t, queue)
	fl := startRolloutFleet(t, prefix, count, seed, 0.3, "--stage-duration", "300ms", "--tags", "ring=abort")
	failing, ids := fl.failing(), fl.ids()
	waves := workflows.PlanWaves(count, canary, growth)
	th, _ := workflows.ParseThreshold(maxFail)
	perWave := failuresPerWave(ids, waves, failing)
	abortWave := -1
	for w, v := range thresholdVerdicts(waves, perWave, th, workflows.DefaultMinDevices) {
		if v == verdictDepends {
			t.Fatalf("test setup: wave %d (failures %v of %v) aborts or not by the order devices finish in: choose another seed", w+1, perWave, waves)
		}
		if v == verdictAborts {
			abortWave = w
			break
		}
	}
	if abortWave < 0 || abortWave == len(waves)-1 {
		t.Fatalf("test setup: failures %v of waves %v under %s abort in wave %d: want an abort that leaves devices unstarted", perWave, waves, maxFail, abortWave+1)
	}
	started := 0
	for _, s := range waves[:abortWave+1] {
		started += s
	}
	t.Logf("waves %v, failures per wave %v: aborts in wave %d, %d devices started", waves, perWave, abortWave+1, started)

	// --max-concurrent above the largest wave started: a wave starts whole,
	// so which devices ran does not depend on timing.
	out, stderr, code := startRollout(t, 4*time.Minute, "--name", name,
		"--query", "SELECT * FROM devices WHERE tags.ring = 'abort'",
		"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0",
		"--canary", strconv.Itoa(canary), "--growth", "2", "--max-concurrent", "100",
		"--max-failures", maxFail, "--task-queue", queue, "--wait")
	// The reason names the check that tripped first: the wave's own
	// failures, or all failures so far, depending on the order the wave's
	// devices finished in; either way it says how many failed of how many
	// and the threshold.
	p := out.Result
	if p == nil || p.State != workflows.RolloutAborted || p.Wave != abortWave+1 || p.NotStarted != count-started || p.Running+p.Pending != 0 {
		t.Fatalf("progress %+v (stderr %q): want aborted in wave %d with %d devices not started", p, stderr, abortWave+1, count-started)
	}
	if !regexp.MustCompile(`^\d+ of the \d+ devices (of wave \d+ |finished )?failed, more than the 20% allowed \(\d+\)$`).MatchString(p.Reason) {
		t.Errorf("reason %q does not say how many devices failed against the threshold", p.Reason)
	}
	if want := "starter: rollout " + name + " aborted: " + p.Reason; code != 1 || !strings.Contains(stderr, want) {
		t.Errorf("exit %d, stderr %q: want 1 and %q", code, stderr, want)
	}

	// The workflow itself failed with RolloutAborted and the final progress.
	c := temporalClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := c.GetWorkflow(ctx, workflows.RolloutWorkflowID(name), "").Get(ctx, nil)
	var appErr *temporal.ApplicationError
	var final workflows.RolloutProgress
	if !errors.As(err, &appErr) || appErr.Type() != workflows.ErrRolloutAborted || appErr.Details(&final) != nil || final.State != workflows.RolloutAborted {
		t.Errorf("workflow ended with %v: want %s carrying the final progress", err, workflows.ErrRolloutAborted)
	}

	rows := rolloutReport(t, name)
	if len(rows) != count {
		t.Fatalf("report has %d rows, want %d", len(rows), count)
	}
	wave := waveOf(ids, waves)
	calls := invoked(stats(t), ids)
	for _, r := range rows {
		w := wave[r.Device]
		stage, fails := failing[r.Device]
		switch {
		case w > abortWave:
			if r.Result != workflows.DeviceNotStarted || r.Attempts != 0 || calls[r.Device] != 0 {
				t.Errorf("%s (wave %d, after the abort): %s, %d attempts, %d method calls: want not started, untouched", r.Device, w+1, r.Result, r.Attempts, calls[r.Device])
			}
		case fails:
			if r.Result != workflows.DeviceFailed || r.ErrorType != activities.ErrDeviceError || !strings.Contains(r.Error, stage) || calls[r.Device] != 1 {
				t.Errorf("%s (fails in %s): %s %s %q, %d method calls: want failed once with %s", r.Device, stage, r.Result, r.ErrorType, r.Error, calls[r.Device], activities.ErrDeviceError)
			}
		default:
			if r.Result != workflows.DeviceUpdated || calls[r.Device] != 1 {
				t.Errorf("%s (wave %d): %s, %d method calls: want updated once", r.Device, w+1, r.Result, calls[r.Device])
			}
		}
	}
}

// Operator control of a running rollout: pause (in-flight devices finish,
// no device starts), a second pause refused, resume (devices start again),
// cancel (in-flight devices cancelled, the rest not started), and control of
// rollouts that have ended refused with the reason.
func TestRolloutControl(t *testing.T) {
	const (
		count  = 40
		prefix = "rc-"
		name   = "fw-control"
	)
	queue := "it-rollout-control"
	startWorker(t, queue)
	// 2 s stages and 4 devices at a time: a device takes 6–15 s, the whole
	// rollout minutes, so the controls below act on a rollout in motion.
	fl := startRolloutFleet(t, prefix, count, 5, 0, "--stage-duration", "2s", "--reboot-duration", "1s", "--tags", "ring=control")
	ids := fl.ids()
	out, stderr, code := startRollout(t, time.Minute, "--name", name,
		"--query", "SELECT * FROM devices WHERE tags.ring = 'control'",
		"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0",
		"--canary", "4", "--growth", "2", "--max-concurrent", "4", "--task-queue", queue)
	if code != 0 {
		t.Fatalf("start: exit %d, %+v, stderr %q", code, out, stderr)
	}
	c := temporalClient(t)
	waitProgress(t, c, name, "past its canary with devices in flight", 3*time.Minute, func(p workflows.RolloutProgress) bool {
		return p.Succeeded >= 4 && p.Running > 0
	})

	// Pause: the answer already says paused; the devices in flight finish.
	p, stderr, code := rolloutControl(t, "pause", name, "--reason", "change freeze")
	if code != 0 || p.State != workflows.RolloutPaused || p.Reason != "change freeze" {
		t.Fatalf("pause: exit %d, progress %+v, stderr %q: want paused (change freeze)", code, p, stderr)
	}
	paused := waitProgress(t, c, name, "paused with no device in flight", 2*time.Minute, func(p workflows.RolloutProgress) bool {
		return p.State == workflows.RolloutPaused && p.Running == 0
	})
	if paused.Pending == 0 {
		t.Fatalf("progress %+v: the rollout finished before the pause took effect; nothing left to test", paused)
	}
	if n := countVisible(t, c, fmt.Sprintf(`DmflowRollout = %q AND DmflowRolloutState = "paused"`, name), 1); n != 1 {
		t.Errorf("visibility: %d rollouts %s in state paused, want 1", n, name)
	}
	// While paused nothing starts. The proof is what the system recorded
	// from the moment the rollout was seen paused with nothing in flight:
	// its history holds no device workflow initiated and no activity
	// scheduled after that, and localhub delivered no firmwareUpdate. The
	// pause proves nothing itself; it gives a rollout that wrongly starts
	// devices while paused the chance to do so: 8 s is longer than the
	// rollout needs to start its next devices (it starts them in the
	// workflow task after one finishes).
	mark := markHistory(t, c, workflows.RolloutWorkflowID(name))
	calls := callCount(invoked(stats(t), ids))
	time.Sleep(8 * time.Second)
	if work := mark.workSince(t, c); len(work) > 0 {
		t.Errorf("while paused the rollout's history records %s: want nothing started", strings.Join(work, ", "))
	}
	still, err := queryProgress(c, name)
	if err != nil {
		t.Fatal(err)
	}
	if now := callCount(invoked(stats(t), ids)); now != calls || still.Pending != paused.Pending || still.Running != 0 || still.State != workflows.RolloutPaused {
		t.Errorf("while paused: method calls %d → %d, progress %+v → %+v: want nothing started", calls, now, paused, still)
	}
	stdout, _, code := runStarter(t, time.Minute, "rollout", "status", name, "-o", "json")
	var st workflows.RolloutProgress
	if err := json.Unmarshal([]byte(stdout), &st); err != nil || code != 0 || st.State != workflows.RolloutPaused || st.Reason != "change freeze" {
		t.Errorf("status: exit %d, %q (%v): want paused (change freeze)", code, stdout, err)
	}

	// A second pause is refused with the reason.
	if _, stderr, code := rolloutControl(t, "pause", name); code != 1 || !strings.Contains(stderr, "already paused") {
		t.Errorf("pause while paused: exit %d, stderr %q: want 1 and 'already paused'", code, stderr)
	}

	// Resume: devices start again.
	p, stderr, code = rolloutControl(t, "resume", name)
	if code != 0 || p.State != workflows.RolloutRunning {
		t.Fatalf("resume: exit %d, progress %+v, stderr %q: want running", code, p, stderr)
	}
	waitProgress(t, c, name, "running devices again", time.Minute, func(p workflows.RolloutProgress) bool {
		return p.Running > 0
	})
	if now := callCount(invoked(stats(t), ids)); now <= calls {
		// The progress says running: the method call may be a moment behind.
		time.Sleep(5 * time.Second)
		if now = callCount(invoked(stats(t), ids)); now <= calls {
			t.Errorf("after resume localhub delivered no new firmwareUpdate (%d calls)", now)
		}
	}

	// Cancel while devices are in flight: they are cancelled, the rest are
	// not started, the rollout ends as cancelled (watch exits 1).
	waitProgress(t, c, name, "running devices", time.Minute, func(p workflows.RolloutProgress) bool {
		return p.Running > 0
	})
	p, stderr, code = rolloutControl(t, "cancel", name, "--reason", "wrong image")
	if code != 0 {
		t.Fatalf("cancel: exit %d, progress %+v, stderr %q: want accepted", code, p, stderr)
	}
	// The devices in flight when the cancel was applied: normally all four
	// (--max-concurrent), none only if it landed between the last device of
	// a wave finishing and the next wave starting.
	inFlight := p.Running
	stdout, stderr, code = runStarter(t, 2*time.Minute, "rollout", "watch", name, "-o", "json")
	var final workflows.RolloutProgress
	if err := json.Unmarshal([]byte(stdout), &final); err != nil {
		t.Fatalf("watch: exit %d, %q, %q: %v", code, stdout, stderr, err)
	}
	if code != 1 || final.State != workflows.RolloutCancelled || final.Reason != "wrong image" || !strings.Contains(stderr, "cancelled") {
		t.Errorf("watch after cancel: exit %d, progress %+v, stderr %q: want 1, cancelled (wrong image)", code, final, stderr)
	}
	if final.Succeeded+final.Cancelled+final.NotStarted != count || final.NotStarted == 0 || final.Cancelled > inFlight || (inFlight > 0) != (final.Cancelled > 0) {
		t.Errorf("final progress %+v: want every device updated, cancelled (at most the %d in flight) or not started", final, inFlight)
	}
	rows := rolloutReport(t, name)
	calledNow := invoked(stats(t), ids)
	results := map[string]int{}
	var notStarted []string
	for _, r := range rows {
		results[r.Result]++
		switch r.Result {
		case workflows.DeviceNotStarted:
			notStarted = append(notStarted, r.Device)
			if calledNow[r.Device] != 0 || r.Attempts != 0 {
				t.Errorf("%s not started, but %d method calls, %d attempts", r.Device, calledNow[r.Device], r.Attempts)
			}
		case workflows.DeviceCancelled:
			if r.Attempts != 1 || r.Error == "" {
				t.Errorf("%s cancelled: %d attempts, error %q: want 1 attempt and why", r.Device, r.Attempts, r.Error)
			}
		case workflows.DeviceUpdated:
			if calledNow[r.Device] != 1 {
				t.Errorf("%s updated with %d method calls", r.Device, calledNow[r.Device])
			}
		default:
			t.Errorf("%s: result %s", r.Device, r.Result)
		}
	}
	if results[workflows.DeviceCancelled] != final.Cancelled || results[workflows.DeviceNotStarted] != final.NotStarted {
		t.Errorf("report results %v disagree with the progress %+v", results, final)
	}

	// Control of a rollout that ended is refused with the reason.
	if _, stderr, code := rolloutControl(t, "resume", name); code != 1 || !strings.Contains(stderr, "has ended") {
		t.Errorf("resume of the cancelled rollout: exit %d, stderr %q: want 1 and 'has ended'", code, stderr)
	}
	// A reboot rollout of three devices the cancelled one left untouched
	// completes; pausing it then is refused.
	small := "reboot-after-cancel"
	rb, stderr, code := startRollout(t, 2*time.Minute, "--name", small, "--devices", strings.Join(notStarted[:3], ","),
		"--reboot", "--canary", "1", "--task-queue", queue, "--wait")
	if code != 0 || rb.Result == nil || rb.Result.State != workflows.RolloutCompleted || rb.Result.Succeeded != 3 {
		t.Fatalf("reboot rollout: exit %d, %+v, stderr %q: want completed, 3 rebooted", code, rb, stderr)
	}
	_, stderr, code = rolloutControl(t, "pause", small, "--reason", "too late")
	if code != 1 || !strings.Contains(stderr, "cannot pause rollout "+small) || !strings.Contains(stderr, "has ended") {
		t.Errorf("pause of a completed rollout: exit %d, stderr %q: want 1 and the reason", code, stderr)
	}
	for _, r := range rolloutReport(t, small) {
		if r.Result != workflows.DeviceRebooted {
			t.Errorf("%s: %s, want rebooted", r.Device, r.Result)
		}
	}
}

// A small rollout from start to end: two waves, one failing device within
// --max-failures, and a continue-as-new after three devices. Its first run's
// history is recorded for the Rollout replay test (make record-histories
// writes workflows/testdata/rollout.json) and replayed here against today's
// code.
func TestRolloutEndToEnd(t *testing.T) {
	const (
		count  = 5
		prefix = "rh-"
		seed   = 1 // rh-002, in the canary, fails in applying
		name   = "fw-small"
	)
	queue := "it-rollout-e2e"
	startWorker(t, queue)
	fl := startRolloutFleet(t, prefix, count, seed, 0.2, "--stage-duration", "300ms", "--tags", "ring=small")
	failing := fl.failing()
	if len(failing) != 1 {
		t.Fatalf("test setup: %d failing devices, want 1", len(failing))
	}
	out, stderr, code := startRollout(t, 3*time.Minute, "--name", name,
		"--query", "SELECT * FROM devices WHERE tags.ring = 'small'",
		"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0",
		"--canary", "2", "--growth", "2", "--max-failures", "1", "--devices-per-run", "3",
		"--task-queue", queue, "--wait")
	p := out.Result
	if code != 1 || p == nil || p.State != workflows.RolloutCompleted || p.Succeeded != count-1 || p.Failed != 1 || p.Waves != 2 || p.Runs != 2 {
		t.Fatalf("exit %d, progress %+v, stderr %q: want completed in 2 waves and 2 runs, 1 failed (exit 1)", code, p, stderr)
	}
	for _, r := range rolloutReport(t, name) {
		if _, fails := failing[r.Device]; fails != (r.Result == workflows.DeviceFailed) {
			t.Errorf("%s: %s %s", r.Device, r.Result, r.Error)
		}
	}
	// Repeating the start finds the completed rollout: a name runs once.
	again, _, code := startRollout(t, time.Minute, "--name", name, "--devices", "rh-001",
		"--firmware", "https://fw.example/v3.bin", "--version", "3.0.0", "--task-queue", queue)
	if code != 0 || again.Existing == "" {
		t.Errorf("repeated start: exit %d, %+v: want the existing rollout reported", code, again)
	}

	c := temporalClient(t)
	h, b := runHistory(t, c, workflows.RolloutWorkflowID(name), out.RunID)
	if last := h.Events[len(h.Events)-1].GetEventType(); last != enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW {
		t.Errorf("the first run's history ends in %s, want continue-as-new", last)
	}
	noSecrets(t, b)
	// The rollout's first run and its shard, replayed against today's code and, with
	// DMFLOW_RECORD_HISTORY, recorded for the replay test.
	sh, sb := runHistory(t, c, workflows.RolloutShardWorkflowID(name, 0), "")
	noSecrets(t, sb)
	perDevice := float64(len(sh.Events)) / count
	t.Logf("history events: rollout's first run %d, its shard %d (%.1f per device)", len(h.Events), len(sh.Events), perDevice)
	for file, history := range map[string][]byte{"rollout_sharded.json": b, "rollout_shard.json": sb} {
		replayer := worker.NewWorkflowReplayer()
		replayer.RegisterWorkflow(workflows.Rollout)
		replayer.RegisterWorkflow(workflows.RolloutShard)
		path := filepath.Join(t.TempDir(), file)
		if err := os.WriteFile(path, history, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := replayer.ReplayWorkflowHistoryFromJSONFile(nil, path); err != nil {
			t.Errorf("replay of %s: %v", file, err)
		}
		if dir := os.Getenv("DMFLOW_RECORD_HISTORY"); dir != "" {
			if err := os.WriteFile(filepath.Join(dir, file), history, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("recorded %s", filepath.Join(dir, file))
		}
	}
}

// noSecrets asserts a history holds no hub key or SAS token, as checkHistory
// does.
func noSecrets(t *testing.T, b []byte) {
	t.Helper()
	s, err := hubconn.ParseService("hub", env.hubCS)
	if err != nil {
		t.Fatal(err)
	}
	key := s.String()[strings.LastIndex(s.String(), "SharedAccessKey=")+len("SharedAccessKey="):]
	for _, secret := range []string{key, "SharedAccessKey=", "SharedAccessSignature", "sig="} {
		if strings.Contains(string(b), secret) {
			t.Errorf("history contains %q", secret)
		}
	}
}

// A rollout whose workflow was terminated leaves its shards running (they outlive its runs, so
// they are abandoned, not closed with it). A new rollout of the same name must not take such a
// shard for its own, nor report its devices as done: it fails at once, naming the shard and what
// to do, and no device gets a second call.
func TestRolloutRefusesARunningShardOfAnEarlierRollout(t *testing.T) {
	const (
		count  = 6
		prefix = "rs-"
		name   = "fw-shard-clash"
	)
	queue := "it-rollout-clash"
	startWorker(t, queue)
	startRolloutFleet(t, prefix, count, 1, 0, "--stage-duration", "20s", "--tags", "ring=clash")
	args := []string{"--name", name, "--query", "SELECT * FROM devices WHERE tags.ring = 'clash'",
		"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0", "--canary", "6", "--task-queue", queue}
	if _, stderr, code := startRollout(t, time.Minute, args...); code != 0 {
		t.Fatalf("first rollout: exit %d: %s", code, stderr)
	}
	c := temporalClient(t)
	shard := workflows.RolloutShardWorkflowID(name, 0)
	require.Eventually(t, func() bool {
		p, err := queryProgress(c, name)
		return err == nil && p.Running == count
	}, 30*time.Second, 200*time.Millisecond, "the shard running its devices")
	if err := c.TerminateWorkflow(context.Background(), workflows.RolloutWorkflowID(name), "", "test: the rollout's workflow terminated"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.TerminateWorkflow(context.Background(), shard, "", "test cleanup") })

	out, stderr, code := startRollout(t, time.Minute, append(args, "--wait")...)
	if code != 1 || !strings.Contains(stderr, shard+" still runs") || !strings.Contains(stderr, "terminate it") {
		t.Errorf("second rollout of the same name: exit %d, %+v, stderr %q: want 1 and the running shard named", code, out, stderr)
	}
	before := stats(t)
	for _, id := range []string{prefix + "001", prefix + "006"} {
		if n := before.MethodInvocations[id][protocol.MethodFirmwareUpdate]; n != 1 {
			t.Errorf("%s got %d firmwareUpdate calls, want the first rollout's one", id, n)
		}
	}
}
