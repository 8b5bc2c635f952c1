package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
)

// Bounds and defaults of schedule create.
const (
	// defaultCatchupWindow: a run missed while Temporal was unavailable still starts when it is
	// back within an hour; a run later than that is skipped, and the next one is due anyway.
	defaultCatchupWindow = time.Hour
	// maxCatchupWindow: a day late is the latest a recurring rollout still makes sense (the next
	// weekly run is closer than the missed one); Temporal's own default, a year, would start
	// a forgotten run months later.
	maxCatchupWindow = 24 * time.Hour
	minCatchupWindow = time.Minute
	// minInterval: a rollout resolves its targets with a device query (scarce on IoT Hub: 20 a
	// minute on S1), so no schedule runs more often than once a minute.
	minInterval = time.Minute
	// triggerWait bounds how long trigger looks for the run it asked for.
	triggerWait = 15 * time.Second
	triggerPoll = 250 * time.Millisecond
	// describeRuns is how many recent runs describe looks up the state of.
	describeRuns = 10
)

// scheduleCmd holds what the schedule subcommands share.
type scheduleCmd struct {
	g       *globals
	connect connector[scheduleAPI]
	// triggerWait and triggerPoll: how long and how often trigger looks for its run (tests
	// shorten them).
	triggerWait, triggerPoll time.Duration
}

func newScheduleCommand(g *globals, connect connector[scheduleAPI], wait, poll time.Duration) *cobra.Command {
	if connect == nil {
		connect = dialAs[scheduleAPI]
	}
	if wait == 0 {
		wait = triggerWait
	}
	if poll == 0 {
		poll = triggerPoll
	}
	return (&scheduleCmd{g: g, connect: connect, triggerWait: wait, triggerPoll: poll}).command()
}

func (s *scheduleCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Run a rollout on a schedule (Temporal Schedules): create, list, describe, pause, unpause, trigger, delete",
		Long: `A schedule starts a rollout at the times of a cron expression in a time zone,
or at an interval: a Temporal Schedule whose action starts the Rollout workflow.
Each run is a rollout of its own, named <schedule>-<scheduled time> in UTC,
e.g. weekly-fw-2026-11-29T01:00:00Z (workflow rollout/weekly-fw-2026-11-29T01:00:00Z),
which starter rollout status, watch, report, pause, resume and cancel address
by that name.

One rollout of a schedule runs at a time: a run due while the previous one
still runs (waiting for its maintenance window, paused, slow) is skipped, not
queued (overlap policy skip). A run missed while Temporal was unavailable
starts late only within --catchup-window.

For recurring use, combine --reconcile (only the devices not on the version)
with --window (only within maintenance windows):
  starter schedule create weekly-fw --cron "0 2 * * SUN" --timezone Europe/Warsaw \
      --reconcile --firmware https://fw.example/v2.1.bin --version 2.1.0 \
      --window "0 2 * * SUN for 4h in Europe/Warsaw"

The Temporal UI shows the schedules under Schedules
(http://localhost:8233/namespaces/default/schedules on the dev server) and a
schedule's runs with the query TemporalScheduledById = "<schedule>".

Exit codes:
  0  the command did what it was asked
  1  the schedule was not found, or exists (create), or is not a dmflow
     rollout schedule; trigger: the run was skipped because a rollout of
     the schedule still runs; Temporal unreachable or refusing
  2  the command line is wrong`,
		Args: cobra.ArbitraryArgs,
		RunE: commandGroup("schedule", "create, list, describe, pause, unpause, trigger or delete"),
	}
	cmd.AddCommand(s.createCommand(), s.listCommand(), s.describeCommand(), s.pauseCommand(true), s.pauseCommand(false),
		s.triggerCommand(), s.deleteCommand())
	return cmd
}

// scheduleNameArg takes the schedule's name, the one positional argument.
func scheduleNameArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 || args[0] == "" {
		return cli.UsageError{Err: fmt.Errorf("name the schedule: %s NAME (list schedules with starter schedule list)", cmd.CommandPath())}
	}
	if err := checkScheduleName(args[0]); err != nil {
		return cli.UsageError{Err: err}
	}
	return nil
}

