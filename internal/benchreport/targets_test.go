package benchreport

import (
	"os"
	"strings"
	"testing"
)

// unbound1000 is a rollout Temporal bounds: its quota allows far more than the ceiling.
var unbound1000 = RolloutRun{Regime: "unbound", Devices: 1000, Tier: "S3", QuotaTier: "S3", Budget: "S3", Server: "sqlite",
	Succeeded: 1000, Seconds: 80, CeilingSeconds: 40, QuotaMinSeconds: 12, QuotaOp: "twinUpdates",
	HubCallsPerDevice: 3.2, EventsPerDevice: 11.4, ShardEvents: 10.9, CeilingEventsPerDevice: 9.6, WorkerPeakRSSKB: 80 << 10}

// quota1000 is two rollouts the quota binds: the minimum is longer than the ceiling.
var quota1000 = RolloutRun{Regime: "quota", Devices: 1000, Tier: "S1", QuotaTier: "S1", Budget: "S1", Workers: 2, Rollouts: 2,
	Server: "memory", Succeeded: 1000, Seconds: 66, CeilingSeconds: 26, QuotaMinSeconds: 60, QuotaOp: "twinUpdates",
	HubCallsPerDevice: 3.2, EventsPerDevice: 11.4, ShardEvents: 10.9, WorkerPeakRSSKB: 90 << 10,
	Admitted: []Admitted{
		{Op: "methods", WindowSeconds: 1, Peak: 20, Budget: 40, Total: 1000},
		{Op: "twinUpdates", WindowSeconds: 1, Peak: 50, Budget: 50, Total: 3000},
		{Op: "queries", WindowSeconds: 60, Peak: 2, Budget: 20, Total: 2},
	}}

func TestRolloutRunRatios(t *testing.T) {
	if got := unbound1000.CeilingRatio(); got != 0.5 {
		t.Errorf("CeilingRatio = %v, want 40/80", got)
	}
	if got := quota1000.QuotaRatio(); got != 1.1 {
		t.Errorf("QuotaRatio = %v, want 1.1", got)
	}
	if unbound1000.QuotaBinds() || !quota1000.QuotaBinds() {
		t.Error("QuotaBinds: want false for the unbound run, true for the quota run")
	}
	if !unbound1000.SingleWorker() || quota1000.SingleWorker() {
		t.Error("SingleWorker: want true for the unbound run (Workers 0), false for the quota run (2)")
	}
	if got := (RolloutRun{}).CeilingRatio() + (RolloutRun{}).QuotaRatio() + (RolloutRun{}).PerMinute(); got != 0 {
		t.Errorf("ratios of an empty run = %v, want 0", got)
	}
}

func TestAdmitted(t *testing.T) {
	for _, tc := range []struct {
		a      Admitted
		want   string
		within bool
	}{
		{Admitted{Op: "twinUpdates", WindowSeconds: 1, Peak: 48, Budget: 50}, "twinUpdates 48/s of 50", true},
		{Admitted{Op: "twinUpdates", WindowSeconds: 1, Peak: 51, Budget: 50}, "twinUpdates 51/s of 50", false},
		{Admitted{Op: "queries", WindowSeconds: 60, Peak: 20, Budget: 20}, "queries 20/min of 20", true},
		{Admitted{Op: "methods", WindowSeconds: 1, Peak: 900}, "methods 900/s (no budget)", true},
	} {
		if got := tc.a.String(); got != tc.want {
			t.Errorf("String = %q, want %q", got, tc.want)
		}
		if got := tc.a.Within(); got != tc.within {
			t.Errorf("%s: Within = %v, want %v", tc.want, got, tc.within)
		}
	}
}

