package activities

import (
	"time"

	"github.com/dmflow/dmflow/internal/reported"
)

// ReportedInstant reads a reported time that names an instant: RFC 3339 with a zone, Unix seconds
// or milliseconds. A time without a zone (the tutorials' local time) is no instant: ok is false,
// and the caller shows the value as the device wrote it.
func ReportedInstant(v any) (time.Time, bool) {
	t, form, ok := reported.ParseTime(v)
	if !ok || !form.Instant() {
		return time.Time{}, false
	}
	return t, true
}

// ValueString is a reported value as a string: strings as they are, anything else as JSON.
func ValueString(v any) string { return valueString(v) }
