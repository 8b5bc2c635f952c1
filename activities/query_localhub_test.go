package activities

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/budget"
	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/sim/fleet"
	"github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/internal/testlog"
)

// QueryDevices against a real localhub through the worker's service client, on a fleet that fits
// in one page of 1,000; query_pages_localhub_test.go has the fleet of several pages.

// queryFleetSize is enough devices for three pages of the hub's default 100, which the activity
// does not use.
const queryFleetSize = 250

// ring and site are the tags of fleet device i.
func ring(i int) string {
	switch i % 10 {
	case 0:
		return "canary"
	case 1, 2, 3:
		return "beta"
	}
	return "prod"
}

func site(i int) string {
	if i%2 == 0 {
		return "oslo"
	}
	return "bergen"
}

func fleetID(i int) string { return fmt.Sprintf("q-%03d", i) }

// fleetIDs lists the fleet devices for which keep holds, in ID order: localhub's order.
func fleetIDs(keep func(i int) bool) []string {
	var out []string
	for i := range queryFleetSize {
		if keep(i) {
			out = append(out, fleetID(i))
		}
	}
	return out
}

func TestQueryDevicesOnLocalhub(t *testing.T) {
	// Unthrottled: setting up the fleet costs hundreds of twin updates, and the subtests more
	// queries than S1 allows in a minute. Throttling has a test of its own below.
	h := startLocalhub(t, func(o *hub.Options) { o.Unlimited = true })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// One request at a time: on localhub the fleet is set up in well under a second that way,
	// and the service client opens no spare connection for the hub's shutdown to wait on (an
	// HTTP server waits 5 s for a connection that never sent a request).
	_, err := fleet.Register(ctx, h.svc.Client, fleetIDs(func(int) bool { return true }), 1, testlog.Logger(t))
	require.NoError(t, err)
	plan := make(map[string]map[string]any, queryFleetSize)
	for i := range queryFleetSize {
		plan[fleetID(i)] = map[string]any{"ring": ring(i), "site": site(i)}
	}
	// Two devices that report firmware properties, in a ring of their own.
	for id, version := range map[string]string{"qr-1": "1.0.0", "qr-2": "2.0.0"} {
		c, cctx := h.connectRawDevice(t, id)
		status := map[string]string{"1.0.0": "standBy", "2.0.0": "applying"}[version]
		report(t, c, cctx, iotdevice.TwinState{"firmwareVersion": version, "firmware": map[string]any{"status": status}})
		plan[id] = map[string]any{"ring": "lab"}
	}
	require.NoError(t, fleet.ApplyTags(ctx, h.svc.Client, plan, 1, testlog.Logger(t)))

	query := func(t *testing.T, in QueryDevicesInput) (QueryDevicesResult, error) {
		t.Helper()
		res, _, err := queryOn(t, &Activities{Hub: h.svc}, in)
		return res, err
	}

	t.Run("every device, one page", func(t *testing.T) {
		res, err := query(t, QueryDevicesInput{Query: "SELECT * FROM devices"})
		require.NoError(t, err)
		want := append(fleetIDs(func(int) bool { return true }), "qr-1", "qr-2")
		assert.Equal(t, want, ids(res.Devices))
		assert.Equal(t, 1, res.Pages, "252 twins in a page of 1,000, not three of the hub's default 100")
	})

	t.Run("tags with IN, AND and NOT", func(t *testing.T) {
		res, err := query(t, QueryDevicesInput{
			Query: "SELECT * FROM devices WHERE tags.ring IN ['canary', 'beta'] AND NOT tags.site = 'oslo'",
		})
		require.NoError(t, err)
		want := fleetIDs(func(i int) bool { return (ring(i) == "canary" || ring(i) == "beta") && site(i) != "oslo" })
		require.NotEmpty(t, want)
		assert.Equal(t, want, ids(res.Devices))
		assert.Equal(t, 1, res.Pages)
	})

	t.Run("lower-case keywords", func(t *testing.T) {
		res, err := query(t, QueryDevicesInput{Query: "select * from devices where tags.ring = 'prod'"})
		require.NoError(t, err)
		want := fleetIDs(func(i int) bool { return ring(i) == "prod" })
		require.Len(t, want, 150)
		assert.Equal(t, want, ids(res.Devices))
		assert.Equal(t, 1, res.Pages)
	})

	t.Run("reported properties", func(t *testing.T) {
		res, err := query(t, QueryDevicesInput{
			Query:      "SELECT * FROM devices WHERE tags.ring = 'lab' OR deviceId = 'q-000'",
			Properties: []string{"firmwareVersion", "firmware.status", "firmware.missing"},
		})
		require.NoError(t, err)
		assert.Equal(t, []QueriedDevice{
			{DeviceID: "q-000"},
			{DeviceID: "qr-1", Reported: map[string]any{"firmwareVersion": "1.0.0", "firmware.status": "standBy"}},
			{DeviceID: "qr-2", Reported: map[string]any{"firmwareVersion": "2.0.0", "firmware.status": "applying"}},
		}, res.Devices)

		res, err = query(t, QueryDevicesInput{Query: "SELECT * FROM devices WHERE properties.reported.firmwareVersion = '2.0.0'"})
		require.NoError(t, err)
		assert.Equal(t, []string{"qr-2"}, ids(res.Devices))
	})

	t.Run("syntax error", func(t *testing.T) {
		_, err := query(t, QueryDevicesInput{Query: "SELECT * FROM devices WHERE tags.ring = beta'"})
		requireNonRetryable(t, err, ErrBadRequest)
		for _, s := range []string{"HTTP 400", "ArgumentInvalid", "syntax error at line 1, column 45", "unterminated string"} {
			assert.Contains(t, err.Error(), s)
		}
	})

	t.Run("more than max devices", func(t *testing.T) {
		_, err := query(t, QueryDevicesInput{Query: "SELECT * FROM devices WHERE NOT tags.ring = 'lab'", MaxDevices: 120})
		requireNonRetryable(t, err, ErrTooManyDevices)
		for _, s := range []string{"more than 120 devices", "250 seen in 1 page when", "split the rollout"} {
			assert.Contains(t, err.Error(), s)
		}
	})

	t.Run("rate", func(t *testing.T) {
		// The worker's own pacer, on a ledger of its own: the page waits for its share of the
		// hub's query budget and of the rollout's ceiling.
		leaser := budget.New(budget.Config{Worker: "t", Budget: map[string]float64{opQueries: 5}})
		defer leaser.Close()
		a := &Activities{Hub: h.svc, Pacer: leaser}
		res, _, err := queryOn(t, a, QueryDevicesInput{
			Query: "SELECT * FROM devices WHERE tags.site = 'oslo'",
			Rate:  &HubRate{Key: "rollout/oslo", PerSecond: 10},
		})
		require.NoError(t, err)
		assert.Len(t, res.Devices, queryFleetSize/2)
		assert.Equal(t, 1, res.Pages)
	})
}

