package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// withSpecNow makes --until judge by t0 plus ten minutes, as testClock does.
func withSpecNow(t *testing.T) {
	t.Helper()
	before := specNow
	specNow = testClock.Now
	t.Cleanup(func() { specNow = before })
}

// --continuous, --until and --look-every, and the spec's continuous and until, as rollout start
// reads them.
func TestRolloutStartContinuous(t *testing.T) {
	withSpecNow(t)
	_, write := specFiles(t)
	const base = "name: fw-2.0\nquery: SELECT * FROM devices WHERE tags.ring = 'beta'\nfirmware: {uri: https://fw.example/v2.bin, version: 2.0.0}\n"
	flat := write("flat.yaml", base+"continuous: true\nuntil: 2026-06-01T00:00:00Z\n")
	nested := write("nested.yaml", base+"continuous: {until: 2026-06-01T00:00:00+02:00, every: 10m}\n")
	plain := write("plain.yaml", base)
	fw := []string{"--name", "fw-2.0", "--query", "SELECT * FROM devices WHERE tags.ring = 'beta'", "--firmware", "https://fw.example/v2.bin", "--version", "2.0.0"}
	june := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		args []string
		want *workflows.RolloutContinuous
	}{
		{"flag", append(fw, "--continuous"), &workflows.RolloutContinuous{}},
		{"until and every", append(fw, "--continuous", "--until", "2026-06-01T00:00:00Z", "--look-every", "15m"),
			&workflows.RolloutContinuous{Until: june, Every: 15 * time.Minute}},
		{"until as a duration from now", append(fw, "--continuous", "--until", "168h"),
			&workflows.RolloutContinuous{Until: t0.Add(10*time.Minute + 168*time.Hour)}},
		{"the hidden interval for tests", append(fw, "--continuous", "--look-interval", "2s"), &workflows.RolloutContinuous{Every: 2 * time.Second}},
		{"spec: continuous and until", []string{"--spec", flat}, &workflows.RolloutContinuous{Until: june}},
		{"spec: continuous {until, every}", []string{"--spec", nested}, &workflows.RolloutContinuous{Until: june.Add(-2 * time.Hour), Every: 10 * time.Minute}},
		{"flags over the spec", []string{"--spec", nested, "--until", "2026-07-01T00:00:00Z", "--look-every", "1h"},
			&workflows.RolloutContinuous{Until: june.AddDate(0, 1, 0), Every: time.Hour}},
		{"--continuous over a plain spec", []string{"--spec", plain, "--continuous"}, &workflows.RolloutContinuous{}},
		{"--continuous=false over the spec", []string{"--spec", flat, "--continuous=false", "--until", ""}, nil},
		{"none", fw, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &fakeRollouts{}
			code, _, stderr := runRolloutCLI(t, api, "", append([]string{"rollout", "start"}, tc.args...)...)
			require.Equal(t, 0, code, "stderr: %s", stderr)
			require.Len(t, api.started, 1)
			assert.Equal(t, tc.want, api.started[0].Continuous)
		})
	}
}

// Bad continuous input is refused before anything is dialled, in one line naming the fix, exit 2,
// listed with the other problems.
func TestRolloutContinuousRefusals(t *testing.T) {
	withSpecNow(t)
	_, write := specFiles(t)
	const base = "name: fw-2.0\nquery: SELECT * FROM devices\nfirmware: {uri: https://fw.example/v2.bin, version: 2.0.0}\n"
	untilOnly := write("until.yaml", base+"until: 2026-06-01T00:00:00Z\n")
	fastSpec := write("fast.yaml", base+"continuous: {every: 10s, until: soon}\n")
	badField := write("bad.yaml", base+"continuous: {until: 2026-06-01T00:00:00Z, often: 1m}\n")
	fw := []string{"rollout", "start", "--name", "fw-2.0", "--query", "SELECT * FROM devices", "--firmware", "https://fw.example/v2.bin", "--version", "2.0.0"}
	checkRefusals(t, []refusal{
		{"until without continuous", append(fw, "--until", "168h"), []string{"--until applies to a continuous rollout: add --continuous"}},
		{"look-every without continuous", append(fw, "--look-every", "5m"), []string{"--look-every applies to a continuous rollout"}},
		{"until in the spec without continuous", []string{"rollout", "start", "--spec", untilOnly},
			[]string{"until in " + untilOnly + " applies to a continuous rollout: add continuous: true"}},
		{"looks too often", append(fw, "--continuous", "--look-every", "10s"), []string{"--look-every 10s: give 30s to 24h", "a query of the hub's quota"}},
		{"looks too seldom", append(fw, "--continuous", "--look-every", "48h"), []string{"--look-every 48h0m0s: give 30s to 24h"}},
		{"until passed", append(fw, "--continuous", "--until", "2026-01-01T00:00:00Z"), []string{"--until 2026-01-01T00:00:00Z has passed", "give a later time"}},
		{"until unreadable", append(fw, "--continuous", "--until", "next week"), []string{`--until "next week"`, "RFC 3339", "168h"}},
		{"spec problems together", []string{"rollout", "start", "--spec", fastSpec, "--continuous"},
			[]string{"continuous.every in " + fastSpec + " 10s: give 30s", `until in ` + fastSpec + ` "soon"`}},
		{"unknown field in continuous", []string{"rollout", "start", "--spec", badField}, []string{"line 4, continuous.often: unknown field", "until, every"}},
		{"reboot", []string{"rollout", "start", "--name", "r", "--query", "SELECT * FROM devices", "--reboot", "--continuous"},
			[]string{"continuous applies to a firmware rollout", "start a reboot rollout for the new devices"}},
		{"device IDs", []string{"rollout", "start", "--name", "r", "--devices", "a,b", "--firmware", "https://fw.example/v2.bin", "--version", "2", "--continuous"},
			[]string{"selects its targets by query, not by device IDs", "give a query"}},
		{"retry-failed without until", append(fw, "--continuous", "--retry-failed"), []string{"give until, or drop retry-failed"}},
		{"from a schedule", []string{"schedule", "create", "weekly", "--cron", "@weekly", "--query", "SELECT * FROM devices",
			"--firmware", "https://fw.example/v2.bin", "--version", "2", "--continuous"},
			[]string{"a schedule cannot start a continuous rollout", "starter rollout start --continuous", "--reconcile"}},
	})
}

