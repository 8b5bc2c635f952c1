package activities

import (
	"slices"
	"time"
)

// Earlier makes InvokeMethod's ReadFirst guard a retry that is a new request against a second
// delivery: a rollout that retries a device (a timed-out update may still complete, late) calls
// it with a new update ID, which no device deduplicates against the earlier one, and a device
// built from the tutorials deduplicates nothing. The read before the call then decides, on both
// device contracts, whether the device took one of the earlier requests and is still at it or
// finished it:
//
//   - a device on dmflow's contract reports the request's ID (Evidence.IDProperty): one of IDs
//     with a value of Evidence.Property among Taken is an earlier request running or completed; an
//     earlier ID with another value (firmwareStatus error) is one that ended without the update,
//     which the retry may repeat; another ID is another request's;
//   - a device that reports no ID (the tutorials') counts when Evidence.Property holds a value
//     among Taken that the hub stamped ($lastUpdated) after Before, the property's time in the
//     first request's read, or, when that read is not known, after Since less readFirstSlack.
//
// When times cannot be compared (the hub gave none), a value among Taken counts too: the guard
// errs towards not calling. Then InvokeMethod makes no call and returns EarlierTaken: the caller
// follows the earlier request instead (FollowStages with its ID and Before).
type Earlier struct {
	// IDs are the earlier requests' IDs, as the device would report them in Evidence.IDProperty.
	IDs []string `json:"ids"`
	// Before is Evidence.Property's $lastUpdated in the read before the first request ("" when
	// the device had not reported it, NoMetadata when the hub gave no time); Since, when that read
	// is not known, is when the first request was scheduled.
	Before string    `json:"before,omitempty"`
	Since  time.Time `json:"since,omitzero"`
	// Taken are the values of Evidence.Property that show a request running or completed
	// (downloading, applying, completed); empty: any report counts (rebootTime).
	Taken []string `json:"taken,omitempty"`
}

// EarlierTaken is what InvokeMethod found instead of calling: the device took an earlier request
// of the operation.
type EarlierTaken struct {
	// ID is the earlier request's ID the device reports; "" from a device that reports none.
	ID string `json:"id,omitempty"`
	// By is how the read showed it: "id" or "changed".
	By string `json:"by"`
	// Value is Evidence.Property's value in the read (downloading, applying, completed…).
	Value string `json:"value,omitempty"`
	// Before is the baseline the device's reports of the earlier request are judged by (Before,
	// or Since less the slack in the hub's time format): what FollowStages' StatusBefore takes.
	Before string `json:"before"`
}

// problem says what is wrong with e for evidence ev, or "".
func (e *Earlier) problem(ev *Evidence) string {
	switch {
	case e == nil:
		return ""
	case ev == nil || ev.Property == "":
		return "readFirst: earlier needs evidence with the property the device reports a request in"
	case len(e.IDs) == 0:
		return "readFirst: earlier names no earlier request"
	}
	return ""
}

// baseline is the time the device's reports of the earlier requests are judged by.
func (e Earlier) baseline() string {
	if e.Since.IsZero() {
		return e.Before
	}
	return hubTime(e.Since.Add(-readFirstSlack))
}

// taken decides from the operation's read whether the device took one of the earlier requests
// and is at it or finished it; nil when it did not, or when what it took ended otherwise.
func (e Earlier) taken(read GetTwinResult, ev Evidence) *EarlierTaken {
	v, has := read.Reported[ev.Property]
	value := ""
	if has {
		value = valueString(v)
	}
	counts := has && (len(e.Taken) == 0 || slices.Contains(e.Taken, value))
	before := e.baseline()
	if ev.IDProperty != "" {
		if idv, ok := read.Reported[ev.IDProperty]; ok {
			switch id := valueString(idv); {
			case slices.Contains(e.IDs, id) && counts:
				return &EarlierTaken{ID: id, By: "id", Value: value, Before: before}
			case id != "":
				// An earlier request that ended otherwise, or another request's.
				return nil
			}
		}
	}
	if !counts {
		return nil
	}
	changed, ok := read.LastUpdated[ev.Property]
	if ok && changed != NoMetadata && before != NoMetadata && !HubTimeAfter(changed, before) {
		return nil
	}
	return &EarlierTaken{By: "changed", Value: value, Before: before}
}
