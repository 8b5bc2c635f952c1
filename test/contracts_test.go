//go:build integration

package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/protocol"
	localhub "github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/workflows"
	"go.temporal.io/sdk/client"
)

// Devices in the field speak one of two contracts: dmflow's (request and update IDs echoed,
// firmwareVersion reported, RFC 3339 times) or only the tutorials' (none of that: Python's local
// time without a zone, and a firmware answer that may be a JSON object or a JSON string). Every
// operation must work on both, and apply nothing twice: localhub's method log must show exactly one
// delivered call per request.

// deviceContract is how a simulated device is started for one contract.
type deviceContract struct {
	name string
	args []string
	// answer is the firmwareUpdate answer the device sends, as JSON.
	answer   string
	tutorial bool
}

var deviceContracts = []deviceContract{
	{name: "dmflow", answer: `{"Response":"Firmware update started"}`},
	{name: "tutorial-object", args: []string{"--contract", "tutorial", "--answer", "object"},
		answer: `{"Response":"Firmware update started"}`, tutorial: true},
	{name: "tutorial-string", args: []string{"--contract", "tutorial", "--answer", "string"},
		answer: `"{ \"Response\": \"Firmware update started\" }"`, tutorial: true},
}

// pythonLocal is how the tutorial's device writes a time: str(datetime.datetime.now()).
var pythonLocal = regexp.MustCompile(`^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{6})?$`)

// rebootOutput is what `starter reboot --output json` prints.
type rebootOutput struct {
	WorkflowID string                  `json:"workflowId"`
	Result     *workflows.RebootResult `json:"result"`
	Error      string                  `json:"error"`
}

func runReboot(t *testing.T, queue, device, requestID string, extra ...string) (rebootOutput, string, int) {
	t.Helper()
	args := append([]string{"reboot", "--device", device, "--request-id", requestID, "--task-queue", queue,
		"--wait", "--output", "json"}, extra...)
	stdout, stderr, code := runStarter(t, 3*time.Minute, args...)
	var out rebootOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("starter output %q (stderr %q): %v", stdout, stderr, err)
	}
	return out, stderr, code
}

// delivered counts the calls of method that localhub delivered to device, by request ID.
func delivered(t *testing.T, device, method string) map[string]int {
	t.Helper()
	entries, _ := sharedHub().methodLog(t)
	out := map[string]int{}
	for _, e := range entries {
		if e.DeviceID == device && e.Method == method && e.Delivered {
			out[e.RequestID]++
		}
	}
	return out
}

// notDelivered counts the calls of method localhub refused for device with errCode.
func notDelivered(t *testing.T, device, method, errCode string) int {
	t.Helper()
	entries, _ := sharedHub().methodLog(t)
	n := 0
	for _, e := range entries {
		if e.DeviceID == device && e.Method == method && !e.Delivered && e.Error == errCode {
			n++
		}
	}
	return n
}

// onceEach fails unless every request in want was delivered exactly once, and no other.
func onceEach(t *testing.T, device, method string, want ...string) {
	t.Helper()
	got := delivered(t, device, method)
	exp := map[string]int{}
	for _, id := range want {
		exp[id] = 1
	}
	if !mapsEqual(got, exp) {
		t.Errorf("%s: localhub delivered %s %v, want each of %v exactly once", device, method, got, want)
	}
}

func checkReboot(t *testing.T, c deviceContract, r *workflows.RebootResult) {
	t.Helper()
	if r == nil {
		t.Fatal("no reboot result")
	}
	if c.tutorial {
		if !pythonLocal.MatchString(r.RebootTimeReported) || !r.RebootTime.IsZero() {
			t.Errorf("rebootTime %q / %s: want the device's local time as written, and no time on another clock", r.RebootTimeReported, r.RebootTime)
		}
	} else if r.RebootTime.IsZero() || r.RebootTimeReported != "" {
		t.Errorf("rebootTime %s / %q: want an RFC 3339 time", r.RebootTime, r.RebootTimeReported)
	}
	if _, err := time.Parse(time.RFC3339Nano, r.ConfirmedAt); err != nil {
		t.Errorf("confirmedAt %q is not the hub's time: %v", r.ConfirmedAt, err)
	}
}

