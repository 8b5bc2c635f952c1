package budget

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Granter grants leases: the hub's HubBudget workflow, through Temporal, in a worker; a Solo
// ledger in a process alone with its hub.
type Granter interface {
	Lease(ctx context.Context, req Request) (Grant, error)
}

// Solo grants leases from a ledger in this process: for a process that is alone with its hub, or
// has no hub budget to share (tests, and a worker's rollout ceilings without one).
type Solo struct {
	mu     sync.Mutex
	ledger Ledger
}

// Lease grants from the process's ledger.
func (s *Solo) Lease(_ context.Context, req Request) (Grant, error) {
	if err := req.Check(); err != nil {
		return Grant{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ledger.Grant(time.Now(), req, DefaultPeriod), nil
}

const (
	// DefaultPeriod is how long a lease lasts: how long a dead worker's share stays reserved, and
	// the longest a worker that joins waits for its fair share.
	DefaultPeriod = 6 * time.Second
	// renewEvery is how often a worker renews its lease, as a part of the period: three renewals
	// a period, so that one late or lost renewal does not let the lease lapse.
	renewEvery = 3
	// leaseMargin is taken off a lease's end on the worker's side, for the time the grant took to
	// arrive and for clocks that run at slightly different speeds.
	leaseMargin = time.Second
	// idleAfter is how long a key goes unused before the worker gives its share back, so that
	// the busy workers get it.
	idleAfter = 30 * time.Second
	// burstShare is the part of a share a worker may spend at once after a pause; its bucket
	// refills at the rest, so that in any one second its calls stay within its share. Small, so
	// that a busy worker paces at nearly all of it (95%): calls book one token at a time, so a
	// call of several tokens (a firmware update's patches) needs no larger burst.
	burstShare = 0.05
	// retryAfter is how soon a failed renewal is tried again.
	retryAfter = time.Second
)

// Take asks for N calls' worth of a key: a hub operation (Rate 0) or a rollout's ceiling (Rate,
// its whole rate in calls per second).
type Take struct {
	Key  string
	Rate float64
	N    int
}

// Config configures a Leaser.
type Config struct {
	// Worker names the process in its lease requests (its Temporal identity).
	Worker string
	// Budget is the hub budget in calls per second per operation; nil for none.
	Budget map[string]float64
	// Granter grants the leases; nil for a Solo one.
	Granter Granter
	// Logger logs failed renewals; nil for none.
	Logger *slog.Logger
}

// Leaser holds a worker's lease and paces its calls at its shares: one token bucket a key, at the
// share granted. Calls on a key without a live share wait for the next grant.
type Leaser struct {
	cfg     Config
	mu      sync.Mutex
	keys    map[string]*bucket
	granted chan struct{} // closed and replaced at every grant
	changed chan struct{} // a new key or rate asks for a renewal now
	stop    context.CancelFunc
	done    chan struct{}
}

type bucket struct {
	want Want
	// lim is nil until the first grant.
	lim       *rate.Limiter
	unlimited bool
	// gen counts the buckets the key had: a share that shrank gets a new one.
	gen int
	// until is when the share ends, by this process's clock; zero before the first grant.
	until time.Time
	// used is the last time a call asked for the key.
	used time.Time
}

// New starts a Leaser: it renews its lease in the background until Close.
func New(cfg Config) *Leaser {
	if cfg.Granter == nil {
		cfg.Granter = &Solo{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, stop := context.WithCancel(context.Background())
	l := &Leaser{
		cfg:     cfg,
		keys:    map[string]*bucket{},
		granted: make(chan struct{}),
		changed: make(chan struct{}, 1),
		stop:    stop,
		done:    make(chan struct{}),
	}
	go l.run(ctx)
	return l
}

// Close stops the renewals and gives the lease back, so that the other workers get its shares
// at their next renewal rather than when it runs out.
func (l *Leaser) Close() {
	l.stop()
	<-l.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.cfg.Granter.Lease(ctx, Request{Worker: l.cfg.Worker, Budget: l.cfg.Budget}); err != nil {
		l.cfg.Logger.Warn("hub budget: could not give the lease back; it ends by itself", "error", err)
	}
}

// Budgeted reports whether the hub budget limits op.
func (l *Leaser) Budgeted(op string) bool {
	_, ok := l.cfg.Budget[op]
	return ok
}

// Wait takes each of takes in turn, waiting for the tokens where need be. While it waits it calls
// beat every beatEvery (when both are set), so that a heartbeating activity stays alive. It
// returns ctx's error when ctx ends first, and at once an error naming the key when the tokens
// would come after ctx's deadline: waiting would only end in a timeout.
func (l *Leaser) Wait(ctx context.Context, takes []Take, beatEvery time.Duration, beat func()) error {
	var tick <-chan time.Time
	if beat != nil && beatEvery > 0 {
		t := time.NewTicker(beatEvery)
		defer t.Stop()
		tick = t.C
	}
	for _, t := range takes {
		if err := l.wait(ctx, t, tick, beat); err != nil {
			return err
		}
	}
	return nil
}

func (l *Leaser) wait(ctx context.Context, t Take, tick <-chan time.Time, beat func()) error {
	n := max(t.N, 1)
	for {
		r := l.reserve(t, n, time.Now())
		if !r.ok {
			// No live share, or a share too small for the call before the lease ends: wait for
			// the next grant.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-r.granted:
			case <-tick:
				beat()
			}
			continue
		}
		if r.delay <= 0 {
			return nil
		}
		if dl, has := ctx.Deadline(); has && time.Now().Add(r.delay).After(dl) {
			r.cancel()
			return fmt.Errorf("hub budget %s: the next call is due in %s, after the activity's deadline in %s: "+
				"the calls sharing the budget need more time than the activity has",
				t.Key, r.delay.Round(time.Millisecond), time.Until(dl).Round(time.Millisecond))
		}
		done, err := l.await(ctx, t.Key, r, tick, beat)
		if done || err != nil {
			return err
		}
	}
}

// await waits for reservation r to come due. A grant that shrank the key's share meanwhile
// replaced its bucket: then done is false, and the call reserves again at the new share, since
// tokens booked at the old one could overrun the budget the other workers now share.
func (l *Leaser) await(ctx context.Context, key string, r reservation, tick <-chan time.Time, beat func()) (done bool, err error) {
	timer := time.NewTimer(r.delay)
	defer timer.Stop()
	granted := r.granted
	for {
		select {
		case <-ctx.Done():
			r.cancel()
			return true, ctx.Err()
		case <-timer.C:
			return true, nil
		case <-tick:
			beat()
		case <-granted:
			gen, next := l.generation(key)
			if gen != r.gen {
				return false, nil
			}
			granted = next
		}
	}
}

// reservation is what reserve booked: the tokens, due after delay, on generation gen of the
// key's bucket; ok is false when nothing was booked. granted is closed at the next grant.
type reservation struct {
	res     []*rate.Reservation
	gen     int
	delay   time.Duration
	ok      bool
	granted <-chan struct{}
}

// cancel gives the tokens back.
func (r reservation) cancel() {
	now := time.Now()
	for _, res := range slices.Backward(r.res) {
		res.CancelAt(now)
	}
}

// generation is the key's bucket generation and the channel closed at the next grant.
func (l *Leaser) generation(key string) (int, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	gen := -1
	if b := l.keys[key]; b != nil {
		gen = b.gen
	}
	return gen, l.granted
}

// reserve books n tokens of t's key at now, when its share is live and they come before it ends
// (see horizon), and says how long until they are due.
func (l *Leaser) reserve(t Take, n int, now time.Time) reservation {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.keys[t.Key]
	switch {
	case b == nil:
		b = &bucket{want: Want{Key: t.Key, Rate: t.Rate}}
		l.keys[t.Key] = b
		l.askNow()
	case b.want.Rate != t.Rate:
		// A rollout's ceiling changed: the ledger takes the new one from the next request.
		b.want.Rate = t.Rate
		l.askNow()
	}
	b.used = now
	none := reservation{granted: l.granted}
	if !now.Before(b.until) {
		return none
	}
	if b.unlimited {
		return reservation{ok: true}
	}
	// One token at a time: n may exceed a small share's burst. Tokens are booked up to one
	// refill interval past the share's end, no further: the next grant may be smaller, and a call
	// due later waits for it; the interval lets a share slower than one call a lease be used.
	horizon := b.until.Add(time.Duration(float64(time.Second) / float64(b.lim.Limit())))
	r := reservation{gen: b.gen, ok: true, granted: l.granted, res: make([]*rate.Reservation, 0, n)}
	for range n {
		res := b.lim.ReserveN(now, 1)
		if !res.OK() || now.Add(res.DelayFrom(now)).After(horizon) {
			res.CancelAt(now)
			r.cancel()
			return none
		}
		r.res = append(r.res, res)
	}
	r.delay = r.res[len(r.res)-1].DelayFrom(now)
	return r
}

// askNow asks the renewal loop for a renewal at once. Called with mu held.
func (l *Leaser) askNow() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

func (l *Leaser) run(ctx context.Context) {
	defer close(l.done)
	every := DefaultPeriod / renewEvery
	timer := time.NewTimer(every)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-l.changed:
		}
		next := every
		if err := l.renew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			l.cfg.Logger.Warn("hub budget: lease renewal failed; calls wait when the lease runs out", "error", err)
			next = retryAfter
		}
		timer.Reset(next)
	}
}

