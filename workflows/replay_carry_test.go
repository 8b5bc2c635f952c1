package workflows

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// continuedWith catches the input a replayed run continued as new with.
type continuedWith struct {
	interceptor.WorkerInterceptorBase
	input *RolloutInput
}

func (c *continuedWith) InterceptWorkflow(_ workflow.Context, next interceptor.WorkflowInboundInterceptor) interceptor.WorkflowInboundInterceptor {
	return &continuedWithInbound{WorkflowInboundInterceptorBase: interceptor.WorkflowInboundInterceptorBase{Next: next}, c: c}
}

type continuedWithInbound struct {
	interceptor.WorkflowInboundInterceptorBase
	c *continuedWith
}

func (i *continuedWithInbound) ExecuteWorkflow(ctx workflow.Context, in *interceptor.ExecuteWorkflowInput) (any, error) {
	res, err := i.Next.ExecuteWorkflow(ctx, in)
	var can *workflow.ContinueAsNewError
	if errors.As(err, &can) {
		var next RolloutInput
		if derr := converter.GetDefaultDataConverter().FromPayloads(can.Input, &next); derr == nil {
			i.c.input = &next
		}
	}
	return res, err
}

// A run of the 100,000-device benchmark (make bench-scale, 2026-12-07) whose last workflow task
// brought the child-start event that let it continue as new together with two shards' tallies:
// shard 40's last (closed, its 250 devices done) and shard 41's second. The tally coroutine, blocked
// in Receive, was handed the first before the main coroutine ran, continued as new and carried its
// state without it; the rollout then waited for ever for a device of shard 40 (and, lost the same
// way at a later run's end, 29 of shard 41). Both tallies must travel in the state it continues with.
func TestReplayCarriesTheTalliesOfTheLastTask(t *testing.T) {
	catch := &continuedWith{}
	r, err := worker.NewWorkflowReplayerWithOptions(worker.WorkflowReplayerOptions{Interceptors: []interceptor.WorkerInterceptor{catch}})
	if err != nil {
		t.Fatal(err)
	}
	r.RegisterWorkflow(Rollout)
	if err := r.ReplayWorkflowHistoryFromJSONFile(nil, filepath.Join("testdata", "rollout_sharded_tally_at_continue.json")); err != nil {
		t.Fatal(err)
	}
	if catch.input == nil || catch.input.State == nil {
		t.Fatal("the replayed run did not continue as new")
	}
	var fl fleet
	if err := unpackJSON(catch.input.State.PackedFleet, &fl); err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(fl.Shards, func(s ShardRecord) bool { return s.Index == 40 }); i >= 0 {
		t.Errorf("shard 40 is carried as open, its last tally %+v: its closing tally (seq 16) was lost", fl.Shards[i].Last)
	}
	i := slices.IndexFunc(fl.ClosedWaves, func(w WaveTally) bool { return w.Wave == 10 })
	if i < 0 || fl.ClosedWaves[i].Done < 20 {
		t.Errorf("closed shards' wave 11: %+v, want shard 40's 20 devices among them", fl.ClosedWaves)
	}
	if i := slices.IndexFunc(fl.Shards, func(s ShardRecord) bool { return s.Index == 41 }); i < 0 || fl.Shards[i].Last.Seq < 2 {
		t.Errorf("shard 41 carried without its tally of seq 2: %+v", fl.Shards)
	}
}
