//go:build integration

package test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// versionsOutput is what starter fleet versions -o json prints.
type versionsOutput struct {
	Query    string `json:"query"`
	Total    int    `json:"total"`
	Versions []struct {
		Version string  `json:"version"`
		Devices int     `json:"devices"`
		Percent float64 `json:"percent"`
	} `json:"versions"`
	None struct {
		Devices int     `json:"devices"`
		Percent float64 `json:"percent"`
	} `json:"none"`
	Pages      int    `json:"pages"`
	WorkflowID string `json:"workflowId"`
}

// TestFleetVersions counts the firmware versions of a fleet of its own through the real
// processes: a localhub of its own (so that other tests' devices do not count), a worker, and
// simulated devices reporting 2.1.0, 2.0.0 and, on the tutorial contract, nothing.
func TestFleetVersions(t *testing.T) {
	// The policy tests wait on devices and timers more than they compute: they run together, each
	// with its own task queue, worker and devices (make test-integration's -parallel).
	t.Parallel()
	hub := startOwnHub(t, "versions-localhub")
	const queue = "fleet-versions-it"
	startWorkerWith(t, hub.env("DMFLOW_TASK_QUEUE="+queue))
	for _, f := range []struct {
		prefix string
		count  string
		args   []string
	}{
		{"va-", "3", []string{"--firmware-version", "2.1.0", "--tags", "ring=beta"}},
		{"vb-", "2", []string{"--firmware-version", "2.0.0", "--tags", "ring=prod"}},
		{"vc-", "2", []string{"--tutorial", "100%", "--tags", "ring=beta"}}, // report no firmwareVersion
	} {
		p := startProc(t, "versions-fleet-"+strings.TrimSuffix(f.prefix, "-"), hub.env(), filepath.Join(env.bin, "simdevice"),
			append([]string{"fleet", "--count", f.count, "--prefix", f.prefix, "--summary-interval", "0"}, f.args...)...)
		if err := p.waitFor(`msg="fleet started"`, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	versions := func(t *testing.T, args ...string) (string, string, int) {
		t.Helper()
		return runStarter(t, time.Minute, append([]string{"fleet", "versions", "--task-queue", queue}, args...)...)
	}

	// Devices report their version once connected: count until all seven are in.
	var all versionsOutput
	deadline := time.Now().Add(15 * time.Second)
	for {
		stdout, stderr, code := versions(t, "-o", "json")
		if code != 0 {
			t.Fatalf("fleet versions -o json: exit %d: %s", code, stderr)
		}
		all = versionsOutput{}
		if err := json.Unmarshal([]byte(stdout), &all); err != nil {
			t.Fatalf("fleet versions -o json printed %q: %v", stdout, err)
		}
		if (all.Total == 7 && len(all.Versions) == 2) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}

	t.Run("json", func(t *testing.T) {
		got, _ := json.Marshal(all.Versions)
		if all.Total != 7 || string(got) != `[{"version":"2.1.0","devices":3,"percent":42.9},{"version":"2.0.0","devices":2,"percent":28.6}]` ||
			all.None.Devices != 2 || all.None.Percent != 28.6 || all.Pages != 1 {
			t.Errorf("every device: total %d, versions %s, none %+v, pages %d", all.Total, got, all.None, all.Pages)
		}
		if !regexp.MustCompile(`^fleet-versions/\d{8}T\d{6}Z-[0-9a-f]{8}$`).MatchString(all.WorkflowID) {
			t.Errorf("workflow ID %q", all.WorkflowID)
		}
	})

	// The history holds the query and the counts, not the hub's credentials; with
	// DMFLOW_RECORD_HISTORY=dir it is saved for workflows' replay test.
	t.Run("history", func(t *testing.T) {
		h, raw := runHistory(t, temporalClient(t), all.WorkflowID, "")
		sc := newSecretScanner()
		sc.addLiteral("the service connection string", hub.cs)
		sc.addKey("the service key", csKey(t, hub.cs))
		if found := sc.scan(historyText(t, h)); len(found) > 0 {
			t.Errorf("history of %s holds %s", all.WorkflowID, strings.Join(found, ", "))
		}
		if dir := os.Getenv("DMFLOW_RECORD_HISTORY"); dir != "" {
			if err := os.WriteFile(filepath.Join(dir, "fleet_versions.json"), raw, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("table", func(t *testing.T) {
		before := hub.stats(t).PerSecond["queries"].Total
		stdout, stderr, code := versions(t, "--query", "tags.ring = 'beta'")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		want := regexp.MustCompile(`^VERSION  DEVICES  SHARE
2\.1\.0          3  60\.0%
\(none\)         2  40\.0%
TOTAL          5   100%
1 version among 5 devices \(workflow fleet-versions/\S+, 1 query page\)
$`)
		if !want.MatchString(stdout) {
			t.Errorf("table:\n%s", stdout)
		}
		if n := hub.stats(t).PerSecond["queries"].Total - before; n != 1 {
			t.Errorf("the count cost the hub %d queries, want one", n)
		}
	})

	t.Run("csv", func(t *testing.T) {
		stdout, stderr, code := versions(t, "-o", "csv", "-q", "SELECT * FROM devices WHERE tags.ring = 'prod'")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if want := "version,reported,devices,percent\n2.0.0,true,2,100.0\n(none),false,0,0.0\n"; stdout != want {
			t.Errorf("csv:\n%s\nwant\n%s", stdout, want)
		}
	})

	t.Run("a condition the hub refuses", func(t *testing.T) {
		stdout, stderr, code := versions(t, "-q", "tags.ring == 'beta'")
		if code != 1 || stdout != "" || !strings.Contains(stderr, "IoT Hub rejected the request (HTTP 400") ||
			!strings.Contains(stderr, "syntax error at line 1, column 93") || !strings.Contains(stderr, "the condition starts at line 1, column 82") || !strings.Contains(stderr, "fix --query") {
			t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
	})
}
