//go:build integration

package test

import (
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/workflows"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
)

// The remote reboot of the tutorial, end to end from the operator's command:
// starter → Temporal → worker → localhub → simdevice and back.
func TestRebootEndToEnd(t *testing.T) {
	queue := "it-reboot-e2e"
	startWorker(t, queue)
	startDevice(t, "dev-e2e", "--reboot-duration", "3s")

	started := time.Now()
	stdout, stderr, code := runStarter(t, 2*time.Minute, "reboot", "--device", "dev-e2e",
		"--request-id", "r1", "--task-queue", queue, "--wait", "--output", "json")
	if code != 0 {
		t.Fatalf("starter exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	var out struct {
		WorkflowID string                  `json:"workflowId"`
		URL        string                  `json:"url"`
		Result     *workflows.RebootResult `json:"result"`
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("starter output %q: %v", stdout, err)
	}
	if out.WorkflowID != "reboot/dev-e2e/r1" {
		t.Errorf("workflow ID %q, want reboot/dev-e2e/r1", out.WorkflowID)
	}
	if !strings.Contains(out.URL, "/workflows/reboot%2Fdev-e2e%2Fr1") {
		t.Errorf("UI link %q does not name the workflow", out.URL)
	}
	r := out.Result
	if r == nil {
		t.Fatalf("no result in %s", stdout)
	}
	if r.MethodStatus != 200 || r.DeviceID != "dev-e2e" {
		t.Errorf("result %+v: want device dev-e2e, status 200", r)
	}
	if !r.RebootTime.After(started.Add(-time.Second)) {
		t.Errorf("rebootTime %s is not after the start %s", r.RebootTime, started)
	}
	if r.Duration < 3*time.Second {
		t.Errorf("duration %s is shorter than the device's 3 s reboot", r.Duration)
	}
	if n := methodInvocations(t, "dev-e2e", "rebootDevice"); n != 1 {
		t.Errorf("localhub delivered rebootDevice %d times, want 1", n)
	}
	checkHistory(t, temporalClient(t), out.WorkflowID, "reboot")

	// The same request again is recognised: no second reboot.
	stdout, stderr, code = runStarter(t, time.Minute, "reboot", "--device", "dev-e2e",
		"--request-id", "r1", "--task-queue", queue, "--wait")
	if code != 0 || !strings.Contains(stdout, "already ran") {
		t.Errorf("repeat: exit %d, stdout %q, stderr %q; want exit 0 and 'already ran'", code, stdout, stderr)
	}
	if n := methodInvocations(t, "dev-e2e", "rebootDevice"); n != 1 {
		t.Errorf("after a repeated start localhub delivered rebootDevice %d times, want 1", n)
	}
}

// A worker killed (SIGKILL) while the workflow waits for the device to come
// back is replaced; the workflow completes and the device was asked once.
func TestRebootSurvivesWorkerCrash(t *testing.T) {
	queue := "it-reboot-crash"
	w := startWorker(t, queue)
	// realistic: answers at once, goes offline for the reboot, then reports
	// rebootTime — so the workflow spends those seconds waiting on the twin.
	startDevice(t, "dev-crash", "--reboot-style", "realistic", "--reboot-duration", "12s")

	c := temporalClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	id := workflows.RebootWorkflowID("dev-crash", "crash")
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue}, workflows.Reboot,
		workflows.RebootInput{DeviceID: "dev-crash", RequestID: "crash"})
	if err != nil {
		t.Fatal(err)
	}
	waitStep(t, c, id, workflows.StepWaiting, 60*time.Second)
	w.kill()
	t.Log("worker killed while waiting for rebootTime")
	time.Sleep(2 * time.Second)
	startWorker(t, queue)

	var r workflows.RebootResult
	if err := run.Get(ctx, &r); err != nil {
		t.Fatalf("workflow after worker crash: %v", err)
	}
	if r.MethodStatus != 200 || r.RebootTime.IsZero() {
		t.Errorf("result %+v", r)
	}
	if n := methodInvocations(t, "dev-crash", "rebootDevice"); n != 1 {
		t.Errorf("localhub delivered rebootDevice %d times, want exactly 1", n)
	}
}

