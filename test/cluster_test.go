//go:build integration

package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/dmflow/dmflow/internal/sim/fleet"
	"github.com/dmflow/dmflow/workflows"
)

// clusterStack is the stack `make up-cluster` runs (PostgreSQL, the Temporal
// server on it, its Web UI, localhub, two workers), brought up by the same
// scripts/stack.sh up-cluster in a state directory of the test's own, on free
// ports.
type clusterStack struct {
	state string   // DMFLOW_STATE_DIR
	env   []string // stack.sh's environment: the binaries, state and ports
	addr  string   // Temporal frontend
	ui    string   // Web UI base URL
	hub   ownHub   // the stack's localhub
}

// freePorts returns n distinct free ports at 32767 or below: PostgreSQL's
// cluster_membership table keeps the Temporal services' ports in a smallint,
// and the kernel's ephemeral ports (port 0) lie above it.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for p := 20000 + rand.IntN(10000); len(ports) < n && p <= 32767; p++ {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		ls = append(ls, l)
		ports = append(ports, p)
	}
	if len(ports) < n {
		t.Fatalf("only %d free ports below 32768", len(ports))
	}
	return ports
}

// freePortPair returns a free port whose successor is free too.
func freePortPair(t *testing.T) int {
	t.Helper()
	for range 100 {
		p := freePort()
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no two consecutive free ports")
	return 0
}

// upCluster brings the stack up and stops it (`stack.sh down`) when the test
// ends. The Temporal server, its schema tool and the UI server must have been
// built (`make cluster-build`, which `make test` runs).
func upCluster(t *testing.T) *clusterStack {
	t.Helper()
	for _, b := range []string{"temporal-server", "temporal-sql-tool", "temporal-ui-server", "temporal"} {
		if _, err := os.Stat(filepath.Join(env.bin, b)); err != nil {
			t.Fatalf("%s is not in %s: run `make cluster-build` (make test does) and set DMFLOW_BIN_DIR", b, env.bin)
		}
	}
	// PostgreSQL runs as an unprivileged user when we are root: it must
	// reach its data directory under the scratch directory.
	if err := os.Chmod(env.dir, 0o711); err != nil {
		t.Fatal(err)
	}
	cs := &clusterStack{state: filepath.Join(env.dir, "cluster")}
	if err := os.MkdirAll(cs.state, 0o755); err != nil {
		t.Fatal(err)
	}
	p := freePorts(t, 14)
	metrics := freePortPair(t)
	cs.addr = "127.0.0.1:" + strconv.Itoa(p[0])
	cs.ui = "http://127.0.0.1:" + strconv.Itoa(p[1])
	ports := map[string]int{
		"DMFLOW_TEMPORAL_PORT": p[0], "DMFLOW_TEMPORAL_UI_PORT": p[1], "DMFLOW_MQTT_PORT": p[2],
		"DMFLOW_HTTPS_PORT": p[3], "DMFLOW_POSTGRES_PORT": p[4], "DMFLOW_METRICS_PORT": metrics,
		"DMFLOW_CLUSTER_FRONTEND_HTTP_PORT": p[5], "DMFLOW_CLUSTER_FRONTEND_MEMBERSHIP_PORT": p[6],
		"DMFLOW_CLUSTER_HISTORY_PORT": p[7], "DMFLOW_CLUSTER_HISTORY_MEMBERSHIP_PORT": p[8],
		"DMFLOW_CLUSTER_MATCHING_PORT": p[9], "DMFLOW_CLUSTER_MATCHING_MEMBERSHIP_PORT": p[10],
		"DMFLOW_CLUSTER_WORKER_PORT": p[11], "DMFLOW_CLUSTER_WORKER_MEMBERSHIP_PORT": p[12],
	}
	cs.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"DMFLOW_STATE_DIR=" + cs.state, "DMFLOW_BIN_DIR=" + env.bin,
		"TEMPORAL_CONFIG_FILE=" + filepath.Join(env.dir, "no-temporal-profile.toml")}
	for k, v := range ports {
		cs.env = append(cs.env, k+"="+strconv.Itoa(v))
	}
	t.Cleanup(func() {
		out, err := cs.stack("down")
		if err != nil {
			t.Errorf("stack.sh down: %v\n%s", err, out)
		}
		if t.Failed() {
			for _, name := range []string{"temporal-server", "worker-1", "worker-2", "temporal-setup"} {
				if b, err := os.ReadFile(filepath.Join(cs.state, name+".log")); err == nil {
					t.Logf("%s.log (last lines):\n%s", name, lastLines(string(b), 30))
				}
			}
		}
	})
	cs.up(t)

	// The stack's localhub, as the harness's helpers know a hub.
	b, err := os.ReadFile(filepath.Join(cs.state, "env"))
	if err != nil {
		t.Fatal(err)
	}
	vars := parseExports(string(b))
	cs.hub = ownHub{cs: vars["IOTHUB_CONNECTION_STRING"], caFile: vars["DMFLOW_HUB_CA_FILE"],
		https: "127.0.0.1:" + strconv.Itoa(p[3]), mqtt: strings.TrimPrefix(vars["DMFLOW_MQTT_BROKER"], "tls://"),
		name: "cluster-localhub", state: filepath.Join(cs.state, "localhub")}
	if vars["TEMPORAL_ADDRESS"] != cs.addr || vars["TEMPORAL_NAMESPACE"] != "default" || cs.hub.cs == "" {
		t.Fatalf("%s/env: TEMPORAL_ADDRESS %q, TEMPORAL_NAMESPACE %q, a connection string %v: want %s, default, one",
			cs.state, vars["TEMPORAL_ADDRESS"], vars["TEMPORAL_NAMESPACE"], cs.hub.cs != "", cs.addr)
	}
	return cs
}

