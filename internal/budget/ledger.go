// Package budget shares an IoT Hub's call budget among dmflow's worker processes, and a rollout's
// own ceiling (--rate) among the workers that serve its devices.
//
// Every rate has a key: a hub operation as IoT Hub meters it ("methods", "twinReads",
// "twinUpdates", "queries") or a rollout's ceiling ("rollout:<workflow ID>"). A worker leases a
// share of each key it uses from one HubBudget workflow per hub (a Ledger decides the shares), and
// paces its calls with a local token bucket at its share (Leaser). The shares granted for a key
// never add up to more than its rate: a worker that joins gets what is free and its fair share as
// the others renew, and a worker that dies keeps its share until its lease runs out, so a worker
// that restarts gets only what is free: a restart brings no extra burst.
package budget

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// RolloutKeyPrefix starts the key of a rollout's own ceiling.
const RolloutKeyPrefix = "rollout:"

// Want asks for a share of one key.
type Want struct {
	Key string `json:"key"`
	// Rate is the key's whole rate in calls per second where the hub budget does not set it (a
	// rollout's ceiling); zero for a hub operation.
	Rate float64 `json:"rate,omitempty"`
}

// Request is a worker's lease request: the keys it uses now, and its hub budget. A request with
// no wants gives the worker's lease back.
type Request struct {
	// Worker names the worker process (its Temporal identity); unique while it runs.
	Worker string `json:"worker"`
	// Budget is the worker's configured hub budget in calls per second per operation; an
	// operation left out is not limited by this worker's configuration.
	Budget map[string]float64 `json:"budget,omitempty"`
	Wants  []Want             `json:"wants,omitempty"`
}

// Share is the part of a key's rate a worker may use until its lease ends.
type Share struct {
	Key string `json:"key"`
	// Rate is the worker's share in calls per second; unused when Unlimited.
	Rate float64 `json:"rate"`
	// Unlimited is set for an operation no worker's budget limits.
	Unlimited bool `json:"unlimited,omitempty"`
}

// Grant answers a Request: one share per want, in the request's order, for Period from the
// moment the ledger granted it.
type Grant struct {
	Shares []Share       `json:"shares"`
	Period time.Duration `json:"period"`
}

// Lease is what a worker holds: its shares until Until (ledger time).
type Lease struct {
	Until  time.Time          `json:"until"`
	Budget map[string]float64 `json:"budget,omitempty"`
	// Rates are the whole rates the worker asked for, by key (rollout ceilings): what it asks,
	// not what it got, so that a raised ceiling takes effect once every holder asks for it.
	Rates map[string]float64 `json:"rates,omitempty"`
	// Shares are the rates granted, by key, and Whole the key's rate they were shares of.
	Shares map[string]float64 `json:"shares,omitempty"`
	Whole  map[string]float64 `json:"whole,omitempty"`
	// Unlimited lists the keys granted without a limit.
	Unlimited []string `json:"unlimited,omitempty"`
}

// Ledger holds the live leases of one hub's workers. Its methods are deterministic (sorted
// iteration, sums in worker order), so a workflow keeps it.
type Ledger struct {
	Leases map[string]Lease `json:"leases,omitempty"`
}

// MaxWants bounds the keys one request may ask for.
const MaxWants = 1000

// Check says what is wrong with a request, or nil.
func (r Request) Check() error {
	switch {
	case r.Worker == "":
		return fmt.Errorf("lease request without a worker: set it to the worker's identity")
	case len(r.Wants) > MaxWants:
		return fmt.Errorf("lease request of %s asks for %d keys: at most %d", r.Worker, len(r.Wants), MaxWants)
	}
	for op, v := range r.Budget {
		if !(v > 0) || math.IsInf(v, 0) {
			return fmt.Errorf("lease request of %s: budget %s=%g is not a positive number of calls per second", r.Worker, op, v)
		}
	}
	seen := map[string]bool{}
	for _, w := range r.Wants {
		switch {
		case w.Key == "":
			return fmt.Errorf("lease request of %s asks for an empty key", r.Worker)
		case seen[w.Key]:
			return fmt.Errorf("lease request of %s asks for %s twice", r.Worker, w.Key)
		case strings.HasPrefix(w.Key, RolloutKeyPrefix) && (!(w.Rate > 0) || math.IsInf(w.Rate, 0)):
			return fmt.Errorf("lease request of %s: %s needs a positive rate, got %g", r.Worker, w.Key, w.Rate)
		case !strings.HasPrefix(w.Key, RolloutKeyPrefix) && w.Rate != 0:
			return fmt.Errorf("lease request of %s: %s is a hub operation, whose rate the hub budget sets: send rate 0", r.Worker, w.Key)
		}
		seen[w.Key] = true
	}
	return nil
}

