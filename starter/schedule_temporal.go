package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/temporalconn"
	"github.com/dmflow/dmflow/workflows"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
)

// scheduleAPI is what the schedule commands ask of Temporal's Schedules, by schedule name (the
// schedule ID). Only schedules whose action starts the Rollout workflow are dmflow's: the others
// are listed by temporal schedule list, not here, and refused by name. The commands' logic runs
// against this interface, so that tests drive it with a fake.
type scheduleAPI interface {
	// Create creates the schedule; a name taken is a scheduleExistsError.
	Create(ctx context.Context, req scheduleRequest) error
	// Describe describes the schedule, with the state of its newest runs rollouts (at most
	// runStates of them are looked up: each is a call).
	Describe(ctx context.Context, name string, runStates int) (scheduleInfo, error)
	// List lists dmflow's schedules, with the state of each one's newest run. Temporal lists
	// schedules from its visibility store, which can lag a create or delete by a moment.
	List(ctx context.Context) ([]scheduleInfo, error)
	Pause(ctx context.Context, name, note string) error
	Unpause(ctx context.Context, name, note string) error
	// Trigger asks for a run now; the schedule's overlap policy (skip) applies.
	Trigger(ctx context.Context, name string) error
	// Delete deletes the schedule; the rollouts it started are not touched.
	Delete(ctx context.Context, name string) error
	// ScheduleURL links the schedule in the Temporal Web UI.
	ScheduleURL(name string) string
	Close()
}

// scheduleRequest is a schedule to create.
type scheduleRequest struct {
	Name          string
	Timing        scheduleTiming
	Input         workflows.RolloutInput
	TaskQueue     string
	CatchupWindow time.Duration
	Paused        bool
	Note          string
}

// scheduleTiming is when a schedule runs: a cron expression in a time zone, or an interval with an
// offset. It travels in the schedule's memo as given: Temporal keeps a cron expression only
// translated into calendar ranges.
type scheduleTiming struct {
	Cron     string       `json:"cron,omitempty"`
	TimeZone string       `json:"timeZone,omitempty"`
	Interval textDuration `json:"interval,omitempty"`
	Offset   textDuration `json:"offset,omitempty"`
}

// textDuration is a duration written as Go writes it ("1h30m0s") in JSON.
type textDuration time.Duration

func (d textDuration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *textDuration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = textDuration(v)
	return err
}

// scheduleInfo is a schedule as the commands show it.
type scheduleInfo struct {
	Name   string         `json:"name"`
	Timing scheduleTiming `json:"timing"`
	// When and Rollout say in words when it runs and what each run does.
	When    string `json:"when"`
	Rollout string `json:"rollout"`
	// Input is the rollout spec each run starts with (describe only).
	Input     *workflows.RolloutInput `json:"input,omitempty"`
	TaskQueue string                  `json:"taskQueue,omitempty"`
	Paused    bool                    `json:"paused"`
	Note      string                  `json:"note,omitempty"`
	// Overlap is Temporal's overlap policy (skip for dmflow's); CatchupWindow bounds how late a
	// missed run may still start.
	Overlap       string       `json:"overlapPolicy,omitempty"`
	CatchupWindow textDuration `json:"catchupWindow,omitempty"`
	// NextRuns are the next scheduled times (UTC), at most 10 (describe) or 5 (list).
	NextRuns []time.Time `json:"nextRuns"`
	// RecentRuns are the newest runs first, at most 10 (describe) or 5 (list).
	RecentRuns []scheduledRun `json:"recentRuns"`
	// Running names the schedule's rollouts that run now.
	Running []string `json:"running,omitempty"`
	// Actions counts the runs started; SkippedOverlap those skipped because a rollout still ran;
	// MissedCatchup those missed by more than the catch-up window.
	Actions        int       `json:"actions"`
	SkippedOverlap int       `json:"skippedOverlap"`
	MissedCatchup  int       `json:"missedCatchupWindow"`
	Created        time.Time `json:"created,omitzero"`
	URL            string    `json:"url"`
}

// scheduledRun is one run of a schedule: a rollout.
type scheduledRun struct {
	Rollout     string    `json:"rollout"`
	WorkflowID  string    `json:"workflowId"`
	ScheduledAt time.Time `json:"scheduledAt"`
	StartedAt   time.Time `json:"startedAt"`
	// State is the rollout's state (its DmflowRolloutState: running, completed, aborted, …), or
	// the workflow's status when the rollout set none (not yet picked up by a worker; terminated);
	// empty when not looked up.
	State string `json:"state,omitempty"`
}

