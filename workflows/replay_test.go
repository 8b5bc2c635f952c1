package workflows

import (
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/worker"
)

// TestReplay replays histories recorded from real runs (make
// record-histories) against today's workflow code: a change to a workflow's
// command sequence without workflow.GetVersion fails here.
func TestReplay(t *testing.T) {
	for _, tc := range []struct {
		file     string
		workflow any
	}{
		// Recorded before the tutorials' contract (GetVersion tutorial-contract absent): no read
		// before the call, IDs only.
		{"reboot_v0.json", Reboot},
		{"firmware_v0.json", FirmwareUpdate},
		{"firmware_reboot_v0.json", FirmwareUpdate},
		// With it, on each device contract (test/contracts_test.go records them).
		{"reboot.json", Reboot},
		{"firmware.json", FirmwareUpdate},
		{"contract_dmflow_reboot.json", Reboot},
		{"contract_dmflow_firmware.json", FirmwareUpdate},
		{"contract_dmflow_firmware_reboot.json", FirmwareUpdate},
		{"contract_tutorial-object_reboot.json", Reboot},
		{"contract_tutorial-object_firmware.json", FirmwareUpdate},
		{"contract_tutorial-object_firmware_reboot.json", FirmwareUpdate},
		{"contract_tutorial-string_reboot.json", Reboot},
		{"contract_tutorial-string_firmware.json", FirmwareUpdate},
		{"contract_tutorial-string_firmware_reboot.json", FirmwareUpdate},
		// A rollout begun before shards (GetVersion rollout-shards absent): a child workflow per
		// device, the rows in its state.
		{"rollout.json", Rollout},
		// Sharded (test/rollout_test.go records them): the rollout's first run, which continues as
		// new, and its shard; _v1 before the end checks (shard-end-checks), the others with them.
		{"rollout_sharded_v1.json", Rollout},
		{"rollout_shard_v1.json", RolloutShard},
		{"rollout_sharded.json", Rollout},
		{"rollout_shard.json", RolloutShard},
		// Maintenance windows: the version marker, a recorded window state at each boundary, the
		// timers to the openings and closes.
		{"rollout_windows.json", Rollout},
		// Retries by failure type (test/rollout_retries_test.go records them): the version marker,
		// the backoff timers, the retries' guard.
		{"rollout_retries.json", Rollout},
		{"rollout_retries_shard.json", RolloutShard},
		// Continuous targeting (continuous-targeting): the looks, each a timer and a query page;
		// the shard of a look, whose reads before the calls check for an update already taken.
		{"rollout_continuous.json", Rollout},
		{"rollout_continuous_shard.json", RolloutShard},
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
