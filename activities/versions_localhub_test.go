package activities

import (
	"context"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/budget"
	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/sim/fleet"
	"github.com/dmflow/dmflow/internal/testlog"
)

// CountVersions against a real localhub through the worker's service client: devices that report
// versions themselves (the plain amenzhinsky device client), tagged devices that report none.
func TestCountVersionsOnLocalhub(t *testing.T) {
	h := startLocalhub(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	versions := map[string]string{"v-1": "2.1.0", "v-2": "2.1.0", "v-3": "2.1.0", "v-4": "1.9.0", "v-5": "1.10.0"}
	for id, v := range versions {
		c, cctx := h.connectRawDevice(t, id)
		report(t, c, cctx, iotdevice.TwinState{"firmwareVersion": v})
	}
	// Devices built from the tutorials report no firmwareVersion.
	quiet := []string{"t-1", "t-2"}
	_, err := fleet.Register(ctx, h.svc.Client, quiet, 1, testlog.Logger(t))
	require.NoError(t, err)
	plan := map[string]map[string]any{"v-1": {"ring": "beta"}, "v-4": {"ring": "beta"}, "t-1": {"ring": "beta"}}
	require.NoError(t, fleet.ApplyTags(ctx, h.svc.Client, plan, 1, testlog.Logger(t)))

	// The worker's own pacer: the count waits for its token of the hub's query budget.
	leaser := budget.New(budget.Config{Worker: "t", Budget: map[string]float64{opQueries: 5}})
	defer leaser.Close()
	a := &Activities{Hub: MeteredHub(h.svc), Pacer: leaser}

	t.Run("every device", func(t *testing.T) {
		before := h.Stats().PerSecond[string(hubquota.Queries)].Total
		res, _, err := countOn(t, a, CountVersionsInput{})
		require.NoError(t, err)
		assert.Equal(t, []VersionCount{{"2.1.0", 3}, {"1.9.0", 1}, {"1.10.0", 1}}, res.Versions)
		assert.Equal(t, 2, res.None)
		assert.Equal(t, 7, res.Total)
		assert.Equal(t, 1, res.Pages)
		assert.Equal(t, before+1, h.Stats().PerSecond[string(hubquota.Queries)].Total, "one query of the hub's quota")
	})

	t.Run("a ring, given as a whole query", func(t *testing.T) {
		res, _, err := countOn(t, a, CountVersionsInput{Condition: "SELECT * FROM devices WHERE tags.ring = 'beta'"})
		require.NoError(t, err)
		assert.Equal(t, []VersionCount{{"1.9.0", 1}, {"2.1.0", 1}}, res.Versions)
		assert.Equal(t, 1, res.None)
		assert.Equal(t, 3, res.Total)
		assert.Contains(t, res.Query, "WHERE tags.ring = 'beta' GROUP BY")
	})

	t.Run("no device matches", func(t *testing.T) {
		res, _, err := countOn(t, a, CountVersionsInput{Condition: "tags.ring = 'none'"})
		require.NoError(t, err)
		assert.Equal(t, VersionCounts{Query: res.Query, Versions: []VersionCount{}, Pages: 1}, res)
	})

	t.Run("a condition the hub refuses", func(t *testing.T) {
		_, _, err := countOn(t, a, CountVersionsInput{Condition: "tags.ring == 'beta'"})
		requireNonRetryable(t, err, ErrBadRequest)
		// The second = of the condition, which starts at column 82.
		for _, s := range []string{"HTTP 400", "ArgumentInvalid", "syntax error at line 1, column 93", "expected a value", "the condition starts at line 1, column 82"} {
			assert.Contains(t, err.Error(), s)
		}
	})
}
