package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
)

// fakeRollouts is rolloutAPI for one rollout, scripted by the test.
type fakeRollouts struct {
	mu sync.Mutex

	// missing makes every call answer notFoundError.
	missing bool

	// progress are the answers of the progress query in turn; the last one repeats. progressErr
	// fails the poll of that index instead.
	progress    []workflows.RolloutProgress
	progressErr map[int]error
	polls       int

	// outcome answers Outcome; nil blocks until the context ends, as for a running rollout, unless
	// outcomeErr is set, which answers at once.
	outcome    chan outcomeResult
	outcomeErr error

	// rows is the report, served pageSize rows at a time (default MaxReportPage).
	rows     []workflows.DeviceRow
	pageSize int
	reports  []workflows.ReportRequest

	started     []workflows.RolloutInput
	startQueues []string
	existing    string

	controls    []string
	controlResp workflows.RolloutProgress
	controlErr  error
}

func (f *fakeRollouts) Close()                        {}
func (f *fakeRollouts) RolloutURL(name string) string { return "http://ui.test/rollout%2F" + name }

func (f *fakeRollouts) notFound(name string) error {
	if f.missing {
		return notFoundError{name: name, namespace: "default"}
	}
	return nil
}

func (f *fakeRollouts) Start(_ context.Context, in workflows.RolloutInput, taskQueue string) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started = append(f.started, in)
	f.startQueues = append(f.startQueues, taskQueue)
	return "run-1", f.existing, nil
}

func (f *fakeRollouts) Progress(ctx context.Context, name string) (workflows.RolloutProgress, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.notFound(name); err != nil {
		return workflows.RolloutProgress{}, err
	}
	if err := ctx.Err(); err != nil {
		return workflows.RolloutProgress{}, err
	}
	i := f.polls
	f.polls++
	if err := f.progressErr[i]; err != nil {
		return workflows.RolloutProgress{}, err
	}
	if len(f.progress) == 0 {
		return workflows.RolloutProgress{}, errors.New("no progress scripted")
	}
	return f.progress[min(i, len(f.progress)-1)], nil
}

func (f *fakeRollouts) Outcome(ctx context.Context, name string) (workflows.RolloutProgress, error) {
	if err := f.notFound(name); err != nil {
		return workflows.RolloutProgress{}, err
	}
	if f.outcomeErr != nil {
		return workflows.RolloutProgress{}, f.outcomeErr
	}
	select {
	case oc := <-f.outcome:
		return oc.p, oc.err
	case <-ctx.Done():
		return workflows.RolloutProgress{}, ctx.Err()
	}
}

func (f *fakeRollouts) Report(_ context.Context, name string, req workflows.ReportRequest) (workflows.ReportPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.notFound(name); err != nil {
		return workflows.ReportPage{}, err
	}
	f.reports = append(f.reports, req)
	size := f.pageSize
	if size == 0 {
		size = workflows.MaxReportPage
	}
	size = min(size, req.Limit)
	end := min(req.Offset+size, len(f.rows))
	page := workflows.ReportPage{Rows: f.rows[min(req.Offset, end):end], Total: len(f.rows)}
	if end < len(f.rows) {
		page.Next = end
	}
	return page, nil
}

func (f *fakeRollouts) Control(_ context.Context, name, update, reason string) (workflows.RolloutProgress, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.notFound(name); err != nil {
		return workflows.RolloutProgress{}, err
	}
	f.controls = append(f.controls, update+":"+reason)
	return f.controlResp, f.controlErr
}

// runCLI runs the starter's command line as execute does, with the backends b; stdin feeds
// --devices-file -.
func runCLI(t *testing.T, g *globals, b backends, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot(&out, g, b)
	root.SetIn(strings.NewReader(stdin))
	code = runRoot(root, g, args, &errOut)
	return code, out.String(), errOut.String()
}

// runRolloutCLI runs the starter's command line with the rollout commands on api.
func runRolloutCLI(t *testing.T, api rolloutAPI, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	g := &globals{getenv: func(string) string { return "" }, clock: testClock}
	b := backends{rollouts: func(context.Context, *globals) (rolloutAPI, error) { return api, nil }}
	return runCLI(t, g, b, stdin, args...)
}

// fixture progress: a firmware rollout of 120 devices started at t0.
func prog(state string, mod func(p *workflows.RolloutProgress)) workflows.RolloutProgress {
	p := workflows.RolloutProgress{
		Name: "fw-2.0", Operation: workflows.OperationFirmware, Version: "2.0.0", State: state,
		Total: 120, Waves: 5, MaxFailures: "10%", MaxConcurrent: 50, Started: t0, Updated: t0, Runs: 1,
	}
	if mod != nil {
		mod(&p)
	}
	return p
}

// testWatch are watch options for tests: fast polls, plain lines into w, no rate limit, the time
// and zone of testClock.
func testWatch(w io.Writer) watchOptions {
	return watchOptions{out: w, lines: w, poll: time.Millisecond, pollTimeout: time.Second, now: testClock.Now, loc: testClock.Loc()}
}

// testClock is the starter's clock in tests: t0 plus ten minutes, in Warsaw (CEST in May, so
// times show as 14:00 CEST for 12:00 UTC).
var testClock = clock{now: func() time.Time { return t0.Add(10 * time.Minute) }, loc: mustLoadLocation("Europe/Warsaw")}

func mustLoadLocation(name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		panic(err)
	}
	return loc
}
