package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/workflows"
)

// fleetCounts is a count as the worker answers it: versions in any order.
var fleetCounts = workflows.FleetVersionsResult{
	Query: activities.VersionsQuery("tags.ring = 'beta'"),
	Versions: []activities.VersionCount{
		{Version: "1.10.0", Devices: 1}, {Version: "2.0.0", Devices: 4}, {Version: "2.1.0", Devices: 6}, {Version: "1.9.0", Devices: 1},
	},
	None: 2, Total: 14, Pages: 1,
}

// versionsID is the workflow ID of a count started at testClock's time.
var versionsID = regexp.MustCompile(`^fleet-versions/20260501T121000Z-[0-9a-f]{8}$`)

func TestFleetVersionsTable(t *testing.T) {
	api := &fakeFleet{res: fleetCounts}
	code, stdout, stderr := runFleetCLI(t, api, "fleet", "versions", "--query", "SELECT * FROM devices WHERE tags.ring = 'beta'")
	require.Equal(t, 0, code, stderr)
	require.Len(t, api.ids, 1)
	assert.Regexp(t, versionsID, api.ids[0])
	assert.Equal(t, []string{workflows.TaskQueue}, api.queues)
	assert.Equal(t, []workflows.FleetVersionsInput{{Query: "SELECT * FROM devices WHERE tags.ring = 'beta'"}}, api.inputs,
		"the query as given: the workflow reads it")
	// By devices descending, then version with numbers as numbers; (none) by its count.
	assert.Equal(t, `VERSION  DEVICES  SHARE
2.1.0          6  42.9%
2.0.0          4  28.6%
(none)         2  14.3%
1.9.0          1   7.1%
1.10.0         1   7.1%
TOTAL         14   100%
4 versions among 14 devices (workflow `+api.ids[0]+`, 1 query page)
`, stdout)
	assert.Empty(t, stderr)
}

func TestFleetVersionsJSON(t *testing.T) {
	for _, args := range [][]string{{"-o", "json"}, {"--format", "json"}, {"--output", "JSON", "-f", "json"}} {
		api := &fakeFleet{res: fleetCounts}
		code, stdout, stderr := runFleetCLI(t, api, append([]string{"fleet", "versions", "-q", "tags.ring = 'beta'"}, args...)...)
		require.Equal(t, 0, code, stderr)
		var got map[string]any
		require.NoError(t, json.Unmarshal([]byte(stdout), &got), stdout)
		assert.Equal(t, map[string]any{
			"query": fleetCounts.Query,
			"total": 14.0,
			"versions": []any{
				map[string]any{"version": "2.1.0", "devices": 6.0, "percent": 42.9},
				map[string]any{"version": "2.0.0", "devices": 4.0, "percent": 28.6},
				map[string]any{"version": "1.9.0", "devices": 1.0, "percent": 7.1},
				map[string]any{"version": "1.10.0", "devices": 1.0, "percent": 7.1},
			},
			"none":       map[string]any{"devices": 2.0, "percent": 14.3},
			"pages":      1.0,
			"workflowId": api.ids[0],
		}, got, "args %v", args)
	}
}

func TestFleetVersionsCSV(t *testing.T) {
	api := &fakeFleet{res: fleetCounts}
	code, stdout, stderr := runFleetCLI(t, api, "fleet", "versions", "--output", "csv")
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, []workflows.FleetVersionsInput{{}}, api.inputs, "no query: every device")
	assert.Equal(t, `version,reported,devices,percent
2.1.0,true,6,42.9
2.0.0,true,4,28.6
(none),false,2,14.3
1.9.0,true,1,7.1
1.10.0,true,1,7.1
`, stdout)
	recs, err := csv.NewReader(strings.NewReader(stdout)).ReadAll()
	require.NoError(t, err)
	assert.Len(t, recs, 6)
}

func TestFleetVersionsOutFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "versions.csv")
	api := &fakeFleet{res: fleetCounts}
	code, stdout, stderr := runFleetCLI(t, api, "fleet", "versions", "-o", "csv", "--out", path, "--task-queue", "other")
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, "wrote the firmware versions of 14 devices (csv) to "+path+"\n", stdout)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(raw), "version,reported,devices,percent\n2.1.0,true,6,42.9\n"), string(raw))
	assert.Equal(t, []string{"other"}, api.queues)
}

func TestFleetVersionsEdgeCases(t *testing.T) {
	// An empty fleet: no shares to show.
	var out bytes.Buffer
	require.NoError(t, writeVersions(&out, formatTable, newVersionsView(workflows.FleetVersionsResult{Query: "q", Pages: 1}, "fleet-versions/x")))
	assert.Equal(t, `VERSION  DEVICES  SHARE
(none)         0      -
TOTAL          0      -
0 versions among 0 devices (workflow fleet-versions/x, 1 query page)
`, out.String())

	// Versions that would pass for something else are quoted; (none) leads when it is the most.
	res := workflows.FleetVersionsResult{
		Versions: []activities.VersionCount{{Version: "", Devices: 1}, {Version: "(none)", Devices: 1}, {Version: "1.0 beta", Devices: 1}, {Version: "2", Devices: 1}},
		None:     5, Total: 9, Pages: 2,
	}
	out.Reset()
	require.NoError(t, writeVersions(&out, formatTable, newVersionsView(res, "fleet-versions/x")))
	assert.Equal(t, `VERSION     DEVICES  SHARE
(none)            5  55.6%
""                1  11.1%
"(none)"          1  11.1%
"1.0 beta"        1  11.1%
2                 1  11.1%
TOTAL             9   100%
4 versions among 9 devices (workflow fleet-versions/x, 2 query pages)
`, out.String())
}

