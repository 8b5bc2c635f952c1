package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/cli/clitest"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// warsawSunday is the window "0 2 * * SUN for 4h in Europe/Warsaw".
var warsawSunday = workflows.Window{Cron: "0 2 * * SUN", Duration: 4 * time.Hour, TimeZone: "Europe/Warsaw"}

const specYAML = `# a full spec
name: fw-2.1.0
query: SELECT * FROM devices WHERE tags.ring = 'beta'
firmware:
  uri: https://fw.example/v2.1.bin
  version: 2.10
  reboot: true
  stageTimeout: 90s
  deadline: 20m
canary: 5
growth: 1.5
maxConcurrent: 200
rate: 6000/min
maxFailures: 5%
minDevices: 20
retryFailed: true
reconcile: true
windows:
  - 0 2 * * SUN for 4h in Europe/Warsaw
  - {cron: "0 2 * * SAT,WED", duration: 2h, timeZone: UTC}
  - start: 2026-12-24T00:00:00Z
    end: 2026-12-27T00:00:00Z
`

const specJSON = `{
	"name": "fw-2.1.0",
	"query": "SELECT * FROM devices WHERE tags.ring = 'beta'",
	"firmware": {"uri": "https:\/\/fw.example\/v2.1.bin", "version": "2.10", "reboot": true, "stageTimeout": "90s", "deadline": "20m"},
	"canary": 5, "growth": 1.5, "maxConcurrent": 200, "rate": "6000/min", "maxFailures": "5%",
	"minDevices": 20, "retryFailed": true, "reconcile": true,
	"windows": ["0 2 * * SUN for 4h in Europe/Warsaw",
		{"cron": "0 2 * * SAT,WED", "duration": "2h", "timeZone": "UTC"},
		{"start": "2026-12-24T00:00:00Z", "end": "2026-12-27T00:00:00Z"}]
}`

// specWant is the input both full specs give.
func specWant() workflows.RolloutInput {
	return workflows.RolloutInput{
		Name: "fw-2.1.0", Operation: workflows.OperationFirmware, Query: "SELECT * FROM devices WHERE tags.ring = 'beta'",
		Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.1.bin", Version: "2.10", Reboot: true,
			StageTimeout: 90 * time.Second, Deadline: 20 * time.Minute},
		Canary: 5, Growth: 1.5, MaxConcurrent: 200, Rate: 100, MaxFailures: "5%", MinDevices: 20, RetryFailed: true,
		Reconcile: true,
		Windows: []workflows.Window{warsawSunday, {Cron: "0 2 * * SAT,WED", Duration: 2 * time.Hour, TimeZone: "UTC"},
			{Start: time.Date(2026, 12, 24, 0, 0, 0, 0, time.UTC), End: time.Date(2026, 12, 27, 0, 0, 0, 0, time.UTC)}},
	}
}

