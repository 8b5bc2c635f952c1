package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Rollback (policy 1): --rollback-firmware URI --rollback-version V [--rollback-include
// updated|failed|both], the spec file's rollback: {uri, version, include}, and how status, watch,
// the summary and the report show the rollback (workflows/rollout_rollback.go runs it).

// addRollbackFlags defines the rollback's flags.
func addRollbackFlags(fl *pflag.FlagSet, f *specFlags) {
	fl.StringVar(&f.rollbackFirmware, "rollback-firmware", "", "firmware update: when the rollout aborts on --max-failures, install this http(s) image on the devices it updated, in the same waves and limits (needs --rollback-version)")
	fl.StringVar(&f.rollbackVersion, "rollback-version", "", "the version --rollback-firmware holds, e.g. the one the devices ran before; devices already on it are skipped")
	fl.StringVar(&f.rollbackInclude, "rollback-include", "", "which devices the rollback takes: updated (default), failed, or both")
}

// rollbackHelp documents the rollback in specHelp.
const rollbackHelp = `Rollback (firmware only): --rollback-firmware URI --rollback-version V
[--rollback-include updated|failed|both]. When the rollout aborts on
--max-failures, its devices in flight finish, then the devices it updated (not
those it skipped; with failed or both, those that failed) get V, followed
through the stages as an update, in waves from --canary again, under the same
--max-concurrent, --rate and windows. Past --max-failures the rollback stops
too. The rollout then ends rolled-back (or aborted, the reason naming the
stopped rollback). No rollback follows a cancel, or an abort for running out
of maintenance windows.`

func init() {
	specFields["rollback-firmware"] = "rollback.uri"
	specFields["rollback-version"] = "rollback.version"
	specFields["rollback-include"] = "rollback.include"
}

// rollbackIncludes are the values --rollback-include takes.
var rollbackIncludes = []string{workflows.RollbackIncludeUpdated, workflows.RollbackIncludeFailed, workflows.RollbackIncludeBoth}

// rollbackInput checks the rollback's flags (or fields) and sets in.Rollback; in.Operation is set.
func (f *specFlags) rollbackInput(in *workflows.RolloutInput) []string {
	uri, version := strings.TrimSpace(f.rollbackFirmware), strings.TrimSpace(f.rollbackVersion)
	include := strings.ToLower(strings.TrimSpace(f.rollbackInclude))
	if uri == "" && version == "" && include == "" {
		return nil
	}
	var problems []string
	if in.Operation == workflows.OperationReboot {
		given := "rollback-firmware"
		if uri == "" {
			given = "rollback-version"
			if version == "" {
				given = "rollback-include"
			}
		}
		return []string{f.field(given) + " belongs to a firmware update: a reboot rollout has nothing to roll back; drop it, or give --firmware URI --version V"}
	}
	switch {
	case uri == "" && version != "":
		problems = append(problems, fmt.Sprintf("%s needs %s: the http(s) image of the version to roll back to", f.field("rollback-version"), f.fieldLike("rollback-firmware", "rollback-version")))
	case uri == "":
		problems = append(problems, fmt.Sprintf("%s needs %s and %s: the image to roll back to and its version", f.field("rollback-include"),
			f.fieldLike("rollback-firmware", "rollback-include"), f.fieldLike("rollback-version", "rollback-include")))
	case version == "":
		problems = append(problems, fmt.Sprintf("%s needs %s: the version the rollback image holds, e.g. 1.0.0", f.field("rollback-firmware"), f.fieldLike("rollback-version", "rollback-firmware")))
	}
	if include != "" && !contains(rollbackIncludes, include) {
		problems = append(problems, fmt.Sprintf("%s %q is not known: use updated, failed or both", f.field("rollback-include"), include))
	}
	if in.Firmware != nil && version != "" && version == in.Firmware.Version {
		problems = append(problems, fmt.Sprintf("%s %s is the target version (%s): roll back to the version the devices ran before, e.g. 1.0.0",
			f.field("rollback-version"), version, f.field("version")))
	}
	in.Rollback = &workflows.RolloutRollback{PackageURI: uri, Version: version, Include: include}
	return problems
}

// mergeRollback takes a rollback field of the spec file.
func (f *specFlags) mergeRollback(flag string, v specFlags) {
	switch flag {
	case "rollback-firmware":
		f.rollbackFirmware = v.rollbackFirmware
	case "rollback-version":
		f.rollbackVersion = v.rollbackVersion
	case "rollback-include":
		f.rollbackInclude = v.rollbackInclude
	}
}

// rollbackField decodes the spec file's rollback: {uri, version, include}.
func (d *specDecoder) rollbackField(v *specFlags) specField {
	return specField{"rollback", func(n *yaml.Node, path string) {
		d.mapping(n, path, []specField{
			{"uri", d.setText("rollback-firmware", &v.rollbackFirmware)},
			{"version", d.setText("rollback-version", &v.rollbackVersion)},
			{"include", func(n *yaml.Node, path string) {
				s, ok := d.text(n, path)
				if !ok {
					return
				}
				s = strings.ToLower(strings.TrimSpace(s))
				if !contains(rollbackIncludes, s) {
					d.fail(n, path, "%q is not known: use updated, failed or both", s)
					return
				}
				v.rollbackInclude, d.doc.set["rollback-include"] = s, path
			}},
		})
		if _, ok := d.doc.set["rollback-firmware"]; !ok && n.Kind == yaml.MappingNode {
			d.fail(n, path, "no uri: give the rollback image's http(s) URI as rollback.uri")
		}
	}}
}

// specRollbackOut is the rollback as a spec file writes it.
type specRollbackOut struct {
	URI     string `yaml:"uri"`
	Version string `yaml:"version"`
	Include string `yaml:"include,omitempty"`
}

func rollbackSpecOut(rb *workflows.RolloutRollback) *specRollbackOut {
	if rb == nil {
		return nil
	}
	return &specRollbackOut{URI: rb.PackageURI, Version: rb.Version, Include: rb.Include}
}

// rollbackDescription ends describeInput: ", rolled back to 1.0.0 if it aborts".
func rollbackDescription(in workflows.RolloutInput) string {
	if in.Rollback == nil {
		return ""
	}
	return ", rolled back to " + in.Rollback.Version + " if it aborts"
}

// rollbackIncludeText says which devices a rollback takes.
func rollbackIncludeText(include string) string {
	switch include {
	case workflows.RollbackIncludeFailed:
		return "the devices whose update failed"
	case workflows.RollbackIncludeBoth:
		return "the devices it updated and those whose update failed"
	}
	return "the devices it updated"
}

// rollbackDoneCount is the rollback's devices it has finished with.
func rollbackDoneCount(rb *workflows.RollbackProgress) int {
	return rb.RolledBack + rb.Skipped + rb.Failed + rb.Cancelled + rb.NotStarted
}

// rollbackCounts lists the rollback's counts that are not zero, rolled back first.
func rollbackCounts(rb *workflows.RollbackProgress) string {
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{{rb.RolledBack, "rolled back"}, {rb.Skipped, "skipped (already on it)"}, {rb.Failed, "failed"}, {rb.Cancelled, "cancelled"},
		{rb.NotStarted, "not rolled back"}, {rb.Running, "running"}, {rb.Pending, "pending"}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// rollbackActive reports whether the rollback began: it has figures to show.
func rollbackActive(rb *workflows.RollbackProgress) bool {
	return rb != nil && rb.Phase != workflows.RollbackArmed && rb.Phase != workflows.RollbackNotRun
}

// printRollbackStatus prints status's rollback line.
func printRollbackStatus(out io.Writer, p workflows.RolloutProgress) {
	rb := p.Rollback
	if rb == nil {
		return
	}
	switch {
	case rb.Phase == workflows.RollbackArmed:
		fmt.Fprintf(out, "  rollback:  to %s if the rollout aborts: %s\n", rb.Version, rollbackIncludeText(rb.Include))
	case rb.Phase == workflows.RollbackNotRun && rb.Reason != "":
		fmt.Fprintf(out, "  rollback:  not run (%s)\n", rb.Reason)
	case rb.Phase == workflows.RollbackNotRun:
		fmt.Fprintf(out, "  rollback:  not run\n")
	case rb.Phase == workflows.RollbackWaiting:
		fmt.Fprintf(out, "  rollback:  to %s, of %d %s, once the %d in flight finished\n", rb.Version, rb.Devices, plural(rb.Devices, "device", "devices"), p.Running)
	default:
		phase := rb.Phase
		if rb.Reason != "" {
			phase += " (" + rb.Reason + ")"
		}
		done := rollbackDoneCount(rb)
		fmt.Fprintf(out, "  rollback:  %s, to %s: %d/%d done (%d%%): %s\n", phase, rb.Version, done, rb.Devices, percent(done, rb.Devices), rollbackCounts(rb))
		if rb.Waves > 0 {
			fmt.Fprintf(out, "  rb wave:   %d of %d, %d of its %d devices done, %d failed\n", rb.Wave, rb.Waves, rb.WaveDone, rb.WaveSize, rb.WaveFailed)
		}
	}
}

// rollbackLine ends a live line once the rollback began: "  rollback 2/5 done, failed 0, running 2".
func rollbackLine(p workflows.RolloutProgress) string {
	rb := p.Rollback
	if !rollbackActive(rb) {
		return ""
	}
	s := fmt.Sprintf("  rollback to %s %d/%d done, failed %d, running %d, pending %d", rb.Version, rollbackDoneCount(rb), rb.Devices, rb.Failed, rb.Running, rb.Pending)
	if rb.Waves > 0 {
		s += fmt.Sprintf(", wave %d/%d", rb.Wave, rb.Waves)
	}
	return s
}

// rollbackKey is the rollback's part of progressKey.
func rollbackKey(p workflows.RolloutProgress) string {
	rb := p.Rollback
	if !rollbackActive(rb) {
		return ""
	}
	return fmt.Sprintf("|rb %s %d %d %d %d %d %d %d %d", rb.Phase, rb.Wave, rb.RolledBack, rb.Skipped, rb.Failed, rb.Cancelled, rb.NotStarted, rb.Running, rb.Pending)
}

// writeRollbackSummary prints the summary's rollback line.
func writeRollbackSummary(out io.Writer, p workflows.RolloutProgress) {
	if rb := p.Rollback; rollbackActive(rb) {
		fmt.Fprintf(out, "  rollback:  %s to %s: %s\n", rb.Phase, rb.Version, rollbackCounts(rb))
	}
}

// The report's rollback columns, shown once a row has a rollback part.

// hasRollback reports whether any row has a rollback part.
func hasRollback(rows []workflows.DeviceRow) bool {
	for _, r := range rows {
		if r.Rollback != nil {
			return true
		}
	}
	return false
}

// rollbackHeader is the table's rollback columns.
func rollbackHeader(show bool) string {
	if !show {
		return ""
	}
	return "\tROLLBACK\tRB WAVE\tRB STAGES\tRB DURATION\tRB ERROR OR NOTE"
}

// rollbackCells are a row's rollback cells in the table.
func rollbackCells(r workflows.DeviceRow, show bool) string {
	if !show {
		return ""
	}
	rb := r.Rollback
	if rb == nil {
		return "\t-\t-\t-\t-\t-"
	}
	duration := "-"
	if rb.Duration > 0 {
		duration = durationText(rb.Duration, true)
	}
	note := rowError(workflows.DeviceRow{Error: rb.Error, ErrorType: rb.ErrorType}) +
		rowNote(workflows.DeviceRow{Error: rb.Error, ErrorType: rb.ErrorType, Note: rb.Note})
	return fmt.Sprintf("\t%s\t%s\t%s\t%s\t%s", rb.Result, waveCell(rb.Wave), dash(strings.Join(rb.Stages, ",")), duration, dash(note))
}

// rollbackTotals ends the table's totals line: "; rollback: 4 rolled back, 1 skipped".
func rollbackTotals(rows []workflows.DeviceRow) string {
	counts := map[string]int{}
	var order []string
	for _, r := range rows {
		if r.Rollback == nil {
			continue
		}
		if counts[r.Rollback.Result] == 0 {
			order = append(order, r.Rollback.Result)
		}
		counts[r.Rollback.Result]++
	}
	if len(order) == 0 {
		return ""
	}
	want := []string{workflows.DeviceRolledBack, workflows.DeviceSkipped, workflows.DeviceFailed, workflows.DeviceCancelled,
		workflows.DeviceNotStarted, workflows.DeviceRunning}
	var parts []string
	for _, res := range append(want, order...) {
		if n := counts[res]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, res))
			counts[res] = 0
		}
	}
	return "; rollback: " + strings.Join(parts, ", ")
}

