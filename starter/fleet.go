package main

import (
	"context"
	"crypto/rand"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
	"go.temporal.io/sdk/temporal"
)

// fleetAPI is what the fleet commands ask of Temporal; tests drive it with a fake.
type fleetAPI interface {
	// CountVersions starts FleetVersions under the workflow ID id on taskQueue and waits for its
	// result.
	CountVersions(ctx context.Context, id, taskQueue string, in workflows.FleetVersionsInput) (workflows.FleetVersionsResult, error)
	// WorkflowLink links a workflow in the Temporal Web UI.
	WorkflowLink(id string) string
	Close()
}

var _ fleetAPI = (*temporalClient)(nil)

// noneLabel is the row of the devices that report no firmwareVersion.
const noneLabel = "(none)"

// versionsSlowAfter is how long fleet versions waits for its count before it says what may hold it up.
const versionsSlowAfter = 15 * time.Second

func newFleetCommand(g *globals, connect connector[fleetAPI]) *cobra.Command {
	if connect == nil {
		connect = dialAs[fleetAPI]
	}
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Look at the fleet as a whole: which firmware runs where",
		Long: `Commands about the fleet as a whole, read from IoT Hub by a dmflow worker
(the starter holds no hub credentials).

  versions   how many devices report each firmwareVersion, and how many none`,
		Args: cobra.ArbitraryArgs,
		RunE: commandGroup("fleet", "versions"),
	}
	cmd.AddCommand(newFleetVersionsCommand(g, connect, versionsSlowAfter))
	return cmd
}

type versionsFlags struct {
	query     string
	output    string
	format    string
	outFile   string
	taskQueue string
}

func newFleetVersionsCommand(g *globals, connect connector[fleetAPI], slowAfter time.Duration) *cobra.Command {
	var f versionsFlags
	cmd := &cobra.Command{
		Use:   "versions [--query CONDITION] [--output table|json|csv] [--out FILE]",
		Short: "Count the devices that report each firmwareVersion (compliance)",
		Long: `Counts, among the devices --query selects (all without it), how many report
each firmwareVersion and how many report none, from ONE IoT Hub query:

  SELECT properties.reported.firmwareVersion AS v, COUNT() AS n
    FROM devices [WHERE <condition>] GROUP BY properties.reported.firmwareVersion

A dmflow worker runs it (workflow fleet-versions/<time>-<random>, activity
CountVersions) with its IOTHUB_CONNECTION_STRING, under the hub's query budget
like a rollout's target query; the starter waits for the counts. The query
costs one of the hub's queries (20 a minute per S1 unit) per 1,000 versions,
however many devices it counts: listing the twins would cost one per 1,000
devices.

--query takes the condition in any of these forms:
  tags.ring = 'beta'
  WHERE tags.ring = 'beta'
  SELECT * FROM devices WHERE tags.ring = 'beta'
It is checked before anything is dialled (form, quotes, parentheses, no
GROUP BY of its own); IoT Hub checks the rest and says where it fails.

Output (--output, or --format as rollout report names it):
  table  versions by devices descending, then version (1.9.0 before 1.10.0),
         with the share of each, a (none) row for the devices that report no
         firmwareVersion (tutorial devices) and a TOTAL line (the default)
  json   {"query", "total", "versions": [{"version", "devices", "percent"}],
         "none": {"devices", "percent"}, "pages", "workflowId"}
  csv    version,reported,devices,percent; the (none) row has reported=false
--out writes to a file, replaced whole or not at all.

Example:
  starter fleet versions --query "tags.ring = 'beta'"
  VERSION  DEVICES  SHARE
  2.1.0          6  50.0%
  2.0.0          4  33.3%
  (none)         2  16.7%
  TOTAL         12   100%
  2 versions among 12 devices (workflow fleet-versions/20261207T101500Z-3f9a1c2e, 1 query page)`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := versionsFormat(f, cmd)
			if err != nil {
				return err
			}
			if _, err := activities.FleetCondition(f.query); err != nil {
				return cli.UsageError{Err: fmt.Errorf("--query: %w", err)}
			}
			if err := checkOutFile(f.outFile); err != nil {
				return err
			}
			f.taskQueue = settings.Pick(g.getenv, f.taskQueue, settings.TaskQueue, workflows.TaskQueue)
			id := workflows.FleetVersionsWorkflowID(versionsRequest(g.clock.Now()))
			return withAPI(cmd, g, connect, func(ctx context.Context, api fleetAPI) error {
				res, err := countVersions(ctx, api, id, f, cmd.ErrOrStderr(), slowAfter)
				if err != nil {
					return err
				}
				v := newVersionsView(res, id)
				write := func(w io.Writer) error { return writeVersions(w, format, v) }
				if f.outFile == "" || f.outFile == "-" {
					return write(cmd.OutOrStdout())
				}
				if err := writeFileAtomic(f.outFile, write); err != nil {
					return fmt.Errorf("write the firmware versions: %w", err)
				}
				if format != formatJSON {
					fmt.Fprintf(cmd.OutOrStdout(), "wrote the firmware versions of %d %s (%s) to %s\n",
						res.Total, plural(res.Total, "device", "devices"), format, f.outFile)
				}
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.query, "query", "q", "", "the devices to count: a condition, WHERE …, or SELECT * FROM devices WHERE … (default every device)")
	// A flag of its own, shadowing the global --output (text or json): this command has a third
	// format, and "text" stays accepted for scripts that pass it to every command.
	fl.StringVarP(&f.output, "output", "o", "", "table, json or csv (default table)")
	fl.StringVarP(&f.format, "format", "f", "", "the same as --output, as rollout report names it")
	fl.StringVar(&f.outFile, "out", "", "write the versions to this file instead of standard output")
	fl.StringVar(&f.taskQueue, "task-queue", "", "task queue of the worker (env DMFLOW_TASK_QUEUE, default "+workflows.TaskQueue+")")
	return cmd
}

// versionsFormat picks the format from --output and --format; a contradiction is a usage error.
func versionsFormat(f versionsFlags, cmd *cobra.Command) (string, error) {
	pick := func(flag, v string) (string, error) {
		switch v = strings.ToLower(strings.TrimSpace(v)); v {
		case "text":
			return formatTable, nil
		case formatTable, formatJSON, formatCSV:
			return v, nil
		}
		return "", cli.UsageError{Err: fmt.Errorf("--%s %q is not known: use table, json or csv", flag, v)}
	}
	format := formatTable
	var fromOutput string
	if cmd.Flags().Changed("output") {
		v, err := pick("output", f.output)
		if err != nil {
			return "", err
		}
		format, fromOutput = v, v
	}
	if cmd.Flags().Changed("format") {
		v, err := pick("format", f.format)
		if err != nil {
			return "", err
		}
		if fromOutput != "" && v != fromOutput {
			return "", cli.UsageError{Err: fmt.Errorf("--format %s contradicts --output %s: give one of them", v, fromOutput)}
		}
		format = v
	}
	return format, nil
}

// versionsRequest makes the count's workflow ID unique: the UTC second, for people, and random
// bits, so that two counts in the same second (of different queries) never meet.
func versionsRequest(now time.Time) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b) // crypto/rand.Read does not fail (Go 1.24)
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
}