// createFlags are the flags of schedule create.
type createFlags struct {
	specFlags

	cron          string
	timeZone      string
	interval      time.Duration
	offset        time.Duration
	catchupWindow time.Duration
	paused        bool
	note          string
	taskQueue     string
}

func (s *scheduleCmd) createCommand() *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create NAME (--cron EXPR [--timezone TZ] | --interval D [--offset D]) <rollout spec flags, or --spec FILE>",
		Short: "Create a schedule that starts a rollout at each of its times",
		Long: `Creates the Temporal Schedule NAME, whose runs each start a rollout of the
spec given by the flags (or --spec FILE) as rollout start takes them, without
--name: each run is the rollout NAME-<scheduled time>, in UTC RFC 3339.

NAME: letters, digits and -._: up to ` + fmt.Sprint(workflows.MaxScheduleNameLength) + ` characters (its rollouts' names
are 21 longer). A name taken is refused: delete that schedule first, or choose
another.

When, one of:
  --cron "0 2 * * SUN" [--timezone Europe/Warsaw]
        five fields, minute hour day-of-month month day-of-week (names like
        SUN and JAN allowed; day-of-month and day-of-week must both match
        when both are given), or @hourly, @daily, @weekly, @monthly, @yearly;
        in the IANA time zone given (default UTC), daylight saving included:
        a time that a change skips does not run, one it repeats runs twice
  --interval 24h [--offset 2h]
        every interval since the Unix epoch, shifted by offset (at least ` + workflows.ShortDuration(minInterval) + `)

Runs: one rollout of the schedule at a time; a run due while the previous one
still runs is skipped (overlap policy skip). --catchup-window (default ` + workflows.ShortDuration(defaultCatchupWindow) + `,
` + workflows.ShortDuration(minCatchupWindow) + ` to ` + workflows.ShortDuration(maxCatchupWindow) + `) bounds how late a run missed while Temporal was unavailable
still starts; later, it is skipped and the next time applies. --paused creates
the schedule paused (trigger still runs it). The rollout spec is checked here,
as rollout start checks it, before the schedule is created.

` + specHelp,
		Args: scheduleNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request(cmd, args[0], s.g.getenv)
			if err != nil {
				return err
			}
			return withAPI(cmd, s.g, s.connect, func(ctx context.Context, api scheduleAPI) error {
				return runCreate(ctx, api, req, s.g.output, cmd.OutOrStdout())
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.cron, "cron", "", `when to run: a cron expression, e.g. "0 2 * * SUN" (Sundays at 02:00)`)
	fl.StringVar(&f.timeZone, "timezone", "", "IANA time zone of --cron, e.g. Europe/Warsaw (default UTC)")
	fl.DurationVar(&f.interval, "interval", 0, "when to run: every interval, e.g. 24h (instead of --cron)")
	fl.DurationVar(&f.offset, "offset", 0, "with --interval: shift the times by this much, e.g. 2h")
	fl.DurationVar(&f.catchupWindow, "catchup-window", defaultCatchupWindow, "how late a missed run may still start, "+workflows.ShortDuration(minCatchupWindow)+" to "+workflows.ShortDuration(maxCatchupWindow))
	fl.BoolVar(&f.paused, "paused", false, "create the schedule paused")
	fl.StringVar(&f.note, "note", "", "a note on the schedule, shown in the Temporal UI")
	fl.StringVar(&f.taskQueue, "task-queue", "", "task queue of the worker (env DMFLOW_TASK_QUEUE, default "+workflows.TaskQueue+")")
	addSpecFlags(fl, &f.specFlags, false)
	return cmd
}

