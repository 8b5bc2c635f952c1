//go:build integration

package test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/fleet"
	"github.com/dmflow/dmflow/workflows"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
)

// firmwareOutput is what `starter firmware --output json` prints.
type firmwareOutput struct {
	WorkflowID string                    `json:"workflowId"`
	Existing   string                    `json:"existing"`
	Result     *workflows.FirmwareResult `json:"result"`
	Error      string                    `json:"error"`
}

func runFirmware(t *testing.T, queue, device, updateID, version string, extra ...string) (firmwareOutput, string, int) {
	t.Helper()
	args := append([]string{"firmware", "--device", device, "--uri", "https://fw.example/" + version + ".bin",
		"--version", version, "--update-id", updateID, "--task-queue", queue, "--wait", "--output", "json"}, extra...)
	stdout, stderr, code := runStarter(t, 3*time.Minute, args...)
	var out firmwareOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("starter output %q (stderr %q): %v", stdout, stderr, err)
	}
	return out, stderr, code
}

// The firmware-update tutorial end to end: the device goes standBy →
// downloading → applying → completed; a repeated update is not applied
// again, neither through Temporal nor at the device; a compliant device is
// skipped without a method call.
func TestFirmwareEndToEnd(t *testing.T) {
	queue := "it-firmware-e2e"
	startWorker(t, queue)
	startDevice(t, "fw-e2e", "--stage-duration", "1s")

	out, stderr, code := runFirmware(t, queue, "fw-e2e", "u1", "2.0.0")
	if code != 0 || out.Result == nil {
		t.Fatalf("exit %d, output %+v, stderr %q", code, out, stderr)
	}
	r := out.Result
	if r.Status != workflows.FirmwareUpdated || r.Version != "2.0.0" {
		t.Errorf("result %+v: want updated to 2.0.0", r)
	}
	var stages []string
	for _, s := range r.Stages {
		stages = append(stages, s.Status)
		if s.ReportedAt.IsZero() {
			t.Errorf("stage %s has no device timestamp", s.Status)
		}
	}
	if strings.Join(stages, ",") != strings.Join(protocol.FirmwareStages, ",") {
		t.Errorf("stages %v, want %v", stages, protocol.FirmwareStages)
	}
	if r.Attempts != 1 || r.HubCalls < 3 {
		t.Errorf("attempts %d, hub calls %d", r.Attempts, r.HubCalls)
	}
	if n := methodInvocations(t, "fw-e2e", protocol.MethodFirmwareUpdate); n != 1 {
		t.Errorf("localhub delivered firmwareUpdate %d times, want 1", n)
	}
	c := temporalClient(t)
	checkHistory(t, c, out.WorkflowID, "firmware")

	// The same update again: Temporal finds the completed run.
	again, _, code := runFirmware(t, queue, "fw-e2e", "u1", "2.0.0")
	if code != 0 || again.Existing == "" {
		t.Errorf("repeat: exit %d, %+v: want the earlier run reported", code, again)
	}
	// A new update to the version it runs: skipped, no method call.
	skip, _, code := runFirmware(t, queue, "fw-e2e", "u2", "2.0.0")
	if code != 0 || skip.Result == nil || skip.Result.Status != workflows.FirmwareSkipped {
		t.Errorf("compliant device: exit %d, %+v: want skipped", code, skip)
	}
	if n := methodInvocations(t, "fw-e2e", protocol.MethodFirmwareUpdate); n != 1 {
		t.Errorf("after repeat and skip localhub delivered firmwareUpdate %d times, want 1", n)
	}

	// The device itself does not apply an update ID twice, whoever asks.
	svc := serviceClient(t)
	before := reported(t, svc, "fw-e2e")
	res, err := svc.CallDeviceMethod(context.Background(), "fw-e2e", &iotservice.MethodCall{
		MethodName: protocol.MethodFirmwareUpdate, ResponseTimeout: 10,
		Payload: map[string]any{protocol.FieldPackageURI: "https://fw.example/2.0.0.bin", protocol.FieldVersion: "2.0.0",
			protocol.FieldUpdateID: r.UpdateID},
	})
	if err != nil || res.Status != 200 {
		t.Fatalf("direct repeat: %v %+v", err, res)
	}
	time.Sleep(3 * time.Second) // a re-apply would report downloading after 1 s
	after := reported(t, svc, "fw-e2e")
	if before[protocol.PropLastFirmwareUpdate] != after[protocol.PropLastFirmwareUpdate] || after[protocol.PropFirmwareStatus] != protocol.StatusCompleted {
		t.Errorf("a repeated updateId was applied again: before %v, after %v", before, after)
	}
}

