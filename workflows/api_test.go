package workflows_test

import (
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
)

func TestRebootWorkflowID(t *testing.T) {
	assert.Equal(t, "reboot/dev1/r-42", workflows.RebootWorkflowID("dev1", "r-42"))
}

func TestRebootInputValidate(t *testing.T) {
	tests := []struct {
		name string
		in   workflows.RebootInput
		want []string // nil when valid
	}{
		{name: "defaults", in: workflows.RebootInput{DeviceID: "dev1"}},
		{name: "every legal character", in: workflows.RebootInput{DeviceID: "aZ09-:.+%_#*?!(),=@;$'", RequestID: "2f1c-77"}},
		{name: "128 characters", in: workflows.RebootInput{DeviceID: strings.Repeat("d", 128)}},
		{name: "bounds", in: workflows.RebootInput{DeviceID: "dev1", MethodTimeout: 300 * time.Second, Deadline: 24 * time.Hour}},
		{name: "smallest", in: workflows.RebootInput{DeviceID: "dev1", MethodTimeout: 5 * time.Second, Deadline: 20 * time.Second}},
		{name: "no device", in: workflows.RebootInput{}, want: []string{"device ID is required"}},
		{name: "slash in device", in: workflows.RebootInput{DeviceID: "dev/1"}, want: []string{`device ID "dev/1" is not a legal IoT Hub device ID`}},
		{name: "space in device", in: workflows.RebootInput{DeviceID: "dev 1"}, want: []string{"not a legal IoT Hub device ID"}},
		{name: "129 characters", in: workflows.RebootInput{DeviceID: strings.Repeat("d", 129)}, want: []string{"not a legal IoT Hub device ID"}},
		{name: "slash in request", in: workflows.RebootInput{DeviceID: "dev1", RequestID: "a/b"}, want: []string{`request ID "a/b"`}},
		{name: "method timeout too short", in: workflows.RebootInput{DeviceID: "dev1", MethodTimeout: 4 * time.Second}, want: []string{"method timeout 4s is outside"}},
		{name: "method timeout too long", in: workflows.RebootInput{DeviceID: "dev1", MethodTimeout: 301 * time.Second}, want: []string{"method timeout"}},
		{name: "negative", in: workflows.RebootInput{DeviceID: "dev1", Deadline: -time.Minute}, want: []string{"negative"}},
		{name: "deadline shorter than one invocation", in: workflows.RebootInput{DeviceID: "dev1", Deadline: time.Minute}, want: []string{"deadline 1m0s must lie between"}},
		{name: "deadline too long", in: workflows.RebootInput{DeviceID: "dev1", Deadline: 25 * time.Hour}, want: []string{"deadline"}},
		{name: "all problems at once", in: workflows.RebootInput{RequestID: "a b", MethodTimeout: time.Second},
			want: []string{"device ID is required", "request ID", "method timeout"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.in.Validate()
			if tc.want == nil {
				assert.NoError(t, err)
				return
			}
			if assert.Error(t, err) {
				for _, s := range tc.want {
					assert.Contains(t, err.Error(), s)
				}
			}
		})
	}
}
