package budget

import (
	"encoding/binary"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func methods(worker string, budget float64) Request {
	return Request{Worker: worker, Budget: map[string]float64{"methods": budget}, Wants: []Want{{Key: "methods"}}}
}

func TestLedgerSharesConvergeAndNeverExceed(t *testing.T) {
	var l Ledger
	p := 10 * time.Second
	g := l.Grant(t0, methods("w1", 40), p)
	require.Len(t, g.Shares, 1)
	assert.Equal(t, Share{Key: "methods", Rate: 40}, g.Shares[0], "alone, the whole budget")

	// A second worker gets what is free: nothing, while w1 holds all of it.
	g = l.Grant(t0.Add(time.Second), methods("w2", 40), p)
	assert.Equal(t, 0.0, g.Shares[0].Rate)
	// w1 renews: its fair half; then w2 renews: the half w1 freed.
	assert.Equal(t, 20.0, l.Grant(t0.Add(2*time.Second), methods("w1", 40), p).Shares[0].Rate)
	assert.Equal(t, 20.0, l.Grant(t0.Add(3*time.Second), methods("w2", 40), p).Shares[0].Rate)
	v := l.View(t0.Add(3 * time.Second))
	require.Len(t, v, 1)
	assert.Equal(t, KeyView{Key: "methods", Rate: 40, Granted: 40, Shares: map[string]float64{"w1": 20, "w2": 20}}, v[0])

	// w2 dies: its share stays reserved until its lease ends, then w1 gets it all back.
	assert.Equal(t, 20.0, l.Grant(t0.Add(12*time.Second), methods("w1", 40), p).Shares[0].Rate)
	assert.Equal(t, 40.0, l.Grant(t0.Add(13*time.Second+time.Millisecond), methods("w1", 40), p).Shares[0].Rate)
}

func TestLedgerRelease(t *testing.T) {
	var l Ledger
	p := 10 * time.Second
	l.Grant(t0, methods("w1", 40), p)
	l.Grant(t0, methods("w2", 40), p)
	l.Grant(t0, methods("w1", 40), p)
	g := l.Grant(t0, Request{Worker: "w2"}, p)
	assert.Empty(t, g.Shares)
	assert.Equal(t, 40.0, l.Grant(t0.Add(time.Second), methods("w1", 40), p).Shares[0].Rate, "a released share is free at once")
	assert.False(t, l.Live(t0.Add(12*time.Second)))
}

func TestLedgerRates(t *testing.T) {
	p := 10 * time.Second
	t.Run("the lowest configured budget holds while workers disagree", func(t *testing.T) {
		var l Ledger
		l.Grant(t0, methods("old", 40), p)
		g := l.Grant(t0, methods("new", 100), p)
		assert.Equal(t, 0.0, g.Shares[0].Rate)
		assert.Equal(t, 20.0, l.Grant(t0.Add(time.Second), methods("old", 40), p).Shares[0].Rate)
		assert.Equal(t, 20.0, l.Grant(t0.Add(2*time.Second), methods("new", 100), p).Shares[0].Rate)
		// Once the old worker is gone, the new budget.
		assert.Equal(t, 100.0, l.Grant(t0.Add(12*time.Second), methods("new", 100), p).Shares[0].Rate)
	})
	t.Run("an operation no budget names is not limited", func(t *testing.T) {
		var l Ledger
		g := l.Grant(t0, Request{Worker: "w", Budget: map[string]float64{"methods": 40}, Wants: []Want{{Key: "queries"}}}, p)
		assert.Equal(t, []Share{{Key: "queries", Unlimited: true}}, g.Shares)
		assert.Empty(t, l.View(t0))
	})
	t.Run("a raised rollout ceiling takes effect once every holder asks for it", func(t *testing.T) {
		var l Ledger
		want := func(w string, r float64) Request {
			return Request{Worker: w, Wants: []Want{{Key: "rollout:r1", Rate: r}}}
		}
		l.Grant(t0, want("w1", 10), p)
		l.Grant(t0, want("w2", 10), p)
		l.Grant(t0, want("w1", 10), p)
		assert.Equal(t, 5.0, l.Grant(t0, want("w2", 10), p).Shares[0].Rate)
		assert.Equal(t, 5.0, l.Grant(t0.Add(time.Second), want("w1", 30), p).Shares[0].Rate, "w2 still asks for 10")
		assert.Equal(t, 15.0, l.Grant(t0.Add(2*time.Second), want("w2", 30), p).Shares[0].Rate)
		assert.Equal(t, 15.0, l.Grant(t0.Add(3*time.Second), want("w1", 30), p).Shares[0].Rate)
	})
}

func TestRequestCheck(t *testing.T) {
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{}, "without a worker"},
		{Request{Worker: "w", Budget: map[string]float64{"methods": 0}}, "methods=0"},
		{Request{Worker: "w", Budget: map[string]float64{"methods": math.Inf(1)}}, "methods=+Inf"},
		{Request{Worker: "w", Wants: []Want{{Key: ""}}}, "empty key"},
		{Request{Worker: "w", Wants: []Want{{Key: "methods"}, {Key: "methods"}}}, "twice"},
		{Request{Worker: "w", Wants: []Want{{Key: "rollout:x"}}}, "needs a positive rate"},
		{Request{Worker: "w", Wants: []Want{{Key: "methods", Rate: 3}}}, "send rate 0"},
		{Request{Worker: "w", Wants: make([]Want, MaxWants+1)}, "at most"},
	} {
		err := tc.req.Check()
		require.Error(t, err, "%+v", tc.req)
		assert.Contains(t, err.Error(), tc.want)
	}
	require.NoError(t, methods("w", 40).Check())
}

// FuzzLedgerNeverOvergrants plays any sequence of requests from four workers, at any times, and
// checks that the live shares of a key never add up to more than its rate (a rate that stays the
// same: a lowered one holds once every holder has renewed).
func FuzzLedgerNeverOvergrants(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 0, 1, 2, 3})
	f.Add([]byte{0, 0xff, 1, 0x80, 2, 0x10, 3, 0x01, 0, 0x40})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var l Ledger
		now := t0
		p := 10 * time.Second
		for i := 0; i+1 < len(ops); i += 2 {
			w := fmt.Sprintf("w%d", ops[i]%4)
			step := ops[i+1]
			now = now.Add(time.Duration(binary.BigEndian.Uint16([]byte{0, step})) * 50 * time.Millisecond)
			req := methods(w, 40)
			switch {
			case step%7 == 0:
				req.Wants = nil // a release
			case step%5 == 0:
				req.Wants = append(req.Wants, Want{Key: "rollout:r", Rate: 7})
			}
			l.Grant(now, req, p)
			for _, v := range l.View(now) {
				if v.Granted > v.Rate+1e-9 {
					t.Fatalf("after %s's request at +%s: %s granted %g of %g: %v", w, now.Sub(t0), v.Key, v.Granted, v.Rate, v.Shares)
				}
			}
		}
	})
}