// up runs `stack.sh up-cluster`, which starts what is not running.
func (cs *clusterStack) up(t *testing.T) {
	t.Helper()
	start := time.Now()
	out, err := cs.stack("up-cluster")
	if err != nil {
		t.Fatalf("stack.sh up-cluster: %v\n%s", err, out)
	}
	t.Logf("stack.sh up-cluster: %s\n%s", time.Since(start).Round(100*time.Millisecond), out)
}

// stack runs scripts/stack.sh with args in the stack's environment.
func (cs *clusterStack) stack(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{"../scripts/stack.sh"}, args...)...)
	cmd.Env = cs.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// pid is the PID of the stack's process name.
func (cs *clusterStack) pid(t *testing.T, name string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cs.state, name+".pid"))
	if err != nil {
		t.Fatalf("%s is not running: %v", name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// signal sends sig to the stack's process name and waits until it is gone.
func (cs *clusterStack) signal(t *testing.T, name string, sig syscall.Signal) {
	t.Helper()
	pid := cs.pid(t, name)
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("kill %s (%d): %v", name, pid, err)
	}
	for deadline := time.Now().Add(time.Minute); syscall.Kill(pid, 0) == nil; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (%d) still runs a minute after %v", name, pid, sig)
		}
	}
}

// parseExports reads the export NAME='value' lines of a stack env file.
func parseExports(s string) map[string]string {
	vars := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if ok {
			vars[k] = strings.Trim(v, "'")
		}
	}
	return vars
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// chaosStack is a chaos stack on the cluster: its localhub, its two workers
// (the default task queue) and its Temporal server, for the chaos helpers.
func (cs *clusterStack) chaosStack(name string) *chaosStack {
	return &chaosStack{name: name, temporalAddr: cs.addr, hub: cs.hub, queue: workflows.TaskQueue}
}

