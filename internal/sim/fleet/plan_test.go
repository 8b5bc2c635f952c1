package fleet

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/device"
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
		{"dev-001", Healthy, "", device.ContractDmflow, ""},
		{"dev-002", Unresponsive, "", device.ContractDmflow, ""},
		{"dev-003", Healthy, "", device.ContractDmflow, ""},
		{"dev-004", Offline, "", device.ContractDmflow, ""},
		{"dev-005", Offline, "", device.ContractDmflow, ""},
		{"dev-006", Unresponsive, "", device.ContractDmflow, ""},
		{"dev-007", Failing, protocol.StatusDownloading, device.ContractDmflow, ""},
		{"dev-008", Healthy, "", device.ContractDmflow, ""},
		{"dev-009", Failing, protocol.StatusApplying, device.ContractDmflow, ""},
		{"dev-010", Healthy, "", device.ContractDmflow, ""},
	}
	assert.Equal(t, want, Plan("dev-", 10, 42, faults))
}

// The tutorial share is drawn after the profiles, from the same seed.
func TestPlanTutorial(t *testing.T) {
	faults := Faults{Offline: 0.1, Flapping: 0.1, Slow: 0.1, Failing: 0.2, Unresponsive: 0.1}
	require.NoError(t, faults.fill())
	for _, tc := range []struct {
		name          string
		count         int
		share         float64
		tutorial, str int
	}{
		{"none", 100, 0, 0, 0},
		{"half", 100, 0.5, 50, 25},
		{"rounding", 7, 0.5, 4, 2},
		{"one", 10, 0.1, 1, 0},
		{"all not failing", 1000, 0.8, 800, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withShare := faults
			withShare.Tutorial = tc.share
			require.NoError(t, withShare.fill())
			a := Plan("dev-", tc.count, 5, withShare)
			without := Plan("dev-", tc.count, 5, faults)
			tutorial, str := 0, 0
			for i, m := range a {
				assert.Equal(t, without[i].Profile, m.Profile, "%s: the share leaves the profiles as they are", m.ID)
				assert.Equal(t, without[i].FailStage, m.FailStage, m.ID)
				switch m.Contract {
				case device.ContractTutorial:
					tutorial++
					assert.NotEqual(t, Failing, m.Profile, "%s: a tutorial device has no error state", m.ID)
					assert.Contains(t, []string{device.AnswerObject, device.AnswerString}, m.Answer, m.ID)
					if m.Answer == device.AnswerString {
						str++
					}
				case device.ContractDmflow:
					assert.Empty(t, m.Answer, m.ID)
				default:
					t.Errorf("%s: contract %q", m.ID, m.Contract)
				}
			}
			assert.Equal(t, tc.tutorial, tutorial)
			assert.Equal(t, tc.str, str, "half of the tutorial devices, rounded down, answer a string")
			assert.Equal(t, a, Plan("dev-", tc.count, 5, withShare), "the same seed gives the same plan")
		})
	}

	// Other seeds pick other devices; tutorial devices keep other profiles.
	f := Faults{Slow: 0.3, Unresponsive: 0.2, Tutorial: 0.5}
	require.NoError(t, f.fill())
	a, b := Plan("dev-", 200, 1, f), Plan("dev-", 200, 2, f)
	assert.NotEqual(t, a, b)
	profiles := map[Profile]int{}
	for _, m := range a {
		if m.Contract == device.ContractTutorial {
			profiles[m.Profile]++
		}
	}
	assert.Positive(t, profiles[Healthy])
	assert.Positive(t, profiles[Slow])
	assert.Positive(t, profiles[Unresponsive])

	// A failing share caps the tutorial share: rounding can leave fewer
	// candidates than round(share × count).
	f = Faults{Failing: 0.5, Tutorial: 0.5}
	require.NoError(t, f.fill())
	n := 0
	for _, m := range Plan("dev-", 3, 1, f) {
		if m.Contract == device.ContractTutorial {
			n++
			assert.NotEqual(t, Failing, m.Profile)
		}
	}
	assert.Equal(t, 1, n, "round(1.5) failing leaves one device")
}

// A pinned contract assignment, like TestPlanPinned.
func TestPlanTutorialPinned(t *testing.T) {
	faults := Faults{Offline: 0.2, Failing: 0.2, Unresponsive: 0.2, Tutorial: 0.5}
	require.NoError(t, faults.fill())
	tut := device.ContractTutorial
	want := []Member{
		{"dev-001", Healthy, "", tut, device.AnswerObject},
		{"dev-002", Unresponsive, "", tut, device.AnswerObject},
		{"dev-003", Healthy, "", tut, device.AnswerObject},
		{"dev-004", Offline, "", device.ContractDmflow, ""},
		{"dev-005", Offline, "", tut, device.AnswerString},
		{"dev-006", Unresponsive, "", device.ContractDmflow, ""},
		{"dev-007", Failing, protocol.StatusDownloading, device.ContractDmflow, ""},
		{"dev-008", Healthy, "", device.ContractDmflow, ""},
		{"dev-009", Failing, protocol.StatusApplying, device.ContractDmflow, ""},
		{"dev-010", Healthy, "", tut, device.AnswerString},
	}
	assert.Equal(t, want, Plan("dev-", 10, 42, faults))
}

func TestParseShare(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
		err  string
	}{
		{"0", 0, ""},
		{"0.5", 0.5, ""},
		{"1", 1, ""},
		{"50%", 0.5, ""},
		{" 12.5 % ", 0.125, ""},
		{"100%", 1, ""},
		{"0%", 0, ""},
		{"50", 0, "not between 0 and 1"},
		{"101%", 0, "not between 0% and 100%"},
		{"-0.1", 0, "not between"},
		{"half", 0, "is not a share"},
		{"", 0, "is not a share"},
		{"%", 0, "is not a share"},
		{"NaN", 0, "is not a share"},
		{"Inf%", 0, "is not a share"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseShare(tc.in)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				assert.Contains(t, err.Error(), "50%")
				return
			}
			require.NoError(t, err)
			assert.InDelta(t, tc.want, got, 1e-12)
		})
	}
}

func FuzzParseShare(f *testing.F) {
	for _, s := range []string{"0.5", "50%", "1", "abc", "1e2%", "-0%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseShare(s)
		if err == nil && !(v >= 0 && v <= 1) {
			t.Fatalf("ParseShare(%q) = %v, outside 0..1", s, v)
		}
	})
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
		{"tutorial share over 1", func(c *Config) { c.Faults = Faults{Tutorial: 1.5} }, "tutorial share 1.5 is not between 0 and 1"},
		{"NaN tutorial share", func(c *Config) { c.Faults = Faults{Tutorial: math.NaN()} }, "tutorial share"},
		{"tutorial and failing", func(c *Config) { c.Faults = Faults{Failing: 0.6, Tutorial: 0.5} }, "no error state"},
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
