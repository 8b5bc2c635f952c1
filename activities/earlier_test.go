package activities

import (
	"context"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEarlierTaken: the guard of a retry that is a new request decides, from the read alone and
// on both device contracts, whether the device took an earlier request it is at or finished.
func TestEarlierTaken(t *testing.T) {
	const before = "2026-05-01T10:00:00.0000000Z"
	later, earlier := "2026-05-01T10:00:05.0000000Z", "2026-05-01T09:00:00.0000000Z"
	fw := Evidence{Property: protocol.PropFirmwareStatus, IDProperty: protocol.PropFirmwareUpdateID}
	reboot := Evidence{Property: "rebootTime", IDProperty: protocol.PropLastRebootRequestID}
	stages := protocol.FirmwareStages
	read := func(status, id, at string) GetTwinResult {
		r := GetTwinResult{Reported: map[string]any{}, LastUpdated: map[string]string{}}
		if status != "" {
			r.Reported[protocol.PropFirmwareStatus], r.LastUpdated[protocol.PropFirmwareStatus] = status, at
		}
		if id != "" {
			r.Reported[protocol.PropFirmwareUpdateID], r.LastUpdated[protocol.PropFirmwareUpdateID] = id, at
		}
		return r
	}
	tests := []struct {
		name    string
		earlier Earlier
		ev      Evidence
		read    GetTwinResult
		want    *EarlierTaken
	}{
		{"dmflow: an earlier update running", Earlier{IDs: []string{"r", "r:2"}, Before: before, Taken: stages}, fw,
			read("downloading", "r", later), &EarlierTaken{ID: "r", By: "id", Value: "downloading", Before: before}},
		{"dmflow: an earlier update completed", Earlier{IDs: []string{"r"}, Before: before, Taken: stages}, fw,
			read("completed", "r", later), &EarlierTaken{ID: "r", By: "id", Value: "completed", Before: before}},
		{"dmflow: the ID decides, not the time", Earlier{IDs: []string{"r"}, Before: before, Taken: stages}, fw,
			read("applying", "r", earlier), &EarlierTaken{ID: "r", By: "id", Value: "applying", Before: before}},
		{"dmflow: an earlier update that failed may be repeated", Earlier{IDs: []string{"r"}, Before: before, Taken: stages}, fw,
			read("error", "r", later), nil},
		{"dmflow: another request's update is not ours", Earlier{IDs: []string{"r"}, Before: before, Taken: stages}, fw,
			read("downloading", "other-tool", later), nil},
		{"tutorial: stages reported after the first read", Earlier{IDs: []string{"r"}, Before: before, Taken: stages}, fw,
			read("applying", "", later), &EarlierTaken{By: "changed", Value: "applying", Before: before}},
		{"tutorial: completed after the first read", Earlier{IDs: []string{"r"}, Before: before, Taken: stages}, fw,
			read("completed", "", later), &EarlierTaken{By: "changed", Value: "completed", Before: before}},
		{"tutorial: completed before the first read is an older update", Earlier{IDs: []string{"r"}, Before: before, Taken: stages}, fw,
			read("completed", "", earlier), nil},
		{"tutorial: standBy after a restart shows no update", Earlier{IDs: []string{"r"}, Before: before, Taken: stages}, fw,
			read("standBy", "", later), nil},
		{"tutorial: nothing reported", Earlier{IDs: []string{"r"}, Before: "", Taken: stages}, fw, read("", "", ""), nil},
		{"tutorial: nothing reported before the first read", Earlier{IDs: []string{"r"}, Before: "", Taken: stages}, fw,
			read("downloading", "", later), &EarlierTaken{By: "changed", Value: "downloading", Before: ""}},
		{"no hub times: a stage counts, erring towards no call", Earlier{IDs: []string{"r"}, Before: NoMetadata, Taken: stages}, fw,
			read("applying", "", NoMetadata), &EarlierTaken{By: "changed", Value: "applying", Before: NoMetadata}},
		{"first read unknown: reports since the first request, less the slack", Earlier{IDs: []string{"r"}, Since: time.Date(2026, 5, 1, 10, 0, 30, 0, time.UTC), Taken: stages}, fw,
			read("downloading", "", later), &EarlierTaken{By: "changed", Value: "downloading", Before: before}},
		{"first read unknown: older reports do not count", Earlier{IDs: []string{"r"}, Since: time.Date(2026, 5, 1, 10, 1, 0, 0, time.UTC), Taken: stages}, fw,
			read("downloading", "", later), nil},
		{"reboot: any rebootTime after the first read", Earlier{IDs: []string{"rollout:r"}, Before: before}, reboot,
			GetTwinResult{Reported: map[string]any{"rebootTime": "2026-05-01 12:00:05.000000"}, LastUpdated: map[string]string{"rebootTime": later}},
			&EarlierTaken{By: "changed", Value: "2026-05-01 12:00:05.000000", Before: before}},
		{"reboot: by its request ID", Earlier{IDs: []string{"rollout:r"}, Before: before}, reboot,
			GetTwinResult{Reported: map[string]any{"rebootTime": "x", protocol.PropLastRebootRequestID: "rollout:r"}, LastUpdated: map[string]string{"rebootTime": earlier}},
			&EarlierTaken{ID: "rollout:r", By: "id", Value: "x", Before: before}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.earlier.taken(tc.read, tc.ev))
		})
	}
}