// rolloutWorkflowType is the workflow type name of workflows.Rollout, as the worker registers it
// (the function's name) and a schedule's action names it.
const rolloutWorkflowType = "Rollout"

// scheduleMemoKey holds a scheduleMemo in the schedule's memo, and in each run's.
const scheduleMemoKey = "dmflowSchedule"

// scheduleMemo describes a schedule in its memo, which the Temporal UI shows.
type scheduleMemo struct {
	Schedule string         `json:"schedule"`
	Timing   scheduleTiming `json:"timing"`
	Rollout  string         `json:"rollout"`
}

// scheduleNotFoundError says no schedule of that name exists.
type scheduleNotFoundError struct{ name, namespace string }

func (e scheduleNotFoundError) Error() string {
	return fmt.Sprintf("schedule %q not found in namespace %s: list schedules with starter schedule list", e.name, e.namespace)
}

// scheduleExistsError refuses a create under a name taken.
type scheduleExistsError struct{ name string }

func (e scheduleExistsError) Error() string {
	return fmt.Sprintf("schedule %q exists: choose another name, or delete it first with starter schedule delete %s (rollouts it started keep running)", e.name, e.name)
}

// notRolloutScheduleError refuses a schedule that does not start dmflow rollouts.
type notRolloutScheduleError struct{ name, action string }

func (e notRolloutScheduleError) Error() string {
	return fmt.Sprintf("schedule %q is not a dmflow rollout schedule (its action %s): manage it with temporal schedule", e.name, e.action)
}

func (t *temporalClient) ScheduleURL(name string) string {
	return temporalconn.ScheduleURL(t.uiURL, t.namespace, name)
}

func (t *temporalClient) Create(ctx context.Context, req scheduleRequest) error {
	spec := client.ScheduleSpec{TimeZoneName: req.Timing.TimeZone}
	if req.Timing.Cron != "" {
		spec.CronExpressions = []string{req.Timing.Cron}
	} else {
		spec.Intervals = []client.ScheduleIntervalSpec{{Every: time.Duration(req.Timing.Interval), Offset: time.Duration(req.Timing.Offset)}}
	}
	in := req.Input
	memo := map[string]any{scheduleMemoKey: scheduleMemo{Schedule: req.Name, Timing: req.Timing, Rollout: describeInput(in)}}
	// The Rollout upserts its own search attributes when it starts (DmflowRollout, its state);
	// these, set at the start, list a run under its operation and version from the first moment.
	attrs := []temporal.SearchAttributeUpdate{workflows.SearchAttrOperation.ValueSet(in.Operation)}
	if in.Firmware != nil {
		attrs = append(attrs, workflows.SearchAttrTargetVersion.ValueSet(in.Firmware.Version))
	}
	_, err := t.sc.Create(ctx, client.ScheduleOptions{
		ID:   req.Name,
		Spec: spec,
		Action: &client.ScheduleWorkflowAction{
			// Temporal appends "-<scheduled time>" to this ID for each run: the Rollout takes
			// its name from the result (workflows.ScheduledRolloutName).
			ID:                    workflows.RolloutWorkflowID(req.Name),
			Workflow:              rolloutWorkflowType,
			Args:                  []any{in},
			TaskQueue:             req.TaskQueue,
			Memo:                  memo,
			TypedSearchAttributes: temporal.NewSearchAttributes(attrs...),
			StaticSummary:         "scheduled rollout (" + req.Name + "): " + describeInput(in),
		},
		// One rollout of a schedule at a time: a run due while the previous one still runs
		// (waiting for a window, paused, slow) is skipped, not queued.
		Overlap:       enumspb.SCHEDULE_OVERLAP_POLICY_SKIP,
		CatchupWindow: req.CatchupWindow,
		Paused:        req.Paused,
		Note:          req.Note,
		Memo:          memo,
	})
	var invalid *serviceerror.InvalidArgument
	switch {
	case errors.Is(err, temporal.ErrScheduleAlreadyRunning):
		return scheduleExistsError{name: req.Name}
	case errors.As(err, &invalid) && strings.Contains(strings.ToLower(invalid.Message), "search attribute"):
		return fmt.Errorf("Temporal refused the schedule: %s: register dmflow's search attributes in namespace %s (see the README, Configuration)", invalid.Message, t.namespace)
	case errors.As(err, &invalid):
		return cli.UsageError{Err: fmt.Errorf("Temporal refused the schedule: %s", invalid.Message)}
	}
	return err
}

