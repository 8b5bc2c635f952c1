package activities

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/dmflow/dmflow/internal/hubconn"
)

// Evidence says how to tell from a device's twin alone that the device took a direct-method call,
// on both device contracts:
//
//   - a device on dmflow's contract reports the request's ID (lastRebootRequestId,
//     firmwareUpdateId): IDProperty equal to ID is evidence, and an ID property naming another
//     request means that the changes beside it belong to that request;
//   - a device built from the tutorials reports no ID: Property changing after the read made
//     before the first call is evidence. IoT Hub stamps every reported property with the time it
//     last changed ($metadata.<property>.$lastUpdated, set by the hub), so this needs nothing from
//     the device, whatever it writes as the value, and compares the hub's times with the hub's
//     times, never with the worker's clock.
type Evidence struct {
	// Property is the reported property the device writes when it takes the call: rebootTime for a
	// reboot, firmwareStatus for a firmware update.
	Property string `json:"property"`
	// Before is Property's $lastUpdated in the twin read before the first call (see
	// GetTwinResult.LastUpdated): "" when the device had not reported it, NoMetadata when the hub
	// gave no time for it.
	Before string `json:"before,omitempty"`
	// OneOf, when set, also requires Property's value to be one of these (as a string): a
	// firmwareStatus of standBy, which the tutorial's device reports whenever it starts, shows no
	// update.
	OneOf []string `json:"oneOf,omitempty"`
	// IDProperty and ID: the reported property a device on dmflow's contract names the request in,
	// and this request's ID. Optional.
	IDProperty string `json:"idProperty,omitempty"`
	ID         string `json:"id,omitempty"`
	// Window is how long InvokeMethod looks for evidence before calling again after an attempt
	// that may have reached the device (see InvokeMethod). Zero looks once.
	Window time.Duration `json:"window,omitempty"`
}

// NoMetadata stands in Evidence.Before (and GetTwinResult.LastUpdated) for a property the hub
// returned without a $lastUpdated time: no later time can be told apart from it, so only the ID
// counts as evidence.
const NoMetadata = "no-metadata"

// Seen reports whether the reported properties show that the device took the call, and which way
// ("id" or "changed"), or why not.
func (e Evidence) Seen(reported map[string]any) (bool, string) {
	if e.IDProperty != "" {
		if v, ok := lookup(reported, e.IDProperty); ok {
			if id := valueString(v); id == e.ID {
				return true, "id"
			} else if id != "" {
				return false, "the device reports " + e.IDProperty + " " + describeValue(v) + ", another request"
			}
		}
	}
	if e.Property == "" {
		return false, "nothing to look for"
	}
	changed, ok := LastUpdated(reported, e.Property)
	if !ok {
		return false, e.Property + " not reported or without a $lastUpdated time"
	}
	if !HubTimeAfter(changed, e.Before) {
		return false, e.Property + " unchanged since " + e.Before
	}
	if v, _ := lookup(reported, e.Property); len(e.OneOf) > 0 && !slices.Contains(e.OneOf, valueString(v)) {
		return false, e.Property + " is " + describeValue(v) + ", not one of " + strings.Join(e.OneOf, ", ")
	}
	return true, "changed"
}

// LastUpdated is the hub's $lastUpdated time of a reported property (a dotted path), as the hub
// wrote it: reported.$metadata.<path>.$lastUpdated. ok is false when the property or its time is
// missing.
func LastUpdated(reported map[string]any, path string) (string, bool) {
	if _, ok := lookup(reported, path); !ok {
		return "", false
	}
	meta, ok := reported["$metadata"].(map[string]any)
	if !ok {
		return "", false
	}
	v, ok := lookup(meta, path+".$lastUpdated")
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	return s, ok && s != ""
}

// HubTimeAfter reports whether the hub time t is later than before, both as the hub writes them
// (RFC 3339, UTC). A before of "" (the property was absent) is earlier than any time; NoMetadata,
// or a t that does not parse, is never exceeded.
func HubTimeAfter(t, before string) bool {
	at, err := time.Parse(time.RFC3339Nano, t)
	if err != nil || before == NoMetadata {
		return false
	}
	if before == "" {
		return true
	}
	bt, err := time.Parse(time.RFC3339Nano, before)
	if err != nil {
		return false
	}
	return at.After(bt)
}

// hubTimeLayout is how IoT Hub writes $lastUpdated times: UTC with seven fractional digits.
const hubTimeLayout = "2006-01-02T15:04:05.0000000Z"

