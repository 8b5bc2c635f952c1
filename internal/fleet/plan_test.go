package fleet

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/protocol"
)

func TestDeviceID(t *testing.T) {
	for _, tc := range []struct {
		prefix       string
		index, count int
		want         string
	}{
		{"dev-", 1, 5, "dev-001"},
		{"dev-", 42, 999, "dev-042"},
		{"dev-", 7, 1000, "dev-0007"},
		{"dev-", 10000, 10000, "dev-10000"},
		{"x", 3, 100000, "x000003"},
	} {
		assert.Equal(t, tc.want, DeviceID(tc.prefix, tc.index, tc.count))
	}
}

func counts(members []Member) map[Profile]int {
	out := map[Profile]int{}
	for _, m := range members {
		out[m.Profile]++
	}
	return out
}

func TestPlan(t *testing.T) {
	faults := Faults{Offline: 0.1, Flapping: 0.05, Slow: 0.2, Failing: 0.15, Unresponsive: 0.02}
	require.NoError(t, faults.fill())
	for _, tc := range []struct {
		name   string
		count  int
		seed   int64
		faults Faults
		want   map[Profile]int
	}{
		{"all healthy", 10, 1, Faults{}, map[Profile]int{Healthy: 10}},
		{"mixed 100", 100, 1, faults, map[Profile]int{Offline: 10, Flapping: 5, Slow: 20, Failing: 15, Unresponsive: 2, Healthy: 48}},
		{"mixed 1000 other seed", 1000, 99, faults, map[Profile]int{Offline: 100, Flapping: 50, Slow: 200, Failing: 150, Unresponsive: 20, Healthy: 480}},
		{"rounding", 3, 1, Faults{Offline: 0.5, Failing: 0.5}, map[Profile]int{Offline: 2, Failing: 1}},
		{"everything offline", 4, 1, Faults{Offline: 1}, map[Profile]int{Offline: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := Plan("dev-", tc.count, tc.seed, tc.faults)
			require.Len(t, a, tc.count)
			got := counts(a)
			for p, n := range tc.want {
				assert.Equal(t, n, got[p], "%s", p)
			}
			assert.Equal(t, tc.count, func() int {
				n := 0
				for _, c := range got {
					n += c
				}
				return n
			}())
			for i, m := range a {
				assert.Equal(t, DeviceID("dev-", i+1, tc.count), m.ID)
				if m.Profile == Failing {
					assert.Contains(t, []string{protocol.StatusDownloading, protocol.StatusApplying}, m.FailStage)
				} else {
					assert.Empty(t, m.FailStage)
				}
			}
			assert.Equal(t, a, Plan("dev-", tc.count, tc.seed, tc.faults), "the same seed gives the same plan")
		})
	}

	// Another seed picks other devices; failing devices fail in both stages.
	a, b := Plan("dev-", 1000, 1, faults), Plan("dev-", 1000, 2, faults)
	assert.NotEqual(t, a, b)
	stages := map[string]int{}
	for _, m := range a {
		stages[m.FailStage]++
	}
	assert.Positive(t, stages[protocol.StatusDownloading])
	assert.Positive(t, stages[protocol.StatusApplying])
}

// A pinned plan: changing the assignment algorithm changes which devices
// a seed makes faulty, so it has to be a conscious change.
func TestPlanPinned(t *testing.T) {
	faults := Faults{Offline: 0.2, Failing: 0.2, Unresponsive: 0.2}
	require.NoError(t, faults.fill())
	want := []Member{
		{"dev-001", Healthy, ""},
		{"dev-002", Unresponsive, ""},
		{"dev-003", Healthy, ""},
		{"dev-004", Offline, ""},
		{"dev-005", Offline, ""},
		{"dev-006", Unresponsive, ""},
		{"dev-007", Failing, protocol.StatusDownloading},
		{"dev-008", Healthy, ""},
		{"dev-009", Failing, protocol.StatusApplying},
		{"dev-010", Healthy, ""},
	}
	assert.Equal(t, want, Plan("dev-", 10, 42, faults))
}

func TestNewValidation(t *testing.T) {
	svc, err := hubconn.ParseService("test", "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0")
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		cfg  func(*Config)
		want string
	}{
		{"zero count", func(c *Config) { c.Count = 0 }, "count 0 is out of range"},
		{"too many", func(c *Config) { c.Count = MaxCount + 1 }, "out of range"},
		{"bad prefix", func(c *Config) { c.Prefix = "dev/" }, `prefix "dev/"`},
		{"fractions over 1", func(c *Config) { c.Faults = Faults{Offline: 0.6, Failing: 0.6} }, "add up to 1.2"},
		{"negative fraction", func(c *Config) { c.Faults = Faults{Slow: -0.1} }, "slow -0.1 is not between 0 and 1"},
		{"NaN fraction", func(c *Config) { c.Faults = Faults{Flapping: math.NaN()} }, "flapping"},
		{"slow factor below 1", func(c *Config) { c.Faults = Faults{SlowFactor: 0.5} }, "slow factor 0.5"},
		{"negative flap interval", func(c *Config) { c.Faults = Faults{FlapInterval: -time.Second} }, "flap interval"},
		{"no service", func(c *Config) { c.Service = hubconn.Service{} }, "hubconn.ParseService"},
		{"bad style", func(c *Config) { c.RebootStyle = "fast" }, "reboot style"},
		{"negative summary", func(c *Config) { c.SummaryInterval = -time.Second }, "summary interval"},
		{"missing CA file", func(c *Config) { c.CAFile = "/nonexistent/ca.pem" }, "CA file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Count: 10, Service: svc}
			tc.cfg(&cfg)
			_, err := New(cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	f, err := New(Config{Count: 12, Service: svc, Faults: Faults{Failing: 0.5}})
	require.NoError(t, err)
	assert.Equal(t, DefaultSlowFactor, f.cfg.Faults.SlowFactor)
	assert.Equal(t, DefaultFlapInterval, f.cfg.Faults.FlapInterval)
	assert.Equal(t, DefaultConnectConcurrency, f.cfg.ConnectConcurrency)
	assert.Equal(t, 6, counts(f.Members())[Failing])
	assert.Nil(t, f.Device("dev-001"), "nothing runs before Run")
}
