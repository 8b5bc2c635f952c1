package workflows_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/workflows"
)

// versionCounts is what the mocked CountVersions answers.
var versionCounts = activities.VersionCounts{
	Query:    activities.VersionsQuery("tags.ring = 'beta'"),
	Versions: []activities.VersionCount{{Version: "2.1.0", Devices: 6}, {Version: "2.0.0", Devices: 4}},
	None:     2, Total: 12, Pages: 1,
}

// countCalls records the CountVersions attempts the workflow made, at the test clock's time.
type countCalls struct {
	env      *testsuite.TestWorkflowEnvironment
	mu       sync.Mutex
	inputs   []activities.CountVersionsInput
	attempts []time.Time
}

func (c *countCalls) record(_ context.Context, in activities.CountVersionsInput) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inputs = append(c.inputs, in)
	c.attempts = append(c.attempts, c.env.Now())
	return len(c.inputs)
}

func versionsEnv(t *testing.T) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterActivity(&activities.Activities{})
	env.SetStartTime(start)
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: workflows.FleetVersionsWorkflowID("r1"), TaskQueue: workflows.TaskQueue})
	return env
}

func TestFleetVersions(t *testing.T) {
	env := versionsEnv(t)
	c := countCalls{env: env}
	env.OnActivity(a.CountVersions, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.CountVersionsInput) (activities.VersionCounts, error) {
			c.record(ctx, in)
			return versionCounts, nil
		})
	env.ExecuteWorkflow(workflows.FleetVersions, workflows.FleetVersionsInput{Query: "SELECT * FROM devices WHERE tags.ring = 'beta'"})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res workflows.FleetVersionsResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Equal(t, versionCounts, res)
	assert.Equal(t, []activities.CountVersionsInput{{Condition: "tags.ring = 'beta'"}}, c.inputs,
		"the activity gets the condition alone, read from the whole query")
	assert.Equal(t, "fleet-versions/r1", workflows.FleetVersionsWorkflowID("r1"))
}

func TestFleetVersionsInvalidInput(t *testing.T) {
	for _, q := range []string{"SELECT COUNT() FROM devices", "tags.ring = 'beta' GROUP BY tags.ring", "tags.ring = 'beta"} {
		t.Run(q, func(t *testing.T) {
			require.Error(t, workflows.FleetVersionsInput{Query: q}.Validate())
			env := versionsEnv(t)
			env.OnActivity(a.CountVersions, mock.Anything, mock.Anything).Return(
				func(context.Context, activities.CountVersionsInput) (activities.VersionCounts, error) {
					t.Error("CountVersions called for an invalid query")
					return activities.VersionCounts{}, nil
				})
			env.ExecuteWorkflow(workflows.FleetVersions, workflows.FleetVersionsInput{Query: q})
			err := env.GetWorkflowError()
			var appErr *temporal.ApplicationError
			require.True(t, errors.As(err, &appErr), "want an ApplicationError in %v", err)
			assert.Equal(t, workflows.ErrInvalidInput, appErr.Type())
			assert.True(t, appErr.NonRetryable())
		})
	}
	assert.NoError(t, workflows.FleetVersionsInput{}.Validate(), "no query counts every device")
}

func TestFleetVersionsThrottled(t *testing.T) {
	// Throttled twice, then answered: retried 5 s, then 10 s later.
	env := versionsEnv(t)
	c := countCalls{env: env}
	env.OnActivity(a.CountVersions, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.CountVersionsInput) (activities.VersionCounts, error) {
			if c.record(ctx, in) <= 2 {
				return activities.VersionCounts{}, errors.New("query on devices: IoT Hub answered HTTP 429, code 429001")
			}
			return versionCounts, nil
		})
	env.ExecuteWorkflow(workflows.FleetVersions, workflows.FleetVersionsInput{Query: "tags.ring = 'beta'"})
	require.NoError(t, env.GetWorkflowError())
	require.Len(t, c.attempts, 3)
	assert.Equal(t, 5*time.Second, c.attempts[1].Sub(c.attempts[0]).Round(time.Second))
	assert.Equal(t, 10*time.Second, c.attempts[2].Sub(c.attempts[1]).Round(time.Second))

	// Throttled for good: the workflow gives up after the retry budget, with the hub's error.
	env = versionsEnv(t)
	c = countCalls{env: env}
	env.OnActivity(a.CountVersions, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.CountVersionsInput) (activities.VersionCounts, error) {
			c.record(ctx, in)
			return activities.VersionCounts{}, errors.New("query on devices: IoT Hub answered HTTP 429, code 429001")
		})
	env.ExecuteWorkflow(workflows.FleetVersions, workflows.FleetVersionsInput{})
	err := env.GetWorkflowError()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "HTTP 429")
	c.mu.Lock()
	defer c.mu.Unlock()
	require.Greater(t, len(c.attempts), 5)
	assert.LessOrEqual(t, c.attempts[len(c.attempts)-1].Sub(c.attempts[0]), 10*time.Minute, "within the retry budget")
}

func TestFleetVersionsBadQuery(t *testing.T) {
	// The hub refuses the condition: no retry, the hub's reason in the failure.
	env := versionsEnv(t)
	c := countCalls{env: env}
	env.OnActivity(a.CountVersions, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.CountVersionsInput) (activities.VersionCounts, error) {
			c.record(ctx, in)
			return activities.VersionCounts{}, temporal.NewNonRetryableApplicationError(
				"query on devices: IoT Hub rejected the request (HTTP 400, code 400004): syntax error at line 1, column 97: expected a value",
				activities.ErrBadRequest, nil)
		})
	env.ExecuteWorkflow(workflows.FleetVersions, workflows.FleetVersionsInput{Query: "tags.ring == 'beta'"})
	err := env.GetWorkflowError()
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr), "want an ApplicationError in %v", err)
	assert.Equal(t, activities.ErrBadRequest, appErr.Type())
	assert.Contains(t, err.Error(), "column 97")
	assert.Len(t, c.inputs, 1, "a bad query is not retried")
}
