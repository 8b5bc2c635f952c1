package workflows

// Maintenance windows and schedules name IANA time zones (Europe/Warsaw), which Window.Check loads
// in the starter and in the worker. The runtime image (alpine) carries no zoneinfo, so the zone
// database is compiled in (about 450 KB) rather than every zone being "unknown" there.
import _ "time/tzdata"