func TestRolloutStartContinuousSays(t *testing.T) {
	in := workflows.RolloutInput{Name: "fw-2.0", Operation: workflows.OperationFirmware, Query: "SELECT * FROM devices WHERE tags.ring = 'beta'",
		Firmware:   &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"},
		Continuous: &workflows.RolloutContinuous{Until: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)}}
	var out bytes.Buffer
	require.NoError(t, runStart(context.Background(), &fakeRollouts{}, in, startFlags{}, "text", testWatch(&out)))
	assert.Contains(t, out.String(), "started rollout fw-2.0: firmware 2.0.0 on the devices of SELECT * FROM devices WHERE tags.ring = 'beta', continuous until 2026-06-01T00:00:00Z (looking every 5m)\n")
	in.Continuous = &workflows.RolloutContinuous{Every: time.Minute}
	assert.Contains(t, describeInput(in), ", continuous (looking every 1m until cancelled)")
}

// status, watch, the summary and the report show the looks.
func TestRolloutContinuousShown(t *testing.T) {
	until := t0.Add(7 * 24 * time.Hour)
	looking := prog(workflows.RolloutRunning, func(p *workflows.RolloutProgress) {
		p.Succeeded, p.Pending, p.Total, p.Active = 118, 2, 120, 9*time.Minute
		p.Continuous = &workflows.ContinuousProgress{Until: until, Every: 5 * time.Minute, Looks: 2, Found: 7,
			LastLook: t0.Add(10 * time.Minute), NextLook: t0.Add(15 * time.Minute)}
	})
	code, stdout, _ := runRolloutCLI(t, &fakeRollouts{progress: []workflows.RolloutProgress{looking}}, "", "rollout", "status", "fw-2.0")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "  limits:    max failures 10%, max concurrent 50\n"+
		"  looks:     every 5m until 2026-05-08 14:00 CEST (in 6d23h): 2 looks found 7 devices; next look at 2026-05-01 14:15 CEST (in 5m00s)\n")

	first := looking
	first.Continuous = &workflows.ContinuousProgress{Every: 5 * time.Minute,
		Waiting: "the first look comes once the targets found at the start have finished", Error: "look 3: query: syntax error"}
	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{progress: []workflows.RolloutProgress{first}}, "", "rollout", "status", "fw-2.0")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "  looks:     every 5m until cancelled: 0 looks found 0 devices; the first look comes once the targets found at the start have finished; last look failed: look 3: query: syntax error\n")

	done := prog(workflows.RolloutCompleted, func(p *workflows.RolloutProgress) {
		p.Succeeded, p.Total, p.Active = 127, 127, 7*24*time.Hour
		p.Updated, p.Finished = until, until
		p.Reason = "continuous until 2026-05-08T12:00:00Z reached; 2016 looks found 7 devices"
		p.Continuous = &workflows.ContinuousProgress{Until: until, Every: 5 * time.Minute, Looks: 2016, Found: 7, Ended: true}
	})
	api := &fakeRollouts{progress: []workflows.RolloutProgress{looking, done}}
	var out bytes.Buffer
	require.NoError(t, runWatch(context.Background(), api, "fw-2.0", "text", testWatch(&out)))
	assert.Contains(t, out.String(), "pending 2  13.1 devices/min, ETA 9s  looks 2 found 7\n")
	assert.Contains(t, out.String(), "rollout fw-2.0 completed in 7d00h: firmware 2.0.0 on 127 devices\n")
	assert.Contains(t, out.String(), "  reason:    continuous until 2026-05-08T12:00:00Z reached; 2016 looks found 7 devices\n")
	assert.Contains(t, out.String(), "  looks:     2016 looks found 7 devices (every 5m)\n")

	rows := []workflows.DeviceRow{
		{DeviceID: "a", Wave: 0, Result: workflows.DeviceUpdated, Attempts: 1},
		{DeviceID: "n", Wave: 3, Result: workflows.DeviceUpdated, Attempts: 1, Look: 2},
		{DeviceID: "n", Wave: 5, Result: workflows.DeviceSkipped, Attempts: 1, Look: 9, Note: "updated since this rollout began"},
	}
	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{rows: rows}, "", "rollout", "report", "fw-2.0")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "found by look 2\n")
	assert.Contains(t, stdout, "updated since this rollout began; found by look 9\n")
	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{rows: rows}, "", "rollout", "report", "fw-2.0", "--format", "csv")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, ",found by look 2,,,\n")
	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{rows: rows}, "", "rollout", "report", "fw-2.0", "--format", "json")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, `"look": 9`)
}

// examples/rollout-policies.yaml's continuous block reads as documented.
func TestExamplePoliciesContinuous(t *testing.T) {
	withSpecNow(t)
	f := specFlags{spec: "../examples/rollout-policies.yaml", name: "fw-2.1.0"}
	in, err := f.input(bytes.NewReader(nil), func(flag string) bool { return flag == "name" }, "")
	require.NoError(t, err)
	require.NotNil(t, in.Continuous)
	assert.Equal(t, testClock.Now().Add(168*time.Hour).UTC(), in.Continuous.Until)
	assert.Equal(t, 5*time.Minute, in.Continuous.Every)
}
