package hub

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/dmflow/dmflow/workflows"
)

// TestLookQueryOnLocalhub runs a continuous rollout's look query (workflows.RolloutInput.LookQuery)
// through the unchanged amenzhinsky client against twins whose reports the hub stamped at known
// times: it selects the devices of the target condition whose reported properties changed since
// the look's cutoff, that do not report the target version, and that no update touched since the
// rollout began (this rollout's update ID, a stage or a tutorial's update time stamped since).
func TestLookQueryOnLocalhub(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	now := time.Now().UTC()
	// Phase 0 before the rollout began, phase 1 during it before the last look, phase 2 since.
	began := now.Add(-150 * time.Minute).Truncate(time.Second)
	cutoff := now.Add(-time.Hour).Truncate(time.Second)
	phase0, phase1, phase2 := now.Add(-3*time.Hour), now.Add(-2*time.Hour), now.Add(-30*time.Minute)

	type report struct {
		at    time.Time
		props string
	}
	devices := []struct {
		id      string
		ring    string
		created time.Time
		reports []report
		want    bool
		why     string
	}{
		{id: "fresh", ring: "beta", created: now, want: true, why: "registered since the last look, never reported"},
		{id: "restarted", ring: "beta", created: phase0, want: true, why: "a tutorial device updated before the rollout, restarted since",
			reports: []report{{phase0, `{"firmwareStatus": "completed", "lastFirmwareUpdate": "2026-12-06 15:00:00.000000"}`},
				{phase2, `{"firmwareStatus": "standBy", "logTime": "2026-12-06 17:30:00.000000"}`}}},
		{id: "updated", ring: "beta", created: phase0, why: "a tutorial device this rollout updated, restarted since",
			reports: []report{{phase1, `{"firmwareStatus": "completed", "lastFirmwareUpdate": "2026-12-06 16:00:00.000000"}`},
				{phase2, `{"firmwareStatus": "standBy"}`}}},
		{id: "midway", ring: "beta", created: phase0, why: "a tutorial device that downloaded this rollout's image and restarted",
			reports: []report{{phase1, `{"firmwareStatus": "downloading", "downloadComplete": "2026-12-06 16:00:00.000000"}`},
				{phase2, `{"firmwareStatus": "standBy"}`}}},
		{id: "ours", ring: "beta", created: phase0, why: "a device on dmflow's contract that took this rollout's update and failed",
			reports: []report{{phase1, `{"firmwareVersion": "1.0.0", "firmwareStatus": "error", "firmwareUpdateId": "rollout:fw"}`},
				{phase2, `{"uptime": 5}`}}},
		{id: "on-target", ring: "beta", created: phase0, why: "reports the target version",
			reports: []report{{phase2, `{"firmwareVersion": "2.0.0"}`}}},
		{id: "drifted", ring: "beta", created: phase0, want: true, why: "reports another version again, after an update of another rollout",
			reports: []report{{phase0, `{"firmwareVersion": "2.0.0", "firmwareStatus": "completed", "firmwareUpdateId": "rollout:old"}`},
				{phase2, `{"firmwareVersion": "1.0.0"}`}}},
		{id: "quiet", ring: "beta", created: phase0, why: "unchanged since the last look",
			reports: []report{{phase1, `{"firmwareVersion": "1.0.0"}`}}},
		{id: "prod", ring: "prod", created: phase0, why: "outside the target condition",
			reports: []report{{phase2, `{"firmwareVersion": "1.0.0"}`}}},
		{id: "tagged-later", created: phase0, why: "tagged since the last look without a report: tags carry no time",
			reports: []report{{phase1, `{"firmwareVersion": "1.0.0"}`}}},
	}
	var want []string
	for _, d := range devices {
		if _, err := h.putDevice(deviceSpec{ID: d.id}, "", d.created); err != nil {
			t.Fatal(err)
		}
		for _, r := range d.reports {
			if _, err := h.patchReported(d.id, []byte(r.props), r.at); err != nil {
				t.Fatalf("%s: %v", d.id, err)
			}
		}
		ring := d.ring
		if ring == "" {
			ring = "beta" // tagged now, after its last report
		}
		if _, err := svc.UpdateDeviceTwin(ctx, &iotservice.Twin{DeviceID: d.id, Tags: map[string]interface{}{"ring": ring}}); err != nil {
			t.Fatal(err)
		}
		if d.want {
			want = append(want, d.id)
		}
	}

	in := workflows.RolloutInput{Name: "fw", Query: "SELECT * FROM devices WHERE tags.ring = 'beta'",
		Firmware: &workflows.RolloutFirmware{Version: "2.0.0"}}
	query := in.LookQuery(cutoff, began)
	var got []string
	if err := svc.QueryDevices(ctx, query, func(v map[string]interface{}) error {
		got = append(got, v["deviceId"].(string))
		return nil
	}); err != nil {
		t.Fatalf("QueryDevices(%s): %v", query, err)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		for _, d := range devices {
			if slices.Contains(got, d.id) != d.want {
				t.Errorf("%s (%s): selected %v, want %v", d.id, d.why, slices.Contains(got, d.id), d.want)
			}
		}
		t.Logf("query: %s", query)
	}
}

// TestLookQueryTimeComparison: IoT Hub writes its times with three or seven fraction digits (or
// none at a whole second); the look's cutoff, a whole second with seven zero digits, orders every
// one of them as their times order when compared as strings, as IoT Hub and localhub compare them.
func TestLookQueryTimeComparison(t *testing.T) {
	in := workflows.RolloutInput{Name: "fw", Firmware: &workflows.RolloutFirmware{Version: "2.0.0"}}
	cutoff := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	q, err := parseQuery(in.LookQuery(cutoff.Add(400*time.Millisecond), cutoff.Add(-time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at   string
		want bool
	}{
		{"2026-12-07T10:00:00Z", true},
		{"2026-12-07T10:00:00.0Z", true},
		{"2026-12-07T10:00:00.000Z", true},
		{"2026-12-07T10:00:00.0000000Z", true},
		{"2026-12-07T10:00:00.1Z", true},
		{"2026-12-07T10:00:00.0000001Z", true},
		{"2026-12-07T10:00:01Z", true},
		{"2026-12-07T09:59:59.9999999Z", false},
		{"2026-12-07T09:59:59Z", false},
		{"2026-12-07T09:59:59.999Z", false},
	} {
		doc := map[string]any{"properties": map[string]any{"reported": map[string]any{
			"$metadata": map[string]any{"$lastUpdated": tc.at}}}}
		raw, _ := json.Marshal(doc)
		d, err := decodeDocument(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := q.where.eval(d); got != tc.want {
			t.Errorf("changed at %s: selected %v, want %v", tc.at, got, tc.want)
		}
	}
}