// Spec files as rollout start reads them, alone and under flags.
func TestRolloutStartSpec(t *testing.T) {
	dir, write := specFiles(t)
	yamlFile := write("rollout.yaml", specYAML)
	jsonFile := write("rollout.json", specJSON)
	noExt := write("rollout.spec", specJSON)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
	write("sub/ids.txt", "dev-b\ndev-a\n")
	devicesSpec := write("sub/reboot.yaml", "name: rb\ndevicesFile: ids.txt\nreboot: {methodTimeout: 30s, deadline: 2m}\n")

	with := func(mod func(in *workflows.RolloutInput)) workflows.RolloutInput {
		in := specWant()
		mod(&in)
		return in
	}
	for _, tc := range []struct {
		name    string
		args    []string
		stdin   string
		want    workflows.RolloutInput
		wantErr []string
	}{
		{name: "yaml", args: []string{"--spec", yamlFile}, want: specWant()},
		{name: "json", args: []string{"--spec", jsonFile}, want: specWant()},
		{name: "json by content", args: []string{"--spec", noExt}, want: specWant()},
		{name: "stdin", args: []string{"--spec", "-"}, stdin: specYAML, want: specWant()},
		{name: "devices file relative to the spec", args: []string{"--spec", devicesSpec}, want: workflows.RolloutInput{
			Name: "rb", Operation: workflows.OperationReboot, Devices: []string{"dev-b", "dev-a"},
			Reboot: &workflows.RolloutReboot{MethodTimeout: 30 * time.Second, Deadline: 2 * time.Minute}}},

		{name: "flags override fields", args: []string{"--spec", yamlFile, "--name", "fw-2.1.1", "--version", "2.1.1", "--canary", "1",
			"--rate", "10", "--max-failures", "3", "--stage-timeout", "1m"},
			want: with(func(in *workflows.RolloutInput) {
				in.Name, in.Firmware.Version, in.Canary, in.Rate, in.MaxFailures, in.Firmware.StageTimeout = "fw-2.1.1", "2.1.1", 1, 10, "3", time.Minute
			})},
		{name: "a target flag replaces the file's targets", args: []string{"--spec", yamlFile, "--devices", "a,b", "--reconcile=false"},
			want: with(func(in *workflows.RolloutInput) { in.Query, in.Devices, in.Reconcile = "", []string{"a", "b"}, false })},
		{name: "window flags replace the file's windows", args: []string{"--spec", yamlFile, "--window", "2026-11-29T02:00:00Z/4h"},
			want: with(func(in *workflows.RolloutInput) {
				in.Windows = []workflows.Window{{Start: time.Date(2026, 11, 29, 2, 0, 0, 0, time.UTC), End: time.Date(2026, 11, 29, 6, 0, 0, 0, time.UTC)}}
			})},
		{name: "false flag overrides a true field", args: []string{"--spec", yamlFile, "--retry-failed=false", "--reboot=false"},
			want: with(func(in *workflows.RolloutInput) { in.RetryFailed, in.Firmware.Reboot = false, false })},

		{name: "missing file", args: []string{"--spec", filepath.Join(dir, "nope.yaml")}, wantErr: []string{"--spec", "nope.yaml: no such file"}},
		{name: "file lacks the version", args: []string{"--spec", write("nover.yaml", "name: x\nquery: SELECT * FROM devices\nfirmware: {uri: https://fw.example/a.bin}\n")},
			wantErr: []string{"firmware.uri in " + filepath.Join(dir, "nover.yaml") + " needs firmware.version in"}},
		{name: "bad value in the file, named", args: []string{"--spec", write("badrate.yaml", "name: x\nquery: SELECT * FROM devices\nrate: fast\nreboot: true\n")},
			wantErr: []string{"badrate.yaml line 3, rate: \"fast\""}},
		{name: "spec and devices both on stdin", args: []string{"--spec", "-"}, stdin: "name: x\ndevicesFile: \"-\"\nreboot: true\n",
			wantErr: []string{"--spec - and --devices-file - both read standard input"}},
		{name: "two target kinds from file and flags", args: []string{"--spec", write("both.yaml", "name: x\nquery: SELECT * FROM devices\ndevices: [a]\nreboot: true\n")},
			wantErr: []string{"query in ", "and devices in ", "one way only"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &fakeRollouts{}
			code, _, stderr := runRolloutCLI(t, api, tc.stdin, append([]string{"rollout", "start"}, tc.args...)...)
			if tc.wantErr != nil {
				clitest.CheckUsage(t, "starter", code, stderr, tc.wantErr...)
				assert.Empty(t, api.started)
				return
			}
			require.Equal(t, 0, code, "stderr: %s", stderr)
			require.Len(t, api.started, 1)
			assert.Equal(t, tc.want, api.started[0])
		})
	}
}

