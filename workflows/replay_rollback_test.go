package workflows

import (
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/worker"
)

// TestReplayRollback replays a rollout with a rollback recorded by test/rollout_rollback_test.go
// (make record-histories): the run that aborted and began the rollback (and continued as new
// during it), the last run, which finished the rollback after the worker was killed, and the
// shard that rolled its devices back.
func TestReplayRollback(t *testing.T) {
	for _, tc := range []struct {
		file     string
		workflow any
	}{
		{"rollout_rollback_abort.json", Rollout},
		{"rollout_rollback.json", Rollout},
		{"rollout_rollback_shard.json", RolloutShard},
	} {
		t.Run(tc.file, func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflow(tc.workflow)
			if err := r.ReplayWorkflowHistoryFromJSONFile(nil, filepath.Join("testdata", tc.file)); err != nil {
				t.Fatal(err)
			}
		})
	}
}
