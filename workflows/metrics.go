package workflows

import (
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// Metrics the workflows emit through workflow.GetMetricsHandler, which reaches the worker's
// Prometheus registry with the SDK's own metrics and their labels (namespace, task_queue,
// workflow_type) and emits nothing while a workflow replays, so that a worker that rebuilds a
// workflow from its history does not count its devices again. Emitting is no command: adding or
// moving these calls changes no workflow's history. Prometheus sees counters with _total.
//
// Device IDs are never labels (a fleet would make a series per device); rollout names are, since
// an operator runs few rollouts and watches each.
const (
	// MetricDeviceOperations counts Reboot and FirmwareUpdate executions by LabelOperation and
	// LabelResult, once each, when the workflow ends, and the devices of rollout shards, once a
	// run. A FirmwareUpdate with a reboot counts as a firmware operation and, through its Reboot
	// child, as a reboot operation; a shard's firmware device with a reboot as a firmware one.
	MetricDeviceOperations = "dmflow_device_operations"
	// MetricRolloutDevices is a gauge per rollout (LabelRollout) and LabelState: how many of its
	// devices are in each RolloutDeviceStates state, as the progress query counts them.
	MetricRolloutDevices = "dmflow_rollout_devices"
	// MetricRollouts counts the rollouts that ended, by LabelState (RolloutCompleted,
	// RolloutAborted, RolloutCancelled, RolloutFailed, RolloutEnded).
	MetricRollouts = "dmflow_rollouts"

	// LabelOperation is OperationFirmware or OperationReboot.
	LabelOperation = "operation"
	// LabelResult is DeviceUpdated, DeviceSkipped, DeviceRebooted, DeviceFailed or DeviceCancelled.
	LabelResult = "result"
	// LabelRollout is the rollout's name.
	LabelRollout = "rollout"
	// LabelState is a device state of RolloutDeviceStates (MetricRolloutDevices) or a final
	// rollout state (MetricRollouts).
	LabelState = "state"
)

// RolloutDeviceStates are the LabelState values of MetricRolloutDevices, one per count of
// RolloutProgress; they add up to its Total.
var RolloutDeviceStates = []string{"succeeded", "skipped", "failed", "cancelled", "not_started", "running", "pending"}

// countOperation counts one ended device operation. ok is the result of success; an error counts
// as DeviceCancelled when the workflow was cancelled, DeviceFailed otherwise.
func countOperation(ctx workflow.Context, operation, ok string, err error) {
	result := ok
	switch {
	case temporal.IsCanceledError(err):
		result = DeviceCancelled
	case err != nil:
		result = DeviceFailed
	}
	countResult(ctx, operation, result)
}

// countResult counts one device operation that ended with result.
func countResult(ctx workflow.Context, operation, result string) {
	workflow.GetMetricsHandler(ctx).WithTags(map[string]string{
		LabelOperation: operation,
		LabelResult:    result,
	}).Counter(MetricDeviceOperations).Inc(1)
}

// rolloutMetrics remembers what a rollout last emitted.
type rolloutMetrics struct {
	state   string
	changes int
	ended   bool
}

// observe sets the rollout's gauges and, once it has ended, counts it in MetricRollouts; setState
// calls it on every pass of the main loop and at the end. Counting the rows costs a pass over all
// of them (up to MaxRolloutDevices), so while devices run the gauges are set again only once
// 1% of the rollout's devices (at least one) have changed since; a change of state, a moment
// with no device running and the end always set them. Nothing is computed while replaying.
func (r *rollout) observe(ctx workflow.Context) {
	if workflow.IsReplaying(ctx) {
		return
	}
	m := &r.metrics
	ended := RolloutProgress{State: r.state}.Done()
	step := max(1, r.total()/100)
	if m.ended || (r.state == m.state && r.running > 0 && r.changes-m.changes < step && !ended) {
		return
	}
	m.state, m.changes, m.ended = r.state, r.changes, ended

	p := r.progress()
	h := workflow.GetMetricsHandler(ctx)
	for i, n := range []int{p.Succeeded, p.Skipped, p.Failed, p.Cancelled, p.NotStarted, p.Running, p.Pending} {
		h.WithTags(map[string]string{LabelRollout: r.in.Name, LabelState: RolloutDeviceStates[i]}).
			Gauge(MetricRolloutDevices).Update(float64(n))
	}
	if ended {
		h.WithTags(map[string]string{LabelState: r.state}).Counter(MetricRollouts).Inc(1)
	}
}
