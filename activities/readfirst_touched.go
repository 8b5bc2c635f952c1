package activities

import (
	"fmt"
	"slices"
	"time"
)

// Touched makes ReadFirst end the operation without a call (Skipped, with SkipReason) when the
// read shows that the device took an update that must not be applied again: it reports one of IDs
// in IDProperty (a device on dmflow's contract names the update it took), or the hub stamped one
// of Stamps at or after Since (a device built from the tutorials reports no ID, but every stage it
// reports is stamped by the hub with the time it changed). A continuous rollout's looks find
// devices again after the rollout updated them (their twin changed); this is what keeps them from
// a second update without a list of the devices updated.
//
// It errs on the side of no second call: a stamped property the hub gave no time for counts as an
// update since Since, and so does an update by anyone else after Since.
type Touched struct {
	// IDProperty and IDs: the reported property naming the update a device took, and the IDs
	// that count as taken.
	IDProperty string   `json:"idProperty,omitempty"`
	IDs        []string `json:"ids,omitempty"`
	// Since is a hub time (RFC 3339); Stamps the reported properties an update writes.
	Since  string  `json:"since,omitempty"`
	Stamps []Stamp `json:"stamps,omitempty"`
}

// Stamp is a reported property whose change shows an update: any value, or one of OneOf.
type Stamp struct {
	Property string   `json:"property"`
	OneOf    []string `json:"oneOf,omitempty"`
}

// problem says what is wrong with t, read with the properties props, or "".
func (t *Touched) problem(props []string) string {
	if t == nil {
		return ""
	}
	if t.Since != "" {
		if _, err := time.Parse(time.RFC3339Nano, t.Since); err != nil {
			return fmt.Sprintf("readFirst: touched: since %q is not an RFC 3339 time", t.Since)
		}
	} else if len(t.Stamps) > 0 {
		return "readFirst: touched: stamps need since, the time they count from"
	}
	needed := []string{}
	if t.IDProperty != "" {
		needed = append(needed, t.IDProperty)
	}
	for _, s := range t.Stamps {
		needed = append(needed, s.Property)
	}
	for _, p := range needed {
		if p == "" || !slices.Contains(props, p) {
			return fmt.Sprintf("readFirst: touched: %q is not among the properties read: add it to properties", p)
		}
	}
	return ""
}

// seen says why the read shows an update already taken, or "".
func (t *Touched) seen(read GetTwinResult) string {
	if t.IDProperty != "" {
		if v, ok := read.Reported[t.IDProperty]; ok && slices.Contains(t.IDs, valueString(v)) {
			return "already updated by this rollout: the device reports " + t.IDProperty + " " + valueString(v)
		}
	}
	for _, s := range t.Stamps {
		v, ok := read.Reported[s.Property]
		if !ok || len(s.OneOf) > 0 && !slices.Contains(s.OneOf, valueString(v)) {
			continue
		}
		at := read.LastUpdated[s.Property]
		if at == "" || at == NoMetadata {
			return fmt.Sprintf("the device reports %s %s without a time from the hub: taken as an update since %s, not updated again",
				s.Property, describeValue(v), t.Since)
		}
		if !HubTimeAfter(t.Since, at) {
			return fmt.Sprintf("updated since this rollout began: the device reported %s %s at %s", s.Property, describeValue(v), at)
		}
	}
	return ""
}
