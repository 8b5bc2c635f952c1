package activities

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/device"
)

// A rollout's retry of a device is a new request (a new update ID), which neither contract's
// device takes as a repeat of the first: dmflow's deduplicates by ID only, the tutorials' not at
// all. These tests run the retry's InvokeMethod, as the shard builds it (ReadFirst with Earlier),
// against simulated devices of both contracts on a real localhub, while the first update runs and
// after it completed, and check that the device got firmwareUpdate once.

// runFirmwareDevice registers id and runs a simulated device of the contract with stages stage
// apart until t ends; it returns once the device serves its methods.
func (h *localhub) runFirmwareDevice(t *testing.T, id, contract string, stage time.Duration, failStage string) *device.Device {
	t.Helper()
	d := h.runDevice(t, id, device.Config{Contract: contract, StageDuration: stage, FailStage: failStage})
	// The start report (standBy) is the baseline of the first request: wait until the hub has it.
	require.Eventually(t, func() bool {
		tw, err := h.svc.GetDeviceTwin(context.Background(), id)
		return err == nil && tw.Properties.Reported[protocol.PropFirmwareStatus] == protocol.StatusStandBy
	}, 10*time.Second, 50*time.Millisecond)
	return d
}

// rolloutFirmwareCall is firmwareUpdate as a rollout's device attempt makes it.
func rolloutFirmwareCall(id, updateID string, earlier *Earlier) InvokeMethodInput {
	return InvokeMethodInput{
		DeviceID: id, Method: protocol.MethodFirmwareUpdate, ResponseTimeout: 10 * time.Second,
		Payload: map[string]any{protocol.FieldPackageURI: "https://fw.example/2.0.bin", protocol.FieldVersion: "2.0.0", protocol.FieldUpdateID: updateID},
		Evidence: &Evidence{Property: protocol.PropFirmwareStatus, OneOf: []string{"downloading", "applying", "completed", "error"},
			IDProperty: protocol.PropFirmwareUpdateID, ID: updateID, Window: time.Second},
		ReadFirst: &ReadFirst{
			Properties:  []string{protocol.PropFirmwareVersion, protocol.PropFirmwareStatus, protocol.PropFirmwareUpdateID},
			SkipIf:      &ReportedValue{Property: protocol.PropFirmwareVersion, Value: "2.0.0"},
			ScheduledAt: time.Now(),
			Earlier:     earlier,
		},
	}
}