// request checks create's flags and builds the schedule; every problem is a usage error, all of
// them at once.
func (f *createFlags) request(cmd *cobra.Command, name string, getenv func(string) string) (scheduleRequest, error) {
	var problems []string
	if err := checkScheduleName(name); err != nil {
		problems = append(problems, err.Error())
	}
	timing, tp := f.timing()
	problems = append(problems, tp...)
	if f.catchupWindow < minCatchupWindow || f.catchupWindow > maxCatchupWindow {
		problems = append(problems, fmt.Sprintf("--catchup-window %s: give %s to %s: how late a run missed while Temporal was unavailable may still start",
			f.catchupWindow, workflows.ShortDuration(minCatchupWindow), workflows.ShortDuration(maxCatchupWindow)))
	}
	in, err := f.input(cmd.InOrStdin(), cmd.Flags().Changed, name)
	if err != nil {
		if len(problems) == 0 {
			return scheduleRequest{}, err
		}
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return scheduleRequest{}, cli.UsageError{Err: errors.New(strings.Join(problems, "; "))}
	}
	return scheduleRequest{
		Name: name, Timing: timing, Input: in, CatchupWindow: f.catchupWindow, Paused: f.paused, Note: f.note,
		TaskQueue: settings.Pick(getenv, f.taskQueue, settings.TaskQueue, workflows.TaskQueue),
	}, nil
}

// checkScheduleName checks a schedule's name as the Rollout checks its Schedule field.
func checkScheduleName(name string) error {
	if workflows.CheckScheduleName(name) != nil {
		return fmt.Errorf("schedule name %s: give up to %d letters, digits and -._: starting with a letter or digit (its rollouts are named <name>-<time>, at most %d characters)",
			quoteShort(name), workflows.MaxScheduleNameLength, workflows.MaxNameLength)
	}
	return nil
}

// timing checks --cron/--timezone or --interval/--offset.
func (f *createFlags) timing() (scheduleTiming, []string) {
	var problems []string
	t := scheduleTiming{Cron: strings.TrimSpace(f.cron), TimeZone: strings.TrimSpace(f.timeZone), Interval: textDuration(f.interval), Offset: textDuration(f.offset)}
	switch {
	case t.Cron != "" && f.interval != 0:
		problems = append(problems, "--cron and --interval: give one of them")
	case t.Cron != "":
		if err := checkCron(t.Cron); err != nil {
			problems = append(problems, err.Error())
		}
		if f.offset != 0 {
			problems = append(problems, "--offset belongs to --interval; a cron expression says the minute itself")
		}
	case f.interval != 0:
		if f.interval < minInterval {
			problems = append(problems, fmt.Sprintf("--interval %s: at least %s (each run queries the hub for its targets)", f.interval, workflows.ShortDuration(minInterval)))
		}
		if f.offset < 0 || f.offset >= f.interval {
			problems = append(problems, fmt.Sprintf("--offset %s: from 0 up to the interval (%s)", f.offset, f.interval))
		}
		if t.TimeZone != "" {
			problems = append(problems, "--timezone belongs to --cron: an interval runs in absolute time")
		}
	default:
		problems = append(problems, `no times: give --cron "0 2 * * SUN" [--timezone Europe/Warsaw] or --interval 24h`)
	}
	if t.TimeZone != "" {
		if _, err := time.LoadLocation(t.TimeZone); err != nil || t.TimeZone == "Local" {
			problems = append(problems, fmt.Sprintf("--timezone %q: unknown time zone: give an IANA name such as Europe/Warsaw, or UTC", t.TimeZone))
		}
	}
	return t, problems
}

// cronDescriptors are the shorthands Temporal accepts.
var cronDescriptors = []string{"@yearly", "@monthly", "@weekly", "@daily", "@hourly"}

// checkCron checks --cron before Temporal does, to name the fix.
func checkCron(expr string) error {
	upper := strings.ToUpper(expr)
	switch {
	case strings.HasPrefix(upper, "TZ=") || strings.HasPrefix(upper, "CRON_TZ="):
		return fmt.Errorf("--cron %q: give the time zone with --timezone, not in the expression", expr)
	case strings.HasPrefix(expr, "@every"):
		return fmt.Errorf("--cron %q: use --interval for a fixed interval", expr)
	case strings.HasPrefix(expr, "@") && !contains(cronDescriptors, expr):
		return fmt.Errorf("--cron %q: the shorthands are %s", expr, strings.Join(cronDescriptors, ", "))
	}
	if _, err := workflows.CronParser.Parse(expr); err != nil {
		return fmt.Errorf(`--cron %q: %v: give five fields, minute hour day-of-month month day-of-week, e.g. "0 2 * * SUN" (Sundays at 02:00), or @daily, @weekly`, expr, err)
	}
	return nil
}

