//go:build integration && bench

package test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// Temporal's ceiling for a rollout: trivial stand-ins of the sharded shape (workflows.Rollout,
// workflows.RolloutShard) on a worker in this process with a task queue of its own. A parent per
// rollout starts children of up to workflows.ShardSize devices; each child runs every device as
// no-op activities in sequence: one by default (issue 16's yardstick: one trivial activity a
// device), or two, as a shard runs InvokeMethod (the twin read folded in) and FollowStages
// (DMFLOW_BENCH_ROLLOUT_CEILING); the parent shares the rollout's concurrency among its open children in index
// order, as the rollout does, and tells a child when its share grew (a signal); each child tells
// the parent what finished (a signal) after a fifth of its concurrency finished, when nothing
// runs, and when it closes, as a shard does; the parent continues as new after placing
// DevicesPerRun devices. What the stand-ins leave out is dmflow's own: waves, hub calls, the
// threshold, search attributes, queries.

const (
	ceilingParentName  = "BenchCeilingRollout"
	ceilingShardName   = "BenchCeilingShard"
	ceilingShareSignal = "ceiling-share"
	ceilingTallySignal = "ceiling-tally"
)

// ceilingActivities are the stand-ins of a shard's device activities, in their order.
var ceilingActivities = []string{"BenchInvokeMethod", "BenchFollowStages"}

// ceilingInput is the stand-in rollout's input and, through continue-as-new, its state: Total
// devices in children of ShardSize, at most Concurrency running at once, PerRun placed per run.
type ceilingInput struct {
	Prefix      string `json:"prefix"`
	Total       int    `json:"total"`
	ShardSize   int    `json:"shardSize"`
	Concurrency int    `json:"concurrency"`
	Activities  int    `json:"activities"`
	PerRun      int    `json:"perRun"`
	// Next is the first device not placed in a child yet, Children the children started.
	Next     int `json:"next"`
	Children int `json:"children"`
	// Open are the children not closed yet, by index; Failed counts the closed ones' failures.
	Open   []ceilingChild `json:"open,omitempty"`
	Failed int            `json:"failed"`
}

// ceilingChild is what the stand-in rollout keeps of a child.
type ceilingChild struct {
	Index    int `json:"index"`
	Devices  int `json:"devices"`
	Finished int `json:"finished"`
	// Sent is the concurrency the child was last given; a lower share is not sent (the child's
	// devices in flight never exceed those it has left, which is what lowered it).
	Sent int `json:"sent"`
}

// ceilingShardInput is a stand-in shard's input.
type ceilingShardInput struct {
	Parent      string `json:"parent"`
	Index       int    `json:"index"`
	Devices     int    `json:"devices"`
	Concurrency int    `json:"concurrency"`
	// Activities is how many of ceilingActivities each device runs.
	Activities int `json:"activities"`
}

// ceilingOutcome is what a stand-in rollout returns.
type ceilingOutcome struct {
	Failed   int `json:"failed"`
	Children int `json:"children"`
}

// ceilingTally is a stand-in shard's account, cumulative.
type ceilingTally struct {
	Index    int  `json:"index"`
	Finished int  `json:"finished"`
	Failed   int  `json:"failed"`
	Closed   bool `json:"closed,omitempty"`
}

func ceilingShardID(prefix string, i int) string { return fmt.Sprintf("%s/shard/%d", prefix, i) }

func ceilingRollout(ctx workflow.Context, in ceilingInput) (ceilingOutcome, error) {
	tallies := workflow.GetSignalChannel(ctx, ceilingTallySignal)
	take := func(t ceilingTally) {
		i := slices.IndexFunc(in.Open, func(c ceilingChild) bool { return c.Index == t.Index })
		if i < 0 {
			return
		}
		if t.Closed {
			in.Failed += t.Failed
			in.Open = slices.Delete(in.Open, i, i+1)
			return
		}
		in.Open[i].Finished = max(in.Open[i].Finished, t.Finished)
	}
	var signals []workflow.Future
	placed := 0
	for {
		for {
			var t ceilingTally
			if !tallies.ReceiveAsync(&t) {
				break
			}
			take(t)
		}
		// The concurrency, shared in index order: each open child what its devices left need.
		left := in.Concurrency
		for i := range in.Open {
			c := &in.Open[i]
			share := min(c.Devices-c.Finished, left)
			left -= share
			if share > c.Sent {
				c.Sent = share
				signals = append(signals, workflow.SignalExternalWorkflow(ctx, ceilingShardID(in.Prefix, c.Index), "", ceilingShareSignal, share))
			}
		}
		// What is left starts new children.
		for left > 0 && in.Next < in.Total && placed < in.PerRun {
			n := min(in.ShardSize, in.Total-in.Next)
			share := min(n, left)
			id := ceilingShardID(in.Prefix, in.Children)
			cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
				WorkflowID:        id,
				ParentClosePolicy: enumspb.PARENT_CLOSE_POLICY_ABANDON,
			})
			f := workflow.ExecuteChildWorkflow(cctx, ceilingShardName,
				ceilingShardInput{Parent: workflow.GetInfo(ctx).WorkflowExecution.ID, Index: in.Children, Devices: n, Concurrency: share, Activities: in.Activities})
			if err := f.GetChildWorkflowExecution().Get(ctx, nil); err != nil {
				return ceilingOutcome{}, err
			}
			in.Open = append(in.Open, ceilingChild{Index: in.Children, Devices: n, Sent: share})
			in.Children++
			in.Next += n
			placed += n
			left -= share
		}
		if in.Next >= in.Total && len(in.Open) == 0 {
			return ceilingOutcome{Failed: in.Failed, Children: in.Children}, nil
		}
		if placed >= in.PerRun && in.Next < in.Total {
			// As the rollout does: its signals delivered, the tallies that came taken, then on.
			for _, f := range signals {
				_ = f.Get(ctx, nil)
			}
			for {
				var t ceilingTally
				if !tallies.ReceiveAsync(&t) {
					break
				}
				take(t)
			}
			return ceilingOutcome{}, workflow.NewContinueAsNewError(ctx, ceilingParentName, in)
		}
		signals = slices.DeleteFunc(signals, func(f workflow.Future) bool { return f.IsReady() })
		var t ceilingTally
		tallies.Receive(ctx, &t)
		take(t)
	}
}

