package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
)

// Report formats.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatCSV   = "csv"
)

func (r *rolloutCmd) reportCommand() *cobra.Command {
	var format, outFile string
	cmd := &cobra.Command{
		Use:   "report NAME [--format table|json|csv] [--out FILE]",
		Short: "List every target device of a rollout with its result",
		Long: `Lists the rollout's target devices in device-ID order, one row each: device,
wave (1-based; 0 for a device skipped when the targets were resolved), result
(pending, running, updated, rebooted, skipped, failed, cancelled, not started),
attempts (2 after --retry-failed), the firmware version before the update,
the stages the device reported, when its workflow started, how long it ran,
its IoT Hub calls, and why it failed. A rollout with approval gates lists its
approvals below the table (wave, time, approver, note), and with --format json
each row names the approval its wave started on ("approval").
its IoT Hub calls, and why it failed. Once the rollout's rollback reached a
device, its rollback follows: result (rolled back, skipped, failed, cancelled,
not started), rollback wave, stages, duration and error or note.

Formats: table (aligned columns, the default), json (an array; also the default
with --output json), csv (with a header row). --out writes to a file, which
is replaced whole or not at all.

Works while the rollout runs and after it ended; a running dmflow worker
answers the report query.`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := reportFormat(format, cmd.Flags().Changed("format"), r.g.output)
			if err != nil {
				return err
			}
			if err := checkOutFile(outFile); err != nil {
				return err
			}
			return withAPI(cmd, r.g, r.connect, func(ctx context.Context, api rolloutAPI) error {
				rows, err := fetchReport(ctx, api, args[0])
				if err != nil {
					return err
				}
				approvals := rolloutApprovals(ctx, api, args[0])
				write := func(w io.Writer) error { return writeReportGated(w, f, rows, approvals) }
				if outFile == "" || outFile == "-" {
					if err := write(cmd.OutOrStdout()); err != nil || f != formatTable {
						return err
					}
					reportStartRate(ctx, cmd.OutOrStdout(), api, args[0])
					return nil
				}
				if err := writeFileAtomic(outFile, write); err != nil {
					return fmt.Errorf("write the report: %w", err)
				}
				if r.g.output == "text" {
					fmt.Fprintf(cmd.OutOrStdout(), "wrote the report of rollout %s (%d %s, %s) to %s\n",
						args[0], len(rows), plural(len(rows), "device", "devices"), f, outFile)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "", "table, json or csv (default table; json with --output json)")
	cmd.Flags().StringVar(&outFile, "out", "", "write the report to this file instead of standard output")
	return cmd
}

// checkOutFile refuses an --out whose directory does not exist, before the
// report is fetched; the file itself is written whole at the end.
func checkOutFile(path string) error {
	if path == "" || path == "-" {
		return nil
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return cli.UsageError{Err: fmt.Errorf("--out %s: directory %s does not exist: create it or write the report elsewhere", path, dir)}
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return cli.UsageError{Err: fmt.Errorf("--out %s is a directory: name a file in it, e.g. %s", path, filepath.Join(path, "report.csv"))}
	}
	return nil
}

// reportFormat picks the format from --format and --output; a contradiction is a usage error.
func reportFormat(format string, formatSet bool, output string) (string, error) {
	switch {
	case !formatSet && output == "json":
		return formatJSON, nil
	case !formatSet:
		return formatTable, nil
	}
	format = strings.ToLower(strings.TrimSpace(format))
	switch format {
	case formatTable, formatJSON, formatCSV:
	default:
		return "", cli.UsageError{Err: fmt.Errorf("--format %q is not known: use table, json or csv", format)}
	}
	if output == "json" && format != formatJSON {
		return "", cli.UsageError{Err: fmt.Errorf("--format %s contradicts --output json: give one of them", format)}
	}
	return format, nil
}

// fetchReport reads the whole report, page by page.
func fetchReport(ctx context.Context, api rolloutAPI, name string) ([]workflows.DeviceRow, error) {
	var all []workflows.DeviceRow
	err := pageReport(ctx, api, name, func(rows []workflows.DeviceRow) bool {
		all = append(all, rows...)
		return true
	})
	return all, err
}

// pageReport pages through the report query, MaxReportPage rows at a time, until the last page or
// until fn returns false.
func pageReport(ctx context.Context, api rolloutAPI, name string, fn func([]workflows.DeviceRow) bool) error {
	var nf notFoundError
	for offset := 0; ; {
		qctx, cancel := context.WithTimeout(ctx, queryTimeout)
		page, err := api.Report(qctx, name, workflows.ReportRequest{Offset: offset, Limit: workflows.MaxReportPage})
		timedOut := errors.Is(qctx.Err(), context.DeadlineExceeded)
		cancel()
		switch {
		case errors.As(err, &nf):
			return err
		case err != nil && timedOut && ctx.Err() == nil:
			return fmt.Errorf("query the report of rollout %s: no answer within %s: is a dmflow worker running? it answers queries, for finished rollouts too", name, queryTimeout)
		case err != nil:
			return fmt.Errorf("query the report of rollout %s: %w", name, err)
		}
		if !fn(page.Rows) || page.Next == 0 {
			return nil
		}
		if page.Next <= offset {
			return fmt.Errorf("query the report of rollout %s: the page at %d points back to %d", name, offset, page.Next)
		}
		offset = page.Next
	}
}

// reportRow is a report line as json and csv write it: DeviceRow with the wave 1-based and the
// duration in seconds.
type reportRow struct {
	Device string `json:"device"`
	// Wave is 1-based; 0 for a device skipped when the targets were resolved.
	Wave            int       `json:"wave"`
	Result          string    `json:"result"`
	Attempts        int       `json:"attempts"`
	FromVersion     string    `json:"fromVersion,omitempty"`
	Stages          []string  `json:"stages,omitempty"`
	Started         time.Time `json:"started,omitzero"`
	DurationSeconds float64   `json:"durationSeconds,omitempty"`
	HubCalls        int       `json:"hubCalls"`
	ErrorType       string    `json:"errorType,omitempty"`
	Error           string    `json:"error,omitempty"`
	// Note says why a device was skipped.
	Note string `json:"note,omitempty"`
	// Approval is the approval the device's wave started on (rollout_approve.go).
	Approval *reportApproval `json:"approval,omitempty"`

	// Retries by failure type (rollout_retries.go): the type of a failed (or waiting) attempt, the
	// types retried, when the next attempt may start.
	FailureType string    `json:"failureType,omitempty"`
	RetriedOn   []string  `json:"retriedOn,omitempty"`
	RetryAt     time.Time `json:"retryAt,omitzero"`
	// Rollback (policy 1) is the device's rollback, once the rollout's rollback reached it.
	Rollback *reportRollback `json:"rollback,omitempty"`
	// Continuous targeting (policy 3): the look that found the device; 0 for the first targets.
	Look int `json:"look,omitempty"`
}

func toReportRow(r workflows.DeviceRow) reportRow {
	return reportRow{
		Device: r.DeviceID, Wave: max(r.Wave+1, 0), Result: r.Result, Attempts: r.Attempts,
		FromVersion: r.FromVersion, Stages: r.Stages, Started: r.Started.UTC(),
		DurationSeconds: r.Duration.Seconds(), HubCalls: r.HubCalls, ErrorType: r.ErrorType, Error: r.Error, Note: r.Note,
		FailureType: r.FailureType, RetriedOn: r.RetriedOn, RetryAt: r.RetryAt.UTC(),
		Rollback: toReportRollback(r.Rollback), // rollback (policy 1)
		Look:     r.Look,
	}
}

func writeReport(w io.Writer, format string, rows []workflows.DeviceRow) error {
	switch format {
	case formatJSON:
		out := make([]reportRow, len(rows))
		for i, r := range rows {
			out[i] = toReportRow(r)
		}
		return writeJSON(w, out)
	case formatCSV:
		return writeReportCSV(w, rows)
	default:
		return writeReportTable(w, rows)
	}
}

var csvHeader = []string{"device", "wave", "result", "attempts", "from_version", "stages", "started", "duration_seconds", "hub_calls", "error_type", "error", "note",
	"failure_type", "retried_on", "retry_at"}

// writeReportCSV writes a header and a record per device; stages are separated by ';', an empty
// cell is an unknown value.
func writeReportCSV(w io.Writer, rows []workflows.DeviceRow) error {
	cw := csv.NewWriter(w)
	rb := hasRollback(rows) // rollback (policy 1): its columns once a row has one
	if err := cw.Write(append(append([]string{}, csvHeader...), rollbackCSVHeader(rb)...)); err != nil {
		return err
	}
	for _, d := range rows {
		r := toReportRow(d)
		started, dur, wave := "", "", ""
		if !d.Started.IsZero() {
			started = r.Started.Format(time.RFC3339)
		}
		if d.Duration > 0 {
			dur = strconv.FormatFloat(r.DurationSeconds, 'f', -1, 64)
		}
		if r.Wave > 0 {
			wave = strconv.Itoa(r.Wave)
		}
		retryAt := ""
		if !d.RetryAt.IsZero() {
			retryAt = r.RetryAt.Format(time.RFC3339)
		}
		if err := cw.Write(append([]string{r.Device, wave, r.Result, strconv.Itoa(r.Attempts), r.FromVersion, strings.Join(r.Stages, ";"),
			started, dur, strconv.Itoa(r.HubCalls), r.ErrorType, oneLine(r.Error), oneLine(noteWithLook(d)),
			r.FailureType, strings.Join(r.RetriedOn, ";"), retryAt}, rollbackCSVCells(d, rb)...)); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// writeReportTable writes aligned columns and a line of totals by result.
func writeReportTable(w io.Writer, rows []workflows.DeviceRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	rb := hasRollback(rows) // rollback (policy 1): its columns once a row has one
	fmt.Fprintln(tw, "DEVICE\tWAVE\tRESULT\tTYPE\tATTEMPTS\tFROM\tSTAGES\tSTARTED\tDURATION\tHUB CALLS\tERROR OR NOTE"+rollbackHeader(rb))
	for _, r := range rows {
		started, duration := "-", "-"
		if !r.Started.IsZero() {
			started = r.Started.UTC().Format(time.RFC3339)
		}
		if r.Duration > 0 {
			duration = durationText(r.Duration, true)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s%s\n", r.DeviceID, waveCell(r.Wave), r.Result, typeCell(r), r.Attempts,
			dash(r.FromVersion), dash(strings.Join(r.Stages, ",")), started, duration, r.HubCalls, dash(rowError(r)+rowNote(r)+rowRetryNote(r)), rollbackCells(r, rb))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d %s: %s%s\n", len(rows), plural(len(rows), "device", "devices"), countResults(rows), rollbackTotals(rows))
	return err
}

// resultOrder lists the device results in the order of the totals line.
var resultOrder = []string{workflows.DeviceUpdated, workflows.DeviceRebooted, workflows.DeviceSkipped, workflows.DeviceFailed,
	workflows.DeviceCancelled, workflows.DeviceNotStarted, workflows.DeviceRunning, workflows.DevicePending}

// countResults is "115 updated, 3 skipped, 2 failed": the results that occur, in resultOrder, then
// any others in order of appearance.
func countResults(rows []workflows.DeviceRow) string {
	counts := map[string]int{}
	var others []string
	for _, r := range rows {
		if counts[r.Result] == 0 && !contains(resultOrder, r.Result) {
			others = append(others, r.Result)
		}
		counts[r.Result]++
	}
	var parts []string
	for _, res := range append(append([]string{}, resultOrder...), others...) {
		if n := counts[res]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, res))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// waveCell is the wave for people: 1-based, "-" for a device skipped at resolution.
func waveCell(wave int) string {
	if wave < 0 {
		return "-"
	}
	return strconv.Itoa(wave + 1)
}

// rowError is a failed device's error on one line, with its type in front unless the message
// starts with it already.
func rowError(r workflows.DeviceRow) string {
	msg := oneLine(r.Error)
	if r.ErrorType != "" && !strings.HasPrefix(msg, r.ErrorType) {
		if msg == "" {
			return r.ErrorType
		}
		return r.ErrorType + ": " + msg
	}
	return msg
}

// rowNote is the note of a row: why it was skipped, in parentheses after an error.
func rowNote(r workflows.DeviceRow) string {
	note := noteWithLook(r)
	if note == "" {
		return ""
	}
	if r.Error != "" || r.ErrorType != "" {
		return " (" + oneLine(note) + ")"
	}
	return oneLine(note)
}

// writeFileAtomic writes a file through a temporary file in the same directory and renames it
// into place, so that a reader never sees half a report and a failed write leaves the old file.
func writeFileAtomic(path string, write func(io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriter(tmp)
	if err = write(bw); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return err
	}
	// CreateTemp makes the file private; a report is not.
	if err = tmp.Chmod(0o644); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