// Grant expires the leases that ended by now, and leases the request's keys to its worker for
// period: for each key, the worker's fair share (the key's rate over the workers holding it, this
// one included), or less where the other workers still hold more than theirs, so that the live
// shares never add up to more than the rate. A request without wants releases the worker's lease.
func (l *Ledger) Grant(now time.Time, req Request, period time.Duration) Grant {
	l.expire(now)
	delete(l.Leases, req.Worker)
	g := Grant{Shares: make([]Share, 0, len(req.Wants)), Period: period}
	if len(req.Wants) == 0 {
		return g
	}
	lease := Lease{Until: now.Add(period), Budget: req.Budget, Rates: map[string]float64{}, Shares: map[string]float64{}, Whole: map[string]float64{}}
	others := l.workers()
	for _, w := range req.Wants {
		whole, limited := l.rate(others, req, w)
		if !limited {
			lease.Unlimited = append(lease.Unlimited, w.Key)
			g.Shares = append(g.Shares, Share{Key: w.Key, Unlimited: true})
			continue
		}
		if w.Rate > 0 {
			lease.Rates[w.Key] = w.Rate
		}
		holders, held := 1, 0.0
		for _, id := range others {
			if s, ok := l.Leases[id].Shares[w.Key]; ok {
				holders++
				held += s
			}
		}
		share := max(0, min(whole/float64(holders), whole-held))
		lease.Shares[w.Key] = share
		lease.Whole[w.Key] = whole
		g.Shares = append(g.Shares, Share{Key: w.Key, Rate: share})
	}
	if l.Leases == nil {
		l.Leases = map[string]Lease{}
	}
	l.Leases[req.Worker] = lease
	return g
}

// rate is a key's whole rate as the live leases and the request see it: for a hub operation the
// lowest budget any of them configures (limited false when none does), for a rollout's ceiling
// the lowest rate any of them asks for. The lowest is the safe choice while workers disagree, as
// during a change of configuration rolled out worker by worker.
func (l *Ledger) rate(others []string, req Request, w Want) (whole float64, limited bool) {
	whole = math.Inf(1)
	pick := func(v float64, ok bool) {
		if ok && v < whole {
			whole = v
		}
	}
	rollout := strings.HasPrefix(w.Key, RolloutKeyPrefix)
	if rollout {
		pick(w.Rate, true)
	} else {
		v, ok := req.Budget[w.Key]
		pick(v, ok)
	}
	for _, id := range others {
		lease := l.Leases[id]
		if rollout {
			v, ok := lease.Rates[w.Key]
			pick(v, ok)
		} else {
			v, ok := lease.Budget[w.Key]
			pick(v, ok)
		}
	}
	return whole, !math.IsInf(whole, 1)
}

// expire drops the leases that ended by now.
func (l *Ledger) expire(now time.Time) {
	for _, id := range l.workers() {
		if !l.Leases[id].Until.After(now) {
			delete(l.Leases, id)
		}
	}
}

// workers lists the workers holding leases, sorted.
func (l *Ledger) workers() []string {
	ids := make([]string, 0, len(l.Leases))
	for id := range l.Leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Live reports whether any lease is live at now.
func (l *Ledger) Live(now time.Time) bool {
	for _, lease := range l.Leases {
		if lease.Until.After(now) {
			return true
		}
	}
	return false
}

// KeyView is one key's state, for people: its rate and who holds which share.
type KeyView struct {
	Key  string  `json:"key"`
	Rate float64 `json:"rate"`
	// Granted sums the live shares; never above Rate.
	Granted float64            `json:"granted"`
	Shares  map[string]float64 `json:"shares"`
}

// View lists the limited keys of the live leases at now, sorted by key.
func (l *Ledger) View(now time.Time) []KeyView {
	byKey := map[string]*KeyView{}
	for _, id := range l.workers() {
		lease := l.Leases[id]
		if !lease.Until.After(now) {
			continue
		}
		keys := make([]string, 0, len(lease.Shares))
		for k := range lease.Shares {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			v := byKey[k]
			if v == nil {
				v = &KeyView{Key: k, Rate: lease.Whole[k], Shares: map[string]float64{}}
				byKey[k] = v
			}
			v.Shares[id] = lease.Shares[k]
			v.Granted += lease.Shares[k]
			v.Rate = min(v.Rate, lease.Whole[k])
		}
	}
	out := make([]KeyView, 0, len(byKey))
	for _, v := range byKey {
		out = append(out, *v)
	}
	slices.SortFunc(out, func(a, b KeyView) int { return strings.Compare(a.Key, b.Key) })
	return out
}