// Every field refuses a bad value and names it; unknown fields are refused with their path.
func TestParseSpecProblems(t *testing.T) {
	for _, tc := range []struct {
		name, spec string
		path       string // a file name; its extension picks the format
		want       []string
	}{
		{"unknown top field", "name: x\nquery: q\nfirmwre: {}\n", "s.yaml", []string{"s.yaml line 3, firmwre: unknown field: the fields here are name, query"}},
		{"unknown nested field", "firmware:\n  uri: https://a/b\n  versoin: 2\n", "s.yaml", []string{"line 3, firmware.versoin: unknown field", "uri, version, reboot, stageTimeout, deadline"}},
		{"kebab case", "max-concurrent: 5\n", "s.yaml", []string{"max-concurrent: unknown field: did you mean maxConcurrent? (fields are camelCase)"}},
		{"unknown window field", "windows: [{cron: 0 2 * * SUN, duration: 4h, zone: UTC}]\n", "s.yaml", []string{"windows[0].zone: unknown field", "cron, duration, timeZone, start, end"}},
		{"unknown field in JSON", `{"query": "q", "extra": 1}`, "s.json", []string{"s.json line 1, extra: unknown field"}},
		{"repeated field", "canary: 1\ncanary: 2\n", "s.yaml", []string{"line 2, canary: repeated"}},
		{"repeated field in JSON", "{\"canary\": 1,\n \"canary\": 2}", "s.json", []string{"line 2, canary: repeated"}},

		{"name", "name: [a]\n", "s.yaml", []string{"name: want text, got a list"}},
		{"query", "query: {a: 1}\n", "s.yaml", []string{"query: want text, got a mapping"}},
		{"devices", "devices: a,b\n", "s.yaml", []string{"devices: want a list of device IDs"}},
		{"devices item", "devices: [a, [b]]\n", "s.yaml", []string{"devices[1]: want text, got a list"}},
		{"devicesFile", "devicesFile: true\n", "s.yaml", []string{"devicesFile: want text, got \"true\""}},
		{"firmware not a mapping", "firmware: https://a/b.bin\n", "s.yaml", []string{"firmware: want a mapping of uri, version"}},
		{"firmware without uri", "firmware: {version: 2}\n", "s.yaml", []string{"firmware: no uri"}},
		{"firmware.reboot", "firmware: {uri: https://a/b, reboot: yes}\n", "s.yaml", []string{"firmware.reboot: want true or false, got \"yes\""}},
		{"firmware.stageTimeout", "firmware: {uri: https://a/b, stageTimeout: 2 minutes}\n", "s.yaml", []string{"firmware.stageTimeout: \"2 minutes\" is not a duration", "90s, 2m, 1h30m"}},
		{"firmware.deadline without unit", "firmware: {uri: https://a/b, deadline: 120}\n", "s.yaml", []string{"firmware.deadline: \"120\" is not a duration"}},
		{"reboot", "reboot: sometimes\n", "s.yaml", []string{"reboot: want true or false"}},
		{"reboot.methodTimeout", "reboot: {methodTimeout: soon}\n", "s.yaml", []string{"reboot.methodTimeout: \"soon\" is not a duration"}},
		{"firmware and reboot", "firmware: {uri: https://a/b}\nreboot: true\n", "s.yaml", []string{"reboot: a spec has firmware or reboot, not both"}},
		{"canary", "canary: five\n", "s.yaml", []string{"canary: want a whole number, got \"five\""}},
		{"canary fraction", "canary: 1.5\n", "s.yaml", []string{"canary: want a whole number"}},
		{"growth", "growth: fast\n", "s.yaml", []string{"growth: want a number, got \"fast\""}},
		{"maxConcurrent", "maxConcurrent: lots\n", "s.yaml", []string{"maxConcurrent: want a whole number"}},
		{"rate", "rate: 5/day\n", "s.yaml", []string{"rate: \"5/day\": give IoT Hub calls per second or minute"}},
		{"maxFailures", "maxFailures: 5 devices\n", "s.yaml", []string{"maxFailures: failure threshold \"5 devices\""}},
		{"maxFailures percent", "maxFailures: 150%\n", "s.yaml", []string{"maxFailures: failure threshold \"150%\"", "0% to 100%"}},
		{"minDevices", "minDevices: -x\n", "s.yaml", []string{"minDevices: want a whole number"}},
		{"retryFailed", "retryFailed: 1\n", "s.yaml", []string{"retryFailed: want true or false, got \"1\""}},
		{"reconcile", "reconcile: \"true\"\n", "s.yaml", []string{"reconcile: want true or false"}},
		{"windows not a list", "windows: 0 2 * * SUN for 4h\n", "s.yaml", []string{"windows: want a list of windows"}},
		{"window time zone", "windows:\n  - 0 2 * * SUN for 4h\n  - 0 2 * * SAT for 4h in Mars/Olympus\n", "s.yaml", []string{"line 3, windows[1]: window", "unknown time zone \"Mars/Olympus\""}},
		{"window syntax", "windows: [whenever]\n", "s.yaml", []string{"windows[0]: window \"whenever\""}},
		{"window mapping time zone", "windows: [{cron: 0 2 * * SUN, duration: 4h, timeZone: Nowhere}]\n", "s.yaml", []string{"windows[0]: window", "unknown time zone \"Nowhere\""}},
		{"window mapping start", "windows: [{start: tomorrow, end: 2026-12-27T00:00:00Z}]\n", "s.yaml", []string{"windows[0].start: \"tomorrow\" is not an RFC 3339 time"}},
		{"window mapping duration", "windows: [{cron: 0 2 * * SUN, duration: 4 hours}]\n", "s.yaml", []string{"windows[0].duration: \"4 hours\" is not a duration"}},
		{"window mapping both kinds", "windows: [{cron: 0 2 * * SUN, duration: 4h, start: 2026-12-24T00:00:00Z}]\n", "s.yaml", []string{"windows[0]: window", "not both"}},
		{"null value", "query:\n", "s.yaml", []string{"query: no value"}},

		{"problems together", "canary: x\ngrowth: y\nbogus: 1\n", "s.yaml", []string{"canary: want", "growth: want", "bogus: unknown field"}},
		{"empty", "# nothing\n", "s.yaml", []string{"s.yaml holds no rollout spec"}},
		{"not a mapping", "- a\n- b\n", "s.yaml", []string{"s.yaml line 1: want a mapping of name, query"}},
		{"two documents", "canary: 1\n---\ncanary: 2\n", "s.yaml", []string{"more than one YAML document"}},
		{"yaml syntax", "query: [a\n", "s.yaml", []string{"s.yaml: yaml: line"}},
		{"json syntax", "{\n\"canary\": 1,\n}", "s.json", []string{"s.json: line 3: invalid JSON"}},
		{"json trailing value", "{} {}", "s.json", []string{"more than one JSON value"}},
		{"stdin named", "bogus: 1\n", "-", []string{"the spec on standard input line 1, bogus"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseSpec([]byte(tc.spec), tc.path)
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.NotContains(t, err.Error(), "\n", "one-line error")
		})
	}
}

