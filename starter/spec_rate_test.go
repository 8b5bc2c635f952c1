package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The start rate from flags and from a spec file (a string or a mapping), a flag over its field.
func TestRolloutStartRate(t *testing.T) {
	_, write := specFiles(t)
	base := "name: r\ndevices: [a, b]\nreboot: true\n"
	str := write("str.yaml", base+"maxPerMinute: 20\nramp: 2x@50\n")
	mapping := write("map.yaml", base+"maxPerMinute: 20\nramp: {factor: 1.5, every: 10, max: 400}\n")
	asJSON := write("rate.json", `{"name": "r", "devices": ["a", "b"], "reboot": true, "maxPerMinute": 20, "ramp": {"factor": 2, "every": 5}}`)
	reboot := []string{"--name", "r", "--devices", "a,b", "--reboot"}
	for _, tc := range []struct {
		name         string
		args         []string
		maxPerMinute int
		ramp         *workflows.Ramp
	}{
		{"flags", append(reboot, "--max-per-minute", "30"), 30, nil},
		{"flags with a ramp", append(reboot, "--max-per-minute", "30", "--ramp", "2x@50", "--ramp-max", "600"), 30, &workflows.Ramp{Factor: 2, Every: 50, Max: 600}},
		{"spec string", []string{"--spec", str}, 20, &workflows.Ramp{Factor: 2, Every: 50}},
		{"spec mapping", []string{"--spec", mapping}, 20, &workflows.Ramp{Factor: 1.5, Every: 10, Max: 400}},
		{"spec json", []string{"--spec", asJSON}, 20, &workflows.Ramp{Factor: 2, Every: 5}},
		{"flags override fields", []string{"--spec", mapping, "--max-per-minute", "50", "--ramp-max", "100"}, 50, &workflows.Ramp{Factor: 1.5, Every: 10, Max: 100}},
		{"none", reboot, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &fakeRollouts{}
			code, _, stderr := runRolloutCLI(t, api, "", append([]string{"rollout", "start"}, tc.args...)...)
			require.Equal(t, 0, code, "stderr: %s", stderr)
			require.Len(t, api.started, 1)
			assert.Equal(t, tc.maxPerMinute, api.started[0].MaxPerMinute)
			assert.Equal(t, tc.ramp, api.started[0].Ramp)
		})
	}
}

// Bad start rates are refused before anything is dialled, in one line naming the fix, with the
// other problems of the command line or spec file.
func TestRolloutStartRateRefused(t *testing.T) {
	dir, write := specFiles(t)
	reboot := []string{"rollout", "start", "--name", "r", "--devices", "a", "--reboot"}
	checkRefusals(t, []refusal{
		{"ramp without a rate", append(reboot, "--ramp", "2x@50"), []string{"--ramp needs a start rate to ramp from: add --max-per-minute"}},
		{"ramp in the file without a rate", []string{"rollout", "start", "--spec", write("noRate.yaml", "name: r\ndevices: [a]\nreboot: true\nramp: 2x@5\n")},
			[]string{"ramp in " + filepath.Join(dir, "noRate.yaml") + " needs a start rate", "add maxPerMinute in"}},
		{"bad ramp", append(reboot, "--max-per-minute", "5", "--ramp", "double"), []string{`--ramp "double"`, "e.g. 2x@50"}},
		{"ramp factor too big", append(reboot, "--max-per-minute", "5", "--ramp", "20x@5"), []string{"ramp factor 20", "at most 10"}},
		{"ramp max without ramp", append(reboot, "--ramp-max", "100"), []string{"--ramp-max is the ceiling of a ramp: add --ramp"}},
		{"ramp max below the rate", append(reboot, "--max-per-minute", "50", "--ramp", "2x@5", "--ramp-max", "10"), []string{"--ramp-max 10 is below --max-per-minute 50"}},
		{"negative rate", append(reboot, "--max-per-minute", "-3"), []string{"--max-per-minute -3", "1 to 360000"}},
		{"file: ramp mapping without every", []string{"rollout", "start", "--spec", write("noEvery.yaml", "name: r\ndevices: [a]\nreboot: true\nmaxPerMinute: 5\nramp: {factor: 2}\n")},
			[]string{"line 5, ramp: give the factor and the succeeded devices"}},
		{"file: unknown ramp field, with another problem", []string{"rollout", "start", "--spec", write("typo.yaml", "name: r\ndevices: [a]\nreboot: true\nmaxPerMinute: fast\nramp: {factor: 2, evry: 5}\n")},
			[]string{"line 4, maxPerMinute: want a whole number", "ramp.evry: unknown field", "the fields here are factor, every, max"}},
		{"schedule create too", []string{"schedule", "create", "weekly", "--cron", "@daily", "--reboot", "--devices", "a", "--ramp", "2x@5"},
			[]string{"--ramp needs a start rate"}},
	})
}

