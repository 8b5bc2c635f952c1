package benchreport

import (
	"strings"
	"testing"
)

// unbound1000 is a rollout Temporal bounds: its quota allows far more than the ceiling.
var unbound1000 = RolloutRun{Regime: "unbound", Devices: 1000, Tier: "S3", QuotaTier: "S3", Server: "sqlite",
	Succeeded: 1000, Seconds: 206, CeilingSeconds: 197, QuotaMinSeconds: 12, QuotaOp: "twinUpdates",
	HubCallsPerDevice: 3.7, EventsPerDevice: 24.3, DeviceEvents: 22, CeilingEventsPerDevice: 23.5, WorkerPeakRSSKB: 80 << 10}

// quota1000 is a rollout the quota binds: its minimum is longer than the ceiling.
var quota1000 = RolloutRun{Regime: "quota", Devices: 1000, Tier: "S1", QuotaTier: "S1", Rate: 60, Server: "memory",
	Succeeded: 1000, Seconds: 66, CeilingSeconds: 26, QuotaMinSeconds: 60, QuotaOp: "twinUpdates",
	HubCallsPerDevice: 3.7, EventsPerDevice: 24.3, WorkerPeakRSSKB: 90 << 10}

func TestRolloutRunRatios(t *testing.T) {
	if got := unbound1000.CeilingRatio(); got < 0.95 || got > 0.96 {
		t.Errorf("CeilingRatio = %v, want 197/206", got)
	}
	if got := quota1000.QuotaRatio(); got != 1.1 {
		t.Errorf("QuotaRatio = %v, want 1.1", got)
	}
	if unbound1000.QuotaBinds() || !quota1000.QuotaBinds() {
		t.Error("QuotaBinds: want false for the unbound run, true for the quota run")
	}
	if got := (RolloutRun{}).CeilingRatio() + (RolloutRun{}).QuotaRatio() + (RolloutRun{}).PerMinute(); got != 0 {
		t.Errorf("ratios of an empty run = %v, want 0", got)
	}
}

func TestTargets(t *testing.T) {
	big := quota1000
	big.Devices, big.Seconds, big.CeilingSeconds, big.QuotaMinSeconds = 10000, 900, 260, 600
	big.WorkerPeakRSSKB = 250 << 10
	big.Throttled = 3
	unboundNotBinding := quota1000
	unboundNotBinding.CeilingSeconds = 200 // on a slow server the quota regime does not bind
	unboundNotBinding.Seconds = 500
	firmware := &FirmwareFigures{Runs: []FirmwareRun{
		{Name: "tutorial loop, twin every 5s", HubCalls: 11, Seconds: 50},
		{Name: "dmflow FirmwareUpdate", Dmflow: true, HubCalls: 8, HistoryEvents: 24, Seconds: 57},
	}}

	for _, tc := range []struct {
		name string
		res  Results
		// want: substrings of "target | run | measured | verdict" lines, each in some row.
		want []string
	}{
		{"both regimes at 1,000", Results{Firmware: firmware, Rollout: &RolloutFigures{Runs: []RolloutRun{unbound1000, quota1000}}}, []string{
			"≥ 50% of Temporal's ceiling when the quota does not bind | rollout of 1,000 devices, localhub S3, sqlite dev server | 96% (291 vs 305 devices/min) | met",
			"≤ 1.25× the quota-bound minimum when the quota binds | rollout of 1,000 devices, localhub S1, --rate 60/s, memory dev server | 1.10× (1m06s vs 1m00s: twinUpdates at S1) | met",
			"zero 429s when the quota binds | rollout of 1,000 devices, localhub S1, --rate 60/s, memory dev server | 0 | met",
			"≤ 8 hub calls per device | one firmware update at the tutorial's 15 s stages | 8 | met",
			"≤ 25 history events per device | one firmware update at the tutorial's 15 s stages | 24 | met",
			"≤ 25 history events per device | rollout of 1,000 devices, localhub S3, sqlite dev server | 24.3 (device workflow 22.0 + the rollout's share 2.3; trivial ceiling 23.5) | met",
			"worker RSS ≤ 200 MB at 10,000 devices | — | largest rollout 1,000 devices: 80 MB peak | not measured",
		}},
		{"10,000 over its targets", Results{Rollout: &RolloutFigures{Runs: []RolloutRun{big}}}, []string{
			"≥ 50% of Temporal's ceiling when the quota does not bind | — | no rollout ran unbound by the quota | not measured",
			"| 1.50× (15m00s vs 10m00s: twinUpdates at S1) | **not met**",
			"zero 429s when the quota binds | rollout of 10,000 devices, localhub S1, --rate 60/s, memory dev server | 3 | **not met**",
			"worker RSS ≤ 200 MB at 10,000 devices | rollout of 10,000 devices, localhub S1, --rate 60/s, memory dev server | 250 MB (peak) | **not met**",
		}},
		{"quota regime that did not bind", Results{Rollout: &RolloutFigures{Runs: []RolloutRun{unboundNotBinding}}}, []string{
			"≥ 50% of Temporal's ceiling when the quota does not bind | rollout of 1,000 devices, localhub S1, --rate 60/s, memory dev server | 40% (120 vs 300 devices/min) | **not met**",
			"with zero 429s | — | the quota did not bind (rollout of 1,000 devices, localhub S1, --rate 60/s, memory dev server: quota allows 1000 devices/min, Temporal 300) | not measured",
		}},
		{"nothing measured", Results{}, []string{
			"no rollout ran unbound by the quota | not measured",
			"no rollout was bound by the quota | not measured",
			"no firmware update or rollout measured | not measured",
			"no rollout measured | not measured",
		}},
		{"baseline", Results{Baseline: &BaselineFigures{Devices: 100, StageSeconds: 1, LoopSeconds: 510, DmflowSeconds: 30}}, []string{
			"dmflow against the tutorials' sequential loop (no target) | 100 devices, 1.0 s stages | 17.0× faster (30 s vs 8m30s) | —",
		}},
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
