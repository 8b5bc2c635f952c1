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

	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/device"
	"github.com/dmflow/dmflow/internal/sim/fleet"
	localhub "github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/workflows"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
)

// rollbackReportLine is a row of `starter rollout report -f json` with its rollback.
type rollbackReportLine struct {
	Device   string `json:"device"`
	Wave     int    `json:"wave"`
	Result   string `json:"result"`
	Rollback *struct {
		Result string   `json:"result"`
		Wave   int      `json:"wave"`
		Stages []string `json:"stages"`
		Note   string   `json:"note"`
	} `json:"rollback"`
}

// A rollout with a rollback on real processes: twelve devices, a quarter of them failing every
// update, half of the others on the tutorials' contract, one failure allowed. The canary wave of
// six holds two failing devices, so the rollout aborts in it; its four updated devices (two on each
// contract) get the rollback version and its two failed ones, still on it, are skipped without a
// call (--rollback-include both). The worker is killed (SIGKILL) while the rollback's devices are
// in flight and another started; the rollout also continues as new during the rollback
// (--devices-per-run 4). localhub's method log shows every device got each update (forward and
// rollback) at most once, the dmflow devices' twins report the rollback version, and the report and
// status show both outcomes.
func TestRolloutRollback(t *testing.T) {
	// The policy tests wait on devices and timers more than they compute: they run together, each
	// with its own task queue, worker and devices (make test-integration's -parallel).
	t.Parallel()
	const (
		count  = 12
		prefix = "rbk-" // TestRollout1000Devices's fleet is rb-, on the same localhub
		seed   = 1
		name   = "fw-rollback"
		canary = 6
	)
	queue := "it-rollout-rollback"
	// The worker and the fleet start together.
	w := startProc(t, "worker", hubEnv("DMFLOW_TASK_QUEUE="+queue), filepath.Join(env.bin, "worker"))
	fl := startRolloutFleet(t, prefix, count, seed, 0.25, "--stage-duration", "300ms", "--tags", "ring=rollback", "--tutorial", "50%")
	if err := w.waitFor("worker ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	plan := fleet.Plan(prefix, count, seed, fleet.Faults{Failing: 0.25, Tutorial: 0.5})
	slices.SortFunc(plan, func(a, b fleet.Member) int { return strings.Compare(a.ID, b.ID) })
	tutorials := 0
	for _, m := range regexp.MustCompile(`msg="fleet contract" contract=tutorial answer=\w+ count=(\d+)`).FindAllStringSubmatch(fl.proc.output(), -1) {
		n, _ := strconv.Atoi(m[1])
		tutorials += n
	}
	want := map[string]string{} // device → its forward result in the canary wave
	var updated, failed, tutorialUpdated []string
	planTutorials := 0
	for i, m := range plan {
		if m.Contract == device.ContractTutorial {
			planTutorials++
		}
		if i >= canary {
			continue
		}
		if m.Profile == fleet.Failing {
			want[m.ID], failed = workflows.DeviceFailed, append(failed, m.ID)
			continue
		}
		want[m.ID], updated = workflows.DeviceUpdated, append(updated, m.ID)
		if m.Contract == device.ContractTutorial {
			tutorialUpdated = append(tutorialUpdated, m.ID)
		}
	}
	if tutorials != planTutorials || len(failed) != 2 || len(tutorialUpdated) != 2 {
		t.Fatalf("test setup: the fleet runs %d tutorial devices (plan %d); the canary has %d failing and %d tutorial devices, want 2 and 2",
			tutorials, planTutorials, len(failed), len(tutorialUpdated))
	}

	entries, _ := sharedHub().methodLog(t)
	var logAt uint64
	if len(entries) > 0 {
		logAt = entries[len(entries)-1].Seq
	}
	out, stderr, code := startRollout(t, time.Minute, "--name", name, "--query", "SELECT * FROM devices WHERE tags.ring = 'rollback'",
		"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0", "--canary", strconv.Itoa(canary), "--growth", "2",
		"--max-concurrent", "50", "--max-failures", "1", "--devices-per-run", "4",
		// A retry after the kill whose attempt may have called looks for evidence that long
		// (Evidence.Window) before calling again: the stages take a second.
		"--stage-timeout", "5s",
		"--rollback-firmware", "https://fw.example/v1.bin", "--rollback-version", device.DefaultFirmwareVersion, "--rollback-include", "both",
		"--task-queue", queue)
	if code != 0 || out.WorkflowID != workflows.RolloutWorkflowID(name) {
		t.Fatalf("rollout start: exit %d, %+v, stderr %q", code, out, stderr)
	}

	// Kill the worker as soon as a device answered a rollback's call: the rollback's devices are
	// then in their InvokeMethod, some after their call and some before it, whose retries must
	// not call twice.
	forwardID, rollbackID := workflows.RolloutUpdateID(name, 1), workflows.RolloutRollbackUpdateID(name)
	answered := regexp.MustCompile(`msg="device answered".*ActivityID=\S+/firmwareUpdate#rollback`)
	deadline := time.Now().Add(30 * time.Second)
	for !answered.MatchString(w.output()) {
		if time.Now().After(deadline) {
			t.Fatalf("no rollback within 30 s; progress: %s", mustJSON(queryProgressOrNil(t, name)))
		}
		time.Sleep(5 * time.Millisecond)
	}
	w.kill()
	body := hubGet(t, env.hubCS, env.caFile, env.hubHTTPS, fmt.Sprintf("/_localhub/methods?after=%d&limit=%d", logAt, localhub.MaxMethodLogPage))
	var page localhub.MethodLogPage
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatalf("method log page %.200s: %v", body, err)
	}
	calls := 0
	for _, e := range page.Entries {
		if e.RequestID == rollbackID {
			calls++
		}
	}
	t.Logf("worker killed while the rollback's devices are in flight, %d rollback calls made", calls)
	startWorker(t, queue)

	stdout, stderr, code := runStarter(t, 2*time.Minute, "rollout", "watch", name, "-o", "json")
	var p workflows.RolloutProgress
	if err := json.Unmarshal([]byte(stdout), &p); err != nil || code != 1 {
		t.Fatalf("rollout watch: exit %d, %q (stderr %q): %v", code, stdout, stderr, err)
	}
	if !strings.Contains(stderr, "starter: rollout "+name+" aborted and was rolled back: ") {
		t.Errorf("watch stderr %q: want the rolled-back outcome", stderr)
	}
	wantRB := workflows.RollbackProgress{Version: device.DefaultFirmwareVersion, Include: "both", Phase: workflows.RollbackCompleted,
		Devices: canary, RolledBack: len(updated), Skipped: len(failed), Wave: 1, Waves: 1, WaveSize: canary, WaveDone: canary}
	if p.Rollback != nil {
		wantRB.HubCalls, wantRB.Started = p.Rollback.HubCalls, p.Rollback.Started
	}
	if p.State != workflows.RolloutRolledBack || p.Rollback == nil || *p.Rollback != wantRB || p.Succeeded != len(updated) ||
		p.Failed != len(failed) || p.NotStarted != count-canary {
		t.Errorf("final progress %s: want rolled-back, rollback %+v", mustJSON(p), wantRB)
	}
	if !strings.HasSuffix(p.Reason, "; rolled back 4 devices to 1.0.0 (2 skipped, already on it)") || p.Runs < 3 {
		t.Errorf("reason %q, %d runs: want the rollback named, and continue-as-new during it", p.Reason, p.Runs)
	}

	// The workflow failed with RolloutAborted, its details the rolled-back progress.
	c := temporalClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := c.GetWorkflow(ctx, workflows.RolloutWorkflowID(name), "").Get(ctx, nil)
	var appErr *temporal.ApplicationError
	var final workflows.RolloutProgress
	if !errors.As(err, &appErr) || appErr.Type() != workflows.ErrRolloutAborted || appErr.Details(&final) != nil || final.State != workflows.RolloutRolledBack {
		t.Errorf("workflow ended with %v: want %s with the rolled-back progress", err, workflows.ErrRolloutAborted)
	}

	// The same name again attaches to the rolled-back run instead of starting one that would count
	// the rolled-back devices as updated.
	again, stderr, code := runStarter(t, time.Minute, "rollout", "start", "--name", name, "--devices", strings.Join(updated, ","),
		"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0", "--task-queue", queue)
	if code != 0 || !strings.HasPrefix(again, "already ran (failed): rollout "+name) ||
		!strings.Contains(again, "rolled devices back, which remember its update IDs: choose a new --name") {
		t.Errorf("rollout start under the rolled-back name: exit %d, %q (stderr %q): want the rolled-back run and the note", code, again, stderr)
	}
	if desc, err := c.DescribeWorkflowExecution(ctx, workflows.RolloutWorkflowID(name), ""); err != nil ||
		desc.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_FAILED {
		t.Errorf("after the second start the latest run is %v (%v): want the rolled-back run, failed", desc.GetWorkflowExecutionInfo().GetStatus(), err)
	}

	// No device got an update twice, forward or rollback; the updated ones got both, the failed
	// ones the forward only, the rest nothing.
	entries, _ = sharedHub().methodLog(t)
	got := map[string]map[string]int{}
	for _, e := range entries {
		if strings.HasPrefix(e.DeviceID, prefix) && e.Method == protocol.MethodFirmwareUpdate && e.Delivered {
			if got[e.DeviceID] == nil {
				got[e.DeviceID] = map[string]int{}
			}
			got[e.DeviceID][e.RequestID]++
		}
	}
	for _, m := range plan {
		exp := map[string]int{}
		switch want[m.ID] {
		case workflows.DeviceUpdated:
			exp = map[string]int{forwardID: 1, rollbackID: 1}
		case workflows.DeviceFailed:
			exp = map[string]int{forwardID: 1}
		}
		if !mapsEqual(got[m.ID], exp) {
			t.Errorf("%s (%s, %s): localhub delivered %v, want %v", m.ID, m.Profile, m.Contract, got[m.ID], exp)
		}
	}

	// The dmflow devices rolled back report the rollback version and update; the tutorial ones
	// completed it (they report no version).
	sc := serviceClientOf(t, env.hubCS, env.caFile)
	for _, id := range updated {
		rep := reported(t, sc, id)
		if slices.Contains(tutorialUpdated, id) {
			if rep[protocol.PropFirmwareStatus] != protocol.StatusCompleted || rep[protocol.PropFirmwareVersion] != nil {
				t.Errorf("tutorial device %s reports %v: want completed, no version", id, rep)
			}
			continue
		}
		if rep[protocol.PropFirmwareVersion] != device.DefaultFirmwareVersion || rep[protocol.PropFirmwareUpdateID] != rollbackID {
			t.Errorf("%s reports version %v, update %v: want %s by %s", id, rep[protocol.PropFirmwareVersion], rep[protocol.PropFirmwareUpdateID],
				device.DefaultFirmwareVersion, rollbackID)
		}
	}

	// The report shows both outcomes.
	rs, stderr, code := runStarter(t, time.Minute, "rollout", "report", name, "-f", "json")
	var rows []rollbackReportLine
	if err := json.Unmarshal([]byte(rs), &rows); err != nil || code != 0 || len(rows) != count {
		t.Fatalf("report: exit %d, %d rows (stderr %q): %v", code, len(rows), stderr, err)
	}
	for _, r := range rows {
		switch want[r.Device] {
		case workflows.DeviceUpdated:
			if r.Result != workflows.DeviceUpdated || r.Rollback == nil || r.Rollback.Result != workflows.DeviceRolledBack || len(r.Rollback.Stages) != 3 || r.Rollback.Wave != 1 {
				t.Errorf("%s: %s, rollback %+v: want updated, then rolled back through three stages in rollback wave 1", r.Device, r.Result, r.Rollback)
			}
		case workflows.DeviceFailed:
			if r.Result != workflows.DeviceFailed || r.Rollback == nil || r.Rollback.Result != workflows.DeviceSkipped || r.Rollback.Note != "already on 1.0.0" {
				t.Errorf("%s: %s, rollback %+v: want failed, then skipped as already on 1.0.0", r.Device, r.Result, r.Rollback)
			}
		default:
			if r.Result != workflows.DeviceNotStarted || r.Rollback != nil {
				t.Errorf("%s: %s, rollback %+v: want not started, no rollback", r.Device, r.Result, r.Rollback)
			}
		}
	}
	table, _, _ := runStarter(t, time.Minute, "rollout", "report", name)
	status, _, _ := runStarter(t, time.Minute, "rollout", "status", name)
	t.Logf("status:\n%s\nreport:\n%s", status, table)
	if !strings.Contains(table, "ROLLBACK") || !strings.Contains(table, "; rollback: 4 rolled back, 2 skipped") {
		t.Errorf("report table without the rollback's columns and totals:\n%s", table)
	}
	if !strings.Contains(status, "rollout "+name+": rolled-back (firmware 2.0.0)") ||
		!strings.Contains(status, "rollback:  completed, to 1.0.0: 6/6 done (100%): 4 rolled back, 2 skipped (already on it)") {
		t.Errorf("status:\n%s", status)
	}
	// For the replay tests: the run that aborted and began the rollback, the last run (continued
	// during the rollback), and the shard.
	checkHistory(t, c, workflows.RolloutWorkflowID(name), "rollout_rollback")
	checkHistory(t, c, workflows.RolloutShardWorkflowID(name, 0), "rollout_rollback_shard")
	last, _ := runHistory(t, c, workflows.RolloutWorkflowID(name), "")
	if prev := last.Events[0].GetWorkflowExecutionStartedEventAttributes().GetContinuedExecutionRunId(); prev == "" {
		t.Error("the last run of the rollout did not continue an earlier one")
	} else if dir := os.Getenv("DMFLOW_RECORD_HISTORY"); dir != "" {
		_, b := runHistory(t, c, workflows.RolloutWorkflowID(name), prev)
		if err := os.WriteFile(filepath.Join(dir, "rollout_rollback_abort.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// queryProgressOrNil is the rollout's progress for a failure message, or nil.
func queryProgressOrNil(t *testing.T, name string) any {
	t.Helper()
	p, err := queryProgress(temporalClient(t), name)
	if err != nil {
		return err.Error()
	}
	return p
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