// The production shape without Docker, as `make up-cluster` runs it: the
// Temporal server on PostgreSQL, its Web UI, localhub and two workers. On it
// a reboot and a firmware update; a rollout of 200 devices served by both
// workers through a pause and resume, a worker SIGKILL and a Temporal server
// restart (each brought back by running up-cluster again), with nothing lost
// or applied twice; the Temporal UI's list queries answered from PostgreSQL
// as on the dev server; a cancel; a schedule's trigger.
func TestCluster(t *testing.T) {
	// Its own stack from PostgreSQL up, mostly waiting on its devices and restarts: it runs beside
	// the policy tests (make test-integration's -parallel) instead of after them.
	t.Parallel()
	cs := upCluster(t)
	c := temporalClientAt(t, cs.addr)

	t.Run("web UI", func(t *testing.T) {
		resp, err := http.Get(cs.ui + "/api/v1/namespaces/default/workflows")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("UI API: %s, want 200 (the UI server reaches the frontend)", resp.Status)
		}
		page, err := http.Get(cs.ui + "/")
		if err != nil {
			t.Fatal(err)
		}
		page.Body.Close()
		if page.StatusCode != http.StatusOK {
			t.Errorf("UI page: %s, want 200", page.Status)
		}
	})

	t.Run("reboot and firmware", func(t *testing.T) {
		s := cs.chaosStack("cl-one")
		dev := startProc(t, "simdevice-cl-one", s.env(), filepath.Join(env.bin, "simdevice"),
			"--device-id", "cl-one", "--reboot-duration", "1s", "--stage-duration", "300ms")
		if err := dev.waitFor("simdevice ready", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, code := s.starter(t, 2*time.Minute, "reboot", "--device", "cl-one", "--wait", "-o", "json")
		var rb struct {
			Result *workflows.RebootResult `json:"result"`
		}
		if err := json.Unmarshal([]byte(stdout), &rb); err != nil || code != 0 || rb.Result == nil || rb.Result.MethodStatus != 200 {
			t.Fatalf("reboot: exit %d, %q, stderr %q (%v)", code, stdout, stderr, err)
		}
		stdout, stderr, code = s.starter(t, 2*time.Minute, "firmware", "--device", "cl-one",
			"--uri", "https://fw.example/cl.bin", "--version", "3.0.0", "--wait", "-o", "json")
		var fw struct {
			Result *workflows.FirmwareResult `json:"result"`
		}
		if err := json.Unmarshal([]byte(stdout), &fw); err != nil || code != 0 || fw.Result == nil || fw.Result.Status != workflows.FirmwareUpdated {
			t.Fatalf("firmware: exit %d, %q, stderr %q (%v)", code, stdout, stderr, err)
		}
		for method, want := range map[string]int{"rebootDevice": 1, "firmwareUpdate": 1} {
			if n := countDelivered(t, s.hub, "cl-one", method); n != want {
				t.Errorf("localhub delivered %s %d times, want %d", method, n, want)
			}
		}
		q := `DmflowDevice = "cl-one"`
		if n := countVisible(t, c, q, 2); n != 2 {
			t.Errorf("visibility %s: %d executions, want the reboot and the update", q, n)
		}
	})

	t.Run("rollout of 200 devices", func(t *testing.T) {
		const count = 200
		s := cs.chaosStack("cl-fleet")
		fl := s.startFleet(t, count, 17, fleet.Faults{}, "--stage-duration", "500ms")
		// A call in flight when the server goes down looks for the device's
		// first stage for a stage timeout before calling again: 15 s.
		s.startChaosRollout(t, "--canary", "10", "--growth", "2", "--max-concurrent", "40", "--stage-timeout", "15s")
		name := s.name
		q := fmt.Sprintf("DmflowRollout = %q", name)

		// Pause and resume, the paused state visible to the UI's filter.
		s.waitUntil(t, c, "a fifth done", 5*time.Minute, midway(count/5))
		if p, stderr, code := cs.control(t, "pause", name, "--reason", "cluster check"); code != 0 || p.State != workflows.RolloutPaused {
			t.Fatalf("pause: exit %d, %+v, %q", code, p, stderr)
		}
		s.waitUntil(t, c, "paused, nothing in flight", 2*time.Minute, func(p workflows.RolloutProgress) bool {
			return p.State == workflows.RolloutPaused && p.Running == 0
		})
		if n := countVisible(t, c, q+` AND DmflowRolloutState = "paused"`, 1); n != 1 {
			t.Errorf("%s AND DmflowRolloutState = \"paused\": %d executions, want 1", q, n)
		}
		if p, stderr, code := cs.control(t, "resume", name); code != 0 || p.State != workflows.RolloutRunning {
			t.Fatalf("resume: exit %d, %+v, %q", code, p, stderr)
		}
		if n := countVisible(t, c, q+` AND DmflowRolloutState = "running"`, 1); n != 1 {
			t.Errorf("%s AND DmflowRolloutState = \"running\": %d executions, want 1", q, n)
		}

		// A worker killed, and brought back by running up-cluster again.
		at := s.waitUntil(t, c, "two fifths done", 5*time.Minute, func(p workflows.RolloutProgress) bool {
			return midway(2*count/5)(p) && p.Running >= 5
		})
		cs.signal(t, "worker-1", syscall.SIGKILL)
		t.Logf("worker-1 killed at %+v", at)
		time.Sleep(2 * time.Second)
		cs.up(t)

		// The Temporal server stopped and started again the same way: the
		// schema and setup jobs run again and find everything in place.
		at = s.waitUntil(t, c, "three fifths done", 5*time.Minute, midway(3*count/5))
		cs.signal(t, "temporal-server", syscall.SIGTERM)
		t.Logf("Temporal server stopped at %+v", at)
		time.Sleep(3 * time.Second)
		cs.up(t)

		p := checkChaos(t, s, c, fl, 5*time.Minute, chaosExpect{lossless: true})
		if p.Succeeded != count {
			t.Errorf("progress %+v: want all %d updated", p, count)
		}

		// Both workers ran devices' activities.
		byType := listVisible(t, c, q)
		who := map[string]int{}
		for _, id := range byType["RolloutShard"] {
			for _, identity := range activityIdentities(t, c, id) {
				who[identity]++
			}
		}
		if len(who) < 2 {
			t.Errorf("the shards' activities ran on %v: want both workers", who)
		}
		t.Logf("activities by worker: %v", who)

		// The UI's list query and its filters, answered from PostgreSQL:
		// the rollout and its shards, the state, the execution status.
		if got := byType["Rollout"]; len(got) != 1 || got[0] != workflows.RolloutWorkflowID(name) {
			t.Errorf("%s lists Rollout executions %v, want [%s]", q, got, workflows.RolloutWorkflowID(name))
		}
		shards := byType["RolloutShard"]
		slices.Sort(shards)
		var want []string
		for i := range shards {
			want = append(want, workflows.RolloutShardWorkflowID(name, i))
		}
		slices.Sort(want)
		if len(shards) == 0 || !slices.Equal(shards, want) || len(byType) != 2 {
			t.Errorf("%s lists %v: want the rollout and its shards 0..n-1", q, byType)
		}
		total := int64(1 + len(shards))
		if n := countVisible(t, c, q, total); n != total {
			t.Errorf("count %s: %d, the list %d", q, n, total)
		}
		for query, want := range map[string]int64{
			q + ` AND DmflowRolloutState = "completed"`: 1,
			q + ` AND DmflowRolloutState = "running"`:   0,
			q + ` AND ExecutionStatus = "Running"`:      0,
			q + ` AND ExecutionStatus = "Completed"`:    total,
			q + ` AND WorkflowType = "RolloutShard"`:    int64(len(shards)),
		} {
			if n := countVisible(t, c, query, want); n != want {
				t.Errorf("count %s: %d, want %d", query, n, want)
			}
		}
	})

	t.Run("cancel", func(t *testing.T) {
		s := cs.chaosStack("cl-cancel")
		s.startFleet(t, 30, 3, fleet.Faults{}, "--stage-duration", "2s")
		s.startChaosRollout(t, "--canary", "2", "--max-concurrent", "2")
		s.waitUntil(t, c, "devices in flight", 2*time.Minute, func(p workflows.RolloutProgress) bool { return p.Running > 0 })
		if p, stderr, code := cs.control(t, "cancel", s.name, "--reason", "cluster cancel"); code != 0 {
			t.Fatalf("cancel: exit %d, %+v, %q", code, p, stderr)
		}
		stdout, stderr, code := s.starter(t, 2*time.Minute, "rollout", "watch", s.name, "-o", "json")
		var final workflows.RolloutProgress
		if err := json.Unmarshal([]byte(stdout), &final); err != nil || code != 1 || final.State != workflows.RolloutCancelled || final.NotStarted == 0 {
			t.Errorf("watch: exit %d, %+v, %q (%v): want 1, cancelled with devices not started", code, final, stderr, err)
		}
		if n := countVisible(t, c, fmt.Sprintf(`DmflowRollout = %q AND DmflowRolloutState = "cancelled"`, s.name), 1); n != 1 {
			t.Errorf("cancelled rollout: %d executions in state cancelled, want 1", n)
		}
	})

	t.Run("schedule trigger", func(t *testing.T) {
		s := cs.chaosStack("cl-sched")
		fl := s.startFleet(t, 5, 4, fleet.Faults{}, "--stage-duration", "200ms")
		const schedule = "cl-weekly"
		stdout, stderr, code := s.starter(t, time.Minute, "schedule", "create", schedule, "--cron", "0 2 * * SUN",
			"--query", "SELECT * FROM devices WHERE tags.ring = 'cl-sched'",
			"--firmware", chaosPackage, "--version", chaosVersion, "-o", "json")
		if code != 0 {
			t.Fatalf("schedule create: exit %d, %q, %q", code, stdout, stderr)
		}
		t.Cleanup(func() { s.starter(t, time.Minute, "schedule", "delete", schedule) })
		stdout, stderr, code = s.starter(t, time.Minute, "schedule", "trigger", schedule, "-o", "json")
		var tr triggerResult
		if err := json.Unmarshal([]byte(stdout), &tr); err != nil || code != 0 || !tr.Started {
			t.Fatalf("trigger: exit %d, %q, %q (%v)", code, stdout, stderr, err)
		}
		stdout, stderr, code = s.starter(t, 3*time.Minute, "rollout", "watch", tr.Rollout, "-o", "json")
		var p workflows.RolloutProgress
		if err := json.Unmarshal([]byte(stdout), &p); err != nil || code != 0 || p.Succeeded != len(fl.ids) {
			t.Errorf("scheduled rollout %s: exit %d, %+v, %q (%v): want %d updated", tr.Rollout, code, p, stderr, err, len(fl.ids))
		}
	})
}

