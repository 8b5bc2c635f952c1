package workflows

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/workflow"
)

// The start rate of a sharded rollout: RolloutInput.MaxPerMinute bounds how many devices the
// rollout starts a minute, over all its shards, on top of the hub budget (which paces hub calls,
// not starts). It is a token bucket in workflow time, kept in the rollout's grant: the rollout
// hands the shards no more device runs than the bucket holds, and arms a durable timer for when
// the next one is allowed, as it arms the timers of its maintenance windows; meanwhile it stays
// running and answers queries and updates.
//
//   - The bucket fills at the rate in force and holds at most a burst of one second's starts (at
//     least one): a pause, a window's close or a slow wave leaves at most that much behind, so no
//     flood of starts follows a resume or an opening.
//   - A grant is also held to the free concurrency (MaxConcurrent less the device runs granted and
//     not finished, by the shards' latest tallies), so that granted runs do not pile up in the
//     shards and start in a rush later: what the rollout grants starts at once.
//   - Ramp (AWS IoT Jobs' exponential rollout): the rate is multiplied by Ramp.Factor each time
//     Ramp.Every more devices have succeeded, up to Ramp.Max. It is derived from the succeeded
//     count of the shards' tallies, so it needs no state of its own; the bucket's tokens travel
//     in RolloutState over continue-as-new.
//   - Every start counts: first attempts, the --retry-failed pass, and the runs an operator asked
//     for with starter rollout retry.

// startRateChange is the workflow.GetVersion change ID of the start rate, asked in a run the first
// time it paces a grant: rollouts without MaxPerMinute never ask, and keep their commands.
const startRateChange = "rollout-start-rate"

// Bounds of the start rate.
const (
	// MaxStartRate bounds MaxPerMinute and Ramp.Max: 6,000 starts a second, what an S3 hub's
	// direct methods take.
	MaxStartRate = 360_000
	// MaxRampFactor bounds Ramp.Factor.
	MaxRampFactor = 10
)

// Ramp raises a rollout's start rate as its devices succeed: the rate (from MaxPerMinute) is
// multiplied by Factor each time Every more devices have succeeded, up to Max starts a minute (0:
// up to MaxStartRate).
type Ramp struct {
	Factor float64 `json:"factor"`
	Every  int     `json:"every"`
	Max    int     `json:"max,omitempty"`
}

// ParseRamp reads a ramp as --ramp takes it: "2x@50", the factor, "x", "@" and the count of
// succeeded devices between rises. The ceiling (Max) is given apart (--ramp-max).
func ParseRamp(s string) (Ramp, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	factor, every, ok := strings.Cut(s, "@")
	f, ferr := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(factor), "x")), 64)
	n, nerr := strconv.Atoi(strings.TrimSpace(every))
	if !ok || !strings.HasSuffix(strings.TrimSpace(factor), "x") || ferr != nil || nerr != nil {
		return Ramp{}, errors.New("give the factor and the succeeded devices between rises, e.g. 2x@50 (double the start rate each time 50 more devices succeeded)")
	}
	r := Ramp{Factor: f, Every: n}
	if err := r.check(); err != nil {
		return Ramp{}, err
	}
	return r, nil
}

// String writes the ramp as ParseRamp reads it, without Max.
func (r Ramp) String() string {
	return strconv.FormatFloat(r.Factor, 'f', -1, 64) + "x@" + strconv.Itoa(r.Every)
}

// check reports what is wrong with the ramp's factor and step, or nil.
func (r Ramp) check() error {
	switch {
	case math.IsNaN(r.Factor) || r.Factor <= 1 || r.Factor > MaxRampFactor:
		return fmt.Errorf("ramp factor %v must be more than 1 and at most %d, e.g. 2x@50", r.Factor, MaxRampFactor)
	case r.Every < 1:
		return fmt.Errorf("ramp step %d must be at least 1 succeeded device, e.g. 2x@50", r.Every)
	}
	return nil
}

