package workflows

import (
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/worker"
)

// TestFleetVersionsReplay replays a FleetVersions history recorded from a real run (test/
// versions_test.go with DMFLOW_RECORD_HISTORY) against today's code: a change to its commands
// without workflow.GetVersion fails here. In a file of its own, beside TestReplay, so that the
// compliance view touches none of the rollout's files.
func TestFleetVersionsReplay(t *testing.T) {
	r := worker.NewWorkflowReplayer()
	r.RegisterWorkflow(FleetVersions)
	if err := r.ReplayWorkflowHistoryFromJSONFile(nil, filepath.Join("testdata", "fleet_versions.json")); err != nil {
		t.Fatal(err)
	}
}