func TestRetryNeverDeliversTwiceOnLocalhub(t *testing.T) {
	h := startLocalhub(t)
	const stage = 700 * time.Millisecond
	for _, contract := range []string{device.ContractDmflow, device.ContractTutorial} {
		t.Run(contract, func(t *testing.T) {
			t.Parallel()
			id := "dev-retry-" + contract
			dev := h.runFirmwareDevice(t, id, contract, stage, "")

			first, err := invokeOn(t, h.svc, rolloutFirmwareCall(id, "rollout:r", nil))
			require.NoError(t, err)
			require.Equal(t, 200, first.Status)
			earlier := &Earlier{IDs: []string{"rollout:r"}, Before: first.EvidenceBefore, Taken: protocol.FirmwareStages}

			// The first update runs (it timed out at a short stage timeout, say): the retry
			// finds it and calls nothing.
			time.Sleep(stage + stage/2)
			running, err := invokeOn(t, h.svc, rolloutFirmwareCall(id, "rollout:r:2", earlier))
			require.NoError(t, err)
			require.NotNil(t, running.Earlier, "the retry sees the first update under way")
			assert.Contains(t, []string{"downloading", "applying"}, running.Earlier.Value)
			assert.Zero(t, running.Calls)
			assert.Equal(t, first.EvidenceBefore, running.EvidenceBefore)

			// The retry follows the first update to its end, as the shard does.
			followID := "rollout:r"
			if running.Earlier.ID != "" {
				followID = running.Earlier.ID
			}
			now := time.Now()
			followed, _, err := followOn(t, h.svc, FollowStagesInput{
				DeviceID: id, UpdateID: followID, ByMetadata: true, StatusBefore: running.EvidenceBefore,
				Since: now, StageTimeout: 5 * time.Second, Deadline: now.Add(20 * time.Second),
				InitialInterval: 100 * time.Millisecond, MaxInterval: 300 * time.Millisecond,
			})
			require.NoError(t, err)
			assert.Equal(t, []string{"downloading", "applying", "completed"}, statuses(followed.Stages))

			// Completed: a third attempt calls nothing either.
			earlier.IDs = append(earlier.IDs, "rollout:r:2")
			done, err := invokeOn(t, h.svc, rolloutFirmwareCall(id, "rollout:r:3", earlier))
			require.NoError(t, err)
			require.NotNil(t, done.Earlier)
			assert.Equal(t, protocol.StatusCompleted, done.Earlier.Value)
			assert.False(t, done.Skipped, "an update of the rollout's that completed is followed, not skipped")

			assert.EqualValues(t, 1, dev.MethodCalls(), "firmwareUpdate delivered once")
			assert.EqualValues(t, 1, dev.FirmwareApplies(), "the update applied once")
			if contract == device.ContractDmflow {
				assert.Equal(t, "rollout:r", running.Earlier.ID)
				assert.Equal(t, "id", running.Earlier.By)
			} else {
				assert.Empty(t, running.Earlier.ID, "the tutorials' device reports no ID")
				assert.Equal(t, "changed", running.Earlier.By)
			}
		})
	}

	// A first request that never reached the device (offline, say) leaves nothing to follow: the
	// retry calls, once.
	t.Run("first never delivered", func(t *testing.T) {
		t.Parallel()
		const id = "dev-retry-undelivered"
		dev := h.runFirmwareDevice(t, id, device.ContractTutorial, stage, "")
		tw, err := getTwinOn(t, h.svc, GetTwinInput{DeviceID: id, Properties: []string{protocol.PropFirmwareStatus}})
		require.NoError(t, err)
		earlier := &Earlier{IDs: []string{"rollout:u"}, Before: tw.LastUpdated[protocol.PropFirmwareStatus], Taken: protocol.FirmwareStages}
		res, err := invokeOn(t, h.svc, rolloutFirmwareCall(id, "rollout:u:2", earlier))
		require.NoError(t, err)
		assert.Nil(t, res.Earlier)
		assert.Equal(t, 1, res.Calls)
		assert.EqualValues(t, 1, dev.MethodCalls())
	})

	// A first update the device reported failed (dmflow's error state) may be repeated: the retry
	// is a new request, which the device starts.
	t.Run("first failed on the device", func(t *testing.T) {
		t.Parallel()
		const id = "dev-retry-failed"
		dev := h.runFirmwareDevice(t, id, device.ContractDmflow, 200*time.Millisecond, protocol.StatusDownloading)
		first, err := invokeOn(t, h.svc, rolloutFirmwareCall(id, "rollout:f", nil))
		require.NoError(t, err)
		require.Eventually(t, func() bool { return dev.FirmwareFailures() == 1 }, 10*time.Second, 50*time.Millisecond)
		require.Eventually(t, func() bool {
			tw, err := h.svc.GetDeviceTwin(context.Background(), id)
			return err == nil && tw.Properties.Reported[protocol.PropFirmwareStatus] == protocol.StatusError
		}, 10*time.Second, 50*time.Millisecond)
		earlier := &Earlier{IDs: []string{"rollout:f"}, Before: first.EvidenceBefore, Taken: protocol.FirmwareStages}
		res, err := invokeOn(t, h.svc, rolloutFirmwareCall(id, "rollout:f:2", earlier))
		require.NoError(t, err)
		assert.Nil(t, res.Earlier)
		assert.Equal(t, 1, res.Calls)
		assert.EqualValues(t, 2, dev.MethodCalls())
	})

	// A device that is not connected: with FailOffline the call ends at once, non-retryable.
	t.Run("offline fails at once", func(t *testing.T) {
		t.Parallel()
		const id = "dev-retry-offline"
		h.provision(t, id)
		in := rolloutFirmwareCall(id, "rollout:o", nil)
		in.FailOffline = true
		begin := time.Now()
		_, err := invokeOn(t, h.svc, in)
		requireNonRetryable(t, err, ErrDeviceNotOnline)
		assert.Less(t, time.Since(begin), 5*time.Second)
	})
}
