//go:build integration

package test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/workflows"
)

// gatedReportLine is a row of the report with the approval its wave started on.
type gatedReportLine struct {
	reportLine
	Approval *struct {
		Wave     int    `json:"wave"`
		Identity string `json:"identity"`
		Note     string `json:"note"`
	} `json:"approval"`
}

// Approval gates and end times on real processes, one fleet for all (devices of about 2 s: three
// stages of 500 ms, and the first read of them at 2 s):
//
//   - approval: a rollout gated after wave 1 (continuing as new after every device) awaits
//     approval once its canary finished; approve is refused before and accepted then, after the
//     worker was killed (SIGKILL) and replaced meanwhile; it completes, the report names the
//     approver on the devices of wave 2, and localhub's method log and the devices' own log show
//     every device got the update once.
//   - end time: two rollouts, one device at a time, with --end-at a few seconds after their
//     start, end as ended: with stop the device in flight finishes, with cancel it (a device whose
//     update takes a minute) is cancelled; no device starts after the end time and watch exits 1.
func TestRolloutApprovalAndEndTime(t *testing.T) {
	// The policy tests wait on devices and timers more than they compute: they run together, each
	// with its own task queue, worker and devices (make test-integration's -parallel).
	t.Parallel()
	const prefix = "gt-"
	queue := "it-rollout-gates"
	worker := startWorker(t, queue)
	fl := startRolloutFleet(t, prefix, 16, 7, 0, "--stage-duration", "500ms", "--tags", "ring=gates", "--device-log-level", "info")
	ids := fl.ids()
	// A device whose update takes a minute, first in device-ID order: in flight at any end time.
	const slow = "ga-slow"
	startDevice(t, slow, "--stage-duration", "20s")
	c := temporalClient(t)
	parent := t // the replacement worker serves the subtests after the one that starts it
	fw := []string{"--firmware", "https://fw.example/v3.bin", "--version", "3.0.0", "--task-queue", queue}

	t.Run("approval", func(t *testing.T) {
		name := "fw-gated"
		devs := ids[:4]
		launch, stderr, code := startRollout(t, time.Minute, append([]string{"--name", name, "--devices", strings.Join(devs, ","),
			"--canary", "1", "--growth", "3", "--approve-after-wave", "1", "--devices-per-run", "1"}, fw...)...)
		if code != 0 {
			t.Fatalf("start: exit %d, %+v, stderr %q", code, launch, stderr)
		}
		if _, stderr, code := rolloutControl(t, "approve", name); code != 1 || !strings.Contains(stderr, "not awaiting approval") {
			t.Errorf("approve before the canary finished: exit %d, stderr %q: want 1, not awaiting approval", code, stderr)
		}
		p := waitProgress(t, c, name, "awaiting approval", time.Minute, func(p workflows.RolloutProgress) bool {
			return p.State == workflows.RolloutAwaitingApproval || p.Done()
		})
		if p.State != workflows.RolloutAwaitingApproval || p.Succeeded != 1 || p.Running != 0 || p.Pending != 3 {
			t.Fatalf("progress %+v: want awaiting approval after the canary, nothing in flight, 3 pending", p)
		}
		if n := countVisible(t, c, fmt.Sprintf(`DmflowRollout = %q AND DmflowRolloutState = "awaiting-approval"`, name), 1); n != 1 {
			t.Errorf("visibility: %d rollouts %s awaiting approval, want 1", n, name)
		}

		// The worker dies while the rollout awaits approval; a new one takes over.
		worker.kill()
		worker = startWorker(parent, queue)
		// Queries go to the dead worker's sticky queue until the server gives up on it.
		waitProgress(t, c, name, "awaiting approval, told by the new worker", time.Minute, func(p workflows.RolloutProgress) bool {
			return p.State == workflows.RolloutAwaitingApproval
		})
		stdout, stderr, code := runStarter(t, 2*time.Minute, "rollout", "status", name)
		if code != 0 || !strings.Contains(stdout, "awaiting-approval") || !strings.Contains(stdout, "  approve:   starter rollout approve "+name) {
			t.Errorf("status: exit %d, %q, stderr %q: want awaiting-approval and how to approve", code, stdout, stderr)
		}
		t.Logf("starter rollout status %s (awaiting approval):\n%s", name, stdout)
		p, stderr, code = rolloutControl(t, "approve", name, "--note", "canary fine", "--identity", "it-approver")
		if code != 0 || len(p.Approvals) != 1 || p.Approvals[0].Identity != "it-approver" || p.Approvals[0].Wave != 1 {
			t.Fatalf("approve: exit %d, progress %+v, stderr %q: want accepted with the approval", code, p, stderr)
		}
		stdout, _, _ = runStarter(t, time.Minute, "rollout", "status", name)
		t.Logf("starter rollout status %s (approved):\n%s", name, stdout)
		if _, stderr, code := rolloutControl(t, "approve", name); code != 1 || !strings.Contains(stderr, "not awaiting approval") {
			t.Errorf("approve again: exit %d, stderr %q: want 1, not awaiting approval", code, stderr)
		} else {
			t.Logf("starter rollout approve %s, again: exit %d: %s", name, code, stderr)
		}

		stdout, stderr, code = runStarter(t, 2*time.Minute, "rollout", "watch", name, "-o", "json")
		var final workflows.RolloutProgress
		if err := json.Unmarshal([]byte(stdout), &final); err != nil {
			t.Fatalf("watch: exit %d, %q, %q: %v", code, stdout, stderr, err)
		}
		if code != 0 || final.State != workflows.RolloutCompleted || final.Succeeded != 4 || len(final.Approvals) != 1 || final.Runs < 3 {
			t.Errorf("watch: exit %d, progress %+v: want completed, 4 updated, the approval kept across %d runs", code, final, final.Runs)
		}
		if final.Awaited <= 0 || final.Active <= 0 {
			t.Errorf("progress %+v: want time awaited and active apart", final)
		}

		stdout, stderr, code = runStarter(t, time.Minute, "rollout", "report", name, "-f", "json")
		var rows []gatedReportLine
		if err := json.Unmarshal([]byte(stdout), &rows); err != nil || code != 0 {
			t.Fatalf("report: exit %d, %q, %q: %v", code, stdout, stderr, err)
		}
		for _, r := range rows {
			switch {
			case r.Result != workflows.DeviceUpdated:
				t.Errorf("%s: %s, want updated", r.Device, r.Result)
			case r.Wave == 1 && r.Approval != nil:
				t.Errorf("%s of the canary carries approval %+v", r.Device, *r.Approval)
			case r.Wave == 2 && (r.Approval == nil || r.Approval.Identity != "it-approver" || r.Approval.Note != "canary fine"):
				t.Errorf("%s of wave 2: approval %+v, want it-approver's", r.Device, r.Approval)
			}
		}
		stdout, _, _ = runStarter(t, time.Minute, "rollout", "report", name)
		t.Logf("starter rollout report %s:\n%s", name, stdout)
		if !strings.Contains(stdout, "approved after wave 1") || !strings.Contains(stdout, "by it-approver  canary fine") {
			t.Errorf("report table %q: want the approval below it", stdout)
		}
		checkUpdatedOnce(t, fl, devs, workflows.RolloutUpdateID(name, 1))
	})

	// endAt runs a rollout of six devices one at a time with its end time 5 s after now and
	// behavior, and returns its final progress and report.
	endAt := func(t *testing.T, name string, devs []string, behavior string) (workflows.RolloutProgress, []reportLine, time.Time) {
		end := time.Now().Add(5 * time.Second).Truncate(time.Second)
		launch, stderr, code := startRollout(t, time.Minute, append([]string{"--name", name, "--devices", strings.Join(devs, ","),
			"--canary", "4", "--growth", "1", "--max-concurrent", "1", "--end-at", end.Format(time.RFC3339), "--end-behavior", behavior}, fw...)...)
		if code != 0 {
			t.Fatalf("start: exit %d, %+v, stderr %q", code, launch, stderr)
		}
		stdout, stderr, code := runStarter(t, 2*time.Minute, "rollout", "watch", name, "-o", "json")
		var p workflows.RolloutProgress
		if err := json.Unmarshal([]byte(stdout), &p); err != nil {
			t.Fatalf("watch: exit %d, %q, %q: %v", code, stdout, stderr, err)
		}
		if code != 1 || p.State != workflows.RolloutEnded || !strings.Contains(stderr, "ended at its end time") || !p.EndAt.Equal(end) {
			t.Errorf("watch: exit %d, progress %+v, stderr %q: want 1, ended at %s", code, p, stderr, end)
		}
		if p.NotStarted == 0 || p.Succeeded+p.Cancelled+p.NotStarted != len(devs) ||
			!strings.Contains(p.Reason, fmt.Sprintf("was reached (end behavior %s): %d devices not started", behavior, p.NotStarted)) {
			t.Errorf("progress %+v: want some updated, some not started, the reason saying so", p)
		}
		rows := rolloutReport(t, name)
		for _, r := range rows {
			if !r.Started.IsZero() && !r.Started.Before(end) {
				t.Errorf("%s started at %s, after the end time %s", r.Device, r.Started, end)
			}
		}
		return p, rows, end
	}
	t.Run("end time", func(t *testing.T) {
		t.Run("stop", func(t *testing.T) {
			t.Parallel()
			p, rows, end := endAt(t, "fw-end-stop", ids[4:10], workflows.EndStop)
			if p.Cancelled != 0 {
				t.Errorf("stop cancelled %d devices", p.Cancelled)
			}
			for _, r := range rows {
				if r.Result != workflows.DeviceUpdated && r.Result != workflows.DeviceNotStarted {
					t.Errorf("%s: %s, want updated or not started", r.Device, r.Result)
				}
			}
			if !p.Finished.After(end) || p.Succeeded == 0 {
				t.Errorf("progress %+v: want the device in flight at the end time finished after it", p)
			}
		})
		t.Run("cancel", func(t *testing.T) {
			t.Parallel()
			p, rows, end := endAt(t, "fw-end-cancel", append([]string{slow}, ids[10:16]...), workflows.EndCancel)
			if p.Cancelled != 1 || p.Succeeded != 0 || rows[0].Device != slow || rows[0].Result != workflows.DeviceCancelled || p.Finished.Sub(end) > 20*time.Second {
				t.Errorf("progress %+v, %s %s: want %s, in flight, cancelled at the end time, not waited for", p, rows[0].Device, rows[0].Result, slow)
			}
		})
	})
}