// TestInvokeMethodEarlierMakesNoCall: a retry whose read shows an earlier request under way
// returns it, with its baseline as EvidenceBefore, and calls nothing; one whose read shows none
// calls.
func TestInvokeMethodEarlierMakesNoCall(t *testing.T) {
	for _, tc := range []struct {
		name      string
		status    string
		wantCalls int
	}{
		{"an earlier update under way", "applying", 0},
		{"none", "standBy", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newSimDevice(false)
			d.status = tc.status
			hub := d.hub(nil, nil)
			in := readFirstInput()
			in.ReadFirst.Earlier = &Earlier{IDs: []string{"u0"}, Before: hubTime(scheduledAt.Add(-3 * time.Hour)), Taken: protocol.FirmwareStages}
			res, err := invokeOn(t, hub, in)
			require.NoError(t, err)
			assert.Equal(t, tc.wantCalls, hub.callCount())
			if tc.wantCalls == 0 {
				require.NotNil(t, res.Earlier)
				assert.Equal(t, "changed", res.Earlier.By)
				assert.Equal(t, in.ReadFirst.Earlier.Before, res.EvidenceBefore, "what follows judges by the earlier request's baseline")
			} else {
				assert.Nil(t, res.Earlier)
			}
		})
	}
}

// TestInvokeMethodFailOffline: asked to, InvokeMethod fails at the hub's first DeviceNotOnline
// with the non-retryable ErrDeviceNotOnline; otherwise the answer stays a retryable error.
func TestInvokeMethodFailOffline(t *testing.T) {
	for _, fail := range []bool{true, false} {
		hub := &fakeHub{call: func(context.Context, int, hubconn.MethodCall) (hubconn.MethodAnswer, error) {
			return hubconn.MethodAnswer{}, hubErr(404, 404103, "DeviceNotOnline")
		}}
		_, err := invokeOn(t, hub, InvokeMethodInput{DeviceID: "dev-1", Method: "rebootDevice", FailOffline: fail})
		if fail {
			requireNonRetryable(t, err, ErrDeviceNotOnline)
			assert.Contains(t, err.Error(), "404103")
		} else {
			requireRetryable(t, err)
		}
	}
}

func TestEarlierValidation(t *testing.T) {
	in := readFirstInput()
	in.ReadFirst.Earlier = &Earlier{Before: "x"}
	_, err := invokeOn(t, &fakeHub{}, in)
	requireNonRetryable(t, err, ErrBadRequest)
	assert.Contains(t, err.Error(), "earlier names no earlier request")

	in = readFirstInput()
	in.Evidence = nil
	in.ReadFirst.Earlier = &Earlier{IDs: []string{"u0"}}
	_, err = invokeOn(t, &fakeHub{}, in)
	requireNonRetryable(t, err, ErrBadRequest)
	assert.Contains(t, err.Error(), "earlier needs evidence")
}