// hubTime writes t as the hub writes its times, for an Evidence.Before that the worker makes.
func hubTime(t time.Time) string { return t.UTC().Format(hubTimeLayout) }

// delivery is what a direct-method call's outcome says about whether the device received it.
type delivery int

const (
	// notDelivered: the hub refused the call before it reached the device (device offline,
	// throttled, refused credentials, a bad request, an unknown device), or the request never left
	// the worker. Calling again is safe.
	notDelivered delivery = iota
	// maybeDelivered: the device may have received the call: the hub timed out waiting for its
	// answer (504101), the hub failed (5xx), or the connection broke after the request was sent.
	// Calling again could apply it twice: look for evidence first.
	maybeDelivered
	// delivered: the hub answered with the device's status. Whatever the device said, it received
	// the call; nothing may call it again for the same request.
	delivered
)

func (d delivery) String() string {
	switch d {
	case notDelivered:
		return "not delivered"
	case maybeDelivered:
		return "maybe delivered"
	}
	return "delivered"
}

// deliveryOf classifies a call's error (nil: the device answered).
func deliveryOf(err error) delivery {
	if err == nil {
		return delivered
	}
	var notSent *hubconn.NotSentError
	if errors.As(err, &notSent) {
		return notDelivered
	}
	var unreadable *hubconn.UnreadableAnswerError
	if errors.As(err, &unreadable) {
		return delivered
	}
	he, ok := parseHubError(err)
	if !ok {
		// A transport failure, a cancellation or a timeout after the request was written: the hub
		// may have passed it on.
		return maybeDelivered
	}
	switch {
	case he.code == codeDeviceNotOnline, he.code == codeDeviceNotFound:
		return notDelivered
	case he.status == http.StatusTooManyRequests, he.status == http.StatusUnauthorized,
		he.status == http.StatusForbidden, he.status == http.StatusBadRequest,
		he.status == http.StatusNotFound && he.code != codeDeviceConnectionClosedRemotely,
		he.status == http.StatusRequestEntityTooLarge:
		return notDelivered
	}
	return maybeDelivered
}

// maxEvidenceWindow bounds Evidence.Window: a device that shows nothing of a call within an hour
// is one a person should look at, and the window holds the attempt open that long.
const maxEvidenceWindow = time.Hour

// problem says what is wrong with e, or "". A nil Evidence has none.
func (e *Evidence) problem() string {
	switch {
	case e == nil:
		return ""
	case e.Property == "" && e.IDProperty == "":
		return "evidence names no property to look at"
	case e.Property != "" && !validPath(e.Property):
		return "evidence property " + e.Property + " is not a dotted path"
	case e.IDProperty != "" && (!validPath(e.IDProperty) || e.ID == ""):
		return "evidence ID property needs a dotted path and an ID"
	case e.Window < 0 || e.Window > maxEvidenceWindow:
		return "evidence window " + e.Window.String() + " is outside 0s–" + maxEvidenceWindow.String()
	}
	return ""
}

// Taken reports whether a twin read (ReadFirst's, GetTwin's) shows that the device took the
// request e names, and how ("id" or "changed"): its ID reported with Property one of OneOf, or,
// from a device that reports no ID, Property changed (by the hub's $lastUpdated) after Before to
// one of OneOf. Unlike Seen, the ID alone is not enough where OneOf is given: a device that
// reports the request's ID with firmwareStatus "error" tried it and failed, and may take a new one.
// The read must hold Property and IDProperty (GetTwinInput.Properties).
func (e Evidence) Taken(read GetTwinResult) (bool, string) {
	value, reported := read.Reported[e.Property]
	inOneOf := reported && (len(e.OneOf) == 0 || slices.Contains(e.OneOf, valueString(value)))
	if e.IDProperty != "" {
		if v, ok := read.Reported[e.IDProperty]; ok {
			if id := valueString(v); id == e.ID {
				return inOneOf, "id"
			} else if id != "" {
				// Another request's: what the device reports beside it is not e's.
				return false, ""
			}
		}
	}
	if !inOneOf || !HubTimeAfter(read.LastUpdated[e.Property], e.Before) {
		return false, ""
	}
	return true, "changed"
}

// HubTimeBefore is t less the slack ReadFirst's fallback allows for the skew between the Temporal
// server's clock and the hub's, in the hub's time format: an Evidence.Before for a request whose
// read before the call is not known, taken as scheduled at t (see ReadFirst).
func HubTimeBefore(t time.Time) string { return hubTime(t.Add(-readFirstSlack)) }
