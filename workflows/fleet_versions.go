package workflows

import (
	"slices"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/dmflow/dmflow/activities"
)

// Compliance (issue 18, policy 8): how many devices report each firmwareVersion, and how many
// report none, from one GROUP BY query that the worker runs with its hub credentials, under the
// hub's query budget. starter fleet versions starts FleetVersions and waits for its result.

// OperationVersions marks FleetVersions executions (DmflowOperation).
const OperationVersions = "versions"

// FleetVersionsWorkflowID is the ID of a FleetVersions run: fleet-versions/<request>, request
// unique to each count (a count is not an operation to recognise when repeated: the fleet
// changes between two).
func FleetVersionsWorkflowID(request string) string { return "fleet-versions/" + request }

// FleetVersionsInput asks how many devices report each firmware version.
type FleetVersionsInput struct {
	// Query selects the devices to count: a condition (tags.ring = 'beta'), the same with its
	// WHERE, or SELECT * FROM devices [WHERE …]; "" counts every device. See
	// activities.FleetCondition.
	Query string `json:"query,omitempty"`
}

// Validate reports what is wrong with the input, naming the fix, or nil.
func (in FleetVersionsInput) Validate() error {
	_, err := activities.FleetCondition(in.Query)
	return err
}

// FleetVersionsResult is the fleet's firmware versions: the counts of activities.CountVersions,
// nothing else (no device IDs, no credentials).
type FleetVersionsResult = activities.VersionCounts

const (
	// versionsHeartbeatTimeout: CountVersions heartbeats after every page and while it waits
	// for a token of the hub's query budget; a minute without one means the worker is gone.
	versionsHeartbeatTimeout = time.Minute
	// versionsStartToClose bounds one attempt: a page is one request, and versions are few, but
	// a busy hub's query budget may hold the first token for minutes.
	versionsStartToClose = 5 * time.Minute
	// versionsBudget bounds the retries of a throttled or unreachable hub: someone waits at a
	// terminal for the answer, so a third of what a rollout's target query gets (queryBudget).
	versionsBudget = 10 * time.Minute
)

// FleetVersions counts the devices that report each firmware version among those in.Query
// selects, with the CountVersions activity: one GROUP BY query, every page of it followed.
//
// It fails with a non-retryable ApplicationError of type ErrInvalidInput for a query Validate
// refuses, and with the activity's error when the hub refuses the query (ErrBadRequest, with
// the hub's reason) or stays throttled or unreachable for versionsBudget.
func FleetVersions(ctx workflow.Context, in FleetVersionsInput) (FleetVersionsResult, error) {
	logger := workflow.GetLogger(ctx)
	cond, err := activities.FleetCondition(in.Query)
	if err != nil {
		return FleetVersionsResult{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalidInput, nil)
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, SearchAttrOperation.ValueSet(OperationVersions)); err != nil {
		return FleetVersionsResult{}, err
	}
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout:    versionsStartToClose,
		HeartbeatTimeout:       versionsHeartbeatTimeout,
		ScheduleToCloseTimeout: versionsBudget,
		RetryPolicy: &temporal.RetryPolicy{
			// As a rollout's target query: throttled queries (20/min per S1 unit) recover within
			// the minute, and a few early tries do not eat the quota.
			InitialInterval:        5 * time.Second,
			BackoffCoefficient:     2,
			MaximumInterval:        time.Minute,
			NonRetryableErrorTypes: slices.Clone(hubNonRetryable),
		},
	})
	var a *activities.Activities
	var res FleetVersionsResult
	if err := workflow.ExecuteActivity(actx, a.CountVersions, activities.CountVersionsInput{Condition: cond}).Get(ctx, &res); err != nil {
		logger.Warn("versions not counted", "query", activities.VersionsQuery(cond), "error", err)
		return FleetVersionsResult{}, err
	}
	logger.Info("versions counted", "versions", len(res.Versions), "none", res.None, "devices", res.Total, "pages", res.Pages)
	return res, nil
}