func ceilingShard(ctx workflow.Context, in ceilingShardInput) (int, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute})
	concurrency := in.Concurrency
	changes := 0
	shares := workflow.GetSignalChannel(ctx, ceilingShareSignal)
	workflow.Go(ctx, func(gctx workflow.Context) {
		for {
			var c int
			if !shares.Receive(gctx, &c) {
				return
			}
			if c > concurrency {
				concurrency = c
				changes++
			}
		}
	})
	next, running, finished, failed, unreported := 0, 0, 0, 0, 0
	report := func(closed bool) workflow.Future {
		unreported = 0
		return workflow.SignalExternalWorkflow(ctx, in.Parent, "", ceilingTallySignal,
			ceilingTally{Index: in.Index, Finished: finished, Failed: failed, Closed: closed})
	}
	for {
		seen := changes
		for running < concurrency && next < in.Devices {
			next++
			running++
			workflow.Go(ctx, func(gctx workflow.Context) {
				for _, a := range ceilingActivities[:in.Activities] {
					if err := workflow.ExecuteActivity(gctx, a).Get(gctx, nil); err != nil {
						failed++
						break
					}
				}
				running--
				finished++
				unreported++
				changes++
			})
		}
		if finished == in.Devices {
			break
		}
		if unreported > 0 && (running == 0 || unreported >= max(1, concurrency/5)) {
			report(false)
		}
		if err := workflow.Await(ctx, func() bool { return changes != seen }); err != nil {
			return failed, err
		}
	}
	// The last tally closes the child in the parent's books: delivered before the child ends, as
	// a shard's is.
	_ = report(true).Get(ctx, nil)
	return failed, nil
}

func ceilingNoop(context.Context) error { return nil }

// ceilingResult is one measurement of the trivial stand-ins.
type ceilingResult struct {
	wall time.Duration
	// runs and parentEvents count the stand-in rollouts' runs and the events of all of them;
	// children and childEvents the children and theirs.
	runs, parentEvents    int
	children, childEvents int
	failed                int
}

func (c ceilingResult) perMinute(n int) float64 { return float64(n) / c.wall.Minutes() }

// eventsPerDevice is the parents' and the children's events shared out over the n devices.
func (c ceilingResult) eventsPerDevice(n int) float64 {
	return float64(c.parentEvents+c.childEvents) / float64(n)
}

// measureCeiling runs n trivial devices as parts stand-in rollouts at once (each over its share of
// the devices, as the regime's rollouts are), at the rollouts' concurrency each and their
// continue-as-new cadence, and counts their events.
func measureCeiling(t *testing.T, tc client.Client, cfg rolloutBenchConfig, n, parts int) ceilingResult {
	t.Helper()
	queue := fmt.Sprintf("bench-ceiling-%d-%d", n, time.Now().UnixNano())
	w := worker.New(tc, queue, worker.Options{})
	w.RegisterWorkflowWithOptions(ceilingRollout, workflow.RegisterOptions{Name: ceilingParentName})
	w.RegisterWorkflowWithOptions(ceilingShard, workflow.RegisterOptions{Name: ceilingShardName})
	for _, a := range ceilingActivities {
		w.RegisterActivityWithOptions(ceilingNoop, activity.RegisterOptions{Name: a})
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	var res ceilingResult
	var (
		started   []client.WorkflowRun
		firstRuns []string
		ids       []string
	)
	start := time.Now()
	for i, size := range splitCount(n, parts) {
		id := fmt.Sprintf("bench-ceiling/%s/%d", queue, i)
		run, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue}, ceilingParentName,
			ceilingInput{Prefix: id, Total: size, ShardSize: workflows.ShardSize, Concurrency: cfg.maxConcurrent, PerRun: devicesPerRun, Activities: cfg.ceiling})
		if err != nil {
			t.Fatal(err)
		}
		started = append(started, run)
		// Get follows the continued runs and GetRunID then names the last one: keep the first.
		firstRuns = append(firstRuns, run.GetRunID())
		ids = append(ids, id)
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	children := make([]int, len(started))
	for i, run := range started {
		wg.Go(func() {
			var out ceilingOutcome
			// Get follows the continued runs to the last one's result.
			err := run.Get(ctx, &out)
			mu.Lock()
			defer mu.Unlock()
			res.failed += out.Failed
			children[i] = out.Children
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	res.wall = time.Since(start)
	if len(errs) > 0 {
		t.Fatalf("ceiling: %v", errs)
	}
	if res.failed > 0 {
		t.Errorf("ceiling: %d of %d trivial devices failed", res.failed, n)
	}
	for i, id := range ids {
		// The chain follows the continued runs from the first.
		r, events := countRunChain(t, tc, id, firstRuns[i])
		res.runs += r
		res.parentEvents += events
		for c := range children[i] {
			_, ev := countRunChain(t, tc, ceilingShardID(id, c), "")
			res.childEvents += ev
		}
		res.children += children[i]
	}
	return res
}

// splitCount splits n into parts nearly equal counts, the larger first.
func splitCount(n, parts int) []int {
	out := make([]int, parts)
	for i := range out {
		out[i] = n / parts
		if i < n%parts {
			out[i]++
		}
	}
	return out
}
