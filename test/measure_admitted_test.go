//go:build integration && bench

package test

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/dmflow/dmflow/internal/benchreport"
	"github.com/dmflow/dmflow/internal/hubquota"
)

// admittedSeconds collects localhub's counts of admitted requests per operation and second over
// a run. localhub keeps the last ten minutes of them (PerSecondWindow) and a rollout may take
// longer, so they are read every tick of the run and merged: a second read twice keeps its later,
// complete count.
type admittedSeconds struct {
	hub   ownHub
	since time.Time
	last  time.Time // of the last read
	// counts by operation and Unix second.
	counts map[string]map[int64]int
}

func newAdmittedSeconds(hub ownHub, since time.Time) *admittedSeconds {
	return &admittedSeconds{hub: hub, since: since, counts: map[string]map[int64]int{}}
}

// read merges the seconds since the last read (less a margin, for the second that was still
// counting then).
func (a *admittedSeconds) read(t *testing.T) {
	t.Helper()
	from := a.since
	if margin := a.last.Add(-5 * time.Second); !a.last.IsZero() && margin.After(from) {
		from = margin
	}
	a.last = time.Now()
	for op, rec := range a.hub.perSecondSince(t, from) {
		if rec.From.After(from) {
			t.Logf("localhub's per-second counts of %s start at %s, after %s: the reads came too far apart", op, rec.From, from)
		}
		m := a.counts[op]
		if m == nil {
			m = map[int64]int{}
			a.counts[op] = m
		}
		for _, sc := range rec.Seconds {
			m[sc.At.Unix()] = max(m[sc.At.Unix()], sc.Count)
		}
	}
}

// total is the requests of op admitted over the run.
func (a *admittedSeconds) total(op hubquota.Op) int {
	n := 0
	for _, c := range a.counts[string(op)] {
		n += c
	}
	return n
}

// peak is the most requests of op admitted in window consecutive whole seconds.
func (a *admittedSeconds) peak(op hubquota.Op, window int) int {
	m := a.counts[string(op)]
	secs := make([]int64, 0, len(m))
	for s := range m {
		secs = append(secs, s)
	}
	slices.Sort(secs)
	best, sum, lo := 0, 0, 0
	for _, s := range secs {
		sum += m[s]
		for secs[lo] <= s-int64(window) {
			sum -= m[secs[lo]]
			lo++
		}
		best = max(best, sum)
	}
	return best
}

// meteringWindow is the window IoT Hub meters op in, in seconds: queries by the minute, the
// others by the second (hubquota.Documented's bursts).
func meteringWindow(op hubquota.Op) int {
	if op == hubquota.Queries {
		return 60
	}
	return 1
}

// figures are the peaks of the operations the hub budget covers against budget (calls per
// second by operation; nil for none).
func (a *admittedSeconds) figures(budget map[hubquota.Op]float64) []benchreport.Admitted {
	var out []benchreport.Admitted
	for _, op := range budgetOps {
		w := meteringWindow(op)
		f := benchreport.Admitted{Op: string(op), WindowSeconds: w, Peak: a.peak(op, w), Total: a.total(op)}
		if r, ok := budget[op]; ok {
			// Rounded: S1's 20 queries a minute are 1/3 a second.
			f.Budget = math.Round(r*float64(w)*1000) / 1000
		}
		out = append(out, f)
	}
	return out
}
