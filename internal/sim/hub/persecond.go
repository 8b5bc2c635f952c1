package hub

import (
	"net/http"
	"sync"
	"time"

	"github.com/dmflow/dmflow/internal/hubquota"
)

// PerSecondWindow is how many whole seconds of per-second counts localhub
// keeps per operation (see PerSecondSince): ten minutes, enough for a fleet
// test's phase, in a fixed 600 bins whatever the hub's uptime.
const PerSecondWindow = 600

// PeakRecord is one operation's requests admitted by its throttle (not
// refused) per whole second of the hub's clock: calendar seconds, as
// time.Unix counts them.
type PeakRecord struct {
	// Peak is the most requests admitted in one second; a direct method
	// is one request whatever its 4 KB chunks.
	Peak int `json:"peak"`
	// At is the start of the first second with Peak requests; the zero
	// time when none were admitted.
	At time.Time `json:"at"`
	// Total is the requests admitted from From on.
	Total int64 `json:"total"`
	// From is the start of the first second the record covers: the hub's
	// start, or for PerSecondSince the second of since, but not before
	// the oldest second kept (PerSecondWindow seconds ago).
	From time.Time `json:"from"`
	// Seconds lists the seconds with admitted requests from From on,
	// oldest first. Only PerSecondSince fills it.
	Seconds []SecondCount `json:"seconds,omitempty"`
}

// SecondCount is the requests admitted in the second starting At.
type SecondCount struct {
	At    time.Time `json:"at"`
	Count int       `json:"count"`
}

// perSecond counts admitted requests per operation and second: a peak and a
// total since the hub started, and a ring of the last PerSecondWindow
// seconds for questions about a later start.
type perSecond struct {
	mu    sync.Mutex
	start int64 // Unix second the counts start in
	ops   map[hubquota.Op]*opSeconds
}

type opSeconds struct {
	peak   int
	peakAt int64
	total  int64
	bins   [PerSecondWindow]secondBin // bin of second s at s % PerSecondWindow
}

type secondBin struct {
	sec int64
	n   int
}

func newPerSecond(start time.Time) *perSecond {
	return &perSecond{start: start.Unix(), ops: map[hubquota.Op]*opSeconds{}}
}

// add counts one request of op admitted at t.
func (p *perSecond) add(op hubquota.Op, t time.Time) {
	s := t.Unix()
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.ops[op]
	if o == nil {
		o = &opSeconds{}
		p.ops[op] = o
	}
	b := &o.bins[binOf(s)]
	if b.sec != s {
		*b = secondBin{sec: s}
	}
	b.n++
	o.total++
	if b.n > o.peak {
		o.peak, o.peakAt = b.n, s
	}
}

func binOf(s int64) int {
	return int((s%PerSecondWindow + PerSecondWindow) % PerSecondWindow)
}

// sinceStart returns a record per operation since the counts started.
func (p *perSecond) sinceStart() map[string]PeakRecord {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]PeakRecord, len(hubquota.Ops))
	for _, op := range hubquota.Ops {
		r := PeakRecord{From: unixTime(p.start)}
		if o := p.ops[op]; o != nil {
			r.Peak, r.Total = o.peak, o.total
			if o.peak > 0 {
				r.At = unixTime(o.peakAt)
			}
		}
		out[string(op)] = r
	}
	return out
}

// since returns a record per operation of the seconds from since's on, as
// far back as the ring reaches at now, with the seconds listed.
func (p *perSecond) since(since, now time.Time) map[string]PeakRecord {
	from := max(since.Unix(), now.Unix()-PerSecondWindow+1)
	p.mu.Lock()
	defer p.mu.Unlock()
	from = max(from, p.start)
	out := make(map[string]PeakRecord, len(hubquota.Ops))
	for _, op := range hubquota.Ops {
		r := PeakRecord{From: unixTime(from)}
		if o := p.ops[op]; o != nil {
			// Walk the ring from its oldest slot so the seconds come out in order.
			for i := range PerSecondWindow {
				b := o.bins[binOf(from+int64(i))]
				if b.n == 0 || b.sec != from+int64(i) {
					continue
				}
				r.Seconds = append(r.Seconds, SecondCount{At: unixTime(b.sec), Count: b.n})
				r.Total += int64(b.n)
				if b.n > r.Peak {
					r.Peak, r.At = b.n, unixTime(b.sec)
				}
			}
		}
		out[string(op)] = r
	}
	return out
}

func unixTime(s int64) time.Time { return time.Unix(s, 0).UTC() }

// PerSecondSince returns, per operation, the requests its throttle admitted
// in each second from since's on (the second since falls in included), as
// far back as the last PerSecondWindow seconds reach: each record's From
// says where it starts. A test takes since before the phase it checks and
// compares Peak with the budget.
func (h *Hub) PerSecondSince(since time.Time) map[string]PeakRecord {
	return h.limits.admitted.since(since, time.Now())
}

// handleStats answers GET /_localhub/stats[?since=RFC 3339 time]; with
// since, perSecond covers the seconds from since on and lists them.
func (h *Hub) handleStats(w http.ResponseWriter, r *http.Request) {
	st := h.Stats()
	if s := r.URL.Query().Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			h.fail(w, r, errorf(ErrArgumentInvalid, "since must be an RFC 3339 time, e.g. 2026-01-02T03:04:05Z"))
			return
		}
		st.PerSecond = h.PerSecondSince(t)
	}
	writeJSON(w, http.StatusOK, st)
}
