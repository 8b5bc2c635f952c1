package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Retries by failure type and abort criteria by failure type (policy 4): the flags --retries,
// --retry-on, --retry-backoff, --max-timeouts and --max-offline, the spec fields retries: {count,
// on, backoff} (or retries: N) and maxTimeouts, maxOffline, and how status, watch, report and
// schedule describe show them.

// retrySpecFields are the spec file fields of the policy, by flag.
var retrySpecFields = map[string]string{
	"retries": "retries.count", "retry-on": "retries.on", "retry-backoff": "retries.backoff",
	"max-timeouts": "maxTimeouts", "max-offline": "maxOffline",
}

// addRetryFlags defines the policy's flags.
func addRetryFlags(fl *pflag.FlagSet, f *specFlags) {
	fl.IntVar(&f.retries, "retries", 0, fmt.Sprintf("retry a device whose attempt failed with a type of --retry-on up to N times (1–%d), each a new request", workflows.MaxRetries))
	fl.StringSliceVar(&f.retryOn, "retry-on", nil, "with --retries: the failure types retried, of timed-out, offline and failed (default timed-out,offline: a device that "+
		"timed out or was offline may well succeed later; one that refused the update or reported an error would likely do so again)")
	fl.DurationVar(&f.retryBackoff, "retry-backoff", 0, fmt.Sprintf("with --retries: the wait before a device's first retry, doubling for each next one up to %s (%s–%s; default %s)",
		workflows.ShortDuration(workflows.MaxRetryBackoff), workflows.ShortDuration(workflows.MinRetryBackoff), workflows.ShortDuration(workflows.MaxRetryBackoff),
		workflows.ShortDuration(workflows.DefaultRetryBackoff)))
	fl.StringVar(&f.maxTimeouts, "max-timeouts", "", "abort when more devices timed out than this: a count (5) or a percentage (5%), as --max-failures")
	fl.StringVar(&f.maxOffline, "max-offline", "", "abort when more devices were offline than this: a count (5) or a percentage (5%), as --max-failures")
}

// retrySpecHelp documents the policy for the commands' long help.
const retrySpecHelp = `Retries by failure type: every failed device attempt is timed-out (a stage,
the reboot or the update not finished in time, no answer in time), offline (the
device was not connected: IoT Hub's DeviceNotOnline) or failed (anything else:
the device refused, reported an error, runs another version afterwards).
--retries N (1–10) starts a device again, as a new request, when its attempt
failed with a type of --retry-on (default timed-out,offline), after
--retry-backoff (default 1m), doubling for each next retry up to 1h. A device
waiting to retry holds no concurrency slot (its shard runs others) and counts
as pending; its wave ends when its last attempt did, and only then does a
failure count against the thresholds. A retry never sends a second update to a
device that is still at, or finished, an earlier one: it follows that one
instead. While a retry on offline remains, an attempt on an offline device ends
at once instead of waiting for it until --deadline. --retry-failed (one more
pass at the end) and --retries do not go together. --max-timeouts and
--max-offline abort the rollout, as --max-failures does (per wave, and
overall once --min-devices finished), on the devices of that type.`

// retryFieldsHelp is the spec file's part of the help.
const retryFieldsHelp = `  retries: {count: 3, on: [timed-out, offline], backoff: 1m}   # or retries: 3
  maxTimeouts: 5%
  maxOffline: 10`

// mergeRetryField takes a spec file's field of the policy into the flags.
func (f *specFlags) mergeRetryField(flag string, v *specFlags) {
	switch flag {
	case "retries":
		f.retries = v.retries
	case "retry-on":
		f.retryOn = v.retryOn
	case "retry-backoff":
		f.retryBackoff = v.retryBackoff
	case "max-timeouts":
		f.maxTimeouts = v.maxTimeouts
	case "max-offline":
		f.maxOffline = v.maxOffline
	}
}

