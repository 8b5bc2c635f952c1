package activities

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
)

func queryOn(t *testing.T, a *Activities, in QueryDevicesInput) (QueryDevicesResult, *heartbeatRecorder, error) {
	t.Helper()
	env, rec := newEnv(t, a)
	val, err := env.ExecuteActivity((&Activities{}).QueryDevices, in)
	var res QueryDevicesResult
	if err == nil {
		require.NoError(t, val.Get(&res))
	}
	return res, rec, err
}

func ids(devices []QueriedDevice) []string {
	out := make([]string, len(devices))
	for i, d := range devices {
		out[i] = d.DeviceID
	}
	return out
}

func TestQueryDevicesPages(t *testing.T) {
	v := func(version string) map[string]any {
		return map[string]any{"firmwareVersion": version, "firmware": map[string]any{"status": "standBy"}, "$version": 3.0}
	}
	hub := &fakeHub{page: pagedQuery(
		[]map[string]any{queryTwin("d1", v("1.0.0")), queryTwin("d2", v("1.0.1")), queryTwin("d3", nil)},
		// d2 comes again: a twin that changed while paging.
		[]map[string]any{queryTwin("d4", nil), queryTwin("d2", v("1.0.2")), queryTwin("d5", v("2.0.0")), {"status": "enabled"}},
		[]map[string]any{queryTwin("d6", v("2.0.0"))},
	)}
	res, rec, err := queryOn(t, &Activities{Hub: hub}, QueryDevicesInput{
		Query:      "SELECT * FROM devices WHERE tags.ring = 'beta'",
		Properties: []string{"firmwareVersion", "firmware.status", "missing"},
	})
	require.NoError(t, err)

	assert.Equal(t, []string{"d1", "d2", "d3", "d4", "d5", "d6"}, ids(res.Devices), "hub order, without repeats or rows without an ID")
	assert.Equal(t, map[string]any{"firmwareVersion": "1.0.0", "firmware.status": "standBy"}, res.Devices[0].Reported)
	assert.Equal(t, "1.0.1", res.Devices[1].Reported["firmwareVersion"], "the first row of a device counts")
	assert.Nil(t, res.Devices[2].Reported)
	assert.Nil(t, res.Devices[3].Reported)
	assert.Equal(t, 3, res.Pages)
	const q = "SELECT * FROM devices WHERE tags.ring = 'beta'"
	assert.Equal(t, []queryRequest{{q, 1000, ""}, {q, 1000, "p1"}, {q, 1000, "p2"}}, hub.queries,
		"pages of 1,000, each from the token of the one before")

	var progress []any
	for _, d := range rec.recorded() {
		require.Len(t, d, 1)
		progress = append(progress, d[0])
	}
	assert.Equal(t, []any{
		QueryDevicesProgress{Pages: 1, Devices: 3, Next: "p1"},
		QueryDevicesProgress{Pages: 2, Devices: 5, Next: "p2"},
		QueryDevicesProgress{Pages: 3, Devices: 6},
	}, progress, "a heartbeat after every page")
}

func TestQueryDevicesEmpty(t *testing.T) {
	hub := &fakeHub{page: pagedQuery([]map[string]any{})}
	res, _, err := queryOn(t, &Activities{Hub: hub}, QueryDevicesInput{Query: "select * from devices where tags.ring = 'none'"})
	require.NoError(t, err)
	assert.Equal(t, QueryDevicesResult{Devices: []QueriedDevice{}, Pages: 1}, res)
}

func TestQueryDevicesTooMany(t *testing.T) {
	page := func(ids ...string) []map[string]any {
		var rows []map[string]any
		for _, id := range ids {
			rows = append(rows, queryTwin(id, nil))
		}
		return rows
	}
	hub := &fakeHub{page: pagedQuery(page("a", "b", "c"), page("d", "e", "f"), page("g", "h", "i"))}
	_, _, err := queryOn(t, &Activities{Hub: hub}, QueryDevicesInput{Query: "SELECT * FROM devices", MaxDevices: 4})
	appErr := requireNonRetryable(t, err, ErrTooManyDevices)
	for _, s := range []string{"more than 4 devices", "6 seen in 2 pages", "narrow the query", "split the rollout"} {
		assert.Contains(t, err.Error(), s)
	}
	var p QueryDevicesProgress
	require.NoError(t, appErr.Details(&p))
	assert.Equal(t, QueryDevicesProgress{Pages: 2, Devices: 6}, p)
	assert.Equal(t, 2, hub.queryCount(), "stopped after page 2: page 3 was never requested")

	// Exactly the limit is fine.
	hub = &fakeHub{page: pagedQuery(page("a", "b"), page("c", "d"))}
	res, _, err := queryOn(t, &Activities{Hub: hub}, QueryDevicesInput{Query: "SELECT * FROM devices", MaxDevices: 4})
	require.NoError(t, err)
	assert.Len(t, res.Devices, 4)
}