func TestTargets(t *testing.T) {
	unbound10k := unbound1000
	unbound10k.Devices, unbound10k.Seconds, unbound10k.CeilingSeconds, unbound10k.QuotaMinSeconds = 10000, 500, 300, 120
	unbound10k.WorkerPeakRSSKB = 150 << 10
	slow10k := unbound10k
	slow10k.Seconds, slow10k.EventsPerDevice, slow10k.WorkerPeakRSSKB = 900, 13, 250<<10
	big := quota1000
	big.Devices, big.Seconds, big.CeilingSeconds, big.QuotaMinSeconds = 10000, 900, 260, 600
	big.WorkerPeakRSSKB = 250 << 10
	big.Throttled = 3
	big.Admitted = []Admitted{{Op: "twinUpdates", WindowSeconds: 1, Peak: 61, Budget: 50, Total: 30000}}
	quotaNotBinding := quota1000
	quotaNotBinding.CeilingSeconds = 200 // on a slow server the quota regime does not bind
	quotaNotBinding.Seconds = 500
	noBudget := quota1000
	noBudget.Admitted = nil
	firmware := &FirmwareFigures{Runs: []FirmwareRun{
		{Name: "tutorial loop, twin every 5s", HubCalls: 11, Seconds: 50},
		{Name: "dmflow FirmwareUpdate", Dmflow: true, HubCalls: 8, HistoryEvents: 24, Seconds: 57},
	}}
	const (
		unboundLabel = "rollout of 10,000 devices, localhub S3, sqlite dev server"
		quotaLabel   = "2 rollouts of 1,000 devices in all, localhub S1, 2 workers, memory dev server"
	)

	for _, tc := range []struct {
		name string
		res  Results
		// want: substrings of "target | run | measured | verdict" lines, each in some row;
		// notWant: substrings no row may hold.
		want, notWant []string
	}{
		{"both regimes at 1,000", Results{Firmware: firmware, Rollout: &RolloutFigures{Runs: []RolloutRun{unbound1000, quota1000}}}, []string{
			"≥ 1,000 devices/min at 10,000 devices when the quota does not bind; ≥ 50% of Temporal's ceiling (trivial activities) at 10,000 devices when the quota does not bind | — | largest unbound run 1,000 devices: 750 devices/min, 50% of the ceiling | not measured",
			"≤ 1.1× the quota-bound minimum when the quota binds | " + quotaLabel + " | 1.10× (1m06s vs 1m00s: twinUpdates at S1) | met",
			"zero 429s when the quota binds | " + quotaLabel + " | 0 | met",
			"no second (minute for queries) with more calls admitted than the hub budget when the quota binds | " + quotaLabel +
				" | peaks: methods 20/s of 40, twinUpdates 50/s of 50, queries 2/min of 20 | met",
			"≤ 8 hub calls per device | one firmware update at the tutorial's 15 s stages | 8 | met",
			"≤ 8 hub calls per device | " + quotaLabel + " | 3.20 | met",
			"≤ 12 history events per device in a rollout | rollout of 1,000 devices, localhub S3, sqlite dev server | 11.4 (shards 10.9 + the rollout's share 0.5; trivial ceiling 9.6) | met",
			"worker RSS ≤ 200 MB at 10,000 devices (one worker) | — | largest one-worker rollout 1,000 devices: 80 MB peak | not measured",
		}, []string{"history events per device in a rollout | one firmware update"}},
		{"unbound at 10,000 within its targets", Results{Rollout: &RolloutFigures{Runs: []RolloutRun{unbound10k}}}, []string{
			"≥ 1,000 devices/min at 10,000 devices when the quota does not bind | " + unboundLabel + " | 1200 devices/min (8m20s) | met",
			"≥ 50% of Temporal's ceiling (trivial activities) at 10,000 devices when the quota does not bind | " + unboundLabel + " | 60% (1200 vs 2000 devices/min) | met",
			"worker RSS ≤ 200 MB at 10,000 devices (one worker) | " + unboundLabel + " | 150 MB (peak) | met",
			"with zero 429s and within the hub budget | — | no rollout was bound by the quota | not measured",
		}, nil},
		{"unbound at 10,000 over its targets", Results{Rollout: &RolloutFigures{Runs: []RolloutRun{slow10k}}}, []string{
			"at 10,000 devices when the quota does not bind | " + unboundLabel + " | 667 devices/min (15m00s) | **not met**",
			"| " + unboundLabel + " | 33% (667 vs 2000 devices/min) | **not met**",
			"≤ 12 history events per device in a rollout | " + unboundLabel + " | 13.0 (shards 10.9 + the rollout's share 2.1; trivial ceiling 9.6) | **not met**",
			"| " + unboundLabel + " | 250 MB (peak) | **not met**",
		}, nil},
		{"10,000 bound by the quota over its targets", Results{Rollout: &RolloutFigures{Runs: []RolloutRun{big}}}, []string{
			"| 1.50× (15m00s vs 10m00s: twinUpdates at S1) | **not met**",
			"zero 429s when the quota binds | 2 rollouts of 10,000 devices in all, localhub S1, 2 workers, memory dev server | 3 | **not met**",
			"| peaks: twinUpdates 61/s of 50 | **not met**",
			// Two workers shared the devices: no verdict on one worker's memory.
			"worker RSS ≤ 200 MB at 10,000 devices (one worker) | — | no rollout measured with one worker | not measured",
		}, nil},
		{"quota regime that did not bind", Results{Rollout: &RolloutFigures{Runs: []RolloutRun{quotaNotBinding}}}, []string{
			"largest unbound run 1,000 devices: 120 devices/min, 40% of the ceiling | not measured",
			"with zero 429s and within the hub budget | — | the quota did not bind (" + quotaLabel + ": quota allows 1000 devices/min, Temporal 300) | not measured",
		}, nil},
		{"no per-second counts", Results{Rollout: &RolloutFigures{Runs: []RolloutRun{noBudget}}}, []string{
			"more calls admitted than the hub budget when the quota binds | " + quotaLabel + " | no hub budget, or no per-second counts | not measured",
		}, nil},
		{"nothing measured", Results{}, []string{
			"no rollout ran unbound by the quota | not measured",
			"no rollout was bound by the quota | not measured",
			"≤ 8 hub calls per device, ≤ 12 history events per device in a rollout | — | no rollout measured | not measured",
			"no rollout measured with one worker | not measured",
		}, nil},
		{"baseline", Results{Baseline: &BaselineFigures{Devices: 100, StageSeconds: 1, LoopSeconds: 510, DmflowSeconds: 30}}, []string{
			"dmflow against the tutorials' sequential loop (no target) | 100 devices, 1.0 s stages | 17.0× faster (30 s vs 8m30s) | —",
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var lines []string
			for _, r := range Targets(tc.res) {
				lines = append(lines, strings.Join([]string{r.Target, r.Run, r.Measured, r.Verdict}, " | "))
			}
			all := strings.Join(lines, "\n")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("no row with %q in\n%s", w, all)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(all, w) {
					t.Errorf("a row holds %q in\n%s", w, all)
				}
			}
		})
	}
}

