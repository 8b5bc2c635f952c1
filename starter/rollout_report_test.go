package main

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// reportRows are one row of each kind.
var reportRows = []workflows.DeviceRow{
	{DeviceID: "dev-001", Wave: 0, Result: workflows.DeviceUpdated, Attempts: 1, FromVersion: "1.0.0",
		Stages: []string{"downloading", "applying", "completed"}, Started: t0.Add(time.Second), Duration: 59140 * time.Millisecond, HubCalls: 8},
	{DeviceID: "dev-002", Wave: 1, Result: workflows.DeviceFailed, Attempts: 2, FromVersion: "1.0.0", Stages: []string{"downloading"},
		Started: t0.Add(2 * time.Minute), Duration: 2*time.Minute + 3*time.Second, HubCalls: 12,
		Error: "device reported \"failed\",\nimage checksum mismatch", ErrorType: "FirmwareFailed"},
	{DeviceID: "dev-003", Wave: -1, Result: workflows.DeviceSkipped, FromVersion: "2.0.0", HubCalls: 0, Note: "already on 2.0.0"},
	{DeviceID: "dev-004", Wave: 2, Result: workflows.DeviceNotStarted},
}

func TestReportTable(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, writeReport(&out, formatTable, reportRows))
	assert.Equal(t, `DEVICE   WAVE  RESULT       TYPE  ATTEMPTS  FROM   STAGES                          STARTED               DURATION  HUB CALLS  ERROR OR NOTE
dev-001  1     updated      -     1         1.0.0  downloading,applying,completed  2026-05-01T12:00:01Z  59.1s     8          -
dev-002  2     failed       -     2         1.0.0  downloading                     2026-05-01T12:02:00Z  2m03s     12         FirmwareFailed: device reported "failed", image checksum mismatch
dev-003  -     skipped      -     0         2.0.0  -                               -                     -         0          already on 2.0.0
dev-004  3     not started  -     0         -      -                               -                     -         0          -
4 devices: 1 updated, 1 skipped, 1 failed, 1 not started
`, out.String())

	out.Reset()
	require.NoError(t, writeReport(&out, formatTable, nil))
	assert.Equal(t, "DEVICE  WAVE  RESULT  TYPE  ATTEMPTS  FROM  STAGES  STARTED  DURATION  HUB CALLS  ERROR OR NOTE\n0 devices: none\n", out.String())
}

func TestReportCSV(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, writeReport(&out, formatCSV, reportRows))
	assert.Equal(t, `device,wave,result,attempts,from_version,stages,started,duration_seconds,hub_calls,error_type,error,note,failure_type,retried_on,retry_at
dev-001,1,updated,1,1.0.0,downloading;applying;completed,2026-05-01T12:00:01Z,59.14,8,,,,,,
dev-002,2,failed,2,1.0.0,downloading,2026-05-01T12:02:00Z,123,12,FirmwareFailed,"device reported ""failed"", image checksum mismatch",,,,
dev-003,,skipped,0,2.0.0,,,,0,,,already on 2.0.0,,,
dev-004,3,not started,0,,,,,0,,,,,,
`, out.String())
	recs, err := csv.NewReader(&out).ReadAll()
	require.NoError(t, err)
	assert.Len(t, recs, 5)
}

func TestReportJSON(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, writeReport(&out, formatJSON, reportRows[1:3]))
	assert.JSONEq(t, `[
	  {"device": "dev-002", "wave": 2, "result": "failed", "attempts": 2, "fromVersion": "1.0.0", "stages": ["downloading"],
	   "started": "2026-05-01T12:02:00Z", "durationSeconds": 123, "hubCalls": 12, "errorType": "FirmwareFailed",
	   "error": "device reported \"failed\",\nimage checksum mismatch"},
	  {"device": "dev-003", "wave": 0, "result": "skipped", "attempts": 0, "fromVersion": "2.0.0", "hubCalls": 0, "note": "already on 2.0.0"}
	]`, out.String())

	out.Reset()
	require.NoError(t, writeReport(&out, formatJSON, nil))
	assert.Equal(t, "[]\n", out.String(), "an empty report is an empty array, not null")
}

func TestReportFormatChoice(t *testing.T) {
	for _, tc := range []struct {
		format    string
		set       bool
		output    string
		want, err string
	}{
		{"", false, "text", formatTable, ""},
		{"", false, "json", formatJSON, ""},
		{"CSV", true, "text", formatCSV, ""},
		{"json", true, "json", formatJSON, ""},
		{"table", true, "json", "", "contradicts --output json"},
		{"xml", true, "text", "", `--format "xml" is not known`},
	} {
		got, err := reportFormat(tc.format, tc.set, tc.output)
		if tc.err != "" {
			var ue cli.UsageError
			assert.ErrorAs(t, err, &ue)
			assert.ErrorContains(t, err, tc.err)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tc.want, got)
	}
}

