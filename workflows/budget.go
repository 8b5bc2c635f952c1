package workflows

import (
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/dmflow/dmflow/internal/budget"
)

// The hub budget: one HubBudget workflow per IoT Hub leases shares of the hub's call budget, and
// of each rollout's ceiling, to the worker processes that call the hub (internal/budget). Workers
// start it on their first lease request (update-with-start), so it needs no operator.
const (
	// UpdateLease is the update by which a worker asks for its lease (a budget.Request) and gets
	// its shares (a budget.Grant).
	UpdateLease = "lease"
	// QueryBudget answers the leased keys, their rates and who holds which share
	// ([]budget.KeyView), for people.
	QueryBudget = "budget"
)

// BudgetTaskQueue is the task queue of the hub budget workflows. Every worker polls it, whatever
// task queue it serves rollouts on, so that a hub's budget is answered while any of its workers
// runs.
const BudgetTaskQueue = "dmflow-hub-budget"

// HubBudgetWorkflowID is the ID of the hub's budget workflow: one per hub host name.
func HubBudgetWorkflowID(hubHost string) string { return "hub-budget/" + hubHost }

// HubBudgetInput starts the budget workflow of a hub; Ledger carries the leases over a
// continue-as-new.
type HubBudgetInput struct {
	Hub    string        `json:"hub"`
	Ledger budget.Ledger `json:"ledger,omitzero"`
	// UpdatesPerRun is how many lease requests a run answers before it continues as new; zero
	// for budgetUpdatesPerRun.
	UpdatesPerRun int `json:"updatesPerRun,omitempty"`
}

const (
	// budgetLeasePeriod is how long a lease lasts (budget.DefaultPeriod, which workers count on).
	budgetLeasePeriod = budget.DefaultPeriod
	// budgetUpdatesPerRun bounds a run's history: an update costs about five events, so a run stays
	// near 5,000, half of Temporal's warning at 10,240.
	budgetUpdatesPerRun = 1000
	// budgetIdle is how long the workflow waits without a live lease before it ends: a hub whose
	// workers stopped needs no budget, and the next worker starts it again.
	budgetIdle = time.Hour
)

// HubBudget keeps a hub's ledger of leases and answers the workers' lease requests. It ends once
// no lease has been live for budgetIdle, and continues as new after in.UpdatesPerRun updates
// (or when Temporal suggests it), carrying the live leases over.
func HubBudget(ctx workflow.Context, in HubBudgetInput) error {
	logger := workflow.GetLogger(ctx)
	ledger := in.Ledger
	updates, perRun := 0, in.UpdatesPerRun
	if perRun <= 0 {
		perRun = budgetUpdatesPerRun
	}
	if err := workflow.SetQueryHandler(ctx, QueryBudget, func() ([]budget.KeyView, error) {
		return ledger.View(workflow.Now(ctx)), nil
	}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateLease,
		func(ctx workflow.Context, req budget.Request) (budget.Grant, error) {
			updates++
			return ledger.Grant(workflow.Now(ctx), req, budgetLeasePeriod), nil
		},
		workflow.UpdateHandlerOptions{
			Validator: func(_ workflow.Context, req budget.Request) error { return req.Check() },
		}); err != nil {
		return err
	}

	for {
		full := func() bool {
			return updates >= perRun || workflow.GetInfo(ctx).GetContinueAsNewSuggested()
		}
		seen := updates
		// Wake when the run is full, or after budgetIdle to see whether any lease is still live.
		if _, err := workflow.AwaitWithTimeout(ctx, budgetIdle, full); err != nil {
			return err
		}
		if full() {
			// Every accepted update is answered before the run hands over.
			if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
				return err
			}
			logger.Info("hub budget continues as new", "hub", in.Hub, "updates", updates)
			return workflow.NewContinueAsNewError(ctx, HubBudget, HubBudgetInput{Hub: in.Hub, Ledger: ledger, UpdatesPerRun: in.UpdatesPerRun})
		}
		if updates == seen && !ledger.Live(workflow.Now(ctx)) && workflow.AllHandlersFinished(ctx) {
			logger.Info("hub budget idle: no worker holds a lease", "hub", in.Hub)
			return nil
		}
	}
}
