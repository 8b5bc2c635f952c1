//go:build integration

package test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/device"
	localhub "github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/workflows"
	"go.temporal.io/sdk/client"
)

// retryReportLine is a row of `starter rollout report -f json` with the retries' columns.
type retryReportLine struct {
	reportLine
	Note        string   `json:"note"`
	FailureType string   `json:"failureType"`
	RetriedOn   []string `json:"retriedOn"`
}

// Retries by failure type on real processes: one rollout of five devices, --retries 2 on the
// default types (timed-out, offline), backoff 8s, stage timeout 1s:
//
//   - rt-ok updates at once;
//   - rt-late is registered but not connected: its first attempt ends at once, offline; the test
//     connects it while it waits, and its retry (a new request) updates it;
//   - rt-slow (dmflow's contract) and rt-slow-tut (the tutorials') take 2s a stage: their first
//     attempt times out at the stage timeout while their update goes on; the retry finds the
//     update completed in the twin (by its ID, by the hub's times) and follows it without a
//     second call;
//   - rt-fail reports an error: failed, not retried.
//
// The thresholds by type (0 timeouts, 0 offline) do not trip on devices whose retries succeed.
func TestRolloutRetriesByType(t *testing.T) {
	// The policy tests wait on devices and timers more than they compute: they run together, each
	// with its own task queue, worker and devices (make test-integration's -parallel).
	t.Parallel()
	const name, queue = "it-retries", "it-retries"
	startWorker(t, queue)
	startDevice(t, "rt-ok", "--stage-duration", "200ms")
	startDevice(t, "rt-slow", "--stage-duration", "2s")
	startDevice(t, "rt-slow-tut", "--stage-duration", "2s", "--contract", device.ContractTutorial)
	startDevice(t, "rt-fail", "--stage-duration", "200ms", "--fail-stage", protocol.StatusDownloading)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := device.Provision(ctx, serviceClient(t), "rt-late"); err != nil {
		t.Fatal(err)
	}
	ids := []string{"rt-fail", "rt-late", "rt-ok", "rt-slow", "rt-slow-tut"}

	out, stderr, code := startRollout(t, time.Minute, "--name", name, "--devices", strings.Join(ids, ","),
		"--firmware", "https://fw.example/2.0.0.bin", "--version", "2.0.0", "--stage-timeout", "1s",
		"--retries", "2", "--retry-backoff", "8s", "--max-failures", "1", "--max-timeouts", "0", "--max-offline", "0",
		"--canary", "5", "--max-concurrent", "5", "--task-queue", queue)
	if code != 0 || out.RunID == "" {
		t.Fatalf("rollout start: exit %d, %+v, stderr %q", code, out, stderr)
	}
	c := temporalClient(t)

	t.Run("offline device waits, then comes online", func(t *testing.T) {
		deadline := time.Now().Add(20 * time.Second)
		for {
			row := shardRow(t, c, name, "rt-late")
			if row.Result == workflows.DeviceRetrying {
				if row.FailureType != workflows.FailureOffline || row.RetryAt.IsZero() {
					t.Errorf("waiting row %+v: want offline with a retry time", row)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("rt-late never waited to retry: %+v", row)
			}
			time.Sleep(100 * time.Millisecond)
		}
		p, err := queryProgress(c, name)
		if err != nil || p.AwaitingRetry < 1 || p.Offline != 0 {
			t.Errorf("progress while waiting: %+v (%v): want a device waiting to retry, none counted offline", p, err)
		}
	})
	// Connected while it waits out its backoff (8s); the process lives as long as the test.
	startDevice(t, "rt-late", "--stage-duration", "200ms")

	p := waitProgress(t, c, name, "ended", time.Minute, func(p workflows.RolloutProgress) bool { return p.Done() })
	t.Run("progress", func(t *testing.T) {
		if p.State != workflows.RolloutCompleted || p.Succeeded != 4 || p.Failed != 1 || p.TimedOut+p.Offline != 0 || p.RetriesStarted != 3 {
			t.Errorf("final progress %+v: want completed, 4 succeeded, 1 failed of type failed, 3 retries", p)
		}
	})

	t.Run("report", func(t *testing.T) {
		stdout, stderr, code := runStarter(t, time.Minute, "rollout", "report", name, "-f", "json")
		if code != 0 {
			t.Fatalf("report: exit %d: %s", code, stderr)
		}
		var rows []retryReportLine
		if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
			t.Fatalf("report %q: %v", stdout, err)
		}
		got := map[string]retryReportLine{}
		for _, r := range rows {
			got[r.Device] = r
		}
		for _, want := range []struct {
			id, result, failureType string
			attempts                int
			retriedOn, note         string
		}{
			{"rt-ok", workflows.DeviceUpdated, "", 1, "", ""},
			{"rt-late", workflows.DeviceUpdated, "", 2, "offline", ""},
			{"rt-slow", workflows.DeviceUpdated, "", 2, "timed-out", "no second call"},
			{"rt-slow-tut", workflows.DeviceUpdated, "", 2, "timed-out", "no second call"},
			{"rt-fail", workflows.DeviceFailed, workflows.FailureFailed, 1, "", ""},
		} {
			r := got[want.id]
			if r.Result != want.result || r.FailureType != want.failureType || r.Attempts != want.attempts ||
				strings.Join(r.RetriedOn, ",") != want.retriedOn || !strings.Contains(r.Note, want.note) {
				t.Errorf("%s: %+v; want %s, type %q, %d attempts, retried on %q, note with %q", want.id, r, want.result,
					want.failureType, want.attempts, want.retriedOn, want.note)
			}
		}
	})

	t.Run("method log: no update applied twice", func(t *testing.T) {
		entries, _ := sharedHub().methodLog(t)
		delivered := map[string][]string{}
		notOnline := map[string]int{}
		for _, e := range entries {
			if !strings.HasPrefix(e.DeviceID, "rt-") || e.Method != protocol.MethodFirmwareUpdate {
				continue
			}
			if e.Delivered {
				delivered[e.DeviceID] = append(delivered[e.DeviceID], e.RequestID)
			}
			if e.Error == localhub.ErrDeviceNotOnline {
				notOnline[e.DeviceID]++
			}
		}
		first, second := workflows.RolloutUpdateID(name, 1), workflows.RolloutUpdateID(name, 2)
		for id, want := range map[string]string{"rt-ok": first, "rt-slow": first, "rt-slow-tut": first, "rt-fail": first, "rt-late": second} {
			if got := delivered[id]; len(got) != 1 || got[0] != want {
				t.Errorf("%s got firmwareUpdate %v, want %s once", id, got, want)
			}
		}
		if notOnline["rt-late"] != 1 {
			t.Errorf("rt-late was called %d times offline, want once: the first attempt ends at the first DeviceNotOnline", notOnline["rt-late"])
		}
	})

	// No secret in the histories; with DMFLOW_RECORD_HISTORY, recorded for the replay test.
	t.Run("histories", func(t *testing.T) {
		checkHistory(t, c, workflows.RolloutWorkflowID(name), "rollout_retries")
		checkHistory(t, c, workflows.RolloutShardWorkflowID(name, 0), "rollout_retries_shard")
	})

	t.Run("status", func(t *testing.T) {
		stdout, stderr, code := runStarter(t, time.Minute, "rollout", "status", name)
		if code != 0 {
			t.Fatalf("status: exit %d: %s", code, stderr)
		}
		t.Logf("starter rollout status %s:\n%s", name, stdout)
		table, _, _ := runStarter(t, time.Minute, "rollout", "report", name)
		t.Logf("starter rollout report %s:\n%s", name, table)
		for _, want := range []string{"retries:   up to 2 per device on timed-out,offline, backoff 8s doubling; 3 started",
			"max failures 1, max concurrent 5, max timeouts 0, max offline 0"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("status lacks %q:\n%s", want, stdout)
			}
		}
	})
}

// shardRow is device id's row in the report of rollout name's first shard; a zero row while the
// shard does not answer yet.
func shardRow(t *testing.T, c client.Client, name, id string) workflows.DeviceRow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := c.QueryWorkflow(ctx, workflows.RolloutShardWorkflowID(name, 0), "", workflows.QueryReport, workflows.ReportRequest{})
	if err != nil {
		return workflows.DeviceRow{}
	}
	var page workflows.ReportPage
	if err := v.Get(&page); err != nil {
		t.Fatal(err)
	}
	for _, r := range page.Rows {
		if r.DeviceID == id {
			return r
		}
	}
	return workflows.DeviceRow{}
}
