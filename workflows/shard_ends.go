package workflows

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dmflow/dmflow/activities"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// A rollout and its shards talk by signals only. A rollout ends its shards before it ends, and a
// shard sends its last tally before it closes; but someone may terminate either in the Temporal
// UI, and then the other would wait for ever: shards for commands from a rollout that is gone, a
// rollout for the last tally of a shard that is gone. So each looks, every endCheckEvery it spends
// waiting on the other, whether the other still runs (activities.EndedWorkflows):
//
//   - a shard whose rollout ended starts nothing more, marks its devices not started, and closes;
//   - a rollout whose shard ended counts that shard's devices in flight (and those granted to it
//     but not started) as failed, in the current wave, so that its threshold judges them and the
//     wave can end; the devices it never granted are not started. The shard's own rows, which the
//     report reads, keep what it knew when it ended.
//
// Both are new commands: rollouts and shards begun before them (endChecksChange) do without.

// endChecksChange is the workflow.GetVersion change ID of these checks, in Rollout (sharded runs)
// and RolloutShard.
const endChecksChange = "shard-end-checks"

// endCheckEvery is how often a rollout waiting on its shards, or a shard waiting for its rollout,
// looks whether the other still runs: one timer and, when it fires, one activity.
const endCheckEvery = time.Hour

// endCheckOptions are the options of EndedWorkflows: a few quick tries; when they fail the next
// check tries again.
func endCheckOptions(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		HeartbeatTimeout:    20 * time.Second,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: 5 * time.Second, MaximumAttempts: 3},
	})
}

// endedWorkflows runs activities.EndedWorkflows; nil when the check failed (logged).
func endedWorkflows(ctx workflow.Context, refs []activities.WorkflowRef, log func(msg string, kv ...any)) []activities.WorkflowEnded {
	var a *activities.Activities
	var ended []activities.WorkflowEnded
	if err := workflow.ExecuteActivity(endCheckOptions(ctx), a.EndedWorkflows, refs).Get(ctx, &ended); err != nil {
		log("could not look whether workflows ended; looking again later", "error", err)
		return nil
	}
	return ended
}

// armEndCheck starts the shard's end-check timer when the shard checks and nothing runs: then it
// waits for its rollout alone.
func (s *shard) armEndCheck(ctx workflow.Context) {
	if s.endChecks && s.running == 0 && s.endCheck == nil {
		s.endCheck = workflow.NewTimer(ctx, endCheckEvery)
	}
}

// endCheckDue reports whether the end-check timer fired.
func (s *shard) endCheckDue() bool { return s.endCheck != nil && s.endCheck.IsReady() }

// rolloutEnded looks whether the shard's rollout still runs, once the timer fired; it returns
// how the rollout ended, or "" while it runs.
func (s *shard) rolloutEnded(ctx workflow.Context) string {
	s.endCheck = nil
	if s.running > 0 {
		return ""
	}
	ended := endedWorkflows(ctx, []activities.WorkflowRef{{ID: s.in.Parent, FirstRunID: s.in.ParentFirstRun}}, s.logger.Warn)
	if len(ended) == 0 {
		return ""
	}
	return ended[0].Status
}

// closeOrphaned closes a shard whose rollout ended without closing it.
func (s *shard) closeOrphaned(ctx workflow.Context, status string) (ShardTally, error) {
	note := "not started: the rollout " + s.in.Parent + " ended (" + status + ") without closing its shard"
	n := 0
	for i := range s.rows {
		if s.rows[i].Result == DevicePending {
			s.rows[i].Result, s.rows[i].Note = DeviceNotStarted, note
			n++
		}
	}
	s.logger.Warn("the rollout ended without closing this shard: closing it", "rollout_status", status, "not_started", n)
	return s.close(ctx)
}

// armShardsCheck starts the rollout's end-check timer while it has open shards.
func (r *rollout) armShardsCheck(ctx workflow.Context) {
	if r.endChecks && r.shardsCheck == nil && len(r.fl.Shards) > 0 {
		r.shardsCheck = workflow.NewTimer(ctx, endCheckEvery)
	}
}

// shardsCheckDue reports whether the rollout's end-check timer fired and no look is under way.
func (r *rollout) shardsCheckDue() bool {
	return r.shardsCheck != nil && r.shardsCheck.IsReady() && !r.checkingShards
}

// checkShardsEnded looks, once the timer fired, for open shards that ended outside the rollout and
// closes them in its books. It looks in a coroutine of its own, so that the rollout goes on (its
// tallies, commands and windows) while the activity runs; the next timer starts once it is done.
func (r *rollout) checkShardsEnded(ctx workflow.Context) {
	if len(r.fl.Shards) == 0 {
		r.shardsCheck = nil
		return
	}
	refs := make([]activities.WorkflowRef, len(r.fl.Shards))
	for i, sh := range r.fl.Shards {
		refs[i] = activities.WorkflowRef{ID: RolloutShardWorkflowID(r.in.Name, sh.Index)}
	}
	// The fired timer stays until the look is done: no second look meanwhile.
	r.checkingShards = true
	workflow.Go(ctx, func(gctx workflow.Context) {
		defer func() {
			r.checkingShards, r.shardsCheck = false, nil
			r.changes++
		}()
		ended := endedWorkflows(gctx, refs, r.logger.Warn)
		if len(ended) == 0 {
			return
		}
		// A shard sends its last tally before it closes: tallies that came meanwhile go first.
		r.takePendingTallies(gctx)
		for _, e := range ended {
			if sh := r.record(r.shardIndex(e.ID)); sh != nil {
				r.shardEnded(gctx, sh, e.Status)
			}
		}
	})
}

// shardIndex is the index in a shard workflow ID of this rollout, or -1.
func (r *rollout) shardIndex(id string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(id, RolloutWorkflowID(r.in.Name)+"/shard/"))
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// shardEnded closes the record of a shard that ended outside the rollout with a last tally of the
// rollout's making: its devices in flight, and those granted but not started, failed in the
// current wave (a wave ends only once all before it did, so they are all of it); those it was
// never granted are not started.
func (r *rollout) shardEnded(ctx workflow.Context, sh *ShardRecord, status string) {
	t := sh.Last
	notStarted := max(sh.Sent.Quota-t.Started, 0)
	notRetried := max(sh.Sent.Retry-t.Retried, 0) + max(sh.Sent.Again-t.Again, 0)
	lost := t.Running + notStarted
	t.Failed += lost
	t.Pending = max(t.Pending-notStarted, 0)
	t.NotStarted += t.Pending
	t.Pending, t.Running = 0, 0
	if lost+notRetried > 0 {
		t.Waves = addWaves(slices.Clone(t.Waves), []WaveTally{{Wave: r.st.Wave, Done: lost + notRetried, Failed: lost + notRetried}})
	}
	t.Seq, t.Closed = sh.Last.Seq+1, true
	r.logger.Warn("a shard ended outside the rollout: its devices in flight count as failed",
		"shard", RolloutShardWorkflowID(r.in.Name, sh.Index), "status", status, "failed", lost+notRetried, "not_started", t.NotStarted)
	r.st.EndedShards = append(r.st.EndedShards, RolloutShardWorkflowID(r.in.Name, sh.Index)+" ("+status+")")
	t.Rollback = r.rollbackShardEnded(sh) // rollback (policy 1)
	r.takeTally(ctx, t)
}