func TestQueryDevicesRate(t *testing.T) {
	pages := [][]map[string]any{{queryTwin("a", nil)}, {queryTwin("b", nil)}, {queryTwin("c", nil)}}

	// A token per page, drawn before the page is requested: with two in the bucket and none to
	// come, the third page fails, retryably, without a request.
	hub := &fakeHub{page: pagedQuery(pages...)}
	p := &countingPacer{}
	a := &Activities{Hub: hub, Pacer: p}
	_, _, err := queryOn(t, a, QueryDevicesInput{Query: "SELECT * FROM devices", Rate: slowRate(p, "rollout/q", 2)})
	requireRateError(t, err, "rollout/q")
	assert.Equal(t, 2, hub.queryCount())

	// The bucket is empty: not even the first page is requested.
	hub = &fakeHub{page: pagedQuery(pages...)}
	a.Hub = hub
	_, _, err = queryOn(t, a, QueryDevicesInput{Query: "SELECT * FROM devices", Rate: slowRate(p, "rollout/q", 2)})
	requireRateError(t, err, "rollout/q")
	assert.Zero(t, hub.queryCount())

	// A bucket big enough: a token for each of the three pages.
	res, _, err := queryOn(t, a, QueryDevicesInput{Query: "SELECT * FROM devices", Rate: slowRate(p, "rollout/big", 10)})
	require.NoError(t, err)
	assert.Equal(t, 3, res.Pages)
	assertDrawn(t, p, "rollout/big", 3)
}