// report pages through the query (Next until 0) and writes --out atomically.
func TestReportCommand(t *testing.T) {
	var rows []workflows.DeviceRow
	for i := range 5 {
		rows = append(rows, workflows.DeviceRow{DeviceID: "d" + string(rune('a'+i)), Wave: i / 2, Result: workflows.DeviceRebooted, Attempts: 1, HubCalls: 3})
	}
	api := &fakeRollouts{rows: rows, pageSize: 2}
	file := filepath.Join(t.TempDir(), "report.csv")
	require.NoError(t, os.WriteFile(file, []byte("old"), 0o600))
	code, stdout, stderr := runRolloutCLI(t, api, "", "rollout", "report", "fw-2.0", "--format", "csv", "--out", file)
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, "wrote the report of rollout fw-2.0 (5 devices, csv) to "+file+"\n", stdout)
	assert.Equal(t, []workflows.ReportRequest{{Offset: 0, Limit: 2000}, {Offset: 2, Limit: 2000}, {Offset: 4, Limit: 2000}}, api.reports)
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Equal(t, 6, strings.Count(string(b), "\n"))
	assert.True(t, strings.HasPrefix(string(b), "device,wave,result,"))
	st, err := os.Stat(file)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), st.Mode().Perm())
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".report.csv.*"))
	assert.Empty(t, left, "temporary files left behind")

	// --output json: the JSON array on stdout.
	code, stdout, _ = runRolloutCLI(t, &fakeRollouts{rows: rows}, "", "rollout", "report", "fw-2.0", "-o", "json")
	require.Equal(t, 0, code)
	var got []reportRow
	require.NoError(t, jsonUnmarshal(stdout, &got))
	assert.Len(t, got, 5)
	assert.Equal(t, 3, got[4].Wave)
}

func TestWriteFileAtomicKeepsOldOnError(t *testing.T) {
	file := filepath.Join(t.TempDir(), "r.txt")
	require.NoError(t, os.WriteFile(file, []byte("old"), 0o644))
	err := writeFileAtomic(file, func(w io.Writer) error {
		_, _ = w.Write([]byte("partial"))
		return errors.New("query failed")
	})
	assert.EqualError(t, err, "query failed")
	b, _ := os.ReadFile(file)
	assert.Equal(t, "old", string(b))
	entries, _ := os.ReadDir(filepath.Dir(file))
	assert.Len(t, entries, 1)

	err = writeFileAtomic(filepath.Join(t.TempDir(), "missing-dir", "r.txt"), func(io.Writer) error { return nil })
	assert.Error(t, err)
}

// A sharded rollout's report is read shard by shard: each page stops at its shard's last row and
// points at the next shard's first.
func TestShardedReportPage(t *testing.T) {
	shards := workflows.ShardsPage{Total: 5, Shards: []workflows.ShardRef{
		{WorkflowID: "rollout/r/shard/0", Offset: 0, Devices: 3},
		{WorkflowID: "rollout/r/shard/1", Offset: 3, Devices: 2},
	}}
	rows := map[string][]string{"rollout/r/shard/0": {"a", "b", "c"}, "rollout/r/shard/1": {"d", "e"}}
	var asked []string
	query := func(id string, req workflows.ReportRequest) (workflows.ReportPage, error) {
		asked = append(asked, fmt.Sprintf("%s@%d/%d", id, req.Offset, req.Limit))
		all := rows[id]
		to := min(req.Offset+req.Limit, len(all))
		page := workflows.ReportPage{Total: len(all)}
		for _, d := range all[req.Offset:to] {
			page.Rows = append(page.Rows, workflows.DeviceRow{DeviceID: d})
		}
		if to < len(all) {
			page.Next = to
		}
		return page, nil
	}
	var got []string
	for offset := 0; ; {
		page, err := shardedReportPage(workflows.ReportRequest{Offset: offset, Limit: 2}, shards, query)
		require.NoError(t, err)
		assert.Equal(t, 5, page.Total)
		for _, r := range page.Rows {
			got = append(got, r.DeviceID)
		}
		if page.Next == 0 {
			break
		}
		offset = page.Next
	}
	assert.Equal(t, []string{"a", "b", "c", "d", "e"}, got)
	assert.Equal(t, []string{"rollout/r/shard/0@0/2", "rollout/r/shard/0@2/2", "rollout/r/shard/1@0/2"}, asked)

	page, err := shardedReportPage(workflows.ReportRequest{Offset: 9}, shards, query)
	require.NoError(t, err)
	assert.Empty(t, page.Rows, "past the last row")
	_, err = shardedReportPage(workflows.ReportRequest{}, shards, func(string, workflows.ReportRequest) (workflows.ReportPage, error) {
		return workflows.ReportPage{}, errors.New("no worker")
	})
	assert.ErrorContains(t, err, "shard rollout/r/shard/0: no worker")
}
