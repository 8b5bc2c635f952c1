package workflows_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/workflows"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"github.com/uber-go/tally/v4"
	"go.temporal.io/sdk/client"
	sdktally "go.temporal.io/sdk/contrib/tally"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// meteredEnv is a workflow test environment whose metrics go to a tally test scope.
func meteredEnv(t *testing.T, workflowID string) (*testsuite.TestWorkflowEnvironment, tally.TestScope) {
	t.Helper()
	scope := tally.NewTestScope("", nil)
	var s testsuite.WorkflowTestSuite
	s.SetMetricsHandler(sdktally.NewMetricsHandler(scope))
	env := s.NewTestWorkflowEnvironment()
	env.RegisterActivity(&activities.Activities{})
	env.SetStartTime(start)
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: workflowID, TaskQueue: workflows.TaskQueue})
	return env, scope
}

// operations lists MetricDeviceOperations as "operation result=n", sorted. (The test environment
// does not tag workflow_type as a worker does.)
func operations(scope tally.TestScope) []string {
	var out []string
	for _, c := range scope.Snapshot().Counters() {
		if c.Name() == workflows.MetricDeviceOperations {
			tags := c.Tags()
			out = append(out, fmt.Sprintf("%s %s=%d", tags[workflows.LabelOperation], tags[workflows.LabelResult], c.Value()))
		}
	}
	sort.Strings(out)
	return out
}

func TestDeviceOperationMetrics(t *testing.T) {
	rebootIn := workflows.RebootInput{DeviceID: device, RequestID: "r1"}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, env *testsuite.TestWorkflowEnvironment)
		want []string
	}{
		{
			name: "reboot",
			run: func(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
				c := &calls{}
				rebootTwin(env)
				env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(deviceAnswers(c))
				env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c))
				env.ExecuteWorkflow(workflows.Reboot, rebootIn)
				require.NoError(t, env.GetWorkflowError())
			},
			want: []string{"reboot rebooted=1"},
		},
		{
			name: "reboot of an unknown device",
			run: func(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
				rebootTwin(env)
				env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(activities.InvokeMethodResult{},
					temporal.NewNonRetryableApplicationError("not registered", activities.ErrDeviceNotFound, nil))
				env.ExecuteWorkflow(workflows.Reboot, rebootIn)
				require.Error(t, env.GetWorkflowError())
			},
			want: []string{"reboot failed=1"},
		},
		{
			name: "reboot with invalid input",
			run: func(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
				env.ExecuteWorkflow(workflows.Reboot, workflows.RebootInput{})
				require.Error(t, env.GetWorkflowError())
			},
			want: []string{"reboot failed=1"},
		},
		{
			name: "reboot cancelled while waiting",
			run: func(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
				c := &calls{}
				rebootTwin(env)
				env.OnActivity(a.InvokeMethod, mock.Anything, mock.Anything).Return(deviceAnswers(c))
				env.OnActivity(a.WaitForReported, mock.Anything, mock.Anything).Return(deviceReports(c)).After(time.Hour)
				env.RegisterDelayedCallback(env.CancelWorkflow, time.Minute)
				env.ExecuteWorkflow(workflows.Reboot, rebootIn)
				require.True(t, temporal.IsCanceledError(env.GetWorkflowError()), "error %v", env.GetWorkflowError())
			},
			want: []string{"reboot cancelled=1"},
		},
		{
			name: "firmware updated",
			run: func(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
				happyPath(&fwCalls{}).on(env)
				env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
				require.NoError(t, env.GetWorkflowError())
			},
			want: []string{"firmware updated=1"},
		},
		{
			name: "firmware skipped",
			run: func(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
				c := &fwCalls{}
				m := happyPath(c)
				m.twin = []any{twinReports(c, fwVersion)}
				m.on(env)
				env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
				require.NoError(t, env.GetWorkflowError())
			},
			want: []string{"firmware skipped=1"},
		},
		{
			name: "firmware failed on the device",
			run: func(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
				m := happyPath(&fwCalls{})
				m.follow = []any{activities.FollowStagesResult{},
					temporal.NewNonRetryableApplicationError("checksum mismatch", activities.ErrDeviceError, nil)}
				m.on(env)
				env.ExecuteWorkflow(workflows.FirmwareUpdate, fwInput())
				require.Error(t, env.GetWorkflowError())
			},
			want: []string{"firmware failed=1"},
		},
		{
			// The Reboot child runs for real here and counts itself.
			name: "firmware with a reboot",
			run: func(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
				env.RegisterWorkflow(workflows.Reboot)
				c := &fwCalls{}
				m := happyPath(c)
				m.invoke = []any{func(ctx context.Context, in activities.InvokeMethodInput) (activities.InvokeMethodResult, error) {
					if in.Method == workflows.RebootMethod {
						return activities.InvokeMethodResult{Status: 200, Attempt: 1}, nil
					}
					return fwAccepts(c)(ctx, in)
				}}
				m.confirm = []any{func(ctx context.Context, in activities.WaitForReportedInput) (activities.WaitForReportedResult, error) {
					if in.Property == workflows.RebootTimeProperty {
						return activities.WaitForReportedResult{Value: start.Add(2 * time.Minute).Format(time.RFC3339Nano), Polls: 1}, nil
					}
					return fwConfirms(c)(ctx, in)
				}}
				m.on(env)
				in := fwInput()
				in.Reboot = true
				env.ExecuteWorkflow(workflows.FirmwareUpdate, in)
				require.NoError(t, env.GetWorkflowError())
			},
			want: []string{"firmware updated=1", "reboot rebooted=1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, scope := meteredEnv(t, "device-op")
			tc.run(t, env)
			require.True(t, env.IsWorkflowCompleted())
			assert.Equal(t, tc.want, operations(scope))
		})
	}
}

