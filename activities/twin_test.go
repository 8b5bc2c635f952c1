package activities

import (
	"context"
	"testing"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func getTwin(t *testing.T, a *Activities, in GetTwinInput) (GetTwinResult, error) {
	t.Helper()
	env, _ := newEnv(t, a)
	val, err := env.ExecuteActivity((&Activities{}).GetTwin, in)
	var res GetTwinResult
	if err == nil {
		require.NoError(t, val.Get(&res))
	}
	return res, err
}

func TestGetTwinReturnsOnlyWhatWasAsked(t *testing.T) {
	hub := &fakeHub{twin: func(context.Context, int) (*iotservice.Twin, error) {
		return reportedTwin(7, map[string]any{
			"firmwareVersion": "1.0.0",
			"firmwareStatus":  "standBy",
			"logTime":         "2026-05-01T12:00:00Z",
			"firmware":        map[string]any{"slot": "b"},
			"cleared":         nil,
			"bulk":            map[string]any{"a": "lots of data the workflow does not need"},
			// The hub's times: firmware.slot has none (a hub that sends no metadata for it).
			"$metadata": map[string]any{
				"$lastUpdated":    "2026-05-01T12:00:01.000Z",
				"firmwareVersion": map[string]any{"$lastUpdated": "2026-04-01T08:00:00.123Z"},
				"firmwareStatus":  map[string]any{"$lastUpdated": "2026-05-01T12:00:01.000Z"},
			},
		}), nil
	}}
	res, err := getTwin(t, &Activities{Hub: hub}, GetTwinInput{
		DeviceID:   "dev1",
		Properties: []string{"firmwareVersion", "firmwareStatus", "firmware.slot", "cleared", "never"},
	})
	require.NoError(t, err)
	assert.Equal(t, GetTwinResult{
		Reported: map[string]any{"firmwareVersion": "1.0.0", "firmwareStatus": "standBy", "firmware.slot": "b"},
		LastUpdated: map[string]string{
			"firmwareVersion": "2026-04-01T08:00:00.123Z",
			"firmwareStatus":  "2026-05-01T12:00:01.000Z",
			"firmware.slot":   NoMetadata,
		},
		Version: 7,
		Attempt: 1,
	}, res)
	assert.Equal(t, 1, hub.readCount())
}

func TestGetTwinNothingReported(t *testing.T) {
	hub := &fakeHub{twin: func(context.Context, int) (*iotservice.Twin, error) {
		return &iotservice.Twin{DeviceID: "dev1"}, nil // never connected
	}}
	res, err := getTwin(t, &Activities{Hub: hub}, GetTwinInput{DeviceID: "dev1", Properties: []string{"firmwareVersion"}})
	require.NoError(t, err)
	assert.Nil(t, res.Reported)
	assert.Equal(t, 0, res.Version)
}

func TestGetTwinErrors(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantType string // "" for retryable
	}{
		{"unknown device", hubErr(404, 404001, "DeviceNotFound"), ErrDeviceNotFound},
		{"unauthorized", hubErr(401, 401002, "IotHubUnauthorizedAccess"), ErrUnauthorized},
		{"throttled", hubErr(429, 429001, "ThrottlingException"), ""},
		{"server error", hubErr(503, 503001, "ServiceUnavailable"), ""},
		{"read timeout", context.DeadlineExceeded, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{twin: func(context.Context, int) (*iotservice.Twin, error) { return nil, tc.err }}
			_, err := getTwin(t, &Activities{Hub: hub}, GetTwinInput{DeviceID: "dev1", Properties: []string{"firmwareVersion"}})
			if tc.wantType == "" {
				requireRetryable(t, err)
			} else {
				requireNonRetryable(t, err, tc.wantType)
			}
			assert.Contains(t, err.Error(), "read twin on dev1")
			assert.Equal(t, 1, hub.readCount(), "one read per attempt; Temporal retries")
		})
	}
}

func TestGetTwinValidation(t *testing.T) {
	many := make([]string, 33)
	for i := range many {
		many[i] = "p"
	}
	tests := []struct {
		name string
		in   GetTwinInput
		want string
	}{
		{"no device", GetTwinInput{Properties: []string{"firmwareVersion"}}, "device ID is empty"},
		{"no properties", GetTwinInput{DeviceID: "dev1"}, "ask for 1 to 32 reported properties, not 0"},
		{"too many properties", GetTwinInput{DeviceID: "dev1", Properties: many}, "not 33"},
		{"bad path", GetTwinInput{DeviceID: "dev1", Properties: []string{"firmware..status"}}, `property path "firmware..status"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{}
			_, err := getTwin(t, &Activities{Hub: hub}, tc.in)
			requireNonRetryable(t, err, ErrBadRequest)
			assert.Contains(t, err.Error(), tc.want)
			assert.Equal(t, 0, hub.readCount())
		})
	}
}
