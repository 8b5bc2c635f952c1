package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/dmflow/dmflow/workflows"
)

// fakeFleet is fleetAPI answering one scripted count.
type fakeFleet struct {
	mu sync.Mutex

	res workflows.FleetVersionsResult
	err error
	// delay holds the answer back this long (or until the context ends).
	delay time.Duration

	ids    []string
	queues []string
	inputs []workflows.FleetVersionsInput
}

func (f *fakeFleet) Close()                        {}
func (f *fakeFleet) WorkflowLink(id string) string { return "http://ui.test/" + id }

func (f *fakeFleet) CountVersions(ctx context.Context, id, taskQueue string, in workflows.FleetVersionsInput) (workflows.FleetVersionsResult, error) {
	f.mu.Lock()
	f.ids = append(f.ids, id)
	f.queues = append(f.queues, taskQueue)
	f.inputs = append(f.inputs, in)
	f.mu.Unlock()
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return workflows.FleetVersionsResult{}, ctx.Err()
	}
	return f.res, f.err
}

// runFleetCLI runs the starter's command line with the fleet commands on api.
func runFleetCLI(t *testing.T, api fleetAPI, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	g := &globals{getenv: func(string) string { return "" }, clock: testClock}
	b := backends{fleet: func(context.Context, *globals) (fleetAPI, error) { return api, nil }}
	return runCLI(t, g, b, "", args...)
}