func TestFleetVersionsErrors(t *testing.T) {
	// The hub refused the condition: the failure says so and names the fix.
	api := &fakeFleet{err: temporal.NewNonRetryableApplicationError(
		"query on devices: IoT Hub rejected the request (HTTP 400, code 400004): ErrorCode:ArgumentInvalid;query: syntax error at line 1, column 97: expected a value, found \"=\"",
		activities.ErrBadRequest, nil)}
	code, stdout, stderr := runFleetCLI(t, api, "fleet", "versions", "-q", "tags.ring == 'beta'")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Empty(t, stdout)
	for _, s := range []string{"count firmware versions (workflow fleet-versions/", "IoT Hub rejected the request", "column 97", "fix --query"} {
		assert.Contains(t, stderr, s)
	}
	assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line")

	// Any other failure (a hub throttled for 10 minutes) is passed on.
	api = &fakeFleet{err: temporal.NewApplicationError("query on devices: IoT Hub answered HTTP 429", "")}
	code, _, stderr = runFleetCLI(t, api, "fleet", "versions")
	assert.Equal(t, cli.ExitFailed, code)
	assert.Contains(t, stderr, "HTTP 429")
	assert.NotContains(t, stderr, "fix --query")
}

func TestFleetVersionsSlow(t *testing.T) {
	// No answer within slowAfter: one line on stderr says what may hold it up, then the count.
	api := &fakeFleet{res: fleetCounts, delay: 50 * time.Millisecond}
	var stderr bytes.Buffer
	res, err := countVersions(context.Background(), api, "fleet-versions/x", versionsFlags{taskQueue: "dmflow"}, &stderr, 5*time.Millisecond)
	require.NoError(t, err)
	assert.Equal(t, fleetCounts, res)
	assert.Equal(t, "still counting after 0s: is a dmflow worker running on task queue dmflow? (Ctrl-C stops waiting; the count goes on in http://ui.test/fleet-versions/x)\n", stderr.String())

	// A quick answer says nothing more.
	stderr.Reset()
	api = &fakeFleet{res: fleetCounts}
	_, err = countVersions(context.Background(), api, "fleet-versions/x", versionsFlags{}, &stderr, time.Minute)
	require.NoError(t, err)
	assert.Empty(t, stderr.String())

	// Ctrl-C: the wait ends with the context.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	api = &fakeFleet{res: fleetCounts, delay: time.Minute}
	_, err = countVersions(ctx, api, "fleet-versions/x", versionsFlags{}, &stderr, time.Minute)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// Bad input to fleet versions answers one line naming the fix, exits 2 and dials no Temporal.
func TestFleetVersionsBadInput(t *testing.T) {
	dir := t.TempDir()
	tests := []refusal{
		{"fleet unknown subcommand", []string{"fleet", "count"}, []string{`unknown fleet command "count"`, "use versions"}},
		{"versions with an argument", []string{"fleet", "versions", "beta"}, []string{"takes no arguments", "flags start with --"}},
		{"versions bad output", []string{"fleet", "versions", "-o", "yaml"}, []string{`--output "yaml"`, "table, json or csv"}},
		{"versions bad format", []string{"fleet", "versions", "--format", "xml"}, []string{`--format "xml"`, "table, json or csv"}},
		{"versions contradicting formats", []string{"fleet", "versions", "-o", "csv", "-f", "json"}, []string{"--format json contradicts --output csv", "give one of them"}},
		{"versions unclosed string", []string{"fleet", "versions", "-q", "tags.ring = 'beta"}, []string{"--query", "not closed", "end it with '"}},
		{"versions unbalanced parenthesis", []string{"fleet", "versions", "-q", "(tags.ring = 'beta'"}, []string{"--query", "close them"}},
		{"versions grouped", []string{"fleet", "versions", "-q", "tags.ring = 'beta' GROUP BY tags.ring"}, []string{"has GROUP BY", "give only the condition"}},
		{"versions other select", []string{"fleet", "versions", "-q", "SELECT COUNT() FROM devices"}, []string{"not of the form SELECT * FROM devices", "e.g. tags.ring = 'beta'"}},
		{"versions empty where", []string{"fleet", "versions", "-q", "WHERE"}, []string{"has WHERE but no condition"}},
		{"versions out in a missing directory", []string{"fleet", "versions", "--out", filepath.Join(dir, "none", "v.csv")}, []string{"does not exist", "create it"}},
		{"versions bad flag", []string{"fleet", "versions", "--wait"}, []string{"unknown flag: --wait", "starter fleet versions --help"}},
	}
	checkRefusals(t, tests)
}
