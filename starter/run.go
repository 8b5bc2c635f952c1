package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
)

// launch is one workflow the starter starts, or finds already started, and with --wait follows.
// R is the workflow's result type.
type launch[R any] struct {
	// subject names the operation for people: "reboot of dev-001".
	subject    string
	workflowID string
	workflow   any
	input      any
	taskQueue  string
	wait       bool
	// progress reads what the workflow is doing, for the live view of --wait in text mode; each
	// line is printed once (by key). Errors are retried quietly: a workflow not yet picked up by a
	// worker cannot answer a query.
	progress func(ctx context.Context, t *temporalClient, id, runID string) ([]progressLine, error)
	// summary prints a successful result in text mode.
	summary func(out io.Writer, r R)
}

// progressLine is one line of the live view.
type progressLine struct {
	key  string        // printed once per key
	at   time.Duration // since the workflow started
	text string
}

// launchOutput is what --output json prints.
type launchOutput[R any] struct {
	WorkflowID string `json:"workflowId"`
	RunID      string `json:"runId"`
	URL        string `json:"url"`
	// Existing is the status of the run found, when the workflow ID had been started before.
	Existing string `json:"existing,omitempty"`
	Result   *R     `json:"result,omitempty"`
	Error    string `json:"error,omitempty"`
}

// run starts the workflow (or attaches to the one already started under its ID), prints where to
// watch it and, with wait, follows it and prints the result.
func (l launch[R]) run(ctx context.Context, t *temporalClient, output string, out io.Writer) error {
	res := launchOutput[R]{WorkflowID: l.workflowID}
	run, existing, err := t.startOrAttach(ctx, l.workflowID, l.taskQueue, l.workflow, l.input)
	if err != nil {
		return fmt.Errorf("start %s: %w", l.subject, err)
	}
	res.Existing = existing
	res.RunID = run.GetRunID()
	res.URL = t.workflowURL(l.workflowID, res.RunID)
	if output == "text" {
		fmt.Fprintf(out, "%s %s\n  workflow: %s\n  ui:       %s\n", startVerb(existing), l.subject, l.workflowID, res.URL)
	}
	if !l.wait {
		if output == "json" {
			return writeJSON(out, res)
		}
		return nil
	}

	// The result is what the user waits for; meanwhile, in text mode, the live view.
	var result R
	var werr error
	got := make(chan error, 1)
	go func() { got <- run.Get(ctx, &result) }()
	var poll func() bool
	if output == "text" && l.progress != nil {
		printed := map[string]bool{}
		poll = func() bool {
			l.showProgress(ctx, t, res.RunID, out, printed)
			return false
		}
	}
	if followLoop(ctx, time.Second, poll, got, func(err error) bool { werr = err; return true }) != nil {
		werr = <-got // ctx ended, and with it the wait for the result
	} else if poll != nil && ctx.Err() == nil {
		// Once more after the end, so that the view shows how it ended (the last stage, done or
		// failed) before the result.
		poll()
	}
	if werr == nil {
		res.Result = &result
	} else {
		res.Error = werr.Error()
	}
	if output == "json" {
		if err := writeJSON(out, res); err != nil {
			return err
		}
	} else if werr == nil {
		l.summary(out, result)
	}
	if werr != nil {
		return fmt.Errorf("%s failed: %w", l.subject, werr)
	}
	return nil
}

// startVerb says what happened to the start, by the status of the run found.
func startVerb(existing string) string {
	switch existing {
	case "":
		return "started"
	case enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING.String():
		return "already running:"
	default:
		return "already ran (" + strings.ToLower(existing) + "):"
	}
}

// showProgress asks the workflow's progress and prints the lines not printed before. A failed poll
// is retried quietly at the next: the result, or its error, is what the user waits for.
func (l launch[R]) showProgress(ctx context.Context, t *temporalClient, runID string, out io.Writer, printed map[string]bool) {
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if lines, err := l.progress(pctx, t, l.workflowID, runID); err == nil {
		printNew(out, lines, printed)
	}
}

// printNew prints the lines not printed before, in time order.
func printNew(out io.Writer, lines []progressLine, printed map[string]bool) {
	var fresh []progressLine
	for _, l := range lines {
		if !printed[l.key] {
			printed[l.key] = true
			fresh = append(fresh, l)
		}
	}
	sort.SliceStable(fresh, func(i, j int) bool { return fresh[i].at < fresh[j].at })
	for _, l := range fresh {
		fmt.Fprintf(out, "  %6.1fs  %s\n", max(l.at, 0).Seconds(), l.text)
	}
}
