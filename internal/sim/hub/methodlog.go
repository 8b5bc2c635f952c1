package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// The method log: every direct-method invocation localhub received for a registered or unknown
// device, with what became of it. Tests and chaos runs read it (GET /_localhub/methods) to tell
// a request the device executed from one it never saw, and a retry from a second execution.

// Defaults and bounds of the method log.
const (
	// DefaultMethodLogSize is how many entries the method log keeps (Options.MethodLogSize): the
	// newest, over all devices. An entry takes some 200 bytes plus its response (at most
	// maxLoggedResponse), so a full log holds at most about 50 MB; a rollout of 10,000 devices
	// makes one to three entries a device, a few MB.
	DefaultMethodLogSize = 100_000
	// maxLoggedResponse bounds the device's answer kept in an entry.
	maxLoggedResponse = 256
	// DefaultMethodLogPage and MaxMethodLogPage bound a page of GET /_localhub/methods.
	DefaultMethodLogPage = 1000
	MaxMethodLogPage     = 10_000
)

// ErrCallerGone is the Error of a MethodLogEntry whose caller hung up before the device answered
// or the hub gave up: localhub's own word, not an IoT Hub error code.
const ErrCallerGone = "CallerGone"

// MethodLogEntry is one direct-method invocation.
type MethodLogEntry struct {
	// Seq numbers the entries from 1, across restarts: the log's order.
	Seq uint64 `json:"seq"`
	// Time is when localhub received the call; Duration how long it took to end it (in JSON:
	// nanoseconds).
	Time     time.Time     `json:"time"`
	Duration time.Duration `json:"duration"`
	DeviceID string        `json:"deviceId"`
	Method   string        `json:"method"`
	// RequestID is what names the request in its payload, when it carries one: updateId
	// (firmwareUpdate), else requestId (rebootDevice), as internal/protocol defines them.
	RequestID string `json:"requestId,omitempty"`
	// Delivered is set when the request was published to the device's connection; the device may
	// have run it even when it did not answer.
	Delivered bool `json:"delivered"`
	// Status and Response are the device's answer (Response as JSON, cut to 256 bytes), when it
	// answered.
	Status   int    `json:"status,omitempty"`
	Response string `json:"response,omitempty"`
	// Error is the IoT Hub error code localhub answered the caller with when the device did not
	// answer: ThrottlingException (refused before anything else), DeviceNotFound, DeviceNotOnline
	// (not delivered), GatewayTimeout (no answer in time), ServiceUnavailable (localhub stopped);
	// or ErrCallerGone.
	Error string `json:"error,omitempty"`
}

// MethodLogPage is a page of the method log: the body of GET /_localhub/methods.
type MethodLogPage struct {
	Entries []MethodLogEntry `json:"entries"`
	// Next is the Seq to pass as after for the next page; More says whether entries may follow it.
	Next uint64 `json:"next"`
	More bool   `json:"more"`
	// Dropped counts the entries evicted to keep the log within its size since it was created
	// (persisted with it): when it is not zero the oldest invocations are missing.
	Dropped uint64 `json:"dropped"`
}

// methodLog is a ring of the newest entries, in Seq order.
type methodLog struct {
	mu      sync.Mutex
	ring    []MethodLogEntry
	start   int // index of the oldest entry
	n       int // entries held
	next    uint64
	dropped uint64
}

func newMethodLog(size int) *methodLog {
	return &methodLog{ring: make([]MethodLogEntry, 0, min(size, 1024)), next: 1}
}

// add appends e, numbering it, and evicts the oldest entry once size are held.
func (l *methodLog) add(e MethodLogEntry, size int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Seq = l.next
	l.next++
	switch {
	case l.n < size && len(l.ring) < size:
		// Still growing: the ring is in order from index 0.
		l.ring = append(l.ring, e)
		l.n++
	default:
		l.ring[l.start] = e
		l.start = (l.start + 1) % len(l.ring)
		l.dropped++
	}
}

// page returns up to limit entries after Seq after, of deviceID when it is not empty.
func (l *methodLog) page(deviceID string, after uint64, limit int) MethodLogPage {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := MethodLogPage{Entries: []MethodLogEntry{}, Dropped: l.dropped, Next: after}
	if l.n == 0 {
		return p
	}
	oldest := l.ring[l.start].Seq
	i := 0
	if after >= oldest {
		i = int(after - oldest + 1)
	}
	for ; i < l.n; i++ {
		e := l.ring[(l.start+i)%len(l.ring)]
		p.Next = e.Seq
		if deviceID != "" && e.DeviceID != deviceID {
			continue
		}
		if len(p.Entries) == limit {
			p.Next = e.Seq - 1
			p.More = true
			return p
		}
		p.Entries = append(p.Entries, e)
	}
	return p
}