// checkUpdatedOnce holds localhub's method log and the devices' own log: each of devs got
// firmwareUpdate with updateID and started the update once.
func checkUpdatedOnce(t *testing.T, fl *rolloutFleet, devs []string, updateID string) {
	t.Helper()
	entries, dropped := ownHub{cs: env.hubCS, caFile: env.caFile, https: env.hubHTTPS}.methodLog(t)
	if dropped != 0 {
		t.Fatalf("localhub's method log dropped %d entries", dropped)
	}
	ours := map[string]bool{}
	for _, id := range devs {
		ours[id] = true
	}
	delivered := map[string]int{}
	for _, e := range entries {
		// The log is the shared localhub's: other tests' devices are in it too.
		if e.Method == protocol.MethodFirmwareUpdate && e.Delivered && ours[e.DeviceID] {
			if e.RequestID != updateID {
				t.Errorf("%s got firmwareUpdate %q, want only %s", e.DeviceID, e.RequestID, updateID)
			}
			delivered[e.DeviceID]++
		}
	}
	started := deviceLog(fl.proc.output(), "firmware update started")
	for _, id := range devs {
		if delivered[id] == 0 || len(started[id]) != 1 || started[id][0] != updateID {
			t.Errorf("%s: %d firmwareUpdate delivered, updates started %v: want %s started once", id, delivered[id], started[id], updateID)
		}
	}
}