// renew asks for the keys in use and applies the grant.
func (l *Leaser) renew(ctx context.Context) error {
	sent := time.Now()
	req := Request{Worker: l.cfg.Worker, Budget: l.cfg.Budget, Wants: l.wants(sent)}
	ctx, cancel := context.WithTimeout(ctx, DefaultPeriod/renewEvery)
	defer cancel()
	g, err := l.cfg.Granter.Lease(ctx, req)
	if err != nil {
		return err
	}
	l.apply(g, sent)
	return nil
}

// wants lists the keys asked for since idleAfter, sorted, and forgets the others.
func (l *Leaser) wants(now time.Time) []Want {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Want
	for key, b := range l.keys {
		if now.Sub(b.used) > idleAfter {
			delete(l.keys, key)
			continue
		}
		out = append(out, b.want)
	}
	slices.SortFunc(out, func(a, b Want) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// apply sets each key's bucket to its share, valid from when the request was sent for the lease
// period less a margin, and wakes the calls waiting for a grant.
func (l *Leaser) apply(g Grant, sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	until := sent.Add(g.Period - leaseMargin)
	for _, s := range g.Shares {
		b := l.keys[s.Key]
		if b == nil {
			continue
		}
		b.until, b.unlimited = until, s.Unlimited
		switch {
		case s.Unlimited:
			continue
		case !(s.Rate > 0):
			// Nothing free yet (the other workers hold the whole rate until they renew): the
			// key's calls wait for a grant with a share.
			b.until = time.Time{}
			continue
		}
		r, burst := pace(s.Rate)
		switch {
		case b.lim == nil:
			// A new bucket starts full: its burst and refill fit in one second of the share, and
			// the share is only what the other workers left free.
			b.lim = rate.NewLimiter(r, burst)
		case r < b.lim.Limit():
			// A share that shrank gets a new bucket, empty, dropping what was booked at the larger
			// share: the calls waiting on it book again (await).
			b.lim = rate.NewLimiter(r, burst)
			b.lim.ReserveN(now, burst)
			b.gen++
		default:
			b.lim.SetLimitAt(now, r)
			b.lim.SetBurstAt(now, burst)
		}
	}
	close(l.granted)
	l.granted = make(chan struct{})
}

// pace is the token bucket for a share of s > 0 calls per second: a burst of burstShare of it (at
// least 1) and the rest as the refill, so that any one second holds at most s calls. Below 2 calls
// a second a burst of 1 and the whole share as the refill: a second may then hold one call more,
// which the hub's own bucket (a second's worth, or a minute's for queries) takes.
func pace(s float64) (rate.Limit, int) {
	if s < 2 {
		return rate.Limit(s), 1
	}
	burst := max(1, int(math.Floor(s*burstShare)))
	return rate.Limit(s - float64(burst)), burst
}