// checkStartRate lists what is wrong with the start rate of the input.
func (in RolloutInput) checkStartRate() []string {
	var problems []string
	if in.MaxPerMinute < 0 || in.MaxPerMinute > MaxStartRate {
		problems = append(problems, fmt.Sprintf("max per minute %d must lie between 1 and %d device starts a minute, or 0 for no bound", in.MaxPerMinute, MaxStartRate))
	}
	if in.Ramp == nil {
		return problems
	}
	if in.MaxPerMinute == 0 {
		problems = append(problems, "a ramp needs a start rate to begin with: set maxPerMinute (--max-per-minute N), the rate the ramp multiplies")
	}
	if err := in.Ramp.check(); err != nil {
		problems = append(problems, err.Error())
	}
	switch {
	case in.Ramp.Max < 0 || in.Ramp.Max > MaxStartRate:
		problems = append(problems, fmt.Sprintf("ramp max %d must lie between the start rate and %d device starts a minute, or 0 for no ceiling", in.Ramp.Max, MaxStartRate))
	case in.Ramp.Max > 0 && in.Ramp.Max < in.MaxPerMinute:
		problems = append(problems, fmt.Sprintf("ramp max %d is below the start rate %d it ramps from: raise it, or lower maxPerMinute", in.Ramp.Max, in.MaxPerMinute))
	}
	return problems
}

// StartRate is the rollout's start rate (device starts a minute) once succeeded devices have
// succeeded; with a ramp, rampAt is the count of succeeded devices at which it next rises, to
// next. rampAt and next are 0 once it rises no more, and rate is 0 for a rollout without a bound.
func (in RolloutInput) StartRate(succeeded int) (rate float64, rampAt int, next float64) {
	if in.MaxPerMinute <= 0 {
		return 0, 0, 0
	}
	base := float64(in.MaxPerMinute)
	if in.Ramp == nil || in.Ramp.Every < 1 || in.Ramp.Factor <= 1 {
		return base, 0, 0
	}
	ceiling := float64(MaxStartRate)
	if in.Ramp.Max > 0 {
		ceiling = float64(in.Ramp.Max)
	}
	steps := max(succeeded, 0) / in.Ramp.Every
	rate = min(base*math.Pow(in.Ramp.Factor, float64(steps)), ceiling)
	if rate >= ceiling {
		return ceiling, 0, 0
	}
	return rate, (steps + 1) * in.Ramp.Every, min(base*math.Pow(in.Ramp.Factor, float64(steps+1)), ceiling)
}

// startPace is a run's pacing of device starts (not carried over continue-as-new: the tokens are,
// in RolloutState).
type startPace struct {
	// asked is set once the run asked startRateChange; on when it paces.
	asked, on bool
	// timer fires at timerAt, when the next start is allowed; cancel cancels it.
	timer   workflow.Future
	timerAt time.Time
	cancel  workflow.CancelFunc
	// mark is startedThisRun when grant began, to take the tokens of what it granted; want is
	// what it wanted to grant.
	mark, want int
}

// paceOn reports whether the rollout paces its starts, asking startRateChange the first time.
func (r *rollout) paceOn(ctx workflow.Context) bool {
	if r.in.MaxPerMinute <= 0 || r.fl == nil {
		return false
	}
	if !r.pace.asked {
		r.pace.asked = true
		r.pace.on = workflow.GetVersion(ctx, startRateChange, workflow.DefaultVersion, 1) >= 1
	}
	return r.pace.on
}

// startBurst is the most starts the bucket holds at rate (a minute): a second's worth, at least one.
func startBurst(rate float64) float64 {
	return max(1, math.Floor(rate/60))
}

// refill adds the tokens earned since the bucket was last looked at, at the rate in force now.
func (r *rollout) refill(now time.Time, rate float64) {
	burst := startBurst(rate)
	if r.st.StartTokensAt.IsZero() {
		// The first grant: a full bucket, so that the canary starts at once.
		r.st.StartTokens, r.st.StartTokensAt = burst, now
		return
	}
	if elapsed := now.Sub(r.st.StartTokensAt); elapsed > 0 {
		r.st.StartTokens += elapsed.Minutes() * rate
		r.st.StartTokensAt = now
	}
	r.st.StartTokens = min(r.st.StartTokens, burst)
}

// outstanding is the device runs granted to the open shards and not finished, by their tallies.
func (r *rollout) outstanding() int {
	n := 0
	for _, sh := range r.fl.Shards {
		n += max(sh.Want.Quota+sh.Want.Retry+sh.Want.Again-sh.Last.Runs, 0)
	}
	return n
}