// control runs `starter rollout ACTION NAME` against the cluster.
func (cs *clusterStack) control(t *testing.T, action, name string, args ...string) (workflows.RolloutProgress, string, int) {
	t.Helper()
	stdout, stderr, code := runStarterAt(t, cs.addr, time.Minute, append([]string{"rollout", action, name, "-o", "json"}, args...)...)
	var p workflows.RolloutProgress
	if code == 0 {
		if err := json.Unmarshal([]byte(stdout), &p); err != nil {
			t.Fatalf("rollout %s: %q: %v", action, stdout, err)
		}
	}
	return p, stderr, code
}

// activityIdentities lists the worker identity of every activity started in
// the workflow's history (all runs).
func activityIdentities(t *testing.T, c client.Client, workflowID string) []string {
	t.Helper()
	var out []string
	it := c.GetWorkflowHistory(context.Background(), workflowID, "", false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			t.Fatalf("history of %s: %v", workflowID, err)
		}
		if a := e.GetActivityTaskStartedEventAttributes(); a != nil {
			out = append(out, a.GetIdentity())
		}
	}
	return out
}

// countDelivered is how many calls of method localhub delivered to device.
func countDelivered(t *testing.T, h ownHub, device, method string) int {
	t.Helper()
	entries, _ := h.methodLog(t)
	n := 0
	for _, e := range entries {
		if e.DeviceID == device && e.Method == method && e.Delivered {
			n++
		}
	}
	return n
}
