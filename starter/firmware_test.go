package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	enumspb "go.temporal.io/api/enums/v1"
)

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// The live view as the polls of a tutorial update see it: steps by query, the status before the
// update, then the stages from the heartbeat while following, then from the query.
func TestFirmwareLiveView(t *testing.T) {
	base := workflows.FirmwareStatus{Started: t0}
	at := func(st workflows.FirmwareStatus, step string, since time.Duration, stage string) workflows.FirmwareStatus {
		st.Step, st.Since, st.Stage = step, t0.Add(since), stage
		return st
	}
	downloading := workflows.StageSeen{Status: "downloading", SeenAt: t0.Add(29300 * time.Millisecond), ReportedAt: t0.Add(15 * time.Second)}
	applying := workflows.StageSeen{Status: "applying", SeenAt: t0.Add(44100 * time.Millisecond)}
	completed := workflows.StageSeen{Status: "completed", SeenAt: t0.Add(59 * time.Second)}
	polls := [][]progressLine{
		firmwareLines(at(base, workflows.StepCheckingVersion, 0, ""), nil),
		firmwareLines(at(base, workflows.StepStartingUpdate, 100*time.Millisecond, "standBy"), nil),
		firmwareLines(at(base, workflows.StepFollowingStages, 200*time.Millisecond, "standBy"), nil),
		firmwareLines(at(base, workflows.StepFollowingStages, 200*time.Millisecond, "standBy"), []workflows.StageSeen{downloading}),
		// Two stages between polls: printed in time order.
		firmwareLines(at(base, workflows.StepFollowingStages, 200*time.Millisecond, "standBy"), []workflows.StageSeen{downloading, applying, completed}),
		firmwareLines(at(base, workflows.StepDone, 59100*time.Millisecond, "completed"), []workflows.StageSeen{downloading, applying, completed}),
	}
	var out bytes.Buffer
	printed := map[string]bool{}
	for _, lines := range polls {
		printNew(&out, lines, printed)
	}
	assert.Equal(t, `     0.0s  reading firmwareVersion
     0.1s  stage standBy (before the update)
     0.1s  invoking firmwareUpdate
     0.2s  following stages
    29.3s  stage downloading (device time 2026-05-01T12:00:15Z)
    44.1s  stage applying
    59.0s  stage completed
    59.1s  done
`, out.String())
}

func TestPrintFirmwareResult(t *testing.T) {
	var out bytes.Buffer
	printFirmwareResult(&out, workflows.FirmwareResult{
		DeviceID: "dev-001", Status: workflows.FirmwareUpdated, Version: "2.0.0", FromVersion: "1.0.0",
		Stages: []workflows.StageSeen{
			{Status: "downloading", SeenAt: t0.Add(29 * time.Second)},
			{Status: "applying", SeenAt: t0.Add(44 * time.Second)},
			{Status: "completed", SeenAt: t0.Add(59 * time.Second)},
		},
		Reboot:   &workflows.RebootResult{RebootTime: t0.Add(80 * time.Second), Attempts: 1},
		Attempts: 1, HubCalls: 8, Started: t0, Duration: 59140 * time.Millisecond,
	})
	assert.Equal(t, `updated dev-001 from 1.0.0 to 2.0.0 in 59.1s: attempts 1, hub calls 8
  stages: downloading +29.0s, applying +44.0s, completed +59.0s
  rebooted: rebootTime 2026-05-01T12:01:20Z, attempts 1
`, out.String())

	out.Reset()
	printFirmwareResult(&out, workflows.FirmwareResult{DeviceID: "dev-001", Status: workflows.FirmwareSkipped, Version: "2.0.0", HubCalls: 1})
	assert.Equal(t, "skipped dev-001: it already runs 2.0.0 (hub calls 1)\n", out.String())
}

func TestStartVerb(t *testing.T) {
	assert.Equal(t, "started", startVerb(""))
	assert.Equal(t, "already running:", startVerb(enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING.String()))
	assert.Equal(t, "already ran (completed):", startVerb(enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED.String()))
}