// schedule create carries the start rate, and describe shows it as a spec file reads it back.
func TestScheduleCarriesTheStartRate(t *testing.T) {
	api := newFakeSchedules()
	code, _, stderr := runScheduleCLI(t, api, "", "schedule", "create", "weekly", "--cron", "@weekly", "--reboot", "--devices", "a,b",
		"--max-per-minute", "20", "--ramp", "2x@50", "--ramp-max", "1000")
	require.Equal(t, 0, code, stderr)
	require.Len(t, api.created, 1)
	in := api.created[0].Input
	assert.Equal(t, 20, in.MaxPerMinute)
	assert.Equal(t, &workflows.Ramp{Factor: 2, Every: 50, Max: 1000}, in.Ramp)

	spec := string(formatSpec(in, 10))
	assert.Contains(t, spec, "maxPerMinute: 20\nramp:\n  factor: 2\n  every: 50\n  max: 1000\n")
	doc, err := parseSpec([]byte(spec), "describe.yaml")
	require.NoError(t, err, spec)
	assert.Equal(t, 20, doc.v.maxPerMinute)
	assert.Equal(t, "2x@50", doc.v.ramp)
	assert.Equal(t, 1000, doc.v.rampMax)

	in.Ramp.Max = 0
	assert.Contains(t, string(formatSpec(in, 10)), "maxPerMinute: 20\nramp: 2x@50\n")
}

// status, watch and report show the start rate: the rate now and when it next rises.
func TestStartRateShown(t *testing.T) {
	p := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Succeeded, p.Running, p.Pending = 63, 5, 52
		p.MaxPerMinute, p.Ramp = 20, &workflows.Ramp{Factor: 2, Every: 50, Max: 80}
		p.StartRate, p.RampAt, p.NextStartRate = 40, 100, 80
		p.Active = 5 * time.Minute
	})
	var b strings.Builder
	printStatus(&b, p, "http://ui", testClock.Now(), testClock.Loc())
	assert.Contains(t, b.String(), "  starts:    at most 40/min, 80/min at 100 succeeded (now 63)\n")
	assert.Contains(t, rolloutLine(p, testClock.Now(), testClock.Loc()), "  starts ≤ 40/min (80/min at 100 succeeded)")

	top := p
	top.StartRate, top.RampAt, top.NextStartRate = 80, 0, 0
	assert.Equal(t, "80/min, the ramp's ceiling", startRateText(top))
	plain := p
	plain.Ramp, plain.RampAt = nil, 0
	assert.Equal(t, "40/min", startRateText(plain))
	assert.Empty(t, startRateText(prog(workflows.RolloutRunning, nil)), "no start rate, no line")

	api := &fakeRollouts{progress: []workflows.RolloutProgress{p}, rows: []workflows.DeviceRow{{DeviceID: "d1", Result: workflows.DeviceRunning}}}
	code, stdout, stderr := runRolloutCLI(t, api, "", "rollout", "report", "fw-2.0")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "start rate: at most 40/min, 80/min at 100 succeeded (now 63)")
	code, stdout, _ = runRolloutCLI(t, api, "", "rollout", "report", "fw-2.0", "--format", "csv")
	require.Equal(t, 0, code)
	assert.NotContains(t, stdout, "start rate", "csv holds the rows alone")
}

// The policies example parses, and its start rate block gives the rate and ramp it says.
func TestPoliciesExampleStartRate(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "examples", "rollout-policies.yaml"))
	require.NoError(t, err)
	doc, err := parseSpec(data, "rollout-policies.yaml")
	require.NoError(t, err)
	assert.Equal(t, 20, doc.v.maxPerMinute)
	assert.Equal(t, "2x@50", doc.v.ramp)
	assert.Equal(t, 1000, doc.v.rampMax)
}
