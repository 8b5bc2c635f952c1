//go:build integration

package test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"
	"go.temporal.io/sdk/client"
)

// historyJSON fetches a workflow's full history (its latest run) as the JSON
// that worker.WorkflowReplayer reads (the same form as `temporal workflow show
// --output json`).
func historyJSON(t *testing.T, c client.Client, workflowID string) []byte {
	t.Helper()
	_, b := runHistory(t, c, workflowID, "")
	return b
}

// runHistory fetches one run of a workflow ("" for the latest) as a history
// and as replayer JSON: a rollout keeps its workflow ID across
// continue-as-new, and its replay test wants the first run.
func runHistory(t *testing.T, c client.Client, workflowID, runID string) (*historypb.History, []byte) {
	t.Helper()
	it := c.GetWorkflowHistory(context.Background(), workflowID, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	h := &historypb.History{}
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		h.Events = append(h.Events, ev)
	}
	b, err := temporalproto.CustomJSONMarshalOptions{Indent: "  "}.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	return h, b
}

// checkHistory asserts a history holds no secret, and with
// DMFLOW_RECORD_HISTORY=dir saves it there as <name>.json for the replay
// tests in workflows/testdata (`make record-histories`).
func checkHistory(t *testing.T, c client.Client, workflowID, name string) {
	t.Helper()
	h, b := runHistory(t, c, workflowID, "")
	// The JSON carries payloads base64-encoded: historyText decodes them.
	if found := hubSecrets(t).scan(historyText(t, h)); len(found) > 0 {
		t.Errorf("history of %s holds %s", workflowID, strings.Join(found, ", "))
	}
	if dir := os.Getenv("DMFLOW_RECORD_HISTORY"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("recorded history of %s in %s", workflowID, filepath.Join(dir, name+".json"))
	}
}