// describe fetches the schedule and checks it is a rollout schedule.
func (t *temporalClient) describe(ctx context.Context, name string) (*client.ScheduleDescription, *client.ScheduleWorkflowAction, error) {
	d, err := t.sc.GetHandle(ctx, name).Describe(ctx)
	if err != nil {
		return nil, nil, t.scheduleErr(name, err)
	}
	action, ok := d.Schedule.Action.(*client.ScheduleWorkflowAction)
	if !ok {
		return nil, nil, notRolloutScheduleError{name: name, action: fmt.Sprintf("is a %T", d.Schedule.Action)}
	}
	if wt, _ := action.Workflow.(string); wt != rolloutWorkflowType {
		return nil, nil, notRolloutScheduleError{name: name, action: fmt.Sprintf("starts workflow %v", action.Workflow)}
	}
	return d, action, nil
}

func (t *temporalClient) Describe(ctx context.Context, name string, runStates int) (scheduleInfo, error) {
	d, action, err := t.describe(ctx, name)
	if err != nil {
		return scheduleInfo{}, err
	}
	info := scheduleInfo{Name: name, TaskQueue: action.TaskQueue, URL: t.ScheduleURL(name),
		Actions: d.Info.NumActions, SkippedOverlap: d.Info.NumActionsSkippedOverlap, MissedCatchup: d.Info.NumActionsMissedCatchupWindow,
		Created: d.Info.CreatedAt, NextRuns: d.Info.NextActionTimes}
	if len(action.Args) == 1 {
		if p, ok := action.Args[0].(*commonpb.Payload); ok {
			var in workflows.RolloutInput
			if err := converter.GetDefaultDataConverter().FromPayload(p, &in); err == nil {
				info.Input = &in
				info.Rollout = describeInput(in)
			}
		}
	}
	if d.Schedule.State != nil {
		info.Paused, info.Note = d.Schedule.State.Paused, d.Schedule.State.Note
	}
	if d.Schedule.Policy != nil {
		info.Overlap = strings.ToLower(strings.TrimPrefix(d.Schedule.Policy.Overlap.String(), "SCHEDULE_OVERLAP_POLICY_"))
		info.CatchupWindow = textDuration(d.Schedule.Policy.CatchupWindow)
	}
	t.applyMemo(&info, d.Memo, d.Schedule.Spec)
	for _, ex := range d.Info.RunningWorkflows {
		info.Running = append(info.Running, workflows.ScheduledRolloutName(ex.WorkflowID))
	}
	info.RecentRuns = t.runs(ctx, d.Info.RecentActions, runStates)
	return info, nil
}

// runs turns a schedule's recent actions (oldest first) into runs, newest first, looking up the
// state of the first runStates.
func (t *temporalClient) runs(ctx context.Context, actions []client.ScheduleActionResult, runStates int) []scheduledRun {
	runs := []scheduledRun{}
	for _, a := range slices.Backward(actions) {
		if a.StartWorkflowResult == nil {
			continue
		}
		id := a.StartWorkflowResult.WorkflowID
		r := scheduledRun{Rollout: workflows.ScheduledRolloutName(id), WorkflowID: id, ScheduledAt: a.ScheduleTime, StartedAt: a.ActualTime}
		if len(runs) < runStates {
			r.State = t.runState(ctx, id)
		}
		runs = append(runs, r)
	}
	return runs
}

