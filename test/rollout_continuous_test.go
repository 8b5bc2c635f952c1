//go:build integration

package test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/workflows"
	"go.temporal.io/sdk/worker"
)

// A continuous rollout on real processes: it updates the devices its query selects at the start
// (three of dmflow's contract), then, looking every 2 s, finds the devices registered, started and
// tagged while it runs (one of dmflow's contract, one playing the tutorials' device, which reports
// no version and no update ID) and updates them; it completes when its --until passes. Every
// device gets the update once, by localhub's method log, though the looks reach back 30 minutes
// and see the devices again after their update.
func TestRolloutContinuous(t *testing.T) {
	// The policy tests wait on devices and timers more than they compute: they run together, each
	// with its own task queue, worker and devices (make test-integration's -parallel).
	t.Parallel()
	const (
		prefix = "cn-" // TestRolloutControl's fleet is rc-, on the same localhub
		name   = "fw-continuous"
		query  = "SELECT * FROM devices WHERE tags.ring = 'continuous'"
	)
	queue := "it-rollout-continuous"
	startWorker(t, queue)
	fl := startRolloutFleet(t, prefix, 3, 5, 0, "--stage-duration", "1s", "--tags", "ring=continuous")
	c := temporalClient(t)
	svc := serviceClient(t)

	begun := time.Now()
	launch, stderr, code := startRollout(t, time.Minute, "--name", name, "--query", query,
		"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0", "--canary", "3",
		"--continuous", "--until", "30s", "--look-interval", "2s", "--task-queue", queue)
	if code != 0 || launch.RunID == "" {
		t.Fatalf("start: exit %d, %+v, stderr %s", code, launch, stderr)
	}

	first := waitProgress(t, c, name, "done with its first targets", 30*time.Second, func(p workflows.RolloutProgress) bool {
		return p.Succeeded == 3
	})
	if first.Continuous == nil || first.State != workflows.RolloutRunning {
		t.Fatalf("after its first targets: %+v, want running and looking", first)
	}

	// Registered, started and tagged mid-rollout: simdevice registers its device when it is new.
	late := []string{prefix + "late", prefix + "tutorial"}
	startDevice(t, late[0], "--stage-duration", "1s")
	startDevice(t, late[1], "--contract", "tutorial", "--stage-duration", "1s")
	for _, id := range late {
		if _, err := svc.UpdateDeviceTwin(context.Background(), &iotservice.Twin{DeviceID: id,
			Tags: map[string]interface{}{"ring": "continuous"}}); err != nil {
			t.Fatalf("tag %s: %v", id, err)
		}
	}
	t.Logf("first targets done %s after the start; late devices tagged at %s", first.Updated.Sub(first.Started).Round(time.Second),
		time.Since(begun).Round(time.Second))

	t.Run("status shows the looks", func(t *testing.T) {
		p := waitProgress(t, c, name, "done with the late devices", 20*time.Second, func(p workflows.RolloutProgress) bool {
			return p.Succeeded == 5
		})
		if p.Continuous == nil || p.Continuous.Found != 2 {
			t.Fatalf("looks %+v, want 2 devices found", p.Continuous)
		}
		out, _, code := runStarter(t, 30*time.Second, "rollout", "status", name)
		if code != 0 || !strings.Contains(out, "looks:     every 2s until ") || !strings.Contains(out, " looks found 2 devices; ") {
			t.Errorf("status: exit %d:\n%s", code, out)
		}
	})

	t.Run("completes at until", func(t *testing.T) {
		p := waitProgress(t, c, name, "completed", 40*time.Second, func(p workflows.RolloutProgress) bool { return p.Done() })
		if p.State != workflows.RolloutCompleted || !strings.Contains(p.Reason, "continuous until ") || p.Total != 5 || p.Succeeded != 5 {
			t.Fatalf("final progress %+v", p)
		}
		if p.Continuous == nil || !p.Continuous.Ended || p.Continuous.Looks < 2 {
			t.Errorf("looks %+v", p.Continuous)
		}
	})

	t.Run("every device updated once", func(t *testing.T) {
		ids := append(fl.ids(), late...)
		st := stats(t)
		for _, id := range ids {
			if n := st.MethodInvocations[id][protocol.MethodFirmwareUpdate]; n != 1 {
				t.Errorf("%s: %d firmwareUpdate deliveries, want 1", id, n)
			}
		}
		rows := rolloutReport(t, name)
		var got []string
		for _, r := range rows {
			got = append(got, r.Device)
		}
		slices.Sort(got)
		slices.Sort(ids)
		if !slices.Equal(got, ids) {
			t.Errorf("report rows %v, want each of %v once", got, ids)
		}
		out, _, code := runStarter(t, 30*time.Second, "rollout", "report", name, "-f", "json")
		var full []struct {
			Device string `json:"device"`
			Result string `json:"result"`
			Look   int    `json:"look"`
		}
		if err := json.Unmarshal([]byte(out), &full); code != 0 || err != nil {
			t.Fatalf("report: exit %d, %v", code, err)
		}
		for _, r := range full {
			if slices.Contains(late, r.Device) != (r.Look > 0) || r.Result != workflows.DeviceUpdated {
				t.Errorf("row %+v: a late device is found by a look, and each is updated", r)
			}
		}
		tw := reported(t, svc, late[1])
		if _, ok := tw[protocol.PropFirmwareVersion]; ok || tw[protocol.PropFirmwareStatus] != "completed" {
			t.Errorf("the tutorial device reports %v: want no version, firmwareStatus completed", tw)
		}
	})

	// The rollout's history and its look's shard's replay against today's code, and are recorded
	// for the replay test (make record-histories).
	t.Run("histories replay", func(t *testing.T) {
		for _, h := range []struct {
			id, file string
			workflow any
		}{
			{workflows.RolloutWorkflowID(name), "rollout_continuous", workflows.Rollout},
			{workflows.RolloutShardWorkflowID(name, 1), "rollout_continuous_shard", workflows.RolloutShard},
		} {
			checkHistory(t, c, h.id, h.file)
			file := filepath.Join(t.TempDir(), h.file+".json")
			if err := os.WriteFile(file, historyJSON(t, c, h.id), 0o644); err != nil {
				t.Fatal(err)
			}
			replayer := worker.NewWorkflowReplayer()
			replayer.RegisterWorkflow(h.workflow)
			if err := replayer.ReplayWorkflowHistoryFromJSONFile(nil, file); err != nil {
				t.Errorf("replay %s: %v", h.id, err)
			}
		}
	})
}