// retryInput checks the policy's flags (and fields) and sets them in the input; it returns the
// problems, each naming its flag or field. changed tells which flags the command line set.
func (f *specFlags) retryInput(in *workflows.RolloutInput, changed func(flag string) bool) []string {
	var problems []string
	given := f.retries != 0 || changed("retries") || f.fromFile["retries"] != ""
	switch {
	case given && (f.retries < 1 || f.retries > workflows.MaxRetries):
		problems = append(problems, fmt.Sprintf("%s %d: retry a device 1 to %d times", f.field("retries"), f.retries, workflows.MaxRetries))
	case !given && len(f.retryOn) > 0:
		problems = append(problems, f.field("retry-on")+" needs --retries N: how many times to retry a device, e.g. --retries 3")
	case !given && f.retryBackoff != 0:
		problems = append(problems, f.field("retry-backoff")+" needs --retries N: how many times to retry a device, e.g. --retries 3")
	}
	on, err := workflows.CheckFailureTypes(f.retryOn)
	if err != nil {
		problems = append(problems, fmt.Sprintf("%s: %v", f.field("retry-on"), err))
	}
	if b := f.retryBackoff; b != 0 && (b < workflows.MinRetryBackoff || b > workflows.MaxRetryBackoff) {
		problems = append(problems, fmt.Sprintf("%s %s: give a wait from %s to %s, e.g. 1m", f.field("retry-backoff"), b,
			workflows.ShortDuration(workflows.MinRetryBackoff), workflows.ShortDuration(workflows.MaxRetryBackoff)))
	}
	if given && f.retryFailed {
		problems = append(problems, fmt.Sprintf("%s and %s both run failed devices again: give --retries (with --retry-on failed to retry refusals and device errors too), or --retry-failed for one more pass at the end",
			f.field("retries"), f.field("retry-failed")))
	}
	for _, t := range []struct {
		flag string
		dst  *string
	}{{"max-timeouts", &in.MaxTimeouts}, {"max-offline", &in.MaxOffline}} {
		v := strings.TrimSpace(map[string]string{"max-timeouts": f.maxTimeouts, "max-offline": f.maxOffline}[t.flag])
		if v == "" {
			continue
		}
		if _, err := workflows.ParseThreshold(v); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", f.field(t.flag), err))
			continue
		}
		*t.dst = v
	}
	if given && len(problems) == 0 {
		in.Retries = &workflows.RetryPolicy{Count: f.retries, On: on, Backoff: f.retryBackoff}
	}
	return problems
}

// retryFields are the spec file's top-level fields of the policy.
func (d *specDecoder) retryFields(v *specFlags) []specField {
	return []specField{
		{"retries", func(n *yaml.Node, path string) {
			if n.Kind == yaml.ScalarNode {
				d.setInt("retries", &v.retries)(n, path)
				return
			}
			d.mapping(n, path, []specField{
				{"count", d.setInt("retries", &v.retries)},
				{"on", func(n *yaml.Node, path string) {
					var types []string
					switch {
					case n.Kind == yaml.SequenceNode:
						for i, item := range n.Content {
							if s, ok := d.text(resolve(item), fmt.Sprintf("%s[%d]", path, i)); ok {
								types = append(types, s)
							}
						}
					default:
						s, ok := d.text(n, path)
						if !ok {
							return
						}
						types = strings.Split(s, ",")
					}
					if _, err := workflows.CheckFailureTypes(types); err != nil {
						d.fail(n, path, "%v", err)
						return
					}
					v.retryOn, d.doc.set["retry-on"] = types, path
				}},
				{"backoff", d.setDuration("retry-backoff", &v.retryBackoff)},
			})
			if _, ok := d.doc.set["retries"]; !ok && n.Kind == yaml.MappingNode {
				d.fail(n, path, "no count: give how many times to retry a device as retries.count, e.g. 3")
			}
		}},
		{"maxTimeouts", d.setThreshold("max-timeouts", &v.maxTimeouts)},
		{"maxOffline", d.setThreshold("max-offline", &v.maxOffline)},
	}
}

// setThreshold decodes a threshold field, a count or a percentage.
func (d *specDecoder) setThreshold(flag string, dst *string) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		s, ok := d.text(n, path)
		if !ok {
			return
		}
		if _, err := workflows.ParseThreshold(s); err != nil {
			d.fail(n, path, "%v", err)
			return
		}
		*dst, d.doc.set[flag] = strings.TrimSpace(s), path
	}
}

// specRetriesOut is the policy as a spec file writes it.
type specRetriesOut struct {
	Count   int      `yaml:"count"`
	On      []string `yaml:"on,omitempty,flow"`
	Backoff string   `yaml:"backoff,omitempty"`
}

// retriesOut is the input's policy as formatSpec writes it.
func retriesOut(in workflows.RolloutInput) *specRetriesOut {
	if in.Retries == nil {
		return nil
	}
	out := &specRetriesOut{Count: in.Retries.Count, On: in.Retries.On}
	if in.Retries.Backoff != 0 {
		out.Backoff = workflows.ShortDuration(in.Retries.Backoff)
	}
	return out
}