// Both formats give the same fields, and JSON numbers and strings keep their text.
func TestParseSpecFormats(t *testing.T) {
	y, err := parseSpec([]byte(specYAML), "a.yaml")
	require.NoError(t, err)
	j, err := parseSpec([]byte(specJSON), "a.json")
	require.NoError(t, err)
	assert.Equal(t, y, j)
	assert.Equal(t, "2.10", y.v.version, "an unquoted YAML number keeps its text as a version")
	assert.Equal(t, "firmware.version", y.set["version"])
	assert.Equal(t, "firmware.reboot", y.set["reboot"])
	assert.Equal(t, "windows", y.set["window"])
}

// A spec file that names its rollout is refused by schedule create: the schedule names the runs.
func TestSpecNameRefusedForSchedules(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.yaml")
	require.NoError(t, os.WriteFile(path, []byte("name: x\nreboot: true\ndevices: [a]\n"), 0o644))
	f := specFlags{spec: path}
	_, err := f.input(strings.NewReader(""), func(string) bool { return false }, "weekly")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "name: a schedule's rollouts are named <schedule>-<time>")
}

// examples/rollout.yaml parses into a valid reconcile rollout, for a start and for a schedule.
func TestExampleSpec(t *testing.T) {
	f := specFlags{spec: "../examples/rollout.yaml", name: "fw-2.1.0"}
	changed := func(flag string) bool { return flag == "name" }
	in, err := f.input(strings.NewReader(""), changed, "")
	require.NoError(t, err)
	assert.Equal(t, "fw-2.1.0", in.Name)
	assert.True(t, in.Reconcile)
	assert.Equal(t, "2.1.0", in.Firmware.Version)
	assert.Equal(t, 50.0, in.Rate)
	require.Len(t, in.Windows, 3)
	assert.Equal(t, warsawSunday, in.Windows[0])

	f = specFlags{spec: "../examples/rollout.yaml"}
	in, err = f.input(strings.NewReader(""), func(string) bool { return false }, "weekly-fw")
	require.NoError(t, err)
	assert.Equal(t, "", in.Name, "a scheduled rollout names itself")
	assert.Equal(t, "weekly-fw", in.Schedule)
}

