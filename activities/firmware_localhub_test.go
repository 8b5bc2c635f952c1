package activities

import (
	"context"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/protocol"
)

// GetTwin and FollowStages against a real localhub. The device is the plain amenzhinsky device
// client reporting the firmware tutorial's properties itself, so that these tests exercise the
// activities and the hub, not a simulated device's firmware handler.

// report patches the device's reported properties and fails the test if the hub refuses.
func report(t *testing.T, c *iotdevice.Client, ctx context.Context, props iotdevice.TwinState) {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := c.UpdateTwinState(rctx, props)
	require.NoError(t, err, "report %v", props)
}

func stamp() string { return time.Now().UTC().Format(time.RFC3339Nano) }

func getTwinOn(t *testing.T, svc Hub, in GetTwinInput) (GetTwinResult, error) {
	t.Helper()
	env, _ := newEnv(t, &Activities{Hub: svc})
	val, err := env.ExecuteActivity((&Activities{}).GetTwin, in)
	var res GetTwinResult
	if err == nil {
		require.NoError(t, val.Get(&res))
	}
	return res, err
}

func followOn(t *testing.T, svc Hub, in FollowStagesInput) (FollowStagesResult, *heartbeatRecorder, error) {
	t.Helper()
	env, rec := newEnv(t, &Activities{Hub: svc})
	val, err := env.ExecuteActivity((&Activities{}).FollowStages, in)
	var res FollowStagesResult
	if err == nil {
		require.NoError(t, val.Get(&res))
	}
	return res, rec, err
}