func TestQueryDevicesHubErrors(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantType string // "" for retryable
		want     []string
	}{
		{name: "throttled", err: hubErr(429, 429001, "ThrottlingException"), want: []string{"query on devices", "HTTP 429", "429001"}},
		{name: "server error", err: hubErr(500, 500001, "ServerError"), want: []string{"HTTP 500"}},
		{name: "network", err: context.DeadlineExceeded, want: []string{"query on devices"}},
		{
			name: "syntax error",
			err: &iotservice.RequestError{Code: 400,
				Body: []byte(`{"Message":"ErrorCode:ArgumentInvalid;query: syntax error at line 1, column 45: unterminated string","ErrorCode":400004}`)},
			wantType: ErrBadRequest,
			want:     []string{"HTTP 400", "line 1, column 45", "unterminated string"},
		},
		{name: "credentials", err: hubErr(401, 401002, "IotHubUnauthorizedAccess"), wantType: ErrUnauthorized, want: []string{"IOTHUB_CONNECTION_STRING"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{page: func(context.Context, string, int, string) (hubconn.TwinPage, error) {
				return hubconn.TwinPage{}, tc.err
			}}
			_, _, err := queryOn(t, &Activities{Hub: hub}, QueryDevicesInput{Query: "SELECT * FROM devices"})
			if tc.wantType == "" {
				requireRetryable(t, err)
			} else {
				requireNonRetryable(t, err, tc.wantType)
			}
			for _, s := range tc.want {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestQueryDevicesValidation(t *testing.T) {
	const fix = "target queries select whole twins, e.g. SELECT * FROM devices WHERE tags.ring = 'beta'"
	tests := []struct {
		name string
		in   QueryDevicesInput
		want string
	}{
		{name: "empty", in: QueryDevicesInput{}, want: fix},
		{name: "projection", in: QueryDevicesInput{Query: "SELECT deviceId FROM devices"}, want: fix},
		{name: "count", in: QueryDevicesInput{Query: "SELECT COUNT() FROM devices"}, want: fix},
		{name: "top", in: QueryDevicesInput{Query: "SELECT TOP 10 * FROM devices"}, want: fix},
		{name: "modules", in: QueryDevicesInput{Query: "SELECT * FROM devices.modules"}, want: fix},
		{name: "jobs", in: QueryDevicesInput{Query: "SELECT * FROM devices.jobs WHERE status = 'failed'"}, want: fix},
		{name: "no condition", in: QueryDevicesInput{Query: "SELECT * FROM devices WHERE"}, want: fix},
		{name: "group by", in: QueryDevicesInput{Query: "SELECT * FROM devices GROUP BY tags.ring"}, want: fix},
		{name: "not a query", in: QueryDevicesInput{Query: "DELETE FROM devices"}, want: fix},
		{name: "too long", in: QueryDevicesInput{Query: "SELECT * FROM devices WHERE deviceId = '" + strings.Repeat("x", 8192) + "'"}, want: "at most 8192"},
		{name: "bad path", in: QueryDevicesInput{Query: "SELECT * FROM devices", Properties: []string{"firmware..status"}}, want: "dotted path"},
		{name: "too many properties", in: QueryDevicesInput{Query: "SELECT * FROM devices", Properties: make([]string, 33)}, want: "at most 32"},
		{name: "negative max", in: QueryDevicesInput{Query: "SELECT * FROM devices", MaxDevices: -1}, want: "maxDevices -1"},
		{name: "rate without key", in: QueryDevicesInput{Query: "SELECT * FROM devices", Rate: &HubRate{PerSecond: 1}}, want: "key is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{}
			_, _, err := queryOn(t, &Activities{Hub: hub}, tc.in)
			requireNonRetryable(t, err, ErrBadRequest)
			assert.Contains(t, err.Error(), tc.want)
			assert.Zero(t, hub.queryCount())
		})
	}

	for _, q := range []string{
		"SELECT * FROM devices",
		"select * from DEVICES",
		"SELECT*FROM devices",
		"  SELECT *\n FROM devices\n WHERE tags.ring IN ['beta', 'prod']\n",
		"SELECT * FROM devices WHERE(tags.ring = 'beta')",
		"SELECT * FROM devices where NOT tags.ring = 'beta' AND properties.reported.firmwareVersion = '1.0.0'",
	} {
		assert.NoError(t, QueryDevicesInput{Query: q}.validate(), q)
	}
}

func FuzzQueryForm(f *testing.F) {
	for _, s := range []string{
		"SELECT * FROM devices",
		"select * from devices where tags.ring = 'beta'",
		"SELECT * FROM devices.modules",
		"SELECT * FROM devices WHERE",
		"SELECT deviceId FROM devices",
		"SELECT * FROM devices WHERE tags.city = 'Tromsø' AND tags.note = '" + strings.Repeat("ø", 150) + "'",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		err := QueryDevicesInput{Query: q}.validate()
		if err == nil {
			// Whatever passes selects whole device twins: SELECT, *, FROM, devices, then nothing
			// or a WHERE clause.
			fields := strings.Fields(strings.Replace(q, "*", " * ", 1))
			if len(fields) < 4 || !strings.EqualFold(fields[0], "SELECT") || fields[1] != "*" ||
				!strings.EqualFold(fields[2], "FROM") || !strings.EqualFold(fields[3], "devices") {
				t.Fatalf("accepted %q", q)
			}
			if len(fields) > 4 {
				// WHERE, then the condition, with or without a space between.
				w := fields[4]
				if len(w) < 5 || !strings.EqualFold(w[:5], "WHERE") || (len(w) > 5 && isWordByte(w[5])) {
					t.Fatalf("accepted %q", q)
				}
			}
			return
		}
		if utf8.ValidString(q) && !utf8.ValidString(err.Error()) {
			t.Fatalf("message for %q is not UTF-8: %q", q, err.Error())
		}
	})
}

func isWordByte(c byte) bool {
	return c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

func TestQueriedDevice(t *testing.T) {
	props := []string{"firmwareVersion", "firmware.status"}
	tests := []struct {
		name string
		row  string
		want QueriedDevice
		ok   bool
	}{
		{
			name: "twin",
			row:  `{"deviceId":"d1","tags":{"ring":"beta"},"properties":{"desired":{"firmwareVersion":"9"},"reported":{"firmwareVersion":"1.0.0","firmware":{"status":"standBy"},"$version":3}}}`,
			want: QueriedDevice{DeviceID: "d1", Reported: map[string]any{"firmwareVersion": "1.0.0", "firmware.status": "standBy"}},
			ok:   true,
		},
		{
			name: "values keep their JSON type",
			row:  `{"deviceId":"d1","properties":{"reported":{"firmwareVersion":2,"firmware":{"status":{"stage":"a"}}}}}`,
			want: QueriedDevice{DeviceID: "d1", Reported: map[string]any{"firmwareVersion": 2.0, "firmware.status": map[string]any{"stage": "a"}}},
			ok:   true,
		},
		{name: "null is not reported", row: `{"deviceId":"d1","properties":{"reported":{"firmwareVersion":null}}}`, want: QueriedDevice{DeviceID: "d1"}, ok: true},
		{name: "no properties", row: `{"deviceId":"d1","status":"enabled"}`, want: QueriedDevice{DeviceID: "d1"}, ok: true},
		{name: "reported not an object", row: `{"properties":{"reported":[1]},"deviceId":"d1"}`, want: QueriedDevice{DeviceID: "d1"}, ok: true},
		{name: "no device ID", row: `{"status":"enabled"}`},
		{name: "empty device ID", row: `{"deviceId":""}`},
		{name: "device ID not a string", row: `{"deviceId":7}`},
		{name: "not an object", row: `"d1"`},
		{name: "null", row: `null`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, ok := queriedDevice(json.RawMessage(tc.row), props)
			assert.Equal(t, tc.ok, ok)
			assert.Equal(t, tc.want, d)
		})
	}
}

func TestQueryDevicesPage(t *testing.T) {
	hub := &fakeHub{page: pagedQuery(
		[]map[string]any{queryTwin("a", nil), queryTwin("b", nil), queryTwin("a", nil), {"status": "enabled"}},
		[]map[string]any{queryTwin("c", map[string]any{"firmwareVersion": "2.0.0"})},
	)}
	env, rec := newEnv(t, &Activities{Hub: hub})
	page := func(in QueryDevicesPageInput) (QueryDevicesPageResult, error) {
		val, err := env.ExecuteActivity((&Activities{}).QueryDevicesPage, in)
		var res QueryDevicesPageResult
		if err == nil {
			require.NoError(t, val.Get(&res))
		}
		return res, err
	}
	const q = "SELECT * FROM devices"

	res, err := page(QueryDevicesPageInput{Query: q})
	require.NoError(t, err)
	assert.Equal(t, QueryDevicesPageResult{Devices: []QueriedDevice{{DeviceID: "a"}, {DeviceID: "b"}}, Next: "p1", Rows: 4}, res,
		"without repeats or rows without an ID")
	res, err = page(QueryDevicesPageInput{Query: q, Token: res.Next, PageSize: 10, Properties: []string{"firmwareVersion"}})
	require.NoError(t, err)
	assert.Equal(t, QueryDevicesPageResult{Devices: []QueriedDevice{{DeviceID: "c", Reported: map[string]any{"firmwareVersion": "2.0.0"}}}, Rows: 1}, res)
	assert.Equal(t, []queryRequest{{q, 1000, ""}, {q, 10, "p1"}}, hub.queries, "PageSize 0 is 1,000")
	assert.Empty(t, rec.recorded(), "one request, no heartbeat")

	_, err = page(QueryDevicesPageInput{Query: q, Token: "p7"})
	requireNonRetryable(t, err, ErrBadRequest)
	assert.Contains(t, err.Error(), "a continuation token is valid only with the query that returned it")

	// A 400 to a first page is the query's fault, not a token's.
	hub.page = func(context.Context, string, int, string) (hubconn.TwinPage, error) {
		return hubconn.TwinPage{}, hubErr(400, 400004, "ArgumentInvalid")
	}
	_, err = page(QueryDevicesPageInput{Query: q})
	requireNonRetryable(t, err, ErrBadRequest)
	assert.NotContains(t, err.Error(), "continuation token")

	hub.page = func(context.Context, string, int, string) (hubconn.TwinPage, error) {
		return hubconn.TwinPage{}, hubErr(503, 503001, "ServiceUnavailable")
	}
	_, err = page(QueryDevicesPageInput{Query: q, Token: "p1"})
	requireRetryable(t, err)
	assert.Contains(t, err.Error(), "HTTP 503")
}

func TestQueryDevicesPageValidation(t *testing.T) {
	const q = "SELECT * FROM devices"
	tests := []struct {
		name string
		in   QueryDevicesPageInput
		want string
	}{
		{name: "query form", in: QueryDevicesPageInput{Query: "SELECT deviceId FROM devices"}, want: "target queries select whole twins"},
		{name: "bad path", in: QueryDevicesPageInput{Query: q, Properties: []string{"a..b"}}, want: "dotted path"},
		{name: "page too big", in: QueryDevicesPageInput{Query: q, PageSize: 1001}, want: "page size 1001: IoT Hub returns 1 to 1000 twins a page: set pageSize in that range, or 0 for 1000"},
		{name: "negative page", in: QueryDevicesPageInput{Query: q, PageSize: -5}, want: "page size -5"},
		{name: "token with a line break", in: QueryDevicesPageInput{Query: q, Token: "abc\r\nX-Other: 1"}, want: "continuation token (15 bytes): a continuation token is printable ASCII"},
		{name: "rate without key", in: QueryDevicesPageInput{Query: q, Rate: &HubRate{PerSecond: 1}}, want: "key is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := &fakeHub{}
			env, _ := newEnv(t, &Activities{Hub: hub})
			_, err := env.ExecuteActivity((&Activities{}).QueryDevicesPage, tc.in)
			requireNonRetryable(t, err, ErrBadRequest)
			assert.Contains(t, err.Error(), tc.want)
			assert.Zero(t, hub.queryCount())
		})
	}
	for _, size := range []int{0, 1, 1000} {
		assert.NoError(t, QueryDevicesPageInput{Query: q, PageSize: size, Token: `{"token":"x","range":{"min":"","max":"FF"}}`}.validate())
	}
}