// runCreate creates the schedule and shows it.
func runCreate(ctx context.Context, api scheduleAPI, req scheduleRequest, output string, out io.Writer) error {
	if err := api.Create(ctx, req); err != nil {
		var ue cli.UsageError
		var exists scheduleExistsError
		if errors.As(err, &ue) || errors.As(err, &exists) {
			return err
		}
		return fmt.Errorf("create schedule %s: %w", req.Name, err)
	}
	// The schedule computes its next times as it starts: describe shows them a moment later.
	var info scheduleInfo
	var err error
	tries := 0
	if lerr := followLoop[struct{}](ctx, 300*time.Millisecond, func() bool {
		info, err = api.Describe(ctx, req.Name, 0)
		tries++
		return (err == nil && (len(info.NextRuns) > 0 || tries > 3)) || tries == 10
	}, nil, nil); lerr != nil {
		return lerr
	}
	if err != nil {
		// Created; the description is a courtesy.
		info = scheduleInfo{Name: req.Name, Timing: req.Timing, When: describeTiming(req.Timing), Rollout: describeInput(req.Input),
			Paused: req.Paused, URL: api.ScheduleURL(req.Name), Input: &req.Input}
	}
	if output == "json" {
		return writeJSON(out, info)
	}
	fmt.Fprintf(out, "created schedule %s: %s\n", req.Name, info.Rollout)
	fmt.Fprintf(out, "  when:      %s\n", info.When)
	if len(info.NextRuns) > 0 {
		fmt.Fprintf(out, "  next runs: %s\n", joinTimes(info.NextRuns[:min(3, len(info.NextRuns))], req.Timing.TimeZone, ", "))
	}
	example := "<time>"
	if len(info.NextRuns) > 0 {
		example = info.NextRuns[0].UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(out, "  rollouts:  one per run, named %s-<scheduled time, UTC>, e.g. %s-%s; a run due while one still runs is skipped\n", req.Name, req.Name, example)
	if req.Paused {
		fmt.Fprintf(out, "  paused:    no run starts until starter schedule unpause %s\n", req.Name)
	}
	fmt.Fprintf(out, "  ui:        %s\n", info.URL)
	fmt.Fprintf(out, "  run now:   starter schedule trigger %s\n", req.Name)
	return nil
}

func (s *scheduleCmd) listCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the rollout schedules: when they run, their next and last run",
		Long: `Lists the schedules that start dmflow rollouts, by name: when each runs,
its next run, its last run (the rollout's name and state) and whether it is
paused. With --output json, an array of schedules.

Temporal lists schedules from its visibility store: a schedule created or
deleted a moment ago may not show yet.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAPI(cmd, s.g, s.connect, func(ctx context.Context, api scheduleAPI) error {
				list, err := api.List(ctx)
				if err != nil {
					return fmt.Errorf("list schedules: %w", err)
				}
				if s.g.output == "json" {
					if list == nil {
						list = []scheduleInfo{} // [], not null
					}
					return writeJSON(cmd.OutOrStdout(), list)
				}
				return writeScheduleTable(cmd.OutOrStdout(), list)
			})
		},
	}
}

// writeScheduleTable writes the schedules as aligned columns.
func writeScheduleTable(w io.Writer, list []scheduleInfo) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(w, "no rollout schedules: create one with starter schedule create NAME --cron EXPR …")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tWHEN\tNEXT RUN\tLAST RUN\tSTATE\tPAUSED\tROLLOUT")
	for _, s := range list {
		next, last, state, paused := "-", "-", "-", "no"
		if len(s.NextRuns) > 0 && !s.Paused {
			next = timeText(s.NextRuns[0], zoneLoc(s.Timing.TimeZone), true)
		}
		if len(s.RecentRuns) > 0 {
			last, state = s.RecentRuns[0].Rollout, dash(s.RecentRuns[0].State)
		}
		if s.Paused {
			paused = "yes"
			if s.Note != "" {
				paused += ": " + oneLine(s.Note)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.When, next, last, state, paused, dash(s.Rollout))
	}
	return tw.Flush()
}

func (s *scheduleCmd) describeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "describe NAME",
		Short: "Show a schedule: when it runs, its rollout spec, its recent runs and next times",
		Long: `Shows the schedule: when it runs, whether it is paused (and the note), its
next five times in its time zone, its recent runs newest first (each a
rollout, with its state), the rollouts running now, how many runs started,
were skipped (a rollout still ran) or missed (past the catch-up window), and
the rollout spec each run starts with, in the format --spec reads.

The states come from the rollouts' DmflowRolloutState search attribute: no
worker needs to answer. With --output json, the description as JSON.`,
		Args: scheduleNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAPI(cmd, s.g, s.connect, func(ctx context.Context, api scheduleAPI) error {
				info, err := api.Describe(ctx, args[0], describeRuns)
				if err != nil {
					return err
				}
				if s.g.output == "json" {
					return writeJSON(cmd.OutOrStdout(), info)
				}
				printSchedule(cmd.OutOrStdout(), info)
				return nil
			})
		},
	}
}

// printSchedule writes describe's text.
func printSchedule(out io.Writer, s scheduleInfo) {
	loc := zoneLoc(s.Timing.TimeZone)
	fmt.Fprintf(out, "schedule %s: %s\n", s.Name, dash(s.Rollout))
	fmt.Fprintf(out, "  when:        %s\n", s.When)
	switch {
	case s.Paused && s.Note != "":
		fmt.Fprintf(out, "  state:       paused (%s): no run starts until starter schedule unpause %s\n", oneLine(s.Note), s.Name)
	case s.Paused:
		fmt.Fprintf(out, "  state:       paused: no run starts until starter schedule unpause %s\n", s.Name)
	default:
		fmt.Fprintf(out, "  state:       active\n")
	}
	label := "  next runs:   "
	for _, t := range s.NextRuns[:min(5, len(s.NextRuns))] {
		fmt.Fprintf(out, "%s%s  (%s)\n", label, timeText(t, loc, true), t.UTC().Format(time.RFC3339))
		label = "               "
	}
	if len(s.NextRuns) == 0 {
		fmt.Fprintf(out, "  next runs:   none\n")
	}
	label = "  recent runs: "
	for _, r := range s.RecentRuns {
		fmt.Fprintf(out, "%s%s  started %s  %s\n", label, r.Rollout, timeText(r.StartedAt, loc, true), dash(r.State))
		label = "               "
	}
	if len(s.RecentRuns) == 0 {
		fmt.Fprintf(out, "  recent runs: none yet (starter schedule trigger %s runs one now)\n", s.Name)
	}
	if len(s.Running) > 0 {
		fmt.Fprintf(out, "  running:     %s: the next run is skipped while it runs\n", strings.Join(s.Running, ", "))
	}
	fmt.Fprintf(out, "  runs:        %d started, %d skipped (a rollout still ran), %d missed (later than the catch-up window %s)\n",
		s.Actions, s.SkippedOverlap, s.MissedCatchup, workflows.ShortDuration(time.Duration(s.CatchupWindow)))
	if s.TaskQueue != "" {
		fmt.Fprintf(out, "  task queue:  %s\n", s.TaskQueue)
	}
	fmt.Fprintf(out, "  ui:          %s\n", s.URL)
	if len(s.RecentRuns) > 0 {
		fmt.Fprintf(out, "  follow:      starter rollout status %s\n", s.RecentRuns[0].Rollout)
	}
	if s.Input != nil {
		fmt.Fprintf(out, "  rollout spec (as --spec reads it):\n")
		for _, line := range strings.Split(strings.TrimRight(string(formatSpec(*s.Input, 20)), "\n"), "\n") {
			fmt.Fprintf(out, "    %s\n", line)
		}
	}
}

// pauseCommand builds pause (pause true) or unpause.
func (s *scheduleCmd) pauseCommand(pause bool) *cobra.Command {
	var note string
	verb, short, long := "pause", "Stop starting runs until unpause", `Pauses the schedule: no run starts until unpause. A rollout of the schedule
running now keeps running (starter rollout pause <rollout> holds it too), and
trigger still runs one. The note shows in describe, list and the Temporal UI.`
	if !pause {
		verb, short, long = "unpause", "Start runs again at the schedule's times", `Unpauses the schedule: runs start again at its next times. Runs whose times
passed while it was paused are not made up.`
	}
	cmd := &cobra.Command{
		Use:   verb + " NAME [--note TEXT]",
		Short: short,
		Long:  long + "\n\nWith --output json, the schedule's description afterwards.",
		Args:  scheduleNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAPI(cmd, s.g, s.connect, func(ctx context.Context, api scheduleAPI) error {
				return runPause(ctx, api, args[0], pause, note, s.g.output, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&note, "note", "", "why, shown in describe, list and the Temporal UI")
	return cmd
}

// runPause pauses or unpauses the schedule and says what that means now.
func runPause(ctx context.Context, api scheduleAPI, name string, pause bool, note, output string, out io.Writer) error {
	before, err := api.Describe(ctx, name, 0)
	if err != nil {
		return err
	}
	verb := "pause"
	if pause {
		err = api.Pause(ctx, name, cmp.Or(note, "paused with starter schedule pause"))
	} else {
		verb = "unpause"
		err = api.Unpause(ctx, name, cmp.Or(note, "unpaused with starter schedule unpause"))
	}
	if err != nil {
		return fmt.Errorf("%s schedule %s: %w", verb, name, err)
	}
	after, err := api.Describe(ctx, name, 0)
	if err != nil {
		after = before
		after.Paused = pause
	}
	if output == "json" {
		return writeJSON(out, after)
	}
	switch {
	case pause && before.Paused:
		fmt.Fprintf(out, "schedule %s was paused already; its note is updated\n", name)
	case pause:
		fmt.Fprintf(out, "paused schedule %s: no run starts until starter schedule unpause %s\n", name, name)
	case !before.Paused:
		fmt.Fprintf(out, "schedule %s was not paused\n", name)
	default:
		fmt.Fprintf(out, "unpaused schedule %s\n", name)
	}
	if !pause && len(after.NextRuns) > 0 {
		fmt.Fprintf(out, "  next run:  %s\n", timeText(after.NextRuns[0], zoneLoc(after.Timing.TimeZone), true))
	}
	for _, r := range after.Running {
		if pause {
			fmt.Fprintf(out, "  running:   %s keeps running (starter rollout pause %s holds it too)\n", r, r)
		}
	}
	return nil
}

func (s *scheduleCmd) triggerCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "trigger NAME",
		Short: "Run the schedule's rollout now",
		Long: `Asks the schedule for a run now, as if one of its times had come; a paused
schedule runs it too. The schedule's overlap policy still applies: while a
rollout of the schedule runs, the run is skipped, and trigger says so and
exits 1 (wait for the rollout, or cancel it, and trigger again).

Prints the rollout the run started (<schedule>-<now, UTC>), once the schedule
reports it (within ` + workflows.ShortDuration(triggerWait) + `). With --output json: {schedule, started,
skipped, rollout, workflowId, running}.`,
		Args: scheduleNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAPI(cmd, s.g, s.connect, func(ctx context.Context, api scheduleAPI) error {
				return runTrigger(ctx, api, args[0], s.g.output, cmd.OutOrStdout(), s.triggerWait, s.triggerPoll)
			})
		},
	}
}

// triggerOutput is what trigger prints with --output json.
type triggerOutput struct {
	Schedule   string `json:"schedule"`
	Started    bool   `json:"started"`
	Skipped    bool   `json:"skipped"`
	Rollout    string `json:"rollout,omitempty"`
	WorkflowID string `json:"workflowId,omitempty"`
	// Running names the rollouts of the schedule running when the run was skipped.
	Running []string `json:"running,omitempty"`
}

// runTrigger triggers a run and looks for it in the schedule's counts: one more run started, or
// one more skipped.
func runTrigger(ctx context.Context, api scheduleAPI, name, output string, out io.Writer, wait, poll time.Duration) error {
	before, err := api.Describe(ctx, name, 0)
	if err != nil {
		return err
	}
	if err := api.Trigger(ctx, name); err != nil {
		return fmt.Errorf("trigger schedule %s: %w", name, err)
	}
	res := triggerOutput{Schedule: name}
	deadline := time.Now().Add(wait)
	if err := followLoop[struct{}](ctx, poll, func() bool {
		after, err := api.Describe(ctx, name, 0)
		switch {
		case err != nil:
		case after.Actions > before.Actions && len(after.RecentRuns) > 0:
			r := after.RecentRuns[0]
			res.Started, res.Rollout, res.WorkflowID = true, r.Rollout, r.WorkflowID
		case after.SkippedOverlap > before.SkippedOverlap:
			res.Skipped, res.Running = true, after.Running
		}
		return res.Started || res.Skipped || time.Now().After(deadline)
	}, nil, nil); err != nil {
		return err
	}
	if output == "json" {
		if err := writeJSON(out, res); err != nil {
			return err
		}
	}
	switch {
	case res.Started:
		if output == "text" {
			fmt.Fprintf(out, "triggered schedule %s: started rollout %s\n  workflow: %s\n  follow:   starter rollout watch %s\n", name, res.Rollout, res.WorkflowID, res.Rollout)
		}
		return nil
	case res.Skipped:
		running := "a rollout of the schedule"
		hint := ""
		if len(res.Running) > 0 {
			running = "rollout " + strings.Join(res.Running, ", ")
			hint = fmt.Sprintf(": wait for it (starter rollout watch %s) or cancel it (starter rollout cancel %s), then trigger again", res.Running[0], res.Running[0])
		}
		return fmt.Errorf("schedule %s skipped the run: %s still runs, and a schedule runs one rollout at a time (overlap policy skip)%s", name, running, hint)
	}
	if output == "text" {
		fmt.Fprintf(out, "triggered schedule %s; its run did not show within %s: see starter schedule describe %s\n", name, workflows.ShortDuration(wait), name)
	}
	return nil
}

// deleteOutput is what delete prints with --output json.
type deleteOutput struct {
	Schedule string   `json:"schedule"`
	Deleted  bool     `json:"deleted"`
	Running  []string `json:"running,omitempty"`
}

func (s *scheduleCmd) deleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a schedule; the rollouts it started keep running",
		Long: `Deletes the schedule: no run starts any more. The rollouts it started are not
touched: one running now keeps running (starter rollout cancel <rollout> stops
it), and finished ones keep their history and report.`,
		Args: scheduleNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAPI(cmd, s.g, s.connect, func(ctx context.Context, api scheduleAPI) error {
				name := args[0]
				info, err := api.Describe(ctx, name, 0)
				if err != nil {
					return err
				}
				if err := api.Delete(ctx, name); err != nil {
					return fmt.Errorf("delete schedule %s: %w", name, err)
				}
				out := cmd.OutOrStdout()
				if s.g.output == "json" {
					return writeJSON(out, deleteOutput{Schedule: name, Deleted: true, Running: info.Running})
				}
				fmt.Fprintf(out, "deleted schedule %s: no run starts any more; the rollouts it started keep their history\n", name)
				for _, r := range info.Running {
					fmt.Fprintf(out, "  running:   %s keeps running (starter rollout cancel %s stops it)\n", r, r)
				}
				return nil
			})
		},
	}
}

// describeTiming says when a schedule runs.
func describeTiming(t scheduleTiming) string {
	switch {
	case t.Cron != "":
		return fmt.Sprintf("cron %q in %s", t.Cron, cmp.Or(t.TimeZone, "UTC"))
	case t.Interval > 0 && t.Offset > 0:
		return fmt.Sprintf("every %s (offset %s)", workflows.ShortDuration(time.Duration(t.Interval)), workflows.ShortDuration(time.Duration(t.Offset)))
	case t.Interval > 0:
		return "every " + workflows.ShortDuration(time.Duration(t.Interval))
	}
	return "no times (trigger runs it)"
}

func joinTimes(ts []time.Time, tz, sep string) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = timeText(t, zoneLoc(tz), true)
	}
	return strings.Join(parts, sep)
}
