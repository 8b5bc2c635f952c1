package main

import (
	"context"
	"time"
)

// followLoop is the one loop by which the starter follows a workflow, or waits for what it asked
// of Temporal to show: it calls poll at once and then every interval, and onOutcome with each
// answer from outcomes as it arrives, until one of them says the follow is over (true) or ctx
// ends (then it returns ctx's error). A nil poll only waits for outcomes; a nil outcomes channel
// never answers, so that poll alone decides.
//
// reboot and firmware --wait poll the workflow's query for their live view while its result is
// the outcome (launch); rollout watch and start --wait poll the progress query while waiting for
// the workflow to close (follow); schedule create and trigger poll the schedule's description
// until their change shows.
func followLoop[O any](ctx context.Context, every time.Duration, poll func() bool, outcomes <-chan O, onOutcome func(O) bool) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		if poll != nil && poll() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case o := <-outcomes:
			if onOutcome(o) {
				return nil
			}
		case <-tick.C:
		}
	}
}