// reportRollback is a row's rollback as json writes it: the wave 1-based, the duration in seconds.
type reportRollback struct {
	Result          string    `json:"result"`
	Wave            int       `json:"wave"`
	Attempts        int       `json:"attempts"`
	Stages          []string  `json:"stages,omitempty"`
	Started         time.Time `json:"started,omitzero"`
	DurationSeconds float64   `json:"durationSeconds,omitempty"`
	HubCalls        int       `json:"hubCalls"`
	ErrorType       string    `json:"errorType,omitempty"`
	Error           string    `json:"error,omitempty"`
	Note            string    `json:"note,omitempty"`
}

func toReportRollback(rb *workflows.RollbackRow) *reportRollback {
	if rb == nil {
		return nil
	}
	return &reportRollback{Result: rb.Result, Wave: max(rb.Wave+1, 0), Attempts: rb.Attempts, Stages: rb.Stages, Started: rb.Started.UTC(),
		DurationSeconds: rb.Duration.Seconds(), HubCalls: rb.HubCalls, ErrorType: rb.ErrorType, Error: rb.Error, Note: rb.Note}
}

// rollbackCSVHeader are the csv's rollback columns, when a row has a rollback part.
func rollbackCSVHeader(show bool) []string {
	if !show {
		return nil
	}
	return []string{"rollback_result", "rollback_wave", "rollback_attempts", "rollback_stages", "rollback_started",
		"rollback_duration_seconds", "rollback_hub_calls", "rollback_error_type", "rollback_error", "rollback_note"}
}

// rollbackCSVCells are a row's rollback cells in the csv; empty cells for a row without one.
func rollbackCSVCells(r workflows.DeviceRow, show bool) []string {
	if !show {
		return nil
	}
	rb := toReportRollback(r.Rollback)
	if rb == nil {
		return make([]string, 10)
	}
	started, dur, wave := "", "", ""
	if !r.Rollback.Started.IsZero() {
		started = rb.Started.Format(time.RFC3339)
	}
	if r.Rollback.Duration > 0 {
		dur = strconv.FormatFloat(rb.DurationSeconds, 'f', -1, 64)
	}
	if rb.Wave > 0 {
		wave = strconv.Itoa(rb.Wave)
	}
	return []string{rb.Result, wave, strconv.Itoa(rb.Attempts), strings.Join(rb.Stages, ";"), started, dur,
		strconv.Itoa(rb.HubCalls), rb.ErrorType, oneLine(rb.Error), oneLine(rb.Note)}
}