// failureTypesText is "2 timed-out, 1 offline, 3 failed": the failed devices by type, "" when
// none failed.
func failureTypesText(p workflows.RolloutProgress) string {
	if p.Failed == 0 {
		return ""
	}
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{{p.TimedOut, workflows.FailureTimedOut}, {p.Offline, workflows.FailureOffline}, {p.Failed - p.TimedOut - p.Offline, workflows.FailureFailed}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	return strings.Join(parts, ", ")
}

// failedText is the live view's failed count, with the types once there are timed-out or offline
// ones: "failed 3 (2 timed-out, 1 offline)".
func failedText(p workflows.RolloutProgress) string {
	s := fmt.Sprintf("failed %d", p.Failed)
	if p.TimedOut+p.Offline > 0 {
		s += " (" + failureTypesText(p) + ")"
	}
	return s
}

// awaitingText is the live view's part for the devices waiting to retry, "" without any.
func awaitingText(p workflows.RolloutProgress) string {
	if p.AwaitingRetry == 0 {
		return ""
	}
	return fmt.Sprintf("waiting to retry %d", p.AwaitingRetry)
}

// retryLimits is the status's limits of the policy: ", max timeouts 5, max offline 5%".
func retryLimits(p workflows.RolloutProgress) string {
	s := ""
	if p.MaxTimeouts != "" {
		s += ", max timeouts " + p.MaxTimeouts
	}
	if p.MaxOffline != "" {
		s += ", max offline " + p.MaxOffline
	}
	return s
}

// printRetries prints the status's lines of the policy: the failed devices by type and the
// retries.
func printRetries(out io.Writer, p workflows.RolloutProgress) {
	if s := failureTypesText(p); s != "" && p.TimedOut+p.Offline > 0 {
		fmt.Fprintf(out, "  failures:  %s\n", s)
	}
	if p.RetryPolicy == nil && p.RetriesStarted == 0 {
		return
	}
	s := fmt.Sprintf("%d started", p.RetriesStarted)
	if p.RetryPolicy != nil {
		s = retryPolicyText(*p.RetryPolicy) + "; " + s
	}
	if p.AwaitingRetry > 0 {
		s += fmt.Sprintf(", %d %s waiting to retry", p.AwaitingRetry, plural(p.AwaitingRetry, "device", "devices"))
	}
	fmt.Fprintf(out, "  retries:   %s\n", s)
}

// retryPolicyText is "up to 3 per device on timed-out,offline, backoff 1m doubling".
func retryPolicyText(r workflows.RetryPolicy) string {
	on := strings.Join(r.On, ",")
	if on == "" {
		on = strings.Join(workflows.DefaultRetryOn, ",")
	}
	backoff := r.Backoff
	if backoff == 0 {
		backoff = workflows.DefaultRetryBackoff
	}
	return fmt.Sprintf("up to %d per device on %s, backoff %s doubling", r.Count, on, workflows.ShortDuration(backoff))
}

// writeFailureTypes prints the summary's line of failed devices by type.
func writeFailureTypes(out io.Writer, p workflows.RolloutProgress) {
	if s := failureTypesText(p); s != "" && p.TimedOut+p.Offline > 0 {
		fmt.Fprintf(out, "  failures:  %s\n", s)
	}
	if p.RetriesStarted > 0 {
		fmt.Fprintf(out, "  retries:   %d started\n", p.RetriesStarted)
	}
}

// typeCell is a report row's failure type: of its failed (or waiting) attempt, "-" without one.
func typeCell(r workflows.DeviceRow) string {
	return dash(r.FailureType)
}

// retryNote is what the report table adds to a row's note about its retries: "retried after
// offline, offline", "retry at 12:05:00Z".
func retryNote(r workflows.DeviceRow) string {
	var parts []string
	if n := len(r.RetriedOn); n > 0 && r.Result != workflows.DeviceRetrying {
		parts = append(parts, "retried after "+strings.Join(r.RetriedOn, ", "))
	}
	if !r.RetryAt.IsZero() {
		parts = append(parts, "next attempt at "+r.RetryAt.UTC().Format(time.RFC3339))
	}
	return strings.Join(parts, "; ")
}

// rowRetryNote is retryNote set apart from what comes before it in the table's last column.
func rowRetryNote(r workflows.DeviceRow) string {
	n := retryNote(r)
	if n == "" || r.Error == "" && r.ErrorType == "" && r.Note == "" {
		return n
	}
	return " (" + n + ")"
}

func init() {
	for flag, field := range retrySpecFields {
		specFields[flag] = field
	}
}