// rolloutGauges reads MetricRolloutDevices of the rollout as state → value.
func rolloutGauges(scope tally.TestScope, name string) map[string]float64 {
	out := map[string]float64{}
	for _, g := range scope.Snapshot().Gauges() {
		if g.Name() == workflows.MetricRolloutDevices && g.Tags()[workflows.LabelRollout] == name {
			out[g.Tags()[workflows.LabelState]] = g.Value()
		}
	}
	return out
}

// progressGauges is what the gauges must say for progress p.
func progressGauges(p workflows.RolloutProgress) map[string]float64 {
	return map[string]float64{
		"succeeded": float64(p.Succeeded), "skipped": float64(p.Skipped), "failed": float64(p.Failed),
		"cancelled": float64(p.Cancelled), "not_started": float64(p.NotStarted),
		"running": float64(p.Running), "pending": float64(p.Pending),
	}
}

// rolloutsEnded reads MetricRollouts as state → count.
func rolloutsEnded(scope tally.TestScope) map[string]int64 {
	out := map[string]int64{}
	for _, c := range scope.Snapshot().Counters() {
		if c.Name() == workflows.MetricRollouts {
			out[c.Tags()[workflows.LabelState]] += c.Value()
		}
	}
	return out
}

func meteredRolloutEnv(t *testing.T, sim *fleetSim) (*testsuite.TestWorkflowEnvironment, tally.TestScope) {
	t.Helper()
	env, scope := meteredEnv(t, workflows.RolloutWorkflowID(rolloutName))
	env.RegisterWorkflowWithOptions(sim.firmware, workflow.RegisterOptions{Name: "FirmwareUpdate"})
	env.RegisterWorkflowWithOptions(sim.reboot, workflow.RegisterOptions{Name: "Reboot"})
	env.OnGetVersion(workflows.ShardsChange, workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	return env, scope
}

func TestRolloutMetrics(t *testing.T) {
	t.Run("completed", func(t *testing.T) {
		sim := newFleetSim()
		sim.fail["dev-003"] = 1
		sim.onVer["dev-007"] = true
		env, scope := meteredRolloutEnv(t, sim)
		in := rolloutInput(12)
		in.Canary, in.Growth, in.MaxConcurrent, in.MaxFailures = 2, 2, 3, "50%"

		// While devices run, the gauges follow the progress query: a rollout of 12 devices sets
		// them at every change (1% of 12 rounds up to one device).
		var mid []string
		checked := 0
		for _, at := range []time.Duration{5 * time.Second, 25 * time.Second, 45 * time.Second} {
			env.RegisterDelayedCallback(func() {
				checked++
				p := rolloutProgress(t, env)
				if got, want := rolloutGauges(scope, rolloutName), progressGauges(p); !assert.ObjectsAreEqual(want, got) {
					mid = append(mid, fmt.Sprintf("at %s: gauges %v, progress %v", at, got, want))
				}
			}, at)
		}
		env.ExecuteWorkflow(workflows.Rollout, in)
		require.True(t, env.IsWorkflowCompleted())
		require.NoError(t, env.GetWorkflowError())
		assert.Empty(t, mid)
		assert.Equal(t, 3, checked)

		p := rolloutProgress(t, env)
		require.Equal(t, workflows.RolloutCompleted, p.State)
		require.Equal(t, 10, p.Succeeded)
		assert.Equal(t, progressGauges(p), rolloutGauges(scope, rolloutName))
		assert.Equal(t, map[string]int64{workflows.RolloutCompleted: 1}, rolloutsEnded(scope))
		// The device workflows are simulated here: they count nothing.
		assert.Empty(t, operations(scope))
	})

	t.Run("aborted", func(t *testing.T) {
		sim := newFleetSim()
		sim.fail["dev-000"], sim.fail["dev-001"] = 1, 1
		env, scope := meteredRolloutEnv(t, sim)
		in := rolloutInput(10)
		in.Canary, in.MaxFailures = 2, "1"
		env.ExecuteWorkflow(workflows.Rollout, in)
		p := abortedProgress(t, env.GetWorkflowError())
		require.Equal(t, 8, p.NotStarted)
		assert.Equal(t, progressGauges(p), rolloutGauges(scope, rolloutName))
		assert.Equal(t, map[string]int64{workflows.RolloutAborted: 1}, rolloutsEnded(scope))
	})

	// A rollout of 1,000 devices recounts its rows only once ten devices (1%) changed: at the
	// end the gauges are exact all the same.
	t.Run("large", func(t *testing.T) {
		sim := newFleetSim()
		env, scope := meteredRolloutEnv(t, sim)
		in := rolloutInput(1000)
		in.Canary, in.Growth, in.MaxConcurrent = 100, 10, 200
		env.ExecuteWorkflow(workflows.Rollout, in)
		require.NoError(t, env.GetWorkflowError())
		p := rolloutProgress(t, env)
		require.Equal(t, 1000, p.Succeeded)
		assert.Equal(t, progressGauges(p), rolloutGauges(scope, rolloutName))
		assert.Equal(t, map[string]int64{workflows.RolloutCompleted: 1}, rolloutsEnded(scope))
	})
}

// The labels carry no device ID: a fleet would make a series per device.
func TestMetricLabelsHoldNoDeviceID(t *testing.T) {
	sim := newFleetSim()
	env, scope := meteredRolloutEnv(t, sim)
	env.ExecuteWorkflow(workflows.Rollout, rolloutInput(3))
	require.NoError(t, env.GetWorkflowError())
	snap := scope.Snapshot()
	var tags []map[string]string
	for _, c := range snap.Counters() {
		tags = append(tags, c.Tags())
	}
	for _, g := range snap.Gauges() {
		tags = append(tags, g.Tags())
	}
	require.NotEmpty(t, tags)
	for _, ts := range tags {
		for k, v := range ts {
			assert.False(t, strings.HasPrefix(v, "dev-"), "label %s=%s", k, v)
		}
	}
}