func TestThrottledLocalhub(t *testing.T) {
	// A hub with one query a minute and one twin read a second, which refuses at once what it
	// cannot serve (no traffic shaping to hide the 429s).
	h := startLocalhub(t, func(o *hub.Options) {
		o.Quotas = map[hubquota.Op]float64{hubquota.Queries: 1.0 / 60, hubquota.TwinReads: 1}
		o.MaxQueueDelay = time.Millisecond
	})
	const id = "dev-throttled"
	c, ctx := h.connectRawDevice(t, id)
	report(t, c, ctx, iotdevice.TwinState{"firmwareVersion": "1.0.0"})

	t.Run("query", func(t *testing.T) {
		res, _, err := queryOn(t, &Activities{Hub: h.svc}, QueryDevicesInput{Query: "SELECT * FROM devices"})
		require.NoError(t, err)
		assert.Equal(t, []string{id}, ids(res.Devices))

		_, _, err = queryOn(t, &Activities{Hub: h.svc}, QueryDevicesInput{Query: "SELECT * FROM devices"})
		requireRetryable(t, err)
		for _, s := range []string{"HTTP 429", "429001", "ThrottlingException"} {
			assert.Contains(t, err.Error(), s)
		}
		assert.Positive(t, h.Stats().Throttled[string(hubquota.Queries)])

		// A page alone meets the same throttle, and is as retryable.
		before := h.Stats().Throttled[string(hubquota.Queries)]
		_, err = queryPageOn(t, &Activities{Hub: h.svc}, QueryDevicesPageInput{Query: "SELECT * FROM devices"})
		requireRetryable(t, err)
		for _, s := range []string{"HTTP 429", "429001", "ThrottlingException"} {
			assert.Contains(t, err.Error(), s)
		}
		assert.Equal(t, before+1, h.Stats().Throttled[string(hubquota.Queries)])
	})

	t.Run("poll", func(t *testing.T) {
		// Empty the twin-read bucket, then wait: the first reads are refused with 429, and the
		// poll reads on until the hub lets one through.
		drained := false
		for range 5 {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := h.svc.GetDeviceTwin(rctx, id)
			cancel()
			if err != nil {
				require.True(t, isThrottled(err), "want 429, got %v", err)
				drained = true
				break
			}
		}
		require.True(t, drained, "the hub throttles twin reads")
		before := h.Stats().Throttled[string(hubquota.TwinReads)]

		res, err := waitOn(t, h.svc, WaitForReportedInput{
			DeviceID:        id,
			Property:        "firmwareVersion",
			Deadline:        time.Now().Add(20 * time.Second),
			InitialInterval: 20 * time.Millisecond,
			MaxInterval:     100 * time.Millisecond,
		})
		require.NoError(t, err)
		assert.Equal(t, "1.0.0", res.Value)
		assert.GreaterOrEqual(t, res.Polls, 2, "throttled reads count as polls")
		assert.Greater(t, h.Stats().Throttled[string(hubquota.TwinReads)], before, "the poll met the throttle")
	})
}

func isThrottled(err error) bool {
	he, ok := parseHubError(err)
	return ok && he.status == 429
}