func TestSecsAndCount(t *testing.T) {
	for _, tc := range []struct {
		secs float64
		want string
	}{{4.24, "4.2 s"}, {42, "42 s"}, {206, "3m26s"}, {3720, "1h02m"}} {
		if got := Secs(tc.secs); got != tc.want {
			t.Errorf("Secs(%v) = %q, want %q", tc.secs, got, tc.want)
		}
	}
	for _, tc := range []struct {
		n    int
		want string
	}{{0, "0"}, {100, "100"}, {1000, "1,000"}, {10000, "10,000"}, {1234567, "1,234,567"}, {-1000, "-1,000"}} {
		if got := Count(tc.n); got != tc.want {
			t.Errorf("Count(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

// scale100k is a `make bench-scale` run: no ceiling beside it.
var scale100k = RolloutRun{Regime: "unbound", Devices: 100000, Tier: "S3", QuotaTier: "S3", Budget: "S3", Server: "sqlite",
	Succeeded: 100000, Seconds: 3000, QuotaMinSeconds: 1200, QuotaOp: "twinUpdates",
	HubCallsPerDevice: 3.2, EventsPerDevice: 8, ShardEvents: 7.9, WorkerPeakRSSKB: 90 << 10,
	RolloutRuns: 100, Shards: 400, MaxRunEvents: 1200, MaxShardEvents: 2400, MaxRunInputBytes: 3 << 10, MaxShardInputBytes: 8 << 10}

func TestScaleTargets(t *testing.T) {
	rows := scaleTargets(nil)
	if len(rows) != 1 || rows[0].Verdict != NotMeasured || !strings.Contains(rows[0].Measured, "make bench-scale") {
		t.Fatalf("without a scale run: %+v, want one row naming make bench-scale", rows)
	}
	if scale100k.QuotaBinds() || scale100k.CeilingRatio() != 0 {
		t.Errorf("a run without a ceiling: QuotaBinds %v, CeilingRatio %v; want false, 0", scale100k.QuotaBinds(), scale100k.CeilingRatio())
	}
	rows = scaleTargets(&RolloutFigures{Runs: []RolloutRun{scale100k}})
	if len(rows) != 5 {
		t.Fatalf("scale rows: %d, want 5: %+v", len(rows), rows)
	}
	for _, r := range rows {
		if r.Verdict != Met {
			t.Errorf("%s: %s, want met (%s)", r.Target, r.Verdict, r.Measured)
		}
	}
	if !strings.Contains(rows[0].Measured, "50m00s (2000 devices/min)") {
		t.Errorf("time row: %q", rows[0].Measured)
	}
	// 1,000,000 devices at 2,000 a minute: 8h20m; the run's input ten times 3 KB; 1,000 runs.
	x := rows[4]
	for _, want := range []string{"8h20m at 2000 devices/min", "a rollout run ≤ 30 KB", "a shard 8 KB", "8,000,000 history events"} {
		if !strings.Contains(x.Measured, want) {
			t.Errorf("1,000,000 row lacks %q: %s", want, x.Measured)
		}
	}
	if !strings.Contains(x.Run, "4,000 shards") || !strings.Contains(x.Run, "1,000 rollout runs") {
		t.Errorf("1,000,000 row's run: %s", x.Run)
	}

	// An input that would pass Temporal's warning at 1,000,000 devices is not met.
	big := scale100k
	big.MaxRunInputBytes = 40 << 10
	if rows := scaleTargets(&RolloutFigures{Runs: []RolloutRun{big}}); rows[4].Verdict != NotMet || rows[1].Verdict != Met {
		t.Errorf("40 KB at 100,000 devices: %s now, %s worked out; want met, not met", rows[1].Verdict, rows[4].Verdict)
	}
	failed := scale100k
	failed.Succeeded, failed.Devices = 1000, 100000
	if rows := scaleTargets(&RolloutFigures{Runs: []RolloutRun{failed}}); rows[0].Verdict != NotMet {
		t.Errorf("a rollout that did not finish its devices: %s, want not met", rows[0].Verdict)
	}
}

func TestLoadScale(t *testing.T) {
	dir := t.TempDir()
	r := Results{Fragments: map[string]string{}}
	if err := r.LoadScale(dir); err != nil || r.Scale != nil {
		t.Fatalf("LoadScale of an empty directory: %v, %v; want nothing and no error", r.Scale, err)
	}
	if err := os.WriteFile(FragmentPath(dir, Scale), []byte("SCALE TABLE\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.LoadScale(dir); err == nil || !strings.Contains(err.Error(), "make bench-scale") {
		t.Errorf("a fragment without figures: %v, want an error naming make bench-scale", err)
	}
	if err := WriteFigures(FiguresPath(dir, Scale), RolloutFigures{Runs: []RolloutRun{scale100k}}); err != nil {
		t.Fatal(err)
	}
	if err := r.LoadScale(dir); err != nil || r.Scale == nil || r.Fragments[Scale] != "SCALE TABLE" {
		t.Fatalf("LoadScale: %v, %v, %q", err, r.Scale, r.Fragments[Scale])
	}
	var b strings.Builder
	if err := render(&b, `{{fragment "scale"}} {{targets}}`, Machine{}, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "SCALE TABLE") || !strings.Contains(b.String(), "the same for 1,000,000 devices") {
		t.Errorf("rendered: %s", b.String())
	}
	var none strings.Builder
	if err := render(&none, `{{fragment "scale"}}`, Machine{}, Results{}); err != nil || !strings.Contains(none.String(), "not part of `make bench`") {
		t.Errorf("scale not run: %q, %v", none.String(), err)
	}
}