// A device that reports an error fails the workflow with its reason and stage.
func TestFirmwareDeviceError(t *testing.T) {
	queue := "it-firmware-error"
	startWorker(t, queue)
	startDevice(t, "fw-fail", "--stage-duration", "500ms", "--fail-stage", protocol.StatusApplying)
	out, stderr, code := runFirmware(t, queue, "fw-fail", "u1", "2.0.0")
	if code != 1 {
		t.Fatalf("exit %d, want 1: %+v %q", code, out, stderr)
	}
	for _, want := range []string{"DeviceError", protocol.StatusApplying} {
		if !strings.Contains(out.Error+stderr, want) {
			t.Errorf("error %q / %q lacks %q", out.Error, stderr, want)
		}
	}
}

func serviceClient(t *testing.T) *iotservice.Client {
	t.Helper()
	return serviceClientOf(t, env.hubCS, env.caFile)
}

// serviceClientOf is a service client of the hub with connection string cs and CA file caFile,
// closed when t ends.
func serviceClientOf(t *testing.T, cs, caFile string) *iotservice.Client {
	t.Helper()
	s, err := hubconn.ParseService("hub", cs)
	if err != nil {
		t.Fatal(err)
	}
	c, err := hubconn.NewServiceClient(s, caFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func reported(t *testing.T, c *iotservice.Client, device string) map[string]any {
	t.Helper()
	tw, err := c.GetDeviceTwin(context.Background(), device)
	if err != nil {
		t.Fatal(err)
	}
	return tw.Properties.Reported
}

// A fleet of 50 simulated devices in one simdevice process, a tenth in each
// fault profile, each updated by its own FirmwareUpdate workflow: every
// workflow ends in the state its profile implies, and a second round with the
// same update IDs applies nothing again.
func TestFirmwareFleetFaults(t *testing.T) {
	const (
		count  = 50
		prefix = "ff-"
		seed   = 7
	)
	queue := "it-firmware-fleet"
	startWorker(t, queue)
	faults := fleet.Faults{Offline: 0.1, Flapping: 0.1, Slow: 0.1, Failing: 0.1, Unresponsive: 0.1, SlowFactor: 3, FlapInterval: 3 * time.Second}
	plan := fleet.Plan(prefix, count, seed, faults)
	fl := startProc(t, "fleet", hubEnv(), filepath.Join(env.bin, "simdevice"), "fleet",
		"--count", strconv.Itoa(count), "--prefix", prefix, "--seed", strconv.Itoa(seed),
		"--stage-duration", "500ms", "--summary-interval", "2s",
		"--offline", "0.1", "--flapping", "0.1", "--slow", "0.1", "--slow-factor", "3",
		"--failing", "0.1", "--unresponsive", "0.1", "--flap-interval", "3s")
	if err := fl.waitFor("msg=\"fleet started\"", 90*time.Second); err != nil {
		t.Fatal(err)
	}

	c := temporalClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := func(m fleet.Member) client.WorkflowRun {
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID: workflows.FirmwareWorkflowID(m.ID, "u1"), TaskQueue: queue,
			WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE_FAILED_ONLY,
			WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
		}, workflows.FirmwareUpdate, workflows.FirmwareInput{
			DeviceID: m.ID, PackageURI: "https://fw.example/3.0.0.bin", Version: "3.0.0", UpdateID: "u1",
			StageTimeout: 20 * time.Second, Deadline: 50 * time.Second,
		})
		if err != nil {
			t.Fatalf("start %s: %v", m.ID, err)
		}
		return run
	}
	runs := make([]client.WorkflowRun, len(plan))
	for i, m := range plan {
		runs[i] = start(m)
	}
	byProfile := map[fleet.Profile]int{}
	for i, m := range plan {
		byProfile[m.Profile]++
		var r workflows.FirmwareResult
		err := runs[i].Get(ctx, &r)
		var appErr *temporal.ApplicationError
		switch m.Profile {
		case fleet.Healthy, fleet.Slow, fleet.Flapping:
			if err != nil || r.Status != workflows.FirmwareUpdated {
				t.Errorf("%s (%s): %v %+v: want updated", m.ID, m.Profile, err, r)
			}
		case fleet.Failing:
			if !errors.As(err, &appErr) || appErr.Type() != activities.ErrDeviceError || !strings.Contains(err.Error(), m.FailStage) {
				t.Errorf("%s (failing in %s): %v: want %s naming the stage", m.ID, m.FailStage, err, activities.ErrDeviceError)
			}
		case fleet.Offline, fleet.Unresponsive:
			// Retried (device not online / gateway timeout) until the
			// deadline, then failed: never counted as done.
			if err == nil {
				t.Errorf("%s (%s) succeeded", m.ID, m.Profile)
			}
		}
	}
	for _, p := range []fleet.Profile{fleet.Healthy, fleet.Offline, fleet.Flapping, fleet.Slow, fleet.Failing, fleet.Unresponsive} {
		if byProfile[p] == 0 {
			t.Errorf("the plan has no %s device: the test covers nothing for it", p)
		}
	}

	// Round two, same update IDs: completed workflows are not run again
	// (USE_EXISTING / reuse policy), and no device was asked twice.
	st := stats(t)
	for _, m := range plan {
		if m.Profile == fleet.Offline {
			if n := st.MethodInvocations[m.ID][protocol.MethodFirmwareUpdate]; n != 0 {
				t.Errorf("offline %s got %d method calls", m.ID, n)
			}
			continue
		}
		if m.Profile == fleet.Unresponsive {
			continue // every retry reaches the device; none is answered
		}
		if n := st.MethodInvocations[m.ID][protocol.MethodFirmwareUpdate]; n < 1 {
			t.Errorf("%s (%s): firmwareUpdate delivered %d times", m.ID, m.Profile, n)
		}
	}
	svc := serviceClient(t)
	for _, m := range plan {
		if m.Profile != fleet.Healthy && m.Profile != fleet.Slow {
			continue
		}
		before := reported(t, svc, m.ID)[protocol.PropLastFirmwareUpdate]
		var r workflows.FirmwareResult
		if err := start(m).Get(ctx, &r); err != nil || r.Status != workflows.FirmwareUpdated {
			t.Errorf("%s round two: %v %+v", m.ID, err, r)
		}
		if after := reported(t, svc, m.ID)[protocol.PropLastFirmwareUpdate]; after != before {
			t.Errorf("%s: update applied again (lastFirmwareUpdate %v → %v)", m.ID, before, after)
		}
	}
	after := stats(t)
	for _, m := range plan {
		if m.Profile == fleet.Healthy || m.Profile == fleet.Slow {
			if a, b := st.MethodInvocations[m.ID][protocol.MethodFirmwareUpdate], after.MethodInvocations[m.ID][protocol.MethodFirmwareUpdate]; a != b {
				t.Errorf("%s: round two made %d more method calls", m.ID, b-a)
			}
		}
	}
}