// startAllowance is how many of want device runs may be granted now: all of them when the rollout
// has no start rate; else as many as the bucket holds and the concurrency leaves free. When the
// bucket holds too few it arms the timer for when it will hold enough (a burst, or want when
// less), and allows none.
func (r *rollout) startAllowance(ctx workflow.Context, want int) int {
	if want <= 0 || !r.paceOn(ctx) {
		return want
	}
	now := workflow.Now(ctx)
	rate, _, _ := r.in.StartRate(r.agg.Succeeded)
	r.refill(now, rate)
	want = min(want, r.in.MaxConcurrent-r.outstanding())
	if want <= 0 {
		// A device finishing frees a slot, and its shard's tally wakes the main loop.
		return 0
	}
	enough := min(float64(want), startBurst(rate))
	if r.st.StartTokens+1e-9 < enough {
		// Whole milliseconds, rounded up: float noise must not make it a nanosecond late.
		ms := (enough - r.st.StartTokens) / rate * float64(time.Minute/time.Millisecond)
		wait := time.Duration(math.Ceil(ms-1e-6)) * time.Millisecond
		r.armPaceTimer(ctx, now.Add(wait))
		return 0
	}
	return min(want, int(math.Floor(r.st.StartTokens+1e-9)))
}

// takeStarts takes n tokens for n device runs granted.
func (r *rollout) takeStarts(n int) {
	if n > 0 && r.pace.on {
		r.st.StartTokens -= float64(n)
	}
}

// paceGrant is grant's allowance for the first attempts of its wave: need, paced. pacedGrant
// takes the tokens of what grant then granted.
func (r *rollout) paceGrant(ctx workflow.Context, need int) int {
	r.pace.mark, r.pace.want = r.startedThisRun, need
	return r.startAllowance(ctx, need)
}

func (r *rollout) pacedGrant(ctx workflow.Context) {
	granted := r.startedThisRun - r.pace.mark
	r.takeStarts(granted)
	if left := r.pace.want - granted; left > 0 && r.pace.on {
		// Asked again for the rest, so that the timer is armed for the next start even when no
		// tally comes to wake the rollout before it.
		r.startAllowance(ctx, left)
	}
}

// armPaceTimer makes the pace timer fire at at, unless it already fires no later. Its firing wakes
// the main loop, which grants again.
func (r *rollout) armPaceTimer(ctx workflow.Context, at time.Time) {
	if r.pace.timer != nil && !r.pace.timer.IsReady() {
		if !r.pace.timerAt.After(at) {
			return
		}
		r.pace.cancel()
	}
	d := max(at.Sub(workflow.Now(ctx)), time.Millisecond)
	tctx, cancel := workflow.WithCancel(ctx)
	timer := workflow.NewTimerWithOptions(tctx, d, workflow.TimerOptions{Summary: "next device start allowed"})
	r.pace.timer, r.pace.timerAt, r.pace.cancel = timer, at, cancel
	workflow.Go(ctx, func(gctx workflow.Context) {
		if timer.Get(gctx, nil) == nil {
			r.changes++
		}
	})
}

// holdRetries holds back the retries queueRetryShards granted, when the rollout paces its starts:
// grantPaced releases them as the bucket allows.
func (r *rollout) holdRetries() {
	if !r.pace.on {
		return
	}
	for i := range r.fl.Shards {
		sh := &r.fl.Shards[i]
		if held := sh.Want.Retry - sh.Sent.Retry; held > 0 {
			sh.RetryHeld += held
			sh.Want.Retry = sh.Sent.Retry
		}
	}
}

// grantPaced releases held runs, paced: an operator's retries first (deviceControl), then those
// of the --retry-failed pass.
func (r *rollout) grantPaced(ctx workflow.Context) {
	// Asked here, in every run's first grant, before the retry pass may need to know (holdRetries).
	r.paceOn(ctx)
	r.grantAgain(ctx)
	for i := range r.fl.Shards {
		sh := &r.fl.Shards[i]
		for sh.RetryHeld > 0 {
			// Asked until none is allowed, which arms the timer for the next.
			n := r.startAllowance(ctx, sh.RetryHeld)
			if n == 0 {
				return
			}
			sh.Want.Retry += n
			sh.RetryHeld -= n
			r.takeStarts(n)
		}
	}
}

// rateProgress fills the start rate of p.
func (r *rollout) rateProgress(p *RolloutProgress) {
	if r.in.MaxPerMinute <= 0 {
		return
	}
	p.MaxPerMinute, p.Ramp = r.in.MaxPerMinute, r.in.Ramp
	p.StartRate, p.RampAt, p.NextStartRate = r.in.StartRate(p.Succeeded)
}
