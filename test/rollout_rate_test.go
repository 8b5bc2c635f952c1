//go:build integration

package test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/workflows"
)

// TestRolloutRateAndDeviceControl: a rollout of seven devices paced at 30 starts a minute (one
// every 2 s), of which an operator skips one not started yet and retries one that failed once (its
// device process restarted without the fault), which then succeeds. The report's start times show
// the pace; localhub's method log shows that the skipped device got no call and that no device got
// the same update twice.
func TestRolloutRateAndDeviceControl(t *testing.T) {
	// The policy tests wait on devices and timers more than they compute: they run together, each
	// with its own task queue, worker and devices (make test-integration's -parallel).
	t.Parallel()
	const (
		name   = "fw-rate"
		flaky  = "rr-a-flaky" // sorts before the fleet: it starts first
		skip   = "rr-d004"
		perMin = 30
	)
	queue := "it-rollout-rate"
	outer := t // processes started in a subtest live as long as the test
	startWorker(t, queue)
	fl := startRolloutFleet(t, "rr-d", 6, 3, 0, "--stage-duration", "500ms")
	bad := startDevice(t, flaky, "--stage-duration", "500ms", "--fail-stage", protocol.StatusApplying)
	ids := append([]string{flaky}, fl.ids()...)
	before, _ := sharedHub().methodLog(t)
	seen := len(before)

	out, stderr, code := startRollout(t, time.Minute, "--name", name, "--devices", strings.Join(ids, ","),
		"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0", "--canary", "7", "--growth", "1",
		"--max-concurrent", "7", "--max-failures", "100%", "--max-per-minute", "30", "--task-queue", queue)
	if code != 0 {
		t.Fatalf("start: exit %d, %+v, stderr %q", code, out, stderr)
	}
	c := temporalClient(t)
	waitProgress(t, c, name, "running", 30*time.Second, func(p workflows.RolloutProgress) bool {
		return p.State == workflows.RolloutRunning
	})

	t.Run("skip a pending device", func(t *testing.T) {
		stdout, stderr, code := runStarter(t, time.Minute, "rollout", "skip", name, skip, "--note", "bad batch")
		if code != 0 || !strings.Contains(stdout, "rollout "+name+": 1 device skipped\n  "+skip+"  skipped") {
			t.Fatalf("skip: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		if !strings.Contains(stdout, "starts:    at most 30/min") {
			t.Errorf("skip's status shows no start rate: %q", stdout)
		}
		_, stderr, code = runStarter(t, time.Minute, "rollout", "skip", name, "rr-x")
		if code != 1 || !strings.Contains(stderr, "device rr-x is not a target of rollout "+name) {
			t.Errorf("skip of an unknown device: exit %d, stderr %q", code, stderr)
		}
		_, stderr, code = runStarter(t, time.Minute, "rollout", "retry", name, skip)
		if code != 1 || !strings.Contains(stderr, "device "+skip+" is skipped (bad batch): retry applies to devices that failed") {
			t.Errorf("retry of the skipped device: exit %d, stderr %q", code, stderr)
		}
	})

	t.Run("retry a device that failed once", func(t *testing.T) {
		waitProgress(t, c, name, "with the flaky device failed", 30*time.Second, func(p workflows.RolloutProgress) bool {
			return p.Failed == 1
		})
		_, stderr, code := runStarter(t, time.Minute, "rollout", "skip", name, flaky)
		if code != 1 || !strings.Contains(stderr, "device "+flaky+" has failed: skip applies to devices not started") {
			t.Errorf("skip of the failed device: exit %d, stderr %q", code, stderr)
		}
		// The device is repaired: the same device, without the fault.
		bad.stop()
		startDevice(outer, flaky, "--stage-duration", "500ms")
		stdout, stderr, code := runStarter(t, time.Minute, "rollout", "retry", name, flaky)
		want := "  " + flaky + "  queued as attempt 2 (update ID " + workflows.RolloutUpdateID(name, 2) + ")"
		if code != 0 || !strings.Contains(stdout, want) {
			t.Fatalf("retry: exit %d, stdout %q, stderr %q: want %q", code, stdout, stderr, want)
		}
	})

	stdout, stderr, code := runStarter(t, time.Minute, "rollout", "watch", name, "-o", "json")
	var final workflows.RolloutProgress
	if err := json.Unmarshal([]byte(stdout), &final); err != nil || code != 0 {
		t.Fatalf("watch: exit %d, %q, %q: %v", code, stdout, stderr, err)
	}
	if final.State != workflows.RolloutCompleted || final.Succeeded != 6 || final.Skipped != 1 || final.Failed != 0 || final.StartRate != perMin {
		t.Errorf("final progress %+v: want completed, 6 succeeded, 1 skipped, none failed, 30 starts a minute", final)
	}

	t.Run("report", func(t *testing.T) {
		var starts []time.Time
		for _, r := range rolloutReport(t, name) {
			switch r.Device {
			case skip:
				if r.Result != workflows.DeviceSkipped || r.Attempts != 0 || !r.Started.IsZero() {
					t.Errorf("%s: %+v, want skipped, never started", r.Device, r)
				}
			case flaky:
				if r.Result != workflows.DeviceUpdated || r.Attempts != 2 {
					t.Errorf("%s: %+v, want updated at attempt 2", r.Device, r)
				}
			default:
				if r.Result != workflows.DeviceUpdated || r.Attempts != 1 {
					t.Errorf("%s: %+v, want updated", r.Device, r)
				}
			}
			if !r.Started.IsZero() {
				starts = append(starts, r.Started)
			}
		}
		// Every start (the retry's included) waited for its token: k starts after one take k×2 s
		// at least. The starts are the shard's workflow time, which lags the rollout's grant by a
		// workflow task; a token earned late shortens the next wait by as much: 250 ms of slack.
		slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
		if len(starts) != 6 {
			t.Fatalf("%d devices with a start time, want 6", len(starts))
		}
		for i := range starts {
			for j := i + 1; j < len(starts); j++ {
				if d, least := starts[j].Sub(starts[i]), time.Duration(j-i)*2*time.Second-250*time.Millisecond; d < least {
					t.Errorf("starts %v: %s from start %d to %d, less than the %s of 30 a minute", starts, d, i+1, j+1, least)
				}
			}
		}
	})

	t.Run("method log", func(t *testing.T) {
		log, _ := sharedHub().methodLog(t)
		updates := map[string][]string{}
		var calls []time.Time
		for _, e := range log[min(seen, len(log)):] {
			if !slices.Contains(ids, e.DeviceID) || e.Method != protocol.MethodFirmwareUpdate || !e.Delivered {
				continue
			}
			if slices.Contains(updates[e.DeviceID], e.RequestID) {
				t.Errorf("%s got update %s twice", e.DeviceID, e.RequestID)
			}
			updates[e.DeviceID] = append(updates[e.DeviceID], e.RequestID)
			calls = append(calls, e.Time)
		}
		if n := len(updates[skip]); n != 0 {
			t.Errorf("the skipped device got %d calls", n)
		}
		if want := []string{workflows.RolloutUpdateID(name, 1), workflows.RolloutUpdateID(name, 2)}; !slices.Equal(updates[flaky], want) {
			t.Errorf("%s got %v, want %v", flaky, updates[flaky], want)
		}
		if len(calls) != 7 {
			t.Errorf("%d firmwareUpdate calls, want 7 (six devices, one twice): %v", len(calls), updates)
		}
	})

	// After the end: a retry is refused with what to do instead.
	_, stderr, code = runStarter(t, time.Minute, "rollout", "retry", name, flaky)
	if code != 1 || !strings.Contains(stderr, "it has ended (completed)") || !strings.Contains(stderr, "start a rollout of them under a new name") {
		t.Errorf("retry after the end: exit %d, stderr %q", code, stderr)
	}
}