// all returns the entries in order, for saving.
func (l *methodLog) all() ([]MethodLogEntry, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]MethodLogEntry, 0, l.n)
	for i := range l.n {
		out = append(out, l.ring[(l.start+i)%len(l.ring)])
	}
	return out, l.dropped
}

// restore appends saved entries (in Seq order) to an empty log, keeping the newest size.
func (l *methodLog) restore(entries []MethodLogEntry, dropped uint64, size int) {
	if len(entries) > size {
		dropped += uint64(len(entries) - size)
		entries = entries[len(entries)-size:]
	}
	l.mu.Lock()
	l.ring = append(l.ring[:0], entries...)
	l.start, l.n, l.dropped = 0, len(entries), dropped
	if len(entries) > 0 {
		l.next = entries[len(entries)-1].Seq + 1
	}
	l.mu.Unlock()
}

// requestIDOf reads the request's name from a method payload: updateId, else requestId.
func requestIDOf(payload []byte) string {
	if len(payload) == 0 || payload[0] != '{' {
		return ""
	}
	var p map[string]json.RawMessage
	if json.Unmarshal(payload, &p) != nil {
		return ""
	}
	for _, f := range []string{protocol.FieldUpdateID, protocol.FieldRequestID} {
		var s string
		if json.Unmarshal(p[f], &s) == nil && s != "" {
			return s
		}
	}
	return ""
}

// cutResponse keeps at most maxLoggedResponse bytes of an answer, on a rune boundary.
func cutResponse(b []byte) string {
	if len(b) <= maxLoggedResponse {
		return string(b)
	}
	cut := maxLoggedResponse
	for cut > 0 && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return string(b[:cut]) + "…"
}

// logMethod records an invocation that ended with res or err.
func (h *Hub) logMethod(deviceID string, call methodCall, start time.Time, delivered bool, res methodResult, err error) {
	e := MethodLogEntry{
		Time:      start.UTC(),
		Duration:  time.Since(start),
		DeviceID:  deviceID,
		Method:    call.name,
		RequestID: requestIDOf(call.payload),
		Delivered: delivered,
	}
	switch {
	case err == nil:
		e.Status, e.Response = res.status, cutResponse(res.payload)
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		e.Error = ErrCallerGone
	default:
		e.Error = ErrorCode(err)
	}
	h.methodLog.add(e, h.opts.MethodLogSize)
}

// MethodLog returns up to limit entries of the method log after Seq after (0: from the oldest
// kept), of deviceID only when it is not empty; see GET /_localhub/methods.
func (h *Hub) MethodLog(deviceID string, after uint64, limit int) MethodLogPage {
	if limit <= 0 || limit > MaxMethodLogPage {
		limit = MaxMethodLogPage
	}
	return h.methodLog.page(deviceID, after, limit)
}

// loadMethodLog restores the log a previous process saved on Close.
func (h *Hub) loadMethodLog() error {
	var entries []MethodLogEntry
	var dropped uint64
	err := h.store.View(func(tx *store.Tx) error {
		var err error
		dropped, err = tx.MethodLog(func(raw []byte) error {
			var e MethodLogEntry
			if err := json.Unmarshal(raw, &e); err != nil {
				return err
			}
			entries = append(entries, e)
			return nil
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("read the method log: %w", err)
	}
	h.methodLog.restore(entries, dropped, h.opts.MethodLogSize)
	return nil
}

// saveMethodLog replaces the saved log with the one in memory.
func (h *Hub) saveMethodLog() error {
	entries, dropped := h.methodLog.all()
	records := make([]store.LogRecord, len(entries))
	for i, e := range entries {
		raw, err := json.Marshal(e)
		if err != nil {
			return err
		}
		records[i] = store.LogRecord{Seq: e.Seq, Data: raw}
	}
	if err := h.store.Update(func(tx *store.Tx) error { return tx.ReplaceMethodLog(records, dropped) }); err != nil {
		return fmt.Errorf("save the method log: %w", err)
	}
	return nil
}

// handleMethodLog serves GET /_localhub/methods?deviceId=&after=&limit=.
func (h *Hub) handleMethodLog(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	if s := q.Get("after"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			h.fail(w, r, errorf(ErrArgumentInvalid, "after must be the seq of an entry (a whole number), e.g. the next of the previous page"))
			return
		}
		after = n
	}
	limit := DefaultMethodLogPage
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxMethodLogPage {
			h.fail(w, r, errorf(ErrArgumentInvalid, "limit must be a number from 1 to %d", MaxMethodLogPage))
			return
		}
		limit = n
	}
	writeJSON(w, http.StatusOK, h.MethodLog(q.Get("deviceId"), after, limit))
}
