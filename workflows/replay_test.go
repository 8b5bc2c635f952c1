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
		{"reboot.json", Reboot},
		{"firmware.json", FirmwareUpdate},
		{"firmware_reboot.json", FirmwareUpdate},
		{"rollout.json", Rollout},
		// Maintenance windows: the version marker, a recorded window state at each boundary, the
		// timers to the openings and closes.
		{"rollout_windows.json", Rollout},
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
