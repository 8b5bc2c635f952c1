package workflows

import "testing"

// A shard keeps the share of the rollout's concurrency its devices waiting to retry will need
// again, so that a device coming due never finds its slot given to another shard: the shards'
// shares never add up to more than MaxConcurrent with their devices in flight and due.
func TestShareConcurrencyKeepsSlotsForRetries(t *testing.T) {
	r := &rollout{in: RolloutInput{MaxConcurrent: 4}, fl: &fleet{Shards: []ShardRecord{
		// 4 granted, 5 runs: 1 updated, 1 failed for good, 1 updated after a retry (2 runs), 1
		// waiting to retry: it needs 1 slot now that it is not running, and keeps it.
		{Index: 0, Want: ShardCommand{Quota: 4}, Last: ShardTally{Runs: 5, Tally: Tally{Retries: 1, AwaitingRetry: 1}}},
		{Index: 1, Want: ShardCommand{Quota: 4}},
	}}}
	r.shareConcurrency()
	if got := []int{r.fl.Shards[0].Want.Concurrency, r.fl.Shards[1].Want.Concurrency}; got[0] != 1 || got[1] != 3 {
		t.Errorf("concurrency %v, want [1 3]: the waiting device keeps its slot", got)
	}
}