func TestFirmwareActivitiesOnLocalhub(t *testing.T) {
	h := startLocalhub(t)

	t.Run("get twin", func(t *testing.T) {
		t.Parallel()
		const id = "dev-fw-twin"
		c, ctx := h.connectRawDevice(t, id)
		report(t, c, ctx, iotdevice.TwinState{
			protocol.PropFirmwareStatus:  protocol.StatusStandBy,
			protocol.PropFirmwareVersion: "1.0.0",
			protocol.PropLogTime:         stamp(),
		})

		res, err := getTwinOn(t, h.svc, GetTwinInput{
			DeviceID:   id,
			Properties: []string{protocol.PropFirmwareVersion, protocol.PropFirmwareStatus, protocol.PropFirmwareUpdateID},
		})
		require.NoError(t, err)
		assert.Equal(t, map[string]any{protocol.PropFirmwareVersion: "1.0.0", protocol.PropFirmwareStatus: protocol.StatusStandBy}, res.Reported,
			"only what was asked and reported")
		assert.Positive(t, res.Version)
		assert.Equal(t, 1, res.Attempt)
	})

	t.Run("get twin of an unknown device", func(t *testing.T) {
		t.Parallel()
		_, err := getTwinOn(t, h.svc, GetTwinInput{DeviceID: "dev-fw-ghost", Properties: []string{protocol.PropFirmwareVersion}})
		requireNonRetryable(t, err, ErrDeviceNotFound)
		assert.Contains(t, err.Error(), "dev-fw-ghost")
	})

	t.Run("follow the tutorial's stages", func(t *testing.T) {
		t.Parallel()
		const id = "dev-fw-stages"
		c, ctx := h.connectRawDevice(t, id)
		// An earlier update left completed behind: it must not count for u2.
		report(t, c, ctx, iotdevice.TwinState{
			protocol.PropFirmwareStatus:     protocol.StatusCompleted,
			protocol.PropFirmwareUpdateID:   "u1",
			protocol.PropLastFirmwareUpdate: "2026-04-01T00:00:00Z",
		})

		// The device goes through the stages 300 ms apart, as the tutorial's does 15 s apart.
		stages := []iotdevice.TwinState{
			{protocol.PropFirmwareStatus: protocol.StatusDownloading, protocol.PropFirmwareUpdateID: "u2", protocol.PropDownloadComplete: ""},
			{protocol.PropFirmwareStatus: protocol.StatusApplying, protocol.PropFirmwareUpdateID: "u2", protocol.PropStartedApplyingImage: ""},
			{protocol.PropFirmwareStatus: protocol.StatusCompleted, protocol.PropFirmwareUpdateID: "u2", protocol.PropLastFirmwareUpdate: "", protocol.PropFirmwareVersion: "2.0.0"},
		}
		reported := make(chan time.Time, len(stages))
		go func() {
			for _, s := range stages {
				select {
				case <-ctx.Done():
					return
				case <-time.After(300 * time.Millisecond):
				}
				for k, v := range s {
					if v == "" {
						s[k] = stamp()
					}
				}
				at := time.Now()
				if _, err := c.UpdateTwinState(ctx, s); err != nil {
					return
				}
				reported <- at
			}
		}()

		begin := time.Now()
		res, rec, err := followOn(t, h.svc, FollowStagesInput{
			DeviceID:        id,
			UpdateID:        "u2",
			Since:           begin,
			StageTimeout:    10 * time.Second,
			Deadline:        begin.Add(30 * time.Second),
			InitialInterval: 50 * time.Millisecond,
			MaxInterval:     200 * time.Millisecond,
		})
		require.NoError(t, err)
		require.Equal(t, []string{"downloading", "applying", "completed"}, statuses(res.Stages))
		for i, s := range res.Stages {
			at := <-reported
			assert.False(t, s.SeenAt.Before(at), "%s seen at %s, reported at %s", s.Status, s.SeenAt, at)
			assert.Less(t, s.SeenAt.Sub(at), 200*time.Millisecond+time.Second, "%s detected within the cap (and a read)", s.Status)
			assert.False(t, s.ReportedAt.IsZero(), "%s has the device's timestamp", s.Status)
			assert.True(t, s.ReportedAt.After(begin.Add(-time.Second)), "stage %d timestamp %s is this update's", i, s.ReportedAt)
		}
		assert.GreaterOrEqual(t, res.Polls, 3)
		assert.Len(t, rec.recorded(), res.Polls, "a heartbeat per read")
	})

	t.Run("stuck in downloading", func(t *testing.T) {
		t.Parallel()
		const id = "dev-fw-stuck"
		c, ctx := h.connectRawDevice(t, id)
		report(t, c, ctx, iotdevice.TwinState{
			protocol.PropFirmwareStatus:   protocol.StatusDownloading,
			protocol.PropFirmwareUpdateID: "u1",
			protocol.PropDownloadComplete: stamp(),
		})

		begin := time.Now()
		_, _, err := followOn(t, h.svc, FollowStagesInput{
			DeviceID:        id,
			UpdateID:        "u1",
			Since:           begin,
			StageTimeout:    time.Second,
			Deadline:        begin.Add(30 * time.Second),
			InitialInterval: 50 * time.Millisecond,
			MaxInterval:     200 * time.Millisecond,
		})
		appErr := requireNonRetryable(t, err, ErrStageTimeout)
		assert.Contains(t, err.Error(), "stuck in downloading: no applying within 1s")
		assert.GreaterOrEqual(t, time.Since(begin), time.Second)
		assert.Less(t, time.Since(begin), 5*time.Second, "fails early, long before the deadline")
		var p FollowStagesProgress
		require.NoError(t, appErr.Details(&p))
		assert.Equal(t, "downloading", p.Stage())
	})

	t.Run("device reports an error", func(t *testing.T) {
		t.Parallel()
		const id = "dev-fw-error"
		c, ctx := h.connectRawDevice(t, id)
		report(t, c, ctx, iotdevice.TwinState{
			protocol.PropFirmwareStatus:   protocol.StatusError,
			protocol.PropFirmwareUpdateID: "u1",
			protocol.PropFirmwareError:    "image signature invalid",
			protocol.PropFirmwareErrStage: protocol.StatusApplying,
		})

		_, _, err := followOn(t, h.svc, FollowStagesInput{
			DeviceID:        id,
			UpdateID:        "u1",
			Since:           time.Now(),
			StageTimeout:    10 * time.Second,
			InitialInterval: 50 * time.Millisecond,
			MaxInterval:     200 * time.Millisecond,
		})
		requireNonRetryable(t, err, ErrDeviceError)
		assert.Contains(t, err.Error(), "failed in stage applying: the device reports: image signature invalid")
	})
}