func checkFirmware(t *testing.T, c deviceContract, out firmwareOutput, code int, stderr string) {
	t.Helper()
	if code != 0 || out.Result == nil {
		t.Fatalf("starter firmware: exit %d, error %q, stderr %q", code, out.Error, stderr)
	}
	r := out.Result
	if r.Status != workflows.FirmwareUpdated || len(r.Stages) != 3 {
		t.Errorf("result %+v: want updated through three stages", r)
	}
	// --output json indents the whole document, the payload with it: compare it compacted.
	var got bytes.Buffer
	if err := json.Compact(&got, r.MethodPayload); err != nil || got.String() != c.answer {
		t.Errorf("method payload %s, want %s as the device sent it", r.MethodPayload, c.answer)
	}
	if r.VersionUnknown != c.tutorial {
		t.Errorf("versionUnknown %v, want %v", r.VersionUnknown, c.tutorial)
	}
	for _, s := range r.Stages {
		if s.UpdatedAt == "" {
			t.Errorf("stage %s has no hub time", s.Status)
		}
		if c.tutorial && !pythonLocal.MatchString(s.Reported) {
			t.Errorf("stage %s reported %q, want the device's local time as written", s.Status, s.Reported)
		}
	}
}

// TestDeviceContracts runs every device operation on each contract, on real processes.
func TestDeviceContracts(t *testing.T) {
	queue := "it-contracts"
	startWorker(t, queue)
	const reboot, stage = "4s", "1500ms"

	for _, c := range deviceContracts {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dev := func(t *testing.T, id string, extra ...string) *proc {
				return startDevice(t, id, append(append([]string{"--reboot-duration", reboot, "--stage-duration", stage}, c.args...), extra...)...)
			}

			t.Run("reboot", func(t *testing.T) {
				t.Parallel()
				id := "ct-" + c.name + "-reboot"
				dev(t, id)
				out, stderr, code := runReboot(t, queue, id, "r1")
				if code != 0 {
					t.Fatalf("starter reboot: exit %d, error %q, stderr %q", code, out.Error, stderr)
				}
				checkReboot(t, c, out.Result)
				onceEach(t, id, protocol.MethodReboot, workflows.RebootWorkflowID(id, "r1"))
				checkHistory(t, temporalClient(t), out.WorkflowID, "contract_"+c.name+"_reboot")
				t.Logf("%s reboot: %d hub calls, %s", c.name, out.Result.HubCalls, deviceCost(t, temporalClient(t), out.WorkflowID))
			})

			t.Run("reboot longer than the method timeout", func(t *testing.T) {
				t.Parallel()
				// The device answers only after its 8 s reboot; the hub gives up after 5 s
				// (504101): the call may have reached the device, and the retry finds its
				// rebootTime instead of rebooting it again.
				id := "ct-" + c.name + "-slow"
				dev(t, id, "--reboot-duration", "8s")
				out, stderr, code := runReboot(t, queue, id, "r1", "--method-timeout", "5s")
				if code != 0 {
					t.Fatalf("starter reboot: exit %d, error %q, stderr %q", code, out.Error, stderr)
				}
				checkReboot(t, c, out.Result)
				onceEach(t, id, protocol.MethodReboot, workflows.RebootWorkflowID(id, "r1"))
				if out.Result.Attempts < 2 || out.Result.MethodStatus != 0 {
					t.Errorf("attempts %d, status %d: want the retry to find the reboot done without an answer", out.Result.Attempts, out.Result.MethodStatus)
				}
			})

			t.Run("firmware", func(t *testing.T) {
				t.Parallel()
				id := "ct-" + c.name + "-fw"
				dev(t, id)
				out, stderr, code := runFirmware(t, queue, id, "u1", "2.0.0")
				checkFirmware(t, c, out, code, stderr)
				onceEach(t, id, protocol.MethodFirmwareUpdate, "u1")
				checkHistory(t, temporalClient(t), out.WorkflowID, "contract_"+c.name+"_firmware")
				if out.Result != nil {
					t.Logf("%s firmware: %d hub calls, %s", c.name, out.Result.HubCalls, deviceCost(t, temporalClient(t), out.WorkflowID))
				}

				// A second update: a "completed" left from the first never counts as the
				// second's.
				out, stderr, code = runFirmware(t, queue, id, "u2", "2.1.0")
				checkFirmware(t, c, out, code, stderr)
				onceEach(t, id, protocol.MethodFirmwareUpdate, "u1", "u2")
			})

			t.Run("firmware with reboot", func(t *testing.T) {
				t.Parallel()
				id := "ct-" + c.name + "-fwreboot"
				dev(t, id)
				out, stderr, code := runFirmware(t, queue, id, "u1", "2.0.0", "--reboot")
				checkFirmware(t, c, out, code, stderr)
				if out.Result != nil {
					checkReboot(t, c, out.Result.Reboot)
				}
				onceEach(t, id, protocol.MethodFirmwareUpdate, "u1")
				onceEach(t, id, protocol.MethodReboot, workflows.RebootWorkflowID(id, "u1"))
				checkHistory(t, temporalClient(t), out.WorkflowID, "contract_"+c.name+"_firmware_reboot")
			})

			t.Run("worker killed during the call", func(t *testing.T) {
				t.Parallel()
				// An own worker: killing it must not touch the other cases.
				q := queue + "-kill-" + c.name
				w := startWorker(t, q)
				id := "ct-" + c.name + "-kill"
				d := dev(t, id, "--reboot-duration", "10s")
				tc := temporalClient(t)
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				wid := workflows.RebootWorkflowID(id, "k1")
				run, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: wid, TaskQueue: q}, workflows.Reboot,
					workflows.RebootInput{DeviceID: id, RequestID: "k1"})
				if err != nil {
					t.Fatal(err)
				}
				if err := d.waitFor("msg=rebooting", 60*time.Second); err != nil {
					t.Fatal(err)
				}
				w.kill()
				t.Log("worker killed while the device reboots inside rebootDevice")
				startWorker(t, q)
				var r workflows.RebootResult
				if err := run.Get(ctx, &r); err != nil {
					t.Fatalf("reboot after the worker was killed: %v", err)
				}
				checkReboot(t, c, &r)
				onceEach(t, id, protocol.MethodReboot, wid)
				if n := strings.Count(d.output(), "msg=rebooting "); n != 1 {
					t.Errorf("the device rebooted %d times, want 1", n)
				}
			})

			t.Run("device offline then back", func(t *testing.T) {
				t.Parallel()
				id := "ct-" + c.name + "-offline"
				d := dev(t, id)
				d.stop()
				type result struct {
					out    firmwareOutput
					stderr string
					code   int
				}
				done := make(chan result, 1)
				go func() {
					out, stderr, code := runFirmware(t, queue, id, "u1", "2.0.0")
					done <- result{out, stderr, code}
				}()
				// Wait until the hub has refused the call for the offline device, then bring it
				// back.
				deadline := time.Now().Add(90 * time.Second)
				for notDelivered(t, id, protocol.MethodFirmwareUpdate, localhub.ErrDeviceNotOnline) == 0 {
					if time.Now().After(deadline) {
						t.Fatal("the hub never refused firmwareUpdate for the offline device")
					}
					time.Sleep(500 * time.Millisecond)
				}
				d = dev(t, id)
				r := <-done
				checkFirmware(t, c, r.out, r.code, r.stderr)
				onceEach(t, id, protocol.MethodFirmwareUpdate, "u1")
				if r.out.Result != nil && r.out.Result.Attempts < 2 {
					t.Errorf("attempts %d: want the offline device's refusals among them", r.out.Result.Attempts)
				}
			})
		})
	}
}

// deviceCost is what one operation cost, for the closing note and README: hub calls and history
// events.
func deviceCost(t *testing.T, c client.Client, workflowID string) string {
	t.Helper()
	h, _ := runHistory(t, c, workflowID, "")
	return fmt.Sprintf("%d history events", len(h.Events))
}
