package workflows_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPlanWaves(t *testing.T) {
	tests := []struct {
		n, canary int
		growth    float64
		want      []int
	}{
		{0, 5, 2, nil},
		{1, 5, 2, []int{1}},
		{1000, 5, 2, []int{5, 10, 20, 40, 80, 160, 320, 365}},
		{10, 1, 1, []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{10, 3, 1.5, []int{3, 5, 2}},
		{100, 100, 2, []int{100}},
		{7, 0, 2, []int{1, 2, 4}},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, workflows.PlanWaves(tc.n, tc.canary, tc.growth), "n=%d canary=%d growth=%v", tc.n, tc.canary, tc.growth)
	}
}

func TestParseThreshold(t *testing.T) {
	tests := []struct {
		in      string
		allowed map[int]int // devices → failures allowed
		str     string
		err     string
	}{
		{in: "5%", allowed: map[int]int{5: 0, 20: 1, 100: 5, 1000: 50}, str: "5%"},
		{in: " 12.5 % ", allowed: map[int]int{8: 1, 16: 2}, str: "12.5%"},
		{in: "0", allowed: map[int]int{1000: 0}, str: "0"},
		{in: "3", allowed: map[int]int{1: 3, 1000: 3}, str: "3"},
		{in: "100%", allowed: map[int]int{7: 7}, str: "100%"},
		{in: "101%", err: "from 0% to 100%"},
		{in: "-1", err: "device count"},
		{in: "five", err: "device count"},
		{in: "%", err: "percentage"},
	}
	for _, tc := range tests {
		th, err := workflows.ParseThreshold(tc.in)
		if tc.err != "" {
			require.Error(t, err, tc.in)
			assert.Contains(t, err.Error(), tc.err)
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.str, th.String())
		for n, want := range tc.allowed {
			assert.Equal(t, want, th.Allowed(n), "%s of %d", tc.in, n)
		}
	}
}

func TestRolloutInputValidate(t *testing.T) {
	valid := func() workflows.RolloutInput {
		return workflows.RolloutInput{
			Name: "fw-2.0", Operation: workflows.OperationFirmware, Query: "select * from devices where tags.ring = 'beta'",
			Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"},
		}
	}
	require.NoError(t, valid().Validate())
	// Every query shape the query activity runs is a valid target: one rule for both.
	for _, q := range []string{"SELECT * FROM devices WHERE(tags.ring = 'beta')", "SELECT*FROM devices", " select * from devices "} {
		in := valid()
		in.Query = q
		_, runs := activities.DeviceQueryCondition(q)
		assert.True(t, runs, "%q", q)
		assert.NoError(t, in.Validate(), "%q", q)
	}
	tests := []struct {
		name   string
		change func(*workflows.RolloutInput)
		want   string
	}{
		{"no name", func(in *workflows.RolloutInput) { in.Name = "" }, "name is required"},
		{"slash in name", func(in *workflows.RolloutInput) { in.Name = "a/b" }, "letters, digits"},
		{"long name", func(in *workflows.RolloutInput) { in.Name = strings.Repeat("a", 65) }, "up to 64"},
		{"unknown operation", func(in *workflows.RolloutInput) { in.Operation = "flash" }, `operation "flash"`},
		{"firmware missing", func(in *workflows.RolloutInput) { in.Firmware = nil }, "needs the firmware"},
		{"reboot with firmware", func(in *workflows.RolloutInput) { in.Operation = workflows.OperationReboot }, "takes no firmware"},
		{"no targets", func(in *workflows.RolloutInput) { in.Query = "" }, "no targets"},
		{"both targets", func(in *workflows.RolloutInput) { in.Devices = []string{"d"} }, "not both"},
		{"not select star", func(in *workflows.RolloutInput) { in.Query = "SELECT deviceId FROM devices" }, "whole twins"},
		{"bad device", func(in *workflows.RolloutInput) { in.Query, in.Devices = "", []string{"ok", "a b"} }, `"a b"`},
		{"device list too large", func(in *workflows.RolloutInput) {
			in.Query, in.Devices = "", nil
			for i := range 12000 {
				in.Devices = append(in.Devices, fmt.Sprintf("device-%09d", i))
			}
		}, "target them by query"},
		{"growth below 1", func(in *workflows.RolloutInput) { in.Growth = 0.5 }, "growth"},
		{"concurrency", func(in *workflows.RolloutInput) { in.MaxConcurrent = workflows.MaxConcurrentLimit + 1 }, "max concurrent"},
		{"rate", func(in *workflows.RolloutInput) { in.Rate = -1 }, "rate"},
		{"threshold", func(in *workflows.RolloutInput) { in.MaxFailures = "5 %%" }, "failure threshold"},
		{"sas uri", func(in *workflows.RolloutInput) { in.Firmware.PackageURI = "https://x/y?sv=1&sig=abc" }, "SAS signature"},
		{"reconcile reboot", func(in *workflows.RolloutInput) {
			in.Operation, in.Firmware, in.Reconcile = workflows.OperationReboot, nil, true
		}, "reconcile applies to a firmware rollout"},
		{"reconcile device IDs", func(in *workflows.RolloutInput) {
			in.Query, in.Devices, in.Reconcile = "", []string{"d"}, true
		}, "selects its targets by query"},
		{"schedule name", func(in *workflows.RolloutInput) { in.Schedule = strings.Repeat("s", 44) }, "up to 43"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := valid()
			tc.change(&in)
			err := in.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "sig=abc")
		})
	}
}

