package benchreport

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadAndRender(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("bench-firmware.md", "| run | hub calls |\n|---|---|\n| dmflow FirmwareUpdate | 8 |\n")
	if err := WriteFigures(FiguresPath(dir, Firmware), FirmwareFigures{Runs: []FirmwareRun{{Name: "dmflow FirmwareUpdate", Dmflow: true, HubCalls: 8, HistoryEvents: 24}}}); err != nil {
		t.Fatal(err)
	}
	write("bench-rollout.md", "ROLLOUT TABLE\n")
	if err := WriteFigures(FiguresPathFor(FragmentPath(dir, Rollout)), RolloutFigures{Runs: []RolloutRun{unbound1000}}); err != nil {
		t.Fatal(err)
	}

	res, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if res.Firmware == nil || res.Rollout == nil || res.Baseline != nil {
		t.Fatalf("Load: firmware %v, rollout %v, baseline %v; want the first two only", res.Firmware, res.Rollout, res.Baseline)
	}
	if got := strings.Join(res.Missing(), ","); got != "fleet,baseline,cluster" {
		t.Errorf("Missing = %s, want fleet,baseline,cluster", got)
	}

	now := time.Date(2026, 11, 23, 19, 30, 0, 0, time.UTC)
	m := Machine{Finished: now, Started: now.Add(-time.Hour), LoadStart: "0.1 / 0.2 / 0.3", LoadEnd: "1 / 1 / 1",
		CPUs: 2, MemTotal: "23.4 GiB", CPUModel: "Xeon", GoVersion: "go1.26.8", OS: "Linux"}
	var b strings.Builder
	if err := Render(&b, m, res); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"# dmflow benchmarks",
		"| date | 2026-11-23 19:30 UTC |",
		"| `nproc` | 2 |",
		"| memory (MemTotal) | 23.4 GiB |",
		"| CPU | Xeon |",
		"| Go | go1.26.8 |",
		"| `make bench` took | 1h00m |",
		"| not measured in this run | `make bench-fleet`, `make bench-baseline`, `make bench-cluster` |",
		"*Not measured in this run: `make bench-cluster` measures it",
		"| dmflow FirmwareUpdate | 8 |",
		"ROLLOUT TABLE",
		"*Not measured in this run: `make bench-baseline` measures it",
		"| ≤ 8 hub calls per device | one firmware update at the tutorial's 15 s stages | 8 | met |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered report lacks %q", want)
		}
	}
	if strings.Contains(out, "{{") {
		t.Error("rendered report still holds template actions")
	}
}

func TestRenderUnknownFragment(t *testing.T) {
	var b strings.Builder
	err := render(&b, `{{fragment "nope"}}`, Machine{}, Results{})
	if err == nil || !strings.Contains(err.Error(), `no benchmark "nope"`) {
		t.Errorf("render of an unknown fragment: %v, want an error naming it", err)
	}
}

func TestLoadBadFigures(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(FiguresPath(dir, Rollout), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "run the benchmark again") {
		t.Errorf("Load of a broken figures file: %v, want an error naming the fix", err)
	}
}
