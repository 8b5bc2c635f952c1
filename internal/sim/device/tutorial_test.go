package device

import (
	"os"
	"strconv"
	"testing"
	"time"
	// Zone data in the test binary, so a child process with TZ set (see
	// TestTutorialTimesAreLocal) finds its zone on any machine.
	_ "time/tzdata"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/protocol"
)

func TestNewContract(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     func(c *Config)
		check   func(t *testing.T, d *Device)
		wantErr []string
	}{
		{name: "default dmflow", cfg: func(*Config) {}, check: func(t *testing.T, d *Device) {
			assert.Equal(t, ContractDmflow, d.cfg.Contract)
			assert.Equal(t, AnswerObject, d.cfg.Answer)
			assert.False(t, d.tutorial())
		}},
		{name: "tutorial", cfg: func(c *Config) { c.Contract = ContractTutorial }, check: func(t *testing.T, d *Device) {
			assert.True(t, d.tutorial())
			assert.Equal(t, AnswerObject, d.cfg.Answer)
			assert.Equal(t, StyleTutorial, d.cfg.RebootStyle)
		}},
		{name: "tutorial string", cfg: func(c *Config) { c.Contract, c.Answer = ContractTutorial, AnswerString },
			check: func(t *testing.T, d *Device) { assert.Equal(t, AnswerString, d.cfg.Answer) }},
		{name: "tutorial unresponsive and flapping", cfg: func(c *Config) {
			c.Contract, c.Unresponsive, c.FlapInterval = ContractTutorial, true, time.Second
		}, check: func(t *testing.T, d *Device) { assert.True(t, d.cfg.Unresponsive) }},
		{name: "unknown contract", cfg: func(c *Config) { c.Contract = "azure" }, wantErr: []string{`contract "azure"`, "dmflow|tutorial"}},
		{name: "unknown answer", cfg: func(c *Config) { c.Contract, c.Answer = ContractTutorial, "text" }, wantErr: []string{`answer form "text"`, "object|string"}},
		{name: "string answer on dmflow", cfg: func(c *Config) { c.Answer = AnswerString }, wantErr: []string{"needs the tutorial contract"}},
		{name: "tutorial realistic", cfg: func(c *Config) { c.Contract, c.RebootStyle = ContractTutorial, StyleRealistic },
			wantErr: []string{`reboot style "realistic"`, "tutorial contract"}},
		{name: "tutorial failing", cfg: func(c *Config) { c.Contract, c.FailStage = ContractTutorial, protocol.StatusApplying },
			wantErr: []string{`fail stage "applying"`, "no error state"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{ConnectionString: testConn(t)}
			tc.cfg(&cfg)
			d, err := New(cfg)
			if tc.wantErr != nil {
				require.Error(t, err)
				for _, w := range tc.wantErr {
					assert.ErrorContains(t, err, w)
				}
				return
			}
			require.NoError(t, err)
			tc.check(t, d)
		})
	}
}

// envTestZoneOffset, in a child process of TestTutorialTimesAreLocal, is
// the offset in seconds east of UTC of the TZ it runs in.
const envTestZoneOffset = "DMFLOW_TEST_ZONE_OFFSET"

// testZone returns the zone offset a child process of
// TestTutorialTimesAreLocal runs in, after checking that TZ took effect;
// ok is false in an ordinary run.
func testZone(t *testing.T) (offset int, ok bool) {
	t.Helper()
	s := os.Getenv(envTestZoneOffset)
	if s == "" {
		return 0, false
	}
	want, err := strconv.Atoi(s)
	require.NoError(t, err)
	_, got := time.Now().Zone()
	require.Equal(t, want, got, "TZ=%s did not set the local zone", os.Getenv("TZ"))
	return want, true
}

func TestPythonTime(t *testing.T) {
	for _, tc := range []struct {
		at   time.Time
		want string
	}{
		{time.Date(2026, 12, 6, 18, 34, 8, 808000000, time.Local), "2026-12-06 18:34:08.808000"},
		{time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.Local), "2026-01-02 03:04:05.123456"},
		{time.Date(2026, 1, 2, 3, 4, 5, 999, time.Local), "2026-01-02 03:04:05"}, // Python leaves out zero microseconds
		{time.Date(2026, 1, 2, 3, 4, 5, 1000, time.Local), "2026-01-02 03:04:05.000001"},
	} {
		assert.Equal(t, tc.want, PythonTime(tc.at))
	}
	if off, ok := testZone(t); ok && off != 0 {
		// An instant given in UTC is printed in the local zone.
		at := time.Date(2026, 12, 6, 13, 4, 8, 808000000, time.UTC)
		assert.Equal(t, at.Add(time.Duration(off)*time.Second).Format(PythonTimeFormat), PythonTime(at))
		assert.NotEqual(t, at.Format(PythonTimeFormat), PythonTime(at))
	}
}
