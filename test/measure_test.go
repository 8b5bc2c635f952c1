//go:build integration && bench

package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/benchreport"
	"github.com/dmflow/dmflow/internal/protocol"
)

// TestMeasureFirmwareCost measures one firmware update at the tutorial's
// timings (15 s stages) done by dmflow and by the tutorial's loop (bench/
// tutorial, reading the twin every 5 s and every 6 s), on separate devices at
// the same time: hub calls as localhub counted them, Temporal history events,
// how late each stage was seen. `make bench-firmware` runs it and writes the
// table to DMFLOW_BENCH_OUT and the figures beside it (.json).
func TestMeasureFirmwareCost(t *testing.T) {
	queue := "bench-firmware"
	startWorker(t, queue)
	for _, d := range []string{"bm-dmflow", "bm-tut5", "bm-tut6"} {
		startDevice(t, d, "--stage-duration", "15s")
	}
	// dmflow on a device that speaks only the tutorials' contract: no update ID, no version.
	startDevice(t, "bm-tutorial", "--stage-duration", "15s", "--contract", "tutorial", "--answer", "string")
	tutorial := filepath.Join(env.dir, "tutorial")
	if out, err := exec.Command("go", "build", "-o", tutorial, "../bench/tutorial").CombinedOutput(); err != nil {
		t.Fatalf("build bench/tutorial: %v\n%s", err, out)
	}

	type row struct {
		name                  string
		dmflow                bool
		methods, reads, calls int
		events                int
		lag                   map[string]time.Duration
		duration              time.Duration
	}
	var (
		mu   sync.Mutex
		rows []row
		wg   sync.WaitGroup
	)
	wg.Add(4)
	for _, tc := range []struct{ device, name string }{
		{"bm-dmflow", "dmflow FirmwareUpdate"},
		{"bm-tutorial", "dmflow FirmwareUpdate, tutorials' contract"},
	} {
		go func() {
			defer wg.Done()
			out, stderr, code := runFirmware(t, queue, tc.device, "bench", "2.0.0")
			if code != 0 || out.Result == nil {
				t.Errorf("%s update: exit %d %+v %s", tc.device, code, out, stderr)
				return
			}
			// A stage whose read time equals the next stage's was missed
			// (filled in from the device's timestamps), as the loop's would be.
			// The tutorial's device writes local time without a zone: its
			// stages are timed by the hub's $lastUpdated instead.
			lag := map[string]time.Duration{}
			st := out.Result.Stages
			for i, s := range st {
				if i+1 < len(st) && st[i+1].SeenAt.Equal(s.SeenAt) {
					continue
				}
				at := s.ReportedAt
				if at.IsZero() {
					at, _ = time.Parse(time.RFC3339Nano, s.UpdatedAt)
				}
				lag[s.Status] = s.SeenAt.Sub(at)
			}
			events := strings.Count(string(historyJSON(t, temporalClient(t), out.WorkflowID)), `"eventId"`)
			mu.Lock()
			rows = append(rows, row{name: tc.name, dmflow: true, events: events, lag: lag, duration: out.Result.Duration,
				methods: methodInvocations(t, tc.device, protocol.MethodFirmwareUpdate), reads: serviceTwinReads(t, tc.device)})
			mu.Unlock()
		}()
	}
	for _, tc := range []struct{ device, interval string }{{"bm-tut5", "5s"}, {"bm-tut6", "6s"}} {
		go func() {
			defer wg.Done()
			cmd := exec.Command(tutorial, "--devices", tc.device, "--interval", tc.interval, "--version", "2.0.0")
			cmd.Env = hubEnv()
			b, err := cmd.Output()
			if err != nil {
				t.Errorf("tutorial %s: %v", tc.device, err)
				return
			}
			var s struct {
				Runs []struct {
					Status   string                   `json:"status"`
					Duration time.Duration            `json:"duration"`
					Lag      map[string]time.Duration `json:"lag"`
				} `json:"runs"`
			}
			if err := json.Unmarshal(b, &s); err != nil || len(s.Runs) != 1 || s.Runs[0].Status != protocol.StatusCompleted {
				t.Errorf("tutorial %s: %v %s", tc.device, err, b)
				return
			}
			mu.Lock()
			rows = append(rows, row{name: "tutorial loop, twin every " + tc.interval, lag: s.Runs[0].Lag, duration: s.Runs[0].Duration,
				methods: methodInvocations(t, tc.device, protocol.MethodFirmwareUpdate), reads: serviceTwinReads(t, tc.device)})
			mu.Unlock()
		}()
	}
	wg.Wait()
	// dmflow first, then the loops by interval, whichever finished first.
	slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.name, b.name) })

	lagOf := func(r row, stage string) string {
		d, ok := r.lag[stage]
		if !ok {
			return "missed"
		}
		return d.Round(100 * time.Millisecond).String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| run | method calls | twin reads | hub calls | history events | seen late: downloading / applying / completed | duration |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		ev := "—"
		if r.events > 0 {
			ev = fmt.Sprint(r.events)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %s | %s / %s / %s | %s |\n", r.name, r.methods, r.reads, r.methods+r.reads, ev,
			lagOf(r, protocol.StatusDownloading), lagOf(r, protocol.StatusApplying), lagOf(r, protocol.StatusCompleted),
			r.duration.Round(100*time.Millisecond))
	}
	t.Log("\n" + b.String())
	if out := os.Getenv("DMFLOW_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		var figs benchreport.FirmwareFigures
		for _, r := range rows {
			figs.Runs = append(figs.Runs, benchreport.FirmwareRun{Name: r.name, Dmflow: r.dmflow,
				HubCalls: r.methods + r.reads, HistoryEvents: r.events, Seconds: r.duration.Seconds()})
		}
		if err := benchreport.WriteFigures(benchreport.FiguresPathFor(out), figs); err != nil {
			t.Fatal(err)
		}
	}
}
