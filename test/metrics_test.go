//go:build integration

package test

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/fleet"
	"github.com/dmflow/dmflow/workflows"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape is one read of a worker's /metrics, parsed as Prometheus parses it.
type scrape struct {
	fams map[string]*dto.MetricFamily
	body string
}

func scrapeMetrics(t *testing.T, url string) scrape {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: HTTP %d, %v", url, resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("scrape %s: not the Prometheus text format: %v", url, err)
	}
	return scrape{fams: fams, body: string(body)}
}

// value sums the samples of family name whose labels include want: counters and gauges by value,
// histograms by their count of observations. ok is false when the family or any such sample is
// missing.
func (s scrape) value(name string, want map[string]string) (v float64, ok bool) {
	mf := s.fams[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, w := range want {
			if labels[k] != w {
				match = false
			}
		}
		if !match {
			continue
		}
		ok = true
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			v += m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			v += m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			v += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return v, ok
}

// expectation is one sample the scrape must hold, with its value.
type expectation struct {
	name   string
	labels map[string]string
	want   float64
}

// check returns what the scrape gets wrong of exps.
func (s scrape) check(exps []expectation) []string {
	var problems []string
	for _, e := range exps {
		got, ok := s.value(e.name, e.labels)
		switch {
		case !ok && e.want != 0:
			problems = append(problems, fmt.Sprintf("%s%v missing, want %g", e.name, e.labels, e.want))
		case got != e.want:
			problems = append(problems, fmt.Sprintf("%s%v = %g, want %g", e.name, e.labels, got, e.want))
		}
	}
	return problems
}

// A firmware rollout over a simulated fleet with two failing devices, on a localhub that lets
// one direct method a second through (so the rollout's invocations meet 429s), then one scrape
// of the worker's metrics endpoint: dmflow's counters match the rollout's report and localhub's
// own counts exactly, the SDK's metrics are there with the same labels, and nothing secret or
// per device is in it.
func TestWorkerMetrics(t *testing.T) {
	const (
		count   = 8
		prefix  = "mt-"
		seed    = 1
		name    = "fw-metrics-2.0.0"
		version = "2.0.0"
		queue   = "it-metrics"
	)
	// methods=1/s with a burst of one: of eight devices invoked at once, the hub takes two
	// within its second of traffic shaping and refuses the others with 429, which InvokeMethod's
	// retry policy retries 2, 4, 8 s later until all got through.
	hub := startOwnHub(t, "metrics-localhub", "--quota", "methods=1/s")
	fl := &rolloutFleet{plan: fleet.Plan(prefix, count, seed, fleet.Faults{Failing: 0.25})}
	fl.proc = startProc(t, "fleet-metrics", hub.env(), filepath.Join(env.bin, "simdevice"),
		"fleet", "--count", strconv.Itoa(count), "--prefix", prefix, "--seed", strconv.Itoa(seed),
		"--failing", "0.25", "--stage-duration", "300ms", "--tags", "ring=metrics", "--summary-interval", "5s")
	if err := fl.proc.waitFor(`msg="fleet started"`, time.Minute); err != nil {
		t.Fatal(err)
	}
	failing, ids := fl.failing(), fl.ids()
	if len(failing) == 0 || len(failing) == count {
		t.Fatalf("test setup: seed %d makes %d of %d devices fail: want some, not all", seed, len(failing), count)
	}

	w := startWorkerWith(t, hub.env("DMFLOW_TASK_QUEUE="+queue, "DMFLOW_METRICS_ADDRESS=127.0.0.1:0"))
	url := metricsURL(t, w)
	health := strings.TrimSuffix(url, "/metrics") + "/healthz"
	if resp, err := http.Get(health); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %v", health, resp, err)
	} else {
		resp.Body.Close()
	}

	before := hub.stats(t)
	out, stderr, code := startRollout(t, 4*time.Minute, "--name", name,
		"--query", "SELECT * FROM devices WHERE tags.ring = 'metrics'",
		"--firmware", "https://fw.example/v2.bin", "--version", version,
		"--canary", strconv.Itoa(count), "--max-concurrent", strconv.Itoa(count),
		"--max-failures", "50%", "--task-queue", queue, "--wait")
	p := out.Result
	if p == nil || p.State != workflows.RolloutCompleted || p.Failed != len(failing) || p.Succeeded != count-len(failing) {
		t.Fatalf("rollout: exit %d, progress %+v, stderr %q: want completed with %d failed", code, p, stderr, len(failing))
	}
	results := map[string]int{}
	for _, r := range rolloutReport(t, name) {
		results[r.Result]++
	}
	after := hub.stats(t)
	invoked, twinReads := 0, 0
	for _, id := range ids {
		invoked += after.MethodInvocations[id][protocol.MethodFirmwareUpdate] - before.MethodInvocations[id][protocol.MethodFirmwareUpdate]
		twinReads += after.ServiceTwinReads[id] - before.ServiceTwinReads[id]
	}
	throttled := after.Throttled["methods"] - before.Throttled["methods"]
	if throttled == 0 {
		t.Fatalf("localhub throttled no method call (stats %v → %v): the test needs 429s to count", before.Throttled, after.Throttled)
	}
	t.Logf("report %v; localhub: %d invocations, %d twin reads, %d methods throttled", results, invoked, twinReads, throttled)

	// The rollout's devices run in its shard (fewer than 250 devices: one).
	fw := map[string]string{"workflow_type": "RolloutShard", "task_queue": queue}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	exps := []expectation{
		// Device operations by result, as the report has them.
		{"dmflow_device_operations_total", with(fw, "operation", workflows.OperationFirmware, "result", workflows.DeviceUpdated), float64(results[workflows.DeviceUpdated])},
		{"dmflow_device_operations_total", with(fw, "operation", workflows.OperationFirmware, "result", workflows.DeviceFailed), float64(results[workflows.DeviceFailed])},
		{"dmflow_device_operations_total", nil, count},
		// The rollout's gauges are its final progress; it is counted once, as completed.
		{"dmflow_rollout_devices", map[string]string{"rollout": name, "state": "succeeded", "workflow_type": "Rollout"}, float64(p.Succeeded)},
		{"dmflow_rollout_devices", map[string]string{"rollout": name, "state": "failed"}, float64(p.Failed)},
		{"dmflow_rollout_devices", map[string]string{"rollout": name, "state": "skipped"}, 0},
		{"dmflow_rollout_devices", map[string]string{"rollout": name, "state": "running"}, 0},
		{"dmflow_rollout_devices", map[string]string{"rollout": name, "state": "pending"}, 0},
		{"dmflow_rollout_devices", map[string]string{"rollout": name}, count},
		{"dmflow_rollouts_total", map[string]string{"state": workflows.RolloutCompleted}, 1},
		// Hub calls, by localhub's own counts: every firmwareUpdate it delivered was a 200, every
		// twin read it answered a 200, every method it refused a 429.
		{"dmflow_hub_calls_total", map[string]string{"call": activities.CallInvokeMethod, "status": "200", "activity_type": "InvokeMethod"}, float64(invoked)},
		{"dmflow_hub_calls_total", map[string]string{"call": activities.CallGetTwin, "status": "200"}, float64(twinReads)},
		{"dmflow_hub_calls_total", map[string]string{"call": activities.CallQuery, "status": "200", "activity_type": "QueryDevicesPage"}, 1},
		{"dmflow_hub_calls_total", map[string]string{"call": activities.CallInvokeMethod, "status": "429"}, float64(throttled)},
		{"dmflow_hub_throttled_total", map[string]string{"call": activities.CallInvokeMethod}, float64(throttled)},
		{"dmflow_hub_throttled_total", nil, float64(throttled)},
		// The SDK's own metrics, through the same registry.
		{"temporal_workflow_completed_total", fw, 1},
		{"temporal_workflow_completed_total", map[string]string{"workflow_type": "Rollout"}, 1},
		// One InvokeMethod execution per device plus one per 429.
		{"temporal_activity_execution_latency_seconds", map[string]string{"activity_type": "InvokeMethod", "task_queue": queue}, float64(invoked + throttled)},
	}
	if invoked != count {
		t.Errorf("localhub delivered %d firmwareUpdate calls, want %d", invoked, count)
	}

	// The registry gets what was counted once a second: poll until it all shows.
	var s scrape
	var problems []string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		s = scrapeMetrics(t, url)
		if problems = s.check(exps); len(problems) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, p := range problems {
		t.Error(p)
	}
	for _, fam := range []string{"temporal_workflow_task_execution_latency_seconds", "temporal_request_total", "go_goroutines", "process_resident_memory_bytes"} {
		if s.fams[fam] == nil {
			t.Errorf("no %s in the scrape", fam)
		}
	}

	// No secret and no device ID: no connection string or key, and no label per device.
	_, key, _ := strings.Cut(hub.cs, "SharedAccessKey=")
	for _, secret := range []string{"SharedAccessKey", "SharedAccessSignature", key} {
		if key == "" || strings.Contains(s.body, secret) {
			t.Errorf("the scrape contains %q (or the test found no key in %s)", secret, "the connection string")
		}
	}
	for _, id := range ids {
		if strings.Contains(s.body, `"`+id+`"`) {
			t.Errorf("the scrape has a label %q", id)
		}
	}
	// Every metric registered: a name reused with other labels would be dropped with a warning.
	if strings.Contains(w.output(), "metric dropped") {
		t.Errorf("the worker dropped metrics:\n%s", w.tail(20))
	}
	// A stop shuts the endpoint down with the worker, cleanly.
	w.stop()
	if w.err != nil {
		t.Errorf("worker exit: %v", w.err)
	}
	if resp, err := http.Get(url); err == nil {
		resp.Body.Close()
		t.Errorf("the metrics endpoint still answers after the worker stopped")
	}

	if t.Failed() {
		var dmflow []string
		for _, line := range strings.Split(s.body, "\n") {
			if strings.HasPrefix(line, "dmflow_") {
				dmflow = append(dmflow, line)
			}
		}
		slices.Sort(dmflow)
		t.Logf("dmflow's metrics:\n%s", strings.Join(dmflow, "\n"))
	}
}
