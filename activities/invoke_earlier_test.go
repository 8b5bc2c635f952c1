package activities

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// earlierInput is a retry of a firmware update (u1) whose earlier attempt (u0) was read at
// before0 and may have been taken by the device after it failed.
func earlierInput() InvokeMethodInput {
	in := readFirstInput()
	in.ReadFirst.Earlier = &Evidence{
		Property: "firmwareStatus", OneOf: []string{"downloading", "applying", "completed"},
		IDProperty: "firmwareUpdateId", ID: "u0", Before: hubTime(before0),
	}
	return in
}

// before0 is when the earlier attempt read the twin: its firmwareStatus was last stamped then.
var before0 = scheduledAt.Add(-time.Hour)

// TestInvokeMethodReadFirstEarlierTaken: a retry never gives the device an update a second time,
// on either contract. When the read shows that the device took the earlier attempt's update after
// all (it completed late, or still runs), there is no call: EarlierTaken, and the caller follows
// that update. When it shows the earlier attempt failed on the device, nothing since, a restart,
// or another request, the retry calls.
func TestInvokeMethodReadFirstEarlierTaken(t *testing.T) {
	late := scheduledAt.Add(-10 * time.Minute)
	for _, tc := range []struct {
		name      string
		reportsID bool
		status    string
		stamp     time.Time
		id        string
		taken     bool
		by        string
	}{
		{name: "tutorial: completed late", status: "completed", stamp: late, taken: true, by: "changed"},
		{name: "tutorial: still applying", status: "applying", stamp: late, taken: true, by: "changed"},
		{name: "tutorial: nothing since the earlier read", status: "completed", stamp: before0},
		{name: "tutorial: restarted since (standBy)", status: "standBy", stamp: late},
		{name: "dmflow: completed late", reportsID: true, status: "completed", stamp: late, id: "u0", taken: true, by: "id"},
		{name: "dmflow: still downloading", reportsID: true, status: "downloading", stamp: late, id: "u0", taken: true, by: "id"},
		{name: "dmflow: the earlier update failed on the device", reportsID: true, status: "error", stamp: late, id: "u0"},
		{name: "dmflow: another request's update", reportsID: true, status: "completed", stamp: late, id: "u9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newSimDevice(tc.reportsID)
			d.status, d.stamp, d.updateID = tc.status, tc.stamp, tc.id
			hub := d.hub(nil, nil)
			env, _ := newEnv(t, &Activities{Hub: hub})
			val, err := env.ExecuteActivity((&Activities{}).InvokeMethod, earlierInput())
			require.NoError(t, err)
			var res InvokeMethodResult
			require.NoError(t, val.Get(&res))
			assert.Equal(t, 1, hub.readCount())
			assert.Equal(t, tc.taken, res.EarlierTaken)
			if tc.taken {
				assert.Zero(t, hub.callCount(), "no second delivery")
				assert.Zero(t, d.takenCount())
				assert.Equal(t, tc.by, res.AcceptedBy)
				assert.False(t, res.Skipped)
				return
			}
			assert.Equal(t, 1, hub.callCount())
			assert.Equal(t, 1, d.takenCount())
		})
	}
}

// An earlier update that completed late on a device reporting the target version is followed, not
// skipped as "already on the version": the retry reports it as updated.
func TestInvokeMethodReadFirstEarlierBeforeSkipIf(t *testing.T) {
	d := newSimDevice(true)
	d.version, d.status, d.stamp, d.updateID = "2.0", "completed", scheduledAt.Add(-time.Minute), "u0"
	hub := d.hub(nil, nil)
	env, _ := newEnv(t, &Activities{Hub: hub})
	val, err := env.ExecuteActivity((&Activities{}).InvokeMethod, earlierInput())
	require.NoError(t, err)
	var res InvokeMethodResult
	require.NoError(t, val.Get(&res))
	assert.True(t, res.EarlierTaken)
	assert.False(t, res.Skipped)
	assert.Zero(t, hub.callCount())
}

func TestInvokeMethodReadFirstEarlierNeedsItsProperties(t *testing.T) {
	in := earlierInput()
	in.ReadFirst.Earlier.Property = "rebootTime"
	env, _ := newEnv(t, &Activities{Hub: newSimDevice(false).hub(nil, nil)})
	_, err := env.ExecuteActivity((&Activities{}).InvokeMethod, in)
	require.Error(t, err)
	assert.True(t, strings.Contains(err.Error(), `"rebootTime" is not among the properties read`), err.Error())
}

// Taken on a reboot's read: the reboot's rebootTime after the earlier read is evidence; the earlier
// request's ID (lastRebootRequestId) too; another request's ID is not.
func TestEvidenceTakenReboot(t *testing.T) {
	ev := Evidence{Property: "rebootTime", IDProperty: "lastRebootRequestId", ID: "rollout:r", Before: "2026-12-06T17:00:00.0000000Z"}
	for _, tc := range []struct {
		name  string
		read  GetTwinResult
		taken bool
	}{
		{"rebooted since", GetTwinResult{Reported: map[string]any{"rebootTime": "x"}, LastUpdated: map[string]string{"rebootTime": "2026-12-06T17:30:00Z"}}, true},
		{"not since", GetTwinResult{Reported: map[string]any{"rebootTime": "x"}, LastUpdated: map[string]string{"rebootTime": "2026-12-06T16:30:00Z"}}, false},
		{"never reported", GetTwinResult{}, false},
		{"no hub time", GetTwinResult{Reported: map[string]any{"rebootTime": "x"}, LastUpdated: map[string]string{"rebootTime": NoMetadata}}, false},
		{"by its ID", GetTwinResult{Reported: map[string]any{"rebootTime": "x", "lastRebootRequestId": "rollout:r"},
			LastUpdated: map[string]string{"rebootTime": "2026-12-06T16:30:00Z"}}, true},
		{"another request's", GetTwinResult{Reported: map[string]any{"rebootTime": "x", "lastRebootRequestId": "rollout:r:2"},
			LastUpdated: map[string]string{"rebootTime": "2026-12-06T17:30:00Z"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			taken, _ := ev.Taken(tc.read)
			assert.Equal(t, tc.taken, taken)
		})
	}
	assert.Equal(t, "2026-12-06T17:59:30.0000000Z", HubTimeBefore(scheduledAt), "ReadFirst's slack")
}