// --reconcile: firmware only, targets default to every device, device IDs refused.
func TestRolloutStartReconcile(t *testing.T) {
	fw := []string{"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0"}
	for _, tc := range []struct {
		name    string
		args    []string
		want    workflows.RolloutInput
		wantErr []string
	}{
		{name: "every device", args: append([]string{"--reconcile"}, fw...), want: workflows.RolloutInput{Operation: workflows.OperationFirmware, Reconcile: true,
			Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"}}},
		{name: "narrowed by a query", args: append([]string{"--reconcile", "--query", "SELECT * FROM devices WHERE tags.ring = 'beta'"}, fw...),
			want: workflows.RolloutInput{Operation: workflows.OperationFirmware, Reconcile: true, Query: "SELECT * FROM devices WHERE tags.ring = 'beta'",
				Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"}}},
		{name: "with windows", args: append([]string{"--reconcile", "--window", "0 2 * * SAT,SUN for 4h in Europe/Warsaw", "--window", "2026-11-29T02:00:00Z/2026-11-29T03:00:00Z"}, fw...),
			want: workflows.RolloutInput{Operation: workflows.OperationFirmware, Reconcile: true,
				Firmware: &workflows.RolloutFirmware{PackageURI: "https://fw.example/v2.bin", Version: "2.0.0"},
				Windows: []workflows.Window{{Cron: "0 2 * * SAT,SUN", Duration: 4 * time.Hour, TimeZone: "Europe/Warsaw"},
					{Start: time.Date(2026, 11, 29, 2, 0, 0, 0, time.UTC), End: time.Date(2026, 11, 29, 3, 0, 0, 0, time.UTC)}}}},
		{name: "reboot", args: []string{"--reconcile", "--reboot", "--devices", "a"}, wantErr: []string{"--reconcile belongs to a firmware update"}},
		{name: "device IDs", args: append([]string{"--reconcile", "--devices", "a"}, fw...), wantErr: []string{"selects its targets by query"}},
		{name: "bad window", args: append([]string{"--reconcile", "--window", "0 2 * * SUN for 4h in Mars/Olympus"}, fw...), wantErr: []string{"--window: window", "unknown time zone \"Mars/Olympus\""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &fakeRollouts{}
			code, stdout, stderr := runRolloutCLI(t, api, "", append([]string{"rollout", "start", "--name", "fw-2.0"}, tc.args...)...)
			if tc.wantErr != nil {
				clitest.CheckUsage(t, "starter", code, stderr, tc.wantErr...)
				return
			}
			require.Equal(t, 0, code, "stderr: %s", stderr)
			want := tc.want
			want.Name = "fw-2.0"
			assert.Equal(t, want, api.started[0])
			assert.Contains(t, stdout, "firmware 2.0.0 on ")
			assert.Contains(t, stdout, "not on 2.0.0")
		})
	}
}

func FuzzParseSpec(f *testing.F) {
	f.Add([]byte(specYAML), false)
	f.Add([]byte(specJSON), true)
	f.Add([]byte("windows: [{cron: 0 2 * * SUN, duration: 4h}]\n"), false)
	f.Fuzz(func(t *testing.T, data []byte, json bool) {
		path := "f.yaml"
		if json {
			path = "f.json"
		}
		doc, err := parseSpec(data, path)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		for flag := range doc.set {
			if _, ok := specFields[flag]; !ok {
				t.Fatalf("field for unknown flag %q", flag)
			}
		}
	})
}
