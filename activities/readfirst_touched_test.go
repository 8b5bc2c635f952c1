package activities

import (
	"context"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// touchedInput is readFirstInput for a device a continuous rollout's look found: the read also
// skips it when it shows the rollout's update (ID u1 or u1:2), or an update stamped since the
// rollout began (an hour before the operation).
func touchedInput() InvokeMethodInput {
	in := readFirstInput()
	stamps := []Stamp{
		{Property: "firmwareStatus", OneOf: []string{"downloading", "applying", "completed", "error"}},
		{Property: "downloadComplete"}, {Property: "startedApplyingImage"}, {Property: "lastFirmwareUpdate"},
	}
	in.ReadFirst.Touched = &Touched{IDProperty: "firmwareUpdateId", IDs: []string{"u1", "u1:2"},
		Since: scheduledAt.Add(-time.Hour).Format(time.RFC3339Nano), Stamps: stamps}
	for _, s := range stamps {
		if s.Property != "firmwareStatus" {
			in.ReadFirst.Properties = append(in.ReadFirst.Properties, s.Property)
		}
	}
	return in
}

// A device found again by a look is skipped before any call when its twin shows the rollout's
// update, on either contract, and called when it shows none since the rollout began.
func TestInvokeMethodReadFirstTouched(t *testing.T) {
	since := scheduledAt.Add(-time.Hour)
	after, before := hubTime(since.Add(10*time.Minute)), hubTime(since.Add(-10*time.Minute))
	for _, tc := range []struct {
		name  string
		props map[string][2]any
		skip  string // "" when called
	}{
		{name: "dmflow's contract: the rollout's update ID", skip: "already updated by this rollout: the device reports firmwareUpdateId u1",
			props: map[string][2]any{"firmwareVersion": {"1.0", after}, "firmwareStatus": {"error", after}, "firmwareUpdateId": {"u1", after}}},
		{name: "dmflow's contract: the retry's update ID", skip: "firmwareUpdateId u1:2",
			props: map[string][2]any{"firmwareStatus": {"error", before}, "firmwareUpdateId": {"u1:2", before}}},
		{name: "tutorial: completed since the rollout began", skip: "updated since this rollout began: the device reported firmwareStatus \"completed\" at " + after,
			props: map[string][2]any{"firmwareStatus": {"completed", after}, "lastFirmwareUpdate": {"2026-12-06 17:10:00.000000", after}}},
		{name: "tutorial: restarted after the update (standBy)", skip: "lastFirmwareUpdate",
			props: map[string][2]any{"firmwareStatus": {"standBy", after}, "lastFirmwareUpdate": {"2026-12-06 17:10:00.000000", after}}},
		{name: "tutorial: restarted while downloading", skip: "downloadComplete",
			props: map[string][2]any{"firmwareStatus": {"standBy", after}, "downloadComplete": {"2026-12-06 17:10:00.000000", after}}},
		{name: "tutorial: updated before the rollout", props: map[string][2]any{
			"firmwareStatus": {"completed", before}, "lastFirmwareUpdate": {"2026-12-06 16:40:00.000000", before}}},
		{name: "tutorial: new device in standBy", props: map[string][2]any{"firmwareStatus": {"standBy", after}}},
		{name: "another update's ID, stamped before", props: map[string][2]any{
			"firmwareStatus": {"completed", before}, "firmwareUpdateId": {"u0", before}}},
		{name: "a stage without a time from the hub", skip: "without a time from the hub",
			props: map[string][2]any{"firmwareStatus": {"applying", nil}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newSimDevice(false)
			hub := d.hub(nil, nil)
			hub.twin = func(context.Context, int) (*iotservice.Twin, error) {
				return &iotservice.Twin{DeviceID: "dev1", Properties: &iotservice.Properties{Reported: stamped(tc.props)}}, nil
			}
			env, _ := newEnv(t, &Activities{Hub: hub})
			val, err := env.ExecuteActivity((&Activities{}).InvokeMethod, touchedInput())
			require.NoError(t, err)
			var res InvokeMethodResult
			require.NoError(t, val.Get(&res))
			assert.Equal(t, 1, hub.readCount())
			if tc.skip == "" {
				assert.False(t, res.Skipped)
				assert.Empty(t, res.SkipReason)
				assert.Equal(t, 1, hub.callCount())
				return
			}
			assert.True(t, res.Skipped)
			assert.Contains(t, res.SkipReason, tc.skip)
			assert.Equal(t, 0, hub.callCount(), "no call")
		})
	}
}

func TestTouchedValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*Touched, *ReadFirst)
		want   string
	}{
		{"valid", func(*Touched, *ReadFirst) {}, ""},
		{"stamp not read", func(_ *Touched, rf *ReadFirst) { rf.Properties = rf.Properties[:3] }, `touched: "downloadComplete" is not among the properties read`},
		{"ID property not read", func(tt *Touched, _ *ReadFirst) { tt.IDProperty = "updateId" }, `touched: "updateId" is not among`},
		{"bad since", func(tt *Touched, _ *ReadFirst) { tt.Since = "yesterday" }, `since "yesterday" is not an RFC 3339 time`},
		{"stamps without since", func(tt *Touched, _ *ReadFirst) { tt.Since = "" }, "stamps need since"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := touchedInput()
			tc.modify(in.ReadFirst.Touched, in.ReadFirst)
			_, _, err := in.methodCall()
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			requireNonRetryable(t, err, ErrBadRequest)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
