package activities

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
)

func TestFleetCondition(t *testing.T) {
	tests := []struct {
		query, want string
	}{
		{"", ""},
		{"   ", ""},
		{"tags.ring = 'beta'", "tags.ring = 'beta'"},
		{"  tags.ring = 'beta'\n", "tags.ring = 'beta'"},
		{"WHERE tags.ring = 'beta'", "tags.ring = 'beta'"},
		{"where\ttags.ring = 'beta'", "tags.ring = 'beta'"},
		{"SELECT * FROM devices WHERE tags.ring = 'beta'", "tags.ring = 'beta'"},
		{"select * from devices where (tags.ring = 'beta' OR tags.ring = 'prod') AND NOT IS_DEFINED(tags.hold)", "(tags.ring = 'beta' OR tags.ring = 'prod') AND NOT IS_DEFINED(tags.hold)"},
		{"SELECT * FROM devices", ""},
		// Words that look like keywords inside strings and paths are the condition's own.
		{"tags.note = 'group by ring' AND tags.groupBy = 'x'", "tags.note = 'group by ring' AND tags.groupBy = 'x'"},
		{`tags.s = "it\"s (" AND tags.t = 'a\'b'`, `tags.s = "it\"s (" AND tags.t = 'a\'b'`},
		{"whereabouts = 'x'", "whereabouts = 'x'"},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			got, err := FleetCondition(tc.query)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestFleetConditionRefusals(t *testing.T) {
	tests := []struct {
		query string
		want  []string // what the message must say: the problem and its fix
	}{
		{"SELECT COUNT() AS n FROM devices", []string{"not of the form SELECT * FROM devices", "e.g. tags.ring = 'beta'"}},
		{"SELECT deviceId FROM devices WHERE tags.ring = 'beta'", []string{"not of the form SELECT * FROM devices"}},
		{"SELECT * FROM devices.modules", []string{"not of the form SELECT * FROM devices"}},
		{"WHERE", []string{"has WHERE but no condition", "no query to count every device"}},
		{"WHERE   ", []string{"has WHERE but no condition"}},
		{"tags.ring = 'beta' GROUP BY tags.ring", []string{"has GROUP BY", "groups by properties.reported.firmwareVersion itself", "give only the condition"}},
		{"SELECT * FROM devices WHERE a = 1 group\nby a", []string{"has GROUP BY"}},
		{"tags.ring = 'beta", []string{"the string at character 13 is not closed", "end it with '"}},
		{`tags.ring = "beta\"`, []string{"the string at character 13 is not closed", `end it with "`}},
		{"(tags.ring = 'beta'", []string{"opens 1 ( more than it closes", "close them"}},
		{"tags.ring = 'beta')", []string{"the ) at character 19 closes no (", "remove it"}},
		{"tags.a = '" + strings.Repeat("x", maxQueryLen) + "'", []string{"IoT Hub accepts at most 8192", "shorten the condition"}},
	}
	for _, tc := range tests {
		t.Run(shorten(tc.query, 60), func(t *testing.T) {
			_, err := FleetCondition(tc.query)
			require.Error(t, err)
			assert.NotContains(t, err.Error(), "\n", "one line")
			for _, s := range tc.want {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

func FuzzFleetCondition(f *testing.F) {
	for _, s := range []string{"", "tags.ring = 'beta'", "WHERE a = 1", "SELECT * FROM devices WHERE (a = \"x\\\"\")", "a = 1 GROUP BY b", "((a", "select count() from devices"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cond, err := FleetCondition(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") && !strings.Contains(s, "\n") {
				t.Fatalf("FleetCondition(%q): message of several lines: %v", s, err)
			}
			return
		}
		// A condition read is read the same again, and makes a query the hub takes by length.
		again, err := FleetCondition(cond)
		if err != nil || again != cond {
			t.Fatalf("FleetCondition(%q) = %q, which reads back as %q, %v", s, cond, again, err)
		}
		if len(VersionsQuery(cond)) > maxQueryLen {
			t.Fatalf("FleetCondition(%q) makes a query of %d characters", s, len(VersionsQuery(cond)))
		}
	})
}

func TestVersionsQuery(t *testing.T) {
	assert.Equal(t, "SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices GROUP BY properties.reported.firmwareVersion", VersionsQuery(""))
	assert.Equal(t, "SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices WHERE tags.ring = 'beta' GROUP BY properties.reported.firmwareVersion", VersionsQuery("tags.ring = 'beta'"))
}

func TestSortVersions(t *testing.T) {
	vs := []VersionCount{
		{"1.10.0", 2}, {"1.9.0", 2}, {"2.0.0", 5}, {"1.9.0-rc1", 2}, {"01.9.0", 2}, {"a", 2}, {"10", 1}, {"9", 1}, {"", 1},
	}
	SortVersions(vs)
	var got []string
	for _, v := range vs {
		got = append(got, v.Version)
	}
	assert.Equal(t, []string{"2.0.0", "01.9.0", "1.9.0", "1.9.0-rc1", "1.10.0", "a", "", "9", "10"}, got,
		"by devices descending, then numbers in versions compared as numbers")
}

func countOn(t *testing.T, a *Activities, in CountVersionsInput) (VersionCounts, *heartbeatRecorder, error) {
	t.Helper()
	env, rec := newEnv(t, a)
	val, err := env.ExecuteActivity((&Activities{}).CountVersions, in)
	var res VersionCounts
	if err == nil {
		require.NoError(t, val.Get(&res))
	}
	return res, rec, err
}

func TestCountVersionsPages(t *testing.T) {
	hub := &fakeHub{page: pagedQuery(
		// The devices without a version: a row without v, as IoT Hub sends it.
		[]map[string]any{{"n": 4}, {"n": 3, "v": "1.9.0"}, {"n": 6, "v": "2.1.0"}},
		// 2.1.0 again on a later page is added up; a number is written as JSON; null is none.
		[]map[string]any{{"n": 1, "v": "2.1.0"}, {"n": 2, "v": 2}, {"n": 1, "v": nil}, {"n": 3, "v": "1.10.0"}},
	)}
	res, rec, err := countOn(t, &Activities{Hub: hub}, CountVersionsInput{Condition: "WHERE tags.ring = 'beta'"})
	require.NoError(t, err)
	const q = "SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices WHERE tags.ring = 'beta' GROUP BY properties.reported.firmwareVersion"
	assert.Equal(t, VersionCounts{
		Query:    q,
		Versions: []VersionCount{{"2.1.0", 7}, {"1.9.0", 3}, {"1.10.0", 3}, {"2", 2}},
		None:     5, Total: 20, Pages: 2,
	}, res)
	assert.Equal(t, []queryRequest{{q, 1000, ""}, {q, 1000, "p1"}}, hub.queries, "pages of 1,000 groups, each from the token of the one before")

	var progress []any
	for _, d := range rec.recorded() {
		require.Len(t, d, 1)
		progress = append(progress, d[0])
	}
	assert.Equal(t, []any{
		CountVersionsProgress{Pages: 1, Versions: 2, Devices: 13},
		CountVersionsProgress{Pages: 2, Versions: 4, Devices: 20},
	}, progress, "a heartbeat after every page")

	// An empty fleet: no rows at all.
	hub = &fakeHub{page: pagedQuery([]map[string]any{})}
	res, _, err = countOn(t, &Activities{Hub: hub}, CountVersionsInput{})
	require.NoError(t, err)
	assert.Equal(t, VersionCounts{Query: VersionsQuery(""), Versions: []VersionCount{}, Pages: 1}, res)
}

func TestCountVersionsBadRows(t *testing.T) {
	for name, row := range map[string]map[string]any{
		"no count":       {"v": "1.0.0"},
		"count a string": {"v": "1.0.0", "n": "3"},
		"negative count": {"n": -1},
		"fraction":       {"n": 1.5},
	} {
		t.Run(name, func(t *testing.T) {
			hub := &fakeHub{page: pagedQuery([]map[string]any{{"n": 1, "v": "2.0.0"}, row})}
			_, _, err := countOn(t, &Activities{Hub: hub}, CountVersionsInput{})
			requireRetryable(t, err)
			assert.Contains(t, err.Error(), "row 2 of page 1")
		})
	}
}

func TestCountVersionsErrors(t *testing.T) {
	// Throttled: retried.
	hub := &fakeHub{page: func(context.Context, string, int, string) (hubconn.TwinPage, error) {
		return hubconn.TwinPage{}, hubErr(429, 429001, "ThrottlingException")
	}}
	_, _, err := countOn(t, &Activities{Hub: hub}, CountVersionsInput{})
	requireRetryable(t, err)
	assert.Contains(t, err.Error(), "HTTP 429")

	// The hub refuses the condition: final, with where and why.
	hub = &fakeHub{page: func(context.Context, string, int, string) (hubconn.TwinPage, error) {
		return hubconn.TwinPage{}, hubErr(400, 400004, "ArgumentInvalid")
	}}
	_, _, err = countOn(t, &Activities{Hub: hub}, CountVersionsInput{Condition: "tags.ring == 'beta'"})
	requireNonRetryable(t, err, ErrBadRequest)
	assert.Contains(t, err.Error(), "HTTP 400")
	assert.Contains(t, err.Error(), "(the condition starts at line 1, column 82 of the query)")
	// Without a condition there is none to place.
	_, _, err = countOn(t, &Activities{Hub: hub}, CountVersionsInput{})
	requireNonRetryable(t, err, ErrBadRequest)
	assert.NotContains(t, err.Error(), "the condition starts")

	// A condition refused before any call.
	hub = &fakeHub{}
	_, _, err = countOn(t, &Activities{Hub: hub}, CountVersionsInput{Condition: "tags.ring = 'beta' GROUP BY tags.ring"})
	requireNonRetryable(t, err, ErrBadRequest)
	assert.Contains(t, err.Error(), "has GROUP BY")
	_, _, err = countOn(t, &Activities{Hub: hub}, CountVersionsInput{Rate: &HubRate{PerSecond: 1}})
	requireNonRetryable(t, err, ErrBadRequest)
	assert.Contains(t, err.Error(), "key is empty")
	assert.Zero(t, hub.queryCount())
}

func TestCountVersionsDrawsTokens(t *testing.T) {
	pages := [][]map[string]any{{{"n": 1, "v": "1.0.0"}}, {{"n": 2, "v": "2.0.0"}}, {{"n": 3}}}

	// A token of the hub's query budget per page, before the page: with two to give, the third
	// page fails retryably without a request.
	hub := &fakeHub{page: pagedQuery(pages...)}
	p := &countingPacer{budgeted: map[string]bool{opQueries: true}, allow: map[string]int{opQueries: 2}}
	_, _, err := countOn(t, &Activities{Hub: hub, Pacer: p}, CountVersionsInput{})
	requireRetryable(t, err)
	assert.Contains(t, err.Error(), "hub budget "+opQueries)
	assert.Equal(t, 2, hub.queryCount())

	// Enough tokens: one per page, of the budget and of the rate given.
	hub = &fakeHub{page: pagedQuery(pages...)}
	p = &countingPacer{budgeted: map[string]bool{opQueries: true}}
	res, _, err := countOn(t, &Activities{Hub: hub, Pacer: p}, CountVersionsInput{Rate: slowRate(p, "fleet-versions/x", 10)})
	require.NoError(t, err)
	assert.Equal(t, 3, res.Pages)
	assert.Equal(t, 3, p.count(opQueries))
	assertDrawn(t, p, "fleet-versions/x", 3)
}
