//go:build integration && bench

package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/workflows"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
)

// shardHistories is what the histories of rollouts' shard workflows say.
type shardHistories struct {
	shards, events int
	// maxEvents is the most events of one shard, maxInput the bytes of the largest shard input.
	maxEvents, maxInput int
	// lag and poll: per sampled device, see rolloutBenchResult.completedLag and pollLag.
	lag, poll []time.Duration
	// durationSum over durations devices: see deviceDuration.
	durationSum time.Duration
	durations   int
}

func (s *shardHistories) add(o shardHistories) {
	s.shards += o.shards
	s.events += o.events
	s.maxEvents = max(s.maxEvents, o.maxEvents)
	s.maxInput = max(s.maxInput, o.maxInput)
	s.lag = append(s.lag, o.lag...)
	s.poll = append(s.poll, o.poll...)
	s.durationSum += o.durationSum
	s.durations += o.durations
}

// meanDeviceDuration is the mean time a device took in its shard, or 0 for none.
func (s shardHistories) meanDeviceDuration() time.Duration {
	if s.durations == 0 {
		return 0
	}
	return s.durationSum / time.Duration(s.durations)
}

// Activity types and the steps of a device's activity IDs (<device>/<step>, <device>/<step>#2 for
// a retried device) in a firmware rollout's shard: the worker registers the Activities struct's
// methods by their names.
const (
	followStagesType = "FollowStages"
	stepInvoke       = protocol.MethodFirmwareUpdate
	stepStages       = "stages"
)

// rolloutShards lists the shards of the rollout name, page by page of QueryShards. The worker
// answers the query by replaying the rollout's last run when it is no longer cached, which takes a
// while on a busy machine: each page gets two minutes and three tries.
func rolloutShards(t *testing.T, tc client.Client, name string) []workflows.ShardRef {
	t.Helper()
	var refs []workflows.ShardRef
	for off := 0; ; {
		var page workflows.ShardsPage
		var err error
		for try := 0; try < 3; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			var v converter.EncodedValue
			v, err = tc.QueryWorkflow(ctx, workflows.RolloutWorkflowID(name), "", workflows.QueryShards,
				workflows.ShardsRequest{Offset: off, Limit: workflows.MaxShardsPage})
			if err == nil {
				err = v.Get(&page)
			}
			cancel()
			if err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("shards of %s from %d: %v", name, off, err)
		}
		refs = append(refs, page.Shards...)
		if page.Next == 0 {
			return refs
		}
		off = page.Next
	}
}

// readShardHistories reads the whole history of every shard in refs (a rollout's, whose devices
// number total): their events, and for up to sample devices spread evenly over the report's rows
// when their shard saw them complete.
//
// The completed lag runs from the device's own timestamp of completed (lastFirmwareUpdate, which
// FollowStages returns as the stage's ReportedAt; simulated devices and the Temporal server share
// this machine's clock) to the first WorkflowTaskStarted event after the ActivityTaskCompleted of
// the device's FollowStages (ActivityID <device>/stages): the moment the shard's code runs with
// the result, which is what "the workflow sees it" means. Its parts: the twin poll (up to
// FollowStages' read that showed completed, its SeenAt) and the way back through Temporal
// (activity completion recorded, workflow task dispatched).
//
// A device's duration (first attempts only) runs from the workflow task that scheduled its
// InvokeMethod to the one that took its FollowStages' result, the span its report row measures.
func readShardHistories(t *testing.T, tc client.Client, refs []workflows.ShardRef, total, sample int) shardHistories {
	t.Helper()
	sc := shardScan{step: max(1, total/max(sample, 1)), sample: sample}
	for _, ref := range refs {
		var events []*historypb.HistoryEvent
		it := tc.GetWorkflowHistory(context.Background(), ref.WorkflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				t.Fatalf("history of %s: %v", ref.WorkflowID, err)
			}
			events = append(events, ev)
		}
		if err := sc.add(ref, events); err != nil {
			t.Fatal(err)
		}
	}
	return sc.out
}

// shardScan reads shard histories one after another into out, sampling every step-th device of
// the report's rows, up to sample of them.
type shardScan struct {
	step, sample, sampled int
	out                   shardHistories
}

// add reads the history of the shard ref.
func (sc *shardScan) add(ref workflows.ShardRef, events []*historypb.HistoryEvent) error {
	dc := converter.GetDefaultDataConverter()
	s := &sc.out
	s.shards++
	s.events += len(events)
	s.maxEvents = max(s.maxEvents, len(events))
	var (
		in          workflows.ShardInput
		position    = map[string]int{}       // device → row within the shard
		steps       = map[int64][2]string{}  // scheduled event → device, step
		started     = map[string]time.Time{} // device → the task that scheduled its InvokeMethod
		taskStarted time.Time                // of the last workflow task
		done        []string                 // devices whose FollowStages completed since
		doneStage   []activities.StageSeen   // … and their completed stage, when sampled
	)
	for _, ev := range events {
		switch ev.GetEventType() {
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
			a := ev.GetWorkflowExecutionStartedEventAttributes()
			size := 0
			for _, p := range a.GetInput().GetPayloads() {
				size += len(p.GetData())
			}
			s.maxInput = max(s.maxInput, size)
			if err := dc.FromPayloads(a.GetInput(), &in); err != nil {
				return fmt.Errorf("input of %s: %w", ref.WorkflowID, err)
			}
			for i, d := range in.Devices {
				position[d.ID] = i
			}
		case enumspb.EVENT_TYPE_WORKFLOW_TASK_STARTED:
			taskStarted = ev.GetEventTime().AsTime()
			for i, dev := range done {
				if at, ok := started[dev]; ok {
					s.durationSum += taskStarted.Sub(at)
					s.durations++
				}
				if st := doneStage[i]; !st.ReportedAt.IsZero() {
					s.lag = append(s.lag, taskStarted.Sub(st.ReportedAt))
					s.poll = append(s.poll, st.SeenAt.Sub(st.ReportedAt))
				}
			}
			done, doneStage = done[:0], doneStage[:0]
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
			id := ev.GetActivityTaskScheduledEventAttributes().GetActivityId()
			i := strings.LastIndexByte(id, '/')
			if i < 0 || strings.Contains(id[i:], "#") {
				continue // not a device's step, or a retried device's
			}
			dev, step := id[:i], id[i+1:]
			steps[ev.GetEventId()] = [2]string{dev, step}
			if step == stepInvoke {
				started[dev] = taskStarted
			}
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
			a := ev.GetActivityTaskCompletedEventAttributes()
			ds, ok := steps[a.GetScheduledEventId()]
			if !ok || ds[1] != stepStages {
				continue
			}
			dev := ds[0]
			var seen activities.StageSeen
			if g := ref.Offset + position[dev]; g%sc.step == 0 && sc.sampled < sc.sample {
				sc.sampled++
				var res activities.FollowStagesResult
				if err := dc.FromPayloads(a.GetResult(), &res); err != nil {
					return fmt.Errorf("%s result of %s in %s: %w", followStagesType, dev, ref.WorkflowID, err)
				}
				for _, st := range res.Stages {
					if st.Status == protocol.StatusCompleted {
						seen = st
					}
				}
			}
			done = append(done, dev)
			doneStage = append(doneStage, seen)
		}
	}
	return nil
}