// A worker killed (SIGKILL) while the device is still rebooting inside the
// method call: the call may have reached the device, so the retried
// InvokeMethod first looks at the twin, finds the device reporting the
// request's ID and does not call again.
func TestRebootWorkerCrashDuringInvoke(t *testing.T) {
	queue := "it-reboot-crash-invoke"
	w := startWorker(t, queue)
	dev := startDevice(t, "dev-crash-invoke", "--reboot-duration", "15s")

	c := temporalClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.RebootWorkflowID("dev-crash-invoke", "x"), TaskQueue: queue},
		workflows.Reboot, workflows.RebootInput{DeviceID: "dev-crash-invoke", RequestID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.waitFor("msg=rebooting", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	w.kill()
	t.Log("worker killed while the device reboots inside rebootDevice")
	startWorker(t, queue)

	var r workflows.RebootResult
	if err := run.Get(ctx, &r); err != nil {
		t.Fatalf("workflow after worker crash: %v", err)
	}
	out := dev.output()
	if n := strings.Count(out, "msg=rebooting "); n != 1 {
		t.Errorf("device rebooted %d times, want 1:\n%s", n, out)
	}
	if r.Attempts < 2 || r.MethodStatus != 0 {
		t.Errorf("attempts %d, status %d: want the retry to find the reboot done without calling again", r.Attempts, r.MethodStatus)
	}
	if n := methodInvocations(t, "dev-crash-invoke", "rebootDevice"); n != 1 {
		t.Errorf("localhub delivered rebootDevice %d times, want exactly 1", n)
	}
}

// An unknown device fails fast with a non-retryable error naming it.
func TestRebootUnknownDeviceFailsFast(t *testing.T) {
	queue := "it-reboot-unknown"
	startWorker(t, queue)
	begin := time.Now()
	stdout, stderr, code := runStarter(t, time.Minute, "reboot", "--device", "no-such-device",
		"--task-queue", queue, "--wait")
	if code != 1 {
		t.Fatalf("exit %d, want 1\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "no-such-device") || !strings.Contains(stderr, activities.ErrDeviceNotFound) {
		t.Errorf("stderr %q does not name the device and %s", stderr, activities.ErrDeviceNotFound)
	}
	if d := time.Since(begin); d > 30*time.Second {
		t.Errorf("took %s: an unknown device must not be retried", d)
	}

	// History: one activity scheduled (GetTwin, the read before the call, which meets the unknown
	// device first), started once; no call.
	c := temporalClient(t)
	it := c.GetWorkflowHistory(context.Background(), workflowIDFrom(t, stdout), "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	scheduled, maxAttempt := 0, int32(0)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		if a := ev.GetActivityTaskScheduledEventAttributes(); a != nil {
			scheduled++
			if a.ActivityType.GetName() != "GetTwin" {
				t.Errorf("scheduled %s after an unknown device", a.ActivityType.GetName())
			}
		}
		if a := ev.GetActivityTaskStartedEventAttributes(); a != nil && a.Attempt > maxAttempt {
			maxAttempt = a.Attempt
		}
	}
	if scheduled != 1 || maxAttempt != 1 {
		t.Errorf("activities scheduled %d, max attempt %d; want 1 and 1", scheduled, maxAttempt)
	}
}

// workflowIDFrom picks the workflow ID out of the starter's text output.
func workflowIDFrom(t *testing.T, stdout string) string {
	t.Helper()
	for _, line := range strings.Split(stdout, "\n") {
		if id, ok := strings.CutPrefix(strings.TrimSpace(line), "workflow:"); ok {
			return strings.TrimSpace(id)
		}
	}
	t.Fatalf("no workflow ID in %q", stdout)
	return ""
}

// Bad configuration: one clear line naming the setting; exit 2 for what the
// configuration says, 1 for what the worker meets when it starts.
func TestWorkerBadConfiguration(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tc := range []struct {
		name string
		env  []string
		want []string
		code int
	}{
		{"no connection string", []string{"TEMPORAL_ADDRESS=" + env.temporalAddr}, []string{"IOTHUB_CONNECTION_STRING is not set"}, 2},
		{"malformed connection string", []string{"IOTHUB_CONNECTION_STRING=HostName=localhost", "TEMPORAL_ADDRESS=" + env.temporalAddr}, []string{"IOTHUB_CONNECTION_STRING is malformed", "SharedAccessKey"}, 2},
		{"missing CA file", append(hubEnv(), "DMFLOW_HUB_CA_FILE=/nonexistent/ca.pem"), []string{"DMFLOW_HUB_CA_FILE"}, 2},
		{"unreachable hub", []string{"IOTHUB_CONNECTION_STRING=HostName=127.0.0.1:1;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0", "TEMPORAL_ADDRESS=" + env.temporalAddr}, []string{"cannot reach IoT Hub"}, 1},
		{"unreachable Temporal", append(hubEnv(), "TEMPORAL_ADDRESS=127.0.0.1:1"), []string{"cannot reach Temporal", "TEMPORAL_ADDRESS"}, 1},
		{"metrics address in use", append(hubEnv(), "DMFLOW_METRICS_ADDRESS="+taken.Addr().String()), []string{"DMFLOW_METRICS_ADDRESS", taken.Addr().String(), "address already in use", "choose a free host:port"}, 1},
		{"one workflow poller", append(hubEnv(), "DMFLOW_WORKFLOW_POLLERS=1"), []string{"DMFLOW_WORKFLOW_POLLERS", "at least 2"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProc(t, "worker-bad", tc.env, filepath.Join(env.bin, "worker"))
			select {
			case <-p.done:
			case <-time.After(45 * time.Second):
				t.Fatal("worker did not exit on bad configuration")
			}
			if code := p.cmd.ProcessState.ExitCode(); code != tc.code {
				t.Errorf("exit code %d, want %d", code, tc.code)
			}
			out := p.output()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output %q lacks %q", out, w)
				}
			}
			if strings.Contains(out, "goroutine ") || strings.Contains(out, "c2VjcmV0") {
				t.Errorf("output has a stack trace or the key: %q", out)
			}
			if n := strings.Count(strings.TrimSpace(out), "\n"); n > 0 {
				t.Errorf("want one line, got %d:\n%s", n+1, out)
			}
		})
	}
}

func waitStep(t *testing.T, c client.Client, id, step string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		v, err := c.QueryWorkflow(ctx, id, "", workflows.QueryStep)
		cancel()
		if err == nil {
			var st workflows.RebootStatus
			if err := v.Get(&st); err == nil {
				last = st.Step
				if st.Step == step {
					return
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("workflow %s not at step %q after %s (last %q)", id, step, timeout, last)
}