// countVersions runs the count and waits for it; after slowAfter without an answer it says once,
// on stderr, what may hold it up.
func countVersions(ctx context.Context, api fleetAPI, id string, f versionsFlags, stderr io.Writer, slowAfter time.Duration) (workflows.FleetVersionsResult, error) {
	type answer struct {
		res workflows.FleetVersionsResult
		err error
	}
	got := make(chan answer, 1)
	go func() {
		res, err := api.CountVersions(ctx, id, f.taskQueue, workflows.FleetVersionsInput{Query: f.query})
		got <- answer{res, err}
	}()
	slow := time.NewTimer(slowAfter)
	defer slow.Stop()
	var a answer
	select {
	case a = <-got:
	case <-slow.C:
		fmt.Fprintf(stderr, "still counting after %s: is a dmflow worker running on task queue %s? (Ctrl-C stops waiting; the count goes on in %s)\n",
			durationText(slowAfter, false), f.taskQueue, api.WorkflowLink(id))
		a = <-got
	}
	if a.err != nil {
		return workflows.FleetVersionsResult{}, versionsError(a.err, id)
	}
	return a.res, nil
}

// versionsError says why the count failed: a query the hub refused names the fix.
func versionsError(err error, id string) error {
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) && (appErr.Type() == activities.ErrBadRequest || appErr.Type() == workflows.ErrInvalidInput) {
		return fmt.Errorf("count firmware versions (workflow %s): %s: fix --query, e.g. --query \"tags.ring = 'beta'\"",
			id, oneLine(appErr.Message()))
	}
	return fmt.Errorf("count firmware versions (workflow %s): %w", id, err)
}