func TestRolloutIDs(t *testing.T) {
	assert.Equal(t, "rollout/fw-2.0", workflows.RolloutWorkflowID("fw-2.0"))
	assert.Equal(t, "rollout/fw-2.0/dev-1", workflows.RolloutDeviceWorkflowID("fw-2.0", "dev-1"))
	assert.Equal(t, "rollout:fw-2.0", workflows.RolloutUpdateID("fw-2.0", 1))
	assert.Equal(t, "rollout:fw-2.0:2", workflows.RolloutUpdateID("fw-2.0", 2))
}

// TestPackedRowsFitTemporalPayloads guards continue-as-new at MaxRolloutDevices: the carried rows
// must stay far below Temporal's 2 MB payload limit.
func TestPackedRowsFitTemporalPayloads(t *testing.T) {
	rows := make([]workflows.DeviceRow, workflows.MaxRolloutDevices)
	at := time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)
	for i := range rows {
		rows[i] = workflows.DeviceRow{
			DeviceID: fmt.Sprintf("plant-7-line-%02d-sensor-%05d", i%40, i), Wave: i / 2000, Result: workflows.DeviceUpdated,
			Attempts: 1, FromVersion: "1.4.2", Stages: []string{"downloading", "applying", "completed"},
			Started: at.Add(time.Duration(i) * 37 * time.Millisecond), Duration: time.Duration(8000+i%5000) * time.Millisecond, HubCalls: 7 + i%3,
		}
		if i%50 == 0 {
			rows[i].Result, rows[i].ErrorType = workflows.DeviceFailed, "StageTimeout"
			rows[i].Error = fmt.Sprintf("device plant-7-line-%02d-sensor-%05d stayed in downloading for more than 2m0s", i%40, i)
		}
	}
	plain, err := json.Marshal(rows)
	require.NoError(t, err)
	packed, err := workflows.PackRows(rows)
	require.NoError(t, err)
	t.Logf("%d rows: %d bytes of JSON, %d packed", len(rows), len(plain), len(packed))
	assert.Greater(t, len(plain), 2<<20, "unpacked, the rows would not fit")
	assert.Less(t, len(packed), 1<<20, "packed rows must leave room below the 2 MB limit")
	back, err := workflows.UnpackRows(packed)
	require.NoError(t, err)
	assert.Equal(t, rows, back)
}

func FuzzParseThreshold(f *testing.F) {
	for _, s := range []string{"5%", "5", "0", "100%", "12.5 %", "-1", "1e3%", "NaN%", "%", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		th, err := workflows.ParseThreshold(s)
		if err != nil {
			return
		}
		// What parses formats back to itself, and never allows more failures than devices
		// (percentages) or fewer than none.
		again, err := workflows.ParseThreshold(th.String())
		if err != nil || again != th {
			t.Fatalf("%q parsed as %+v, which formats as %q and parses as %+v, %v", s, th, th.String(), again, err)
		}
		for _, n := range []int{0, 1, 7, 100, workflows.MaxRolloutDevices} {
			a := th.Allowed(n)
			if a < 0 || (th.IsPct && a > n) {
				t.Fatalf("%q allows %d failures of %d devices", s, a, n)
			}
		}
	})
}

func TestRolloutTargetQuery(t *testing.T) {
	fw := &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"}
	drift := "(NOT IS_DEFINED(properties.reported.firmwareVersion) OR properties.reported.firmwareVersion != '2.0.0')"
	tests := []struct {
		name string
		in   workflows.RolloutInput
		want string
	}{
		{"query as given", workflows.RolloutInput{Query: "SELECT * FROM devices WHERE tags.ring = 'beta'", Firmware: fw},
			"SELECT * FROM devices WHERE tags.ring = 'beta'"},
		{"device IDs", workflows.RolloutInput{Devices: []string{"a"}, Firmware: fw}, ""},
		{"reconcile all devices", workflows.RolloutInput{Reconcile: true, Firmware: fw},
			"SELECT * FROM devices WHERE " + drift},
		{"reconcile all devices, query without WHERE", workflows.RolloutInput{Reconcile: true, Query: " select * from devices ", Firmware: fw},
			"SELECT * FROM devices WHERE " + drift},
		{"reconcile within a query", workflows.RolloutInput{Reconcile: true, Firmware: fw,
			Query: "select * from devices where tags.ring = 'beta' OR tags.ring = 'prod'\n"},
			"SELECT * FROM devices WHERE (tags.ring = 'beta' OR tags.ring = 'prod') AND " + drift},
		{"reconcile within a query whose condition opens with a parenthesis", workflows.RolloutInput{Reconcile: true, Firmware: fw,
			Query: "SELECT * FROM devices WHERE(tags.ring = 'beta')"},
			"SELECT * FROM devices WHERE ((tags.ring = 'beta')) AND " + drift},
		{"quotes in the version", workflows.RolloutInput{Reconcile: true,
			Firmware: &workflows.RolloutFirmware{Version: `2.0'rc\1`}},
			`SELECT * FROM devices WHERE (NOT IS_DEFINED(properties.reported.firmwareVersion) OR properties.reported.firmwareVersion != '2.0\'rc\\1')`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.in.TargetQuery())
		})
	}
}

func TestScheduledRolloutName(t *testing.T) {
	assert.Equal(t, "weekly-2026-11-29T01:00:00Z", workflows.ScheduledRolloutName("rollout/weekly-2026-11-29T01:00:00Z"))
	name := workflows.ScheduledRolloutName(workflows.RolloutWorkflowID(strings.Repeat("s", workflows.MaxScheduleNameLength)) + "-2026-11-29T01:00:00Z")
	in := workflows.RolloutInput{Name: name, Operation: workflows.OperationReboot, Devices: []string{"d"}}
	assert.NoError(t, in.Validate(), "the longest schedule name gives a valid rollout name")
}
