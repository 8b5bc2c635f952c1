package workflows

import "testing"

// Every tally a shard sends after a control carries that control's answer, not only the first: the
// rollout keeps the tally of the highest Seq, and signals can overtake one another, so an answer
// sent once was lost when a later tally came first (the rollout then answered the operator with an
// empty outcome).
func TestStampControlRepeatsTheAnswerUntilTheNextControl(t *testing.T) {
	s := &shard{ctl: &shardControl{applied: 2, outcomes: []DeviceControlOutcome{{Device: "dev-1", Result: ControlQueued, Attempt: 2}}}}
	for seq := 10; seq <= 11; seq++ {
		var tally ShardTally
		s.stampControl(&tally)
		if tally.Control != 2 || len(tally.Outcomes) != 1 || tally.Outcomes[0].Device != "dev-1" {
			t.Fatalf("tally %d: control %d, outcomes %+v: want control 2 answered for dev-1", seq, tally.Control, tally.Outcomes)
		}
	}
	// A later tally taken first gives the rollout the answer all the same.
	r := &rollout{}
	sh := &ShardRecord{Index: 0, Last: ShardTally{Index: 0, Seq: 11, Control: 2, Outcomes: s.ctl.outcomes}}
	r.takeControl(sh)
	if got := r.answers[controlKey{0, 2}]; len(got) != 1 || got[0].Device != "dev-1" {
		t.Fatalf("answer taken from the later tally: %+v, want dev-1 queued", got)
	}
}