// versionsView is the count as fleet versions shows it.
type versionsView struct {
	Query      string         `json:"query"`
	Total      int            `json:"total"`
	Versions   []versionShare `json:"versions"`
	None       share          `json:"none"`
	Pages      int            `json:"pages"`
	WorkflowID string         `json:"workflowId"`
}

type share struct {
	Devices int `json:"devices"`
	// Percent is the share of the devices counted, to a tenth.
	Percent float64 `json:"percent"`
}

type versionShare struct {
	Version string `json:"version"`
	share
}

func newVersionsView(res workflows.FleetVersionsResult, id string) versionsView {
	pct := func(n int) share {
		if res.Total == 0 {
			return share{Devices: n}
		}
		return share{Devices: n, Percent: math.Round(float64(n)*1000/float64(res.Total)) / 10}
	}
	v := versionsView{Query: res.Query, Total: res.Total, Versions: make([]versionShare, len(res.Versions)), None: pct(res.None), Pages: res.Pages, WorkflowID: id}
	vs := slices.Clone(res.Versions)
	activities.SortVersions(vs)
	for i, c := range vs {
		v.Versions[i] = versionShare{Version: c.Version, share: pct(c.Devices)}
	}
	return v
}

// rows are the versions with the (none) row placed by its count: after the versions of as many
// devices.
func (v versionsView) rows() []versionRow {
	rows := make([]versionRow, 0, len(v.Versions)+1)
	none := versionRow{label: noneLabel, share: v.None}
	placed := false
	for _, s := range v.Versions {
		if !placed && v.None.Devices > s.Devices {
			rows, placed = append(rows, none), true
		}
		rows = append(rows, versionRow{label: s.Version, reported: true, share: s.share})
	}
	if !placed {
		rows = append(rows, none)
	}
	return rows
}

type versionRow struct {
	label    string
	reported bool
	share
}

func writeVersions(w io.Writer, format string, v versionsView) error {
	switch format {
	case formatJSON:
		return writeJSON(w, v)
	case formatCSV:
		cw := csv.NewWriter(w)
		if err := cw.Write([]string{"version", "reported", "devices", "percent"}); err != nil {
			return err
		}
		for _, r := range v.rows() {
			if err := cw.Write([]string{r.label, strconv.FormatBool(r.reported), strconv.Itoa(r.Devices), strconv.FormatFloat(r.Percent, 'f', 1, 64)}); err != nil {
				return err
			}
		}
		cw.Flush()
		return cw.Error()
	default:
		// The version left-aligned, the numbers right-aligned, two spaces apart.
		rows := [][3]string{{"VERSION", "DEVICES", "SHARE"}}
		for _, r := range v.rows() {
			rows = append(rows, [3]string{versionCell(r), strconv.Itoa(r.Devices), percentCell(r.Percent, v.Total)})
		}
		rows = append(rows, [3]string{"TOTAL", strconv.Itoa(v.Total), percentCell(100, v.Total)})
		var width [3]int
		for _, r := range rows {
			for i, cell := range r {
				width[i] = max(width[i], utf8.RuneCountInString(cell))
			}
		}
		for _, r := range rows {
			if _, err := fmt.Fprintf(w, "%-*s  %*s  %*s\n", width[0], r[0], width[1], r[1], width[2], r[2]); err != nil {
				return err
			}
		}
		_, err := fmt.Fprintf(w, "%d %s among %d %s (workflow %s, %d query %s)\n",
			len(v.Versions), plural(len(v.Versions), "version", "versions"), v.Total, plural(v.Total, "device", "devices"),
			v.WorkflowID, v.Pages, plural(v.Pages, "page", "pages"))
		return err
	}
}

// versionCell shows a version for people: quoted when it would be taken for something else (an
// empty one, one with spaces or control characters, one spelled like the (none) row).
func versionCell(r versionRow) string {
	if !r.reported {
		return r.label
	}
	if r.label == "" || r.label == noneLabel || r.label == "TOTAL" || r.label == "VERSION" ||
		strings.IndexFunc(r.label, func(c rune) bool { return unicode.IsSpace(c) || !unicode.IsPrint(c) }) >= 0 {
		return strconv.Quote(r.label)
	}
	return r.label
}

// percentCell is a share for people: to a tenth, 100% whole, "-" of no devices.
func percentCell(pct float64, total int) string {
	switch {
	case total == 0:
		return "-"
	case pct == 100:
		return "100%"
	}
	return strconv.FormatFloat(pct, 'f', 1, 64) + "%"
}