// runState is a run's rollout state from its DmflowRolloutState search attribute, which the
// rollout keeps current, so no worker needs to answer; else the workflow's status.
func (t *temporalClient) runState(ctx context.Context, workflowID string) string {
	desc, err := t.tc.DescribeWorkflowExecution(ctx, workflowID, "")
	if err != nil {
		var nf *serviceerror.NotFound
		if errors.As(err, &nf) {
			return "gone (past the namespace's retention)"
		}
		return "unknown (" + err.Error() + ")"
	}
	wi := desc.GetWorkflowExecutionInfo()
	if p := wi.GetSearchAttributes().GetIndexedFields()[workflows.SearchAttrRolloutState.GetName()]; p != nil {
		var state string
		if converter.GetDefaultDataConverter().FromPayload(p, &state) == nil && state != "" {
			if wi.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_TERMINATED || wi.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_TIMED_OUT {
				// Ended from outside: the rollout had no say in its last state.
				return strings.ToLower(strings.TrimPrefix(wi.GetStatus().String(), "WORKFLOW_EXECUTION_STATUS_"))
			}
			return state
		}
	}
	if wi.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		return "starting (no worker picked it up yet)"
	}
	return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(wi.GetStatus().String(), "WORKFLOW_EXECUTION_STATUS_"), "_", " "))
}

// applyMemo takes the timing and the rollout in words from the schedule's memo, or else describes
// the timing from Temporal's spec (a schedule dmflow did not create).
func (t *temporalClient) applyMemo(info *scheduleInfo, memo *commonpb.Memo, spec *client.ScheduleSpec) {
	var m scheduleMemo
	if p := memo.GetFields()[scheduleMemoKey]; p != nil && converter.GetDefaultDataConverter().FromPayload(p, &m) == nil {
		info.Timing = m.Timing
		if info.Rollout == "" {
			info.Rollout = m.Rollout
		}
	} else if spec != nil {
		info.Timing.TimeZone = spec.TimeZoneName
		if len(spec.Intervals) > 0 {
			info.Timing.Interval, info.Timing.Offset = textDuration(spec.Intervals[0].Every), textDuration(spec.Intervals[0].Offset)
		} else if len(spec.CronExpressions) > 0 {
			info.Timing.Cron = spec.CronExpressions[0]
		} else if len(spec.Calendars) > 0 {
			b, _ := json.Marshal(spec.Calendars)
			info.Timing.Cron = "calendar " + string(b)
		}
	}
	info.When = describeTiming(info.Timing)
}

func (t *temporalClient) List(ctx context.Context) ([]scheduleInfo, error) {
	it, err := t.sc.List(ctx, client.ScheduleListOptions{PageSize: 100})
	if err != nil {
		return nil, err
	}
	var out []scheduleInfo
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return nil, err
		}
		if e.WorkflowType.Name != rolloutWorkflowType {
			continue
		}
		info := scheduleInfo{Name: e.ID, Paused: e.Paused, Note: e.Note, NextRuns: e.NextActionTimes, URL: t.ScheduleURL(e.ID)}
		t.applyMemo(&info, e.Memo, e.Spec)
		info.RecentRuns = t.runs(ctx, e.RecentActions, 1)
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b scheduleInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (t *temporalClient) Pause(ctx context.Context, name, note string) error {
	if _, _, err := t.describe(ctx, name); err != nil {
		return err
	}
	return t.scheduleErr(name, t.sc.GetHandle(ctx, name).Pause(ctx, client.SchedulePauseOptions{Note: note}))
}

func (t *temporalClient) Unpause(ctx context.Context, name, note string) error {
	if _, _, err := t.describe(ctx, name); err != nil {
		return err
	}
	return t.scheduleErr(name, t.sc.GetHandle(ctx, name).Unpause(ctx, client.ScheduleUnpauseOptions{Note: note}))
}

func (t *temporalClient) Trigger(ctx context.Context, name string) error {
	if _, _, err := t.describe(ctx, name); err != nil {
		return err
	}
	// Skip, as the schedule's own policy: a trigger never runs a second rollout of the schedule
	// beside one still running.
	return t.scheduleErr(name, t.sc.GetHandle(ctx, name).Trigger(ctx, client.ScheduleTriggerOptions{Overlap: enumspb.SCHEDULE_OVERLAP_POLICY_SKIP}))
}

func (t *temporalClient) Delete(ctx context.Context, name string) error {
	if _, _, err := t.describe(ctx, name); err != nil {
		return err
	}
	return t.scheduleErr(name, t.sc.GetHandle(ctx, name).Delete(ctx))
}

// scheduleErr turns a missing schedule into scheduleNotFoundError.
func (t *temporalClient) scheduleErr(name string, err error) error {
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return scheduleNotFoundError{name: name, namespace: t.namespace}
	}
	return err
}
