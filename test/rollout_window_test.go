//go:build integration

package test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/worker"
)

// A rollout with two maintenance windows a few seconds ahead: it waits for the first, starts the
// canary and the next wave in it, waits again when it closes (status says until when) while the
// devices in flight finish, and completes in the second; every device started inside a window.
// Its history is recorded for the replay test (make record-histories writes
// workflows/testdata/rollout_windows.json) and replayed here against today's code.
//
// The rollout is started through the Temporal client: starter's --window flag is wired
// separately.
func TestRolloutWindows(t *testing.T) {
	const (
		count  = 6
		prefix = "rw-"
		name   = "fw-windows"
	)
	queue := "it-rollout-windows"
	startWorker(t, queue)
	// 1 s stages: a device takes at least 3 s, so the three waves (1, 2, 3 devices, two at a
	// time) need more than the first window's 8 s, and the last devices start in the second.
	fl := startRolloutFleet(t, prefix, count, 3, 0, "--stage-duration", "1s", "--tags", "ring=windows")
	ids := fl.ids()

	// The second window is generous: the test ends when the rollout completes, and a slow machine
	// must not run out of windows.
	now := time.Now().UTC().Truncate(time.Second)
	in := workflows.RolloutInput{
		Name:      name,
		Operation: workflows.OperationFirmware,
		Query:     "SELECT * FROM devices WHERE tags.ring = 'windows'",
		Firmware:  &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"},
		Canary:    1, Growth: 2, MaxConcurrent: 2,
		Windows: []workflows.Window{
			{Start: now.Add(5 * time.Second), End: now.Add(13 * time.Second)},
			{Start: now.Add(25 * time.Second), End: now.Add(145 * time.Second)},
		},
	}
	// Started as an operator would: the windows through --window, parsed by the starter.
	args := []string{"--name", name, "--query", in.Query, "--firmware", in.Firmware.PackageURI, "--version", in.Firmware.Version,
		"--canary", "1", "--growth", "2", "--max-concurrent", "2", "--task-queue", queue}
	for _, w := range in.Windows {
		args = append(args, "--window", w.String())
	}
	launch, stderr, code := startRollout(t, time.Minute, args...)
	if code != 0 || launch.RunID == "" {
		t.Fatalf("starter rollout start: exit %d, %+v, stderr %q", code, launch, stderr)
	}
	c := temporalClient(t)

	w1, w2 := in.Windows[0], in.Windows[1]
	first := waitProgress(t, c, name, "waiting for the first window", 30*time.Second, func(p workflows.RolloutProgress) bool {
		return p.State == workflows.RolloutWaiting || p.Succeeded+p.Running > 0
	})
	if first.State != workflows.RolloutWaiting || !first.WindowOpens.Equal(w1.Start) {
		t.Errorf("before the first window: %+v; want waiting, opening at %s", first, w1.Start)
	}
	between := waitProgress(t, c, name, "waiting for the second window", 40*time.Second, func(p workflows.RolloutProgress) bool {
		return p.State == workflows.RolloutWaiting && p.WindowOpens.Equal(w2.Start) || p.Done()
	})
	if between.State != workflows.RolloutWaiting || between.Succeeded == 0 || between.Pending == 0 {
		t.Fatalf("between the windows: %+v; want waiting with devices done and left", between)
	}
	stdout, stderr, code := runStarter(t, time.Minute, "rollout", "status", name)
	if code != 0 || !strings.Contains(stdout, "  window:    waiting for window, opens at ") {
		t.Errorf("status between the windows: exit %d, %q, stderr %q: want the window's opening", code, stdout, stderr)
	}

	stdout, stderr, code = runStarter(t, 2*time.Minute, "rollout", "watch", name, "-o", "json")
	var p workflows.RolloutProgress
	if err := json.Unmarshal([]byte(stdout), &p); err != nil {
		t.Fatalf("watch: exit %d, output %q, stderr %q: %v", code, stdout, stderr, err)
	}
	if code != 0 || p.State != workflows.RolloutCompleted || p.Succeeded != count {
		t.Fatalf("watch: exit %d, progress %+v; want completed, %d updated", code, p, count)
	}
	if p.Waited < 10*time.Second || p.Active <= 0 {
		t.Errorf("progress %+v: want at least the 12 s between the windows waited (and the 5 s before), some active", p)
	}

	rows := rolloutReport(t, name)
	if len(rows) != count {
		t.Fatalf("report has %d rows, want %d", len(rows), count)
	}
	inSecond := 0
	for i, r := range rows {
		open, _, _, _ := workflows.WindowAt(in.Windows, r.Started)
		if r.Device != ids[i] || r.Result != workflows.DeviceUpdated || !open {
			t.Errorf("%s: %s, started %s: want updated, started inside a window (%s, %s)", r.Device, r.Result, r.Started, w1, w2)
		}
		if !r.Started.Before(w2.Start) {
			inSecond++
		}
		t.Logf("%s started at +%s, took %.1fs", r.Device, r.Started.Sub(now).Round(100*time.Millisecond), r.DurationSeconds)
	}
	if inSecond == 0 || inSecond == count {
		t.Errorf("%d devices started in the second window: want the rollout to span both", inSecond)
	}

	// The history replays against today's code, and is recorded for the replay test.
	h, b := runHistory(t, c, workflows.RolloutWorkflowID(name), launch.RunID)
	if last := h.Events[len(h.Events)-1].GetEventType(); last != enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED {
		t.Errorf("the history ends in %s, want completed", last)
	}
	noSecrets(t, b)
	replayer := worker.NewWorkflowReplayer()
	replayer.RegisterWorkflow(workflows.Rollout)
	file := filepath.Join(t.TempDir(), "rollout_windows.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := replayer.ReplayWorkflowHistoryFromJSONFile(nil, file); err != nil {
		t.Errorf("replay: %v", err)
	}
	if dir := os.Getenv("DMFLOW_RECORD_HISTORY"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, "rollout_windows.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("recorded the history of %s in %s", workflows.RolloutWorkflowID(name), filepath.Join(dir, "rollout_windows.json"))
	}
}
