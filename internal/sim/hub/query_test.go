package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/dmflow/dmflow/workflows"
)

// shape describes a parsed query's columns and grouping: "" for SELECT *, else each column as
// name=element, then GROUP BY path.
func shape(q query) string {
	var cols []string
	for _, c := range q.cols {
		el := strings.Join(c.path, ".")
		if c.fn != "" {
			el = c.fn + "(" + el + ")"
		}
		cols = append(cols, c.name+"="+el)
	}
	s := strings.Join(cols, ",")
	if q.group != nil {
		s += " GROUP BY " + strings.Join(q.group, ".")
	}
	return s
}

func TestParseQuery(t *testing.T) {
	tests := []struct {
		q     string
		shape string // the columns and grouping the query should parse to (see shape)
	}{
		{"SELECT * FROM devices", ""},
		{"select * from DEVICES", ""},
		{"SeLeCt * FrOm devices wHeRe deviceId = 'a' aNd NoT tags.x In [1] oR Is_Defined(tags.y)", ""},
		{"SELECT * FROM devices WHERE deviceId = 'a'", ""},
		{`SELECT * FROM devices WHERE tags.site.city = "Oslo" AND properties.reported.n >= -1.5e2`, ""},
		{"SELECT * FROM devices WHERE NOT (status = 'enabled' OR connectionState <> 'Connected')", ""},
		{"SELECT * FROM devices WHERE deviceId IN ['a', 'b'] AND deviceId NIN []", ""},
		{"SELECT * FROM devices WHERE IS_DEFINED(properties.reported.rebootTime)", ""},
		{"SELECT * FROM devices WHERE properties.desired.$version > 1", ""},
		{"SELECT * FROM devices WHERE tags.x = null OR tags.y = true", ""},
		{"SELECT * FROM devices WHERE deviceId = 'it\\'s'", ""},
		{"SELECT * FROM devices WHERE tags.from = 1 AND tags.in.select = 2", ""},
		{"SELECT * FROM devices\nWHERE\ttags.a = 1", ""},
		{"SELECT COUNT() AS n FROM devices", "n=COUNT()"},
		{"select count() as numberOfDevices from devices where tags.ring = 'beta'", "numberOfDevices=COUNT()"},
		{"SELECT COUNT() FROM devices", "$1=COUNT()"},
		// IoT Hub's example of GROUP BY, and the query fleet versions sends.
		{"SELECT properties.reported.telemetryConfig.status AS status,\n    COUNT() AS numberOfDevices\n  FROM devices\n  GROUP BY properties.reported.telemetryConfig.status",
			"status=properties.reported.telemetryConfig.status,numberOfDevices=COUNT() GROUP BY properties.reported.telemetryConfig.status"},
		{"SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices WHERE tags.ring = 'beta' GROUP BY properties.reported.firmwareVersion",
			"v=properties.reported.firmwareVersion,n=COUNT() GROUP BY properties.reported.firmwareVersion"},
		{"select count() as n, properties.reported.firmwareVersion from devices group by properties.reported.firmwareVersion",
			"n=COUNT(),firmwareVersion=properties.reported.firmwareVersion GROUP BY properties.reported.firmwareVersion"},
		{"SELECT COUNT() AS n FROM devices GROUP BY tags.ring", "n=COUNT() GROUP BY tags.ring"},
		{"SELECT tags.ring AS ring FROM devices GROUP BY tags.ring", "ring=tags.ring GROUP BY tags.ring"},
		{"SELECT AVG(tags.n) AS a, SUM(tags.n) AS s, min(tags.n) AS lo, Max(tags.n) AS hi FROM devices",
			"a=AVG(tags.n),s=SUM(tags.n),lo=MIN(tags.n),hi=MAX(tags.n)"},
		{"SELECT COUNT(), MAX(tags.n), COUNT() AS n FROM devices", "$1=COUNT(),$2=MAX(tags.n),n=COUNT()"},
		{"SELECT tags.site.city, COUNT() AS n FROM devices WHERE NOT IS_DEFINED(tags.x) GROUP BY tags.site.city",
			"city=tags.site.city,n=COUNT() GROUP BY tags.site.city"},
	}
	for _, tc := range tests {
		t.Run(tc.q, func(t *testing.T) {
			q, err := parseQuery(tc.q)
			if err != nil {
				t.Fatalf("parseQuery: %v", err)
			}
			if got := shape(q); got != tc.shape {
				t.Errorf("parsed to %q, want %q", got, tc.shape)
			}
		})
	}
}

func TestParseQueryErrors(t *testing.T) {
	tests := []struct {
		q    string
		want string // the whole error: position and reason
	}{
		{"", `syntax error at line 1, column 1: expected SELECT, found the end of the query`},
		{"SELECT deviceId FROM devices", `syntax error at line 1, column 8: localhub does not support projections (SELECT deviceId): select *, or aggregates (COUNT(), AVG, SUM, MIN, MAX) with or without GROUP BY`},
		{"SELECT * FROM devices.modules", `syntax error at line 1, column 22: unexpected "."`},
		{"SELECT * FROM jobs", `syntax error at line 1, column 15: expected DEVICES, found "jobs"`},
		{"SELECT * FROM devices WHERE", `syntax error at line 1, column 28: expected a property name, found the end of the query`},
		{"SELECT * FROM devices WHERE deviceId", `syntax error at line 1, column 37: expected a comparison after deviceId, found the end of the query`},
		{"SELECT * FROM devices WHERE deviceId = ", `syntax error at line 1, column 40: expected a value, found the end of the query`},
		{"SELECT * FROM devices WHERE deviceId == 'a'", `syntax error at line 1, column 39: expected a value, found "="`},
		{"SELECT * FROM devices WHERE deviceId = 'a", `syntax error at line 1, column 40: unterminated string`},
		{"SELECT * FROM devices WHERE deviceId = 'a\\", `syntax error at line 1, column 40: unterminated string`},
		{"SELECT * FROM devices WHERE deviceId = 'a\\x'", `syntax error at line 1, column 42: unknown escape \x in string`},
		{"SELECT * FROM devices WHERE deviceId = '\\u00zz'", `syntax error at line 1, column 41: bad \u escape: want four hex digits`},
		{"SELECT * FROM devices WHERE (deviceId = 'a'", `syntax error at line 1, column 44: expected ), found the end of the query`},
		{"SELECT * FROM devices WHERE deviceId IN ('a')", `syntax error at line 1, column 41: expected [, found "("`},
		{"SELECT * FROM devices WHERE deviceId IN ['a' 'b']", `syntax error at line 1, column 46: expected , or ], found string "b"`},
		{"SELECT * FROM devices WHERE deviceId = 'a' extra", `syntax error at line 1, column 44: unexpected "extra"`},
		{"SELECT * FROM devices WHERE a = 1 ; DROP", `syntax error at line 1, column 35: unexpected character ';'`},
		{"SELECT * FROM devices WHERE a = --1", `syntax error at line 1, column 33: bad number "-"`},
		{"SELECT * FROM devices WHERE a = 1e999", `syntax error at line 1, column 33: bad number "1e999"`},
		{"SELECT * FROM devices WHERE a = 1 AND", `syntax error at line 1, column 38: expected a property name, found the end of the query`},
		{"SELECT * FROM devices WHERE NOT", `syntax error at line 1, column 32: expected a property name, found the end of the query`},
		{"SELECT * FROM devices WHERE IS_DEFINED tags.a", `syntax error at line 1, column 40: expected ( after IS_DEFINED, found "tags"`},
		{"SELECT * FROM devices WHERE IS_DEFINED(tags.a", `syntax error at line 1, column 46: expected ), found the end of the query`},
		{"SELECT * FROM devices WHERE AND = 1", `syntax error at line 1, column 29: expected a property name, found "AND"`},
		{"SELECT * FROM devices WHERE a = 'x' OR b", `syntax error at line 1, column 41: expected a comparison after b, found the end of the query`},
		{"SELECT * FROM devices\nWHERE deviceId = 'a' !", `syntax error at line 2, column 22: unexpected character '!'`},
		{"SELECT * FROM devices WHERE tags.é = 1", `syntax error at line 1, column 34: unexpected character 'é'`},
		{"SELECT COUNT FROM devices", `syntax error at line 1, column 14: expected COUNT(), found "FROM": COUNT takes no argument`},
		{"SELECT COUNT(deviceId) AS n FROM devices", `syntax error at line 1, column 14: expected COUNT(), found "deviceId": COUNT takes no argument`},
		{"SELECT AVG() AS a FROM devices", `syntax error at line 1, column 8: AVG takes a property, e.g. AVG(properties.reported.temperature)`},
		{"SELECT SUM tags.n FROM devices", `syntax error at line 1, column 12: expected ( after SUM, found "tags"`},
		{"SELECT MIN(tags.n, tags.m) FROM devices", `syntax error at line 1, column 18: expected ), found ",": MIN takes one property`},
		{"SELECT MAX(COUNT()) FROM devices", `syntax error at line 1, column 17: expected ), found "(": MAX takes one property`},
		{"SELECT FROM devices", `syntax error at line 1, column 8: expected *, a property or an aggregate (COUNT(), AVG, SUM, MIN, MAX), found "FROM"`},
		{"SELECT COUNT() AS n, * FROM devices", `syntax error at line 1, column 22: expected *, a property or an aggregate (COUNT(), AVG, SUM, MIN, MAX), found "*"`},
		{"SELECT COUNT() AS n, FROM devices", `syntax error at line 1, column 22: expected *, a property or an aggregate (COUNT(), AVG, SUM, MIN, MAX), found "FROM"`},
		{"SELECT * FROM devices GROUP BY tags.ring", `syntax error at line 1, column 23: SELECT * cannot be grouped: select the grouped property and aggregates, e.g. ` + groupExample},
		{"SELECT * FROM devices WHERE tags.a = 1 GROUP BY tags.ring", `syntax error at line 1, column 40: SELECT * cannot be grouped: select the grouped property and aggregates, e.g. ` + groupExample},
		{"SELECT COUNT() AS n FROM devices GROUP tags.ring", `syntax error at line 1, column 40: expected BY, found "tags"`},
		{"SELECT COUNT() AS n FROM devices GROUP BY", `syntax error at line 1, column 42: expected a property name, found the end of the query`},
		{"SELECT COUNT() AS n FROM devices GROUP BY tags.ring, tags.site", `syntax error at line 1, column 52: GROUP BY takes one property in IoT Hub's query language: group by tags.ring and filter on the others with WHERE`},
		{"SELECT COUNT() AS n FROM devices GROUP BY tags.ring WHERE tags.a = 1", `syntax error at line 1, column 53: unexpected "WHERE"`},
		{"SELECT COUNT() AS n FROM devices GROUP BY tags.ring ORDER BY n", `syntax error at line 1, column 53: unexpected "ORDER"`},
		{"SELECT tags.site AS s, COUNT() AS n FROM devices GROUP BY tags.ring", `syntax error at line 1, column 8: tags.site is neither aggregated nor grouped: select tags.ring, the property grouped by, or an aggregate of it`},
		{"SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices GROUP BY v", `syntax error at line 1, column 8: properties.reported.firmwareVersion is neither aggregated nor grouped: select v, the property grouped by, or an aggregate of it`},
		{"SELECT deviceId, COUNT() AS n FROM devices", `syntax error at line 1, column 8: deviceId is not aggregated: with aggregates, select a property only with GROUP BY it, e.g. ` + groupExample},
		{"SELECT COUNT() AS n, SUM(tags.n) AS n FROM devices", `syntax error at line 1, column 22: column name n is used twice: give each column its own alias with AS`},
		{"SELECT tags.n, COUNT() AS n FROM devices GROUP BY tags.n", `syntax error at line 1, column 16: column name n is used twice: give each column its own alias with AS`},
		{"SELECT COUNT() AS group FROM devices", `syntax error at line 1, column 19: expected an alias after AS, found "group"`},
		{"SELECT COUNT() AS FROM devices", `syntax error at line 1, column 19: expected an alias after AS, found "FROM"`},
		{"SELECT COUNT() AS 'n' FROM devices", `syntax error at line 1, column 19: expected an alias after AS, found string "n"`},
		{"SELECT COUNT() n FROM devices", `syntax error at line 1, column 16: expected FROM, found "n"`},
		{"SELECT * FROM devices WHERE a = '" + strings.Repeat("x", maxQueryLen) + "'", `syntax error at line 1, column 8193: query is longer than 8192 characters`},
	}
	for _, tc := range tests {
		t.Run(tc.q[:min(len(tc.q), 80)], func(t *testing.T) {
			_, err := parseQuery(tc.q)
			if err == nil {
				t.Fatalf("parseQuery succeeded, want %s", tc.want)
			}
			if err.Error() != tc.want {
				t.Errorf("parseQuery error\n got %s\nwant %s", err, tc.want)
			}
		})
	}
}

func TestQueryStringEscapes(t *testing.T) {
	tests := []struct{ lit, want string }{
		{`'plain'`, "plain"},
		{`"double"`, "double"},
		{`'it\'s'`, "it's"},
		{`"say \"hi\""`, `say "hi"`},
		{`'"mixed"'`, `"mixed"`},
		{`'back\\slash'`, `back\slash`},
		{`'a\/b'`, "a/b"},
		{`'tab\tnl\n'`, "tab\tnl\n"},
		{`'\u00e9\u4E2D'`, "é中"},
		{`'café'`, "café"},
	}
	for _, tc := range tests {
		t.Run(tc.lit, func(t *testing.T) {
			q, err := parseQuery("SELECT * FROM devices WHERE a = " + tc.lit)
			if err != nil {
				t.Fatal(err)
			}
			if got := q.where.(cmpExpr).lit; got != tc.want {
				t.Errorf("literal = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestQueryEval(t *testing.T) {
	doc, err := decodeDocument([]byte(`{
		"deviceId": "d1", "status": "enabled",
		"tags": {"site": {"city": "Oslo"}, "n": 3, "flag": false, "none": null},
		"properties": {"reported": {"firmwareStatus": "applying", "$version": 4}}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		where string
		want  bool
	}{
		{"deviceId = 'd1'", true},
		{"deviceId = 'D1'", false},
		{"deviceId != 'd2'", true},
		{"deviceId <> 'd1'", false},
		{"tags.site.city = 'Oslo'", true},
		{"tags.n > 2 AND tags.n <= 3", true},
		{"tags.n < 3", false},
		{"tags.n = '3'", false}, // types differ
		{"tags.flag = false", true},
		{"tags.none = null", true},
		{"tags.missing = null", false},
		{"tags.missing != 'x'", false}, // missing compares false
		{"NOT tags.missing = 'x'", true},
		{"properties.reported.firmwareStatus IN ['downloading', 'applying']", true},
		{"properties.reported.firmwareStatus NIN ['downloading', 'applying']", false},
		{"properties.reported.$version >= 4", true},
		{"IS_DEFINED(tags.site)", true},
		{"IS_DEFINED(tags.site.zip)", false},
		{"status = 'disabled' OR tags.n = 3", true},
		{"status = 'disabled' OR tags.n = 3 AND tags.flag = true", false},
		{"(status = 'disabled' OR tags.n = 3) AND NOT tags.flag = true", true},
		{"tags.site > 'A'", false}, // objects do not compare
		{"tags.n = 3.0", true},
		{"tags.n IN ['3', true, 3]", true},
		{"tags.n NIN ['3']", true},
		{"tags.n > '2'", false},     // string against number: false, not an error
		{"tags.flag = 0", false},    // bool against number
		{"tags.none != 'x'", false}, // null against string
		{"tags.site.city > 'N'", true},
		{"deviceId >= 'd1' AND deviceId < 'd10'", true},
		{"NOT tags.n = 3 OR tags.flag = false", true},   // (NOT a) OR b
		{"NOT tags.n = 3 AND tags.flag = false", false}, // (NOT a) AND b
		{"NOT (tags.n = 3 AND tags.flag = true)", true},
		{"NOT NOT tags.n = 3", true},
		{"NOT IS_DEFINED(tags.missing)", true},
		{"properties.reported.$version = 4", true},
		{"IS_DEFINED(properties.desired)", false},
		{"tags.n = 3 OR tags.n = 4 AND tags.flag = true", true}, // AND binds tighter than OR
	}
	for _, tc := range tests {
		t.Run(tc.where, func(t *testing.T) {
			q, err := parseQuery("SELECT * FROM devices WHERE " + tc.where)
			if err != nil {
				t.Fatal(err)
			}
			if got := q.where.eval(doc); got != tc.want {
				t.Errorf("eval = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestReconcileQueryEval evaluates the query a reconcile rollout resolves its targets with: the
// devices of the ring whose firmwareVersion differs from the target or was never reported.
func TestReconcileQueryEval(t *testing.T) {
	in := workflows.RolloutInput{Reconcile: true, Query: "SELECT * FROM devices WHERE tags.ring = 'beta'",
		Firmware: &workflows.RolloutFirmware{Version: "2.0'1"}}
	q, err := parseQuery(in.TargetQuery())
	if err != nil {
		t.Fatalf("parseQuery(%s): %v", in.TargetQuery(), err)
	}
	tests := []struct {
		twin string
		want bool
	}{
		{`{"tags": {"ring": "beta"}, "properties": {"reported": {"firmwareVersion": "1.0.0"}}}`, true},
		{`{"tags": {"ring": "beta"}, "properties": {"reported": {}}}`, true},
		{`{"tags": {"ring": "beta"}, "properties": {"reported": {"firmwareVersion": "2.0'1"}}}`, false},
		{`{"tags": {"ring": "prod"}, "properties": {"reported": {"firmwareVersion": "1.0.0"}}}`, false},
	}
	for _, tc := range tests {
		doc, err := decodeDocument([]byte(tc.twin))
		if err != nil {
			t.Fatal(err)
		}
		if got := q.where.eval(doc); got != tc.want {
			t.Errorf("%s: eval = %v, want %v", tc.twin, got, tc.want)
		}
	}
}

func FuzzParseQuery(f *testing.F) {
	f.Add("SELECT * FROM devices WHERE tags.a.b = 'x' AND (n > 1 OR NOT IS_DEFINED(c)) AND d IN [1, 'two', null]")
	f.Add("SELECT * FROM devices WHERE a = \"q\\\"\"")
	f.Add("select * from devices where x nin []")
	f.Add("SELECT COUNT() AS n FROM devices WHERE NOT tags.ring = 'beta' OR properties.reported.$version >= 2")
	f.Add("SELECT COUNT() FROM devices")
	f.Add("SELECT * FROM devices WHERE a = '\\u00e9\\n\\'' AND b <> \"x\\/y\"")
	f.Add("SELECT * FROM devices WHERE a = '\\u12")
	f.Add("SELECT * FROM devices\nWHERE tags.é = 1e999")
	f.Add(versionQuery)
	f.Add("SELECT tags.a AS a, COUNT(), SUM(n), AVG(n), MIN(a), MAX(tags.a.b) AS m FROM devices WHERE n > 1 GROUP BY tags.a")
	f.Add("SELECT * FROM devices GROUP BY a, b")
	f.Fuzz(func(t *testing.T, s string) {
		q, err := parseQuery(s)
		if err != nil {
			var qe *queryError
			if !errors.As(err, &qe) || qe.pos < 0 || qe.pos > len(s) || !strings.HasPrefix(err.Error(), "syntax error at line ") {
				t.Fatalf("parseQuery(%q) = %v: not a positioned syntax error", s, err)
			}
			return
		}
		doc := map[string]any{"a": "x", "n": json.Number("2"), "tags": map[string]any{"a": map[string]any{"b": "x"}}}
		if q.where != nil {
			q.where.eval(doc) // must not panic
		}
		if q.cols == nil {
			return
		}
		// An aggregate query folds twins into rows that encode, one row without GROUP BY.
		agg := newAggregation(q)
		agg.add(doc)
		agg.add(map[string]any{"n": "two", "tags": map[string]any{"a": []any{json.Number("1")}}})
		groups := agg.groups()
		if q.group == nil && len(groups) != 1 {
			t.Fatalf("%q: %d groups without GROUP BY", s, len(groups))
		}
		for _, g := range groups {
			if _, err := json.Marshal(q.row(g)); err != nil {
				t.Fatalf("%q: row %v does not encode: %v", s, q.row(g), err)
			}
		}
	})
}

func TestQueryDevices(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	for _, id := range []string{"q1", "q2", "q3", "q4", "q5"} {
		registerDevice(t, h, svc, id)
	}
	cs, _ := h.DeviceConnectionString(ctx, "q2")
	dc := connectDevice(t, h, cs)
	if _, err := dc.UpdateTwinState(ctx, iotdevice.TwinState{"firmwareStatus": "standBy"}); err != nil {
		t.Fatal(err)
	}

	var ids []string
	err := svc.QueryDevices(ctx, "SELECT * FROM devices WHERE properties.reported.firmwareStatus = 'standBy' OR deviceId IN ['q4', 'q5']",
		func(v map[string]interface{}) error {
			ids = append(ids, v["deviceId"].(string))
			return nil
		})
	if err != nil {
		t.Fatalf("QueryDevices: %v", err)
	}
	if strings.Join(ids, ",") != "q2,q4,q5" {
		t.Errorf("QueryDevices = %v, want q2,q4,q5", ids)
	}

	// Paging: two per page over all five devices.
	auth := serviceToken(t, h, time.Now().Add(time.Hour))
	var all []string
	continuation := ""
	for page := 0; page < 5; page++ {
		req, _ := http.NewRequest(http.MethodPost, "https://"+h.HTTPSAddr()+"/devices/query?api-version=2020-09-30",
			strings.NewReader(`{"query":"SELECT * FROM devices"}`))
		req.Header.Set("Authorization", auth)
		req.Header.Set("x-ms-max-item-count", "2")
		if continuation != "" {
			req.Header.Set("x-ms-continuation", continuation)
		}
		res, err := httpClient(t, h).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var twins []map[string]any
		err = json.NewDecoder(res.Body).Decode(&twins)
		res.Body.Close()
		if err != nil || res.StatusCode != http.StatusOK || len(twins) > 2 {
			t.Fatalf("page %d: %d, %d twins, %v", page, res.StatusCode, len(twins), err)
		}
		for _, tw := range twins {
			all = append(all, tw["deviceId"].(string))
		}
		if continuation = res.Header.Get("x-ms-continuation"); continuation == "" {
			break
		}
	}
	if !sort.StringsAreSorted(all) || strings.Join(all, ",") != "q1,q2,q3,q4,q5" {
		t.Errorf("paged result = %v", all)
	}

	res, raw := rawRequest(t, h, http.MethodPost, "/devices/query?api-version=2020-09-30", auth, strings.NewReader(`{"query":"SELECT name FROM devices"}`))
	if res.StatusCode != http.StatusBadRequest {
		t.Errorf("unsupported query = %d %s, want 400", res.StatusCode, raw)
	}
}

// TestQueryCountAndPaging runs queries through the unchanged amenzhinsky
// client: its QueryDevices follows x-ms-continuation from page to page, and
// sees aggregates and parse errors as IoT Hub sends them.
func TestQueryCountAndPaging(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	const devices = 2*defaultQueryPage + 50 // the client sends no x-ms-max-item-count: three pages
	now := time.Now()
	for i := range devices {
		if _, err := h.putDevice(deviceSpec{ID: fmt.Sprintf("p%03d", i)}, "", now); err != nil {
			t.Fatal(err)
		}
	}
	beta := []string{"p007", "p150", "p249"}
	for _, id := range beta {
		if _, err := svc.UpdateDeviceTwin(ctx, &iotservice.Twin{DeviceID: id, Tags: map[string]interface{}{"ring": "beta"}}); err != nil {
			t.Fatalf("UpdateDeviceTwin(%s): %v", id, err)
		}
	}

	// The client decodes every page into the same slice of maps, so a row is
	// copied out in the callback. Beware: a key that a twin on a later page
	// lacks (tags, for an untagged device) survives in the map from the twin
	// at the same index of the page before; only deviceId is safe to rely on.
	query := func(q string) []map[string]interface{} {
		t.Helper()
		var rows []map[string]interface{}
		if err := svc.QueryDevices(ctx, q, func(v map[string]interface{}) error {
			raw, err := json.Marshal(v)
			if err != nil {
				return err
			}
			var row map[string]interface{}
			rows = append(rows, row)
			return json.Unmarshal(raw, &rows[len(rows)-1])
		}); err != nil {
			t.Fatalf("QueryDevices(%s): %v", q, err)
		}
		return rows
	}

	rows := query("SELECT * FROM devices")
	if len(rows) != devices {
		t.Fatalf("QueryDevices returned %d twins, want %d", len(rows), devices)
	}
	for i, r := range rows {
		if want := fmt.Sprintf("p%03d", i); r["deviceId"] != want {
			t.Fatalf("twin %d = %v, want %s (each once, in order)", i, r["deviceId"], want)
		}

	}
	var ids []string
	for _, r := range query("select * from devices where tags.ring = 'beta'") {
		ids = append(ids, r["deviceId"].(string))
	}
	if !reflect.DeepEqual(ids, beta) {
		t.Errorf("beta twins = %v, want %v", ids, beta)
	}

	counts := []struct {
		q     string
		alias string
		want  float64
	}{
		{"SELECT COUNT() AS n FROM devices", "n", devices},
		{"SELECT COUNT() AS numberOfDevices FROM devices WHERE tags.ring = 'beta'", "numberOfDevices", 3},
		{"select count() as n from devices where NOT tags.ring = 'beta'", "n", devices - 3}, // a missing tag compares false
		{"SELECT COUNT() AS n FROM devices WHERE NOT IS_DEFINED(tags.ring)", "n", devices - 3},
		{"SELECT COUNT() FROM devices WHERE deviceId IN ['p001', 'p002', 'nope']", "$1", 2},
		{"SELECT COUNT() AS n FROM devices WHERE deviceId = 'nope'", "n", 0},
	}
	for _, tc := range counts {
		rows := query(tc.q)
		if len(rows) != 1 || len(rows[0]) != 1 || rows[0][tc.alias] != tc.want {
			t.Errorf("%s = %v, want [{%q: %v}]", tc.q, rows, tc.alias, tc.want)
		}
	}

	// A first page by hand: full, with a continuation; an aggregate ignores
	// the page size and never continues.
	auth := serviceToken(t, h, time.Now().Add(time.Hour))
	post := func(q string, maxItems string) (*http.Response, []byte) {
		t.Helper()
		body, _ := json.Marshal(map[string]string{"query": q})
		req, _ := http.NewRequest(http.MethodPost, "https://"+h.HTTPSAddr()+"/devices/query?api-version=2020-09-30", bytes.NewReader(body))
		req.Header.Set("Authorization", auth)
		if maxItems != "" {
			req.Header.Set("x-ms-max-item-count", maxItems)
		}
		res, err := httpClient(t, h).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		raw, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res, raw
	}
	res, raw := post("SELECT * FROM devices", "")
	var page []map[string]any
	if err := json.Unmarshal(raw, &page); err != nil || len(page) != defaultQueryPage || res.Header.Get("x-ms-continuation") == "" {
		t.Errorf("first page: %d twins, continuation %q, %v", len(page), res.Header.Get("x-ms-continuation"), err)
	}
	res, raw = post("SELECT COUNT() AS n FROM devices", "1")
	if res.StatusCode != http.StatusOK || string(raw) != fmt.Sprintf(`[{"n":%d}]`, devices) || res.Header.Get("x-ms-continuation") != "" {
		t.Errorf("count with a page of 1 = %d %s, continuation %q", res.StatusCode, raw, res.Header.Get("x-ms-continuation"))
	}

	// A query that does not parse: 400 with IoT Hub's error body, naming where
	// and why.
	err := svc.QueryDevices(ctx, "SELECT * FROM devices WHERE tags.ring = beta'", func(map[string]interface{}) error { return nil })
	code, eb := requestError(t, err)
	const wantMsg = "ErrorCode:ArgumentInvalid;query: syntax error at line 1, column 45: unterminated string"
	if code != http.StatusBadRequest || eb.Message != wantMsg {
		t.Errorf("bad query through the client = %d %+v, want 400 %q", code, eb, wantMsg)
	}
	res, raw = post("SELECT * FROM devices WHERE deviceId == 'a'", "")
	var body errorBody
	if err := json.Unmarshal(raw, &body); err != nil || res.StatusCode != http.StatusBadRequest || body.ErrorCode != 400004 ||
		body.Message != `ErrorCode:ArgumentInvalid;query: syntax error at line 1, column 39: expected a value, found "="` ||
		res.Header.Get("iothub-errorcode") != ErrArgumentInvalid {
		t.Errorf("bad query = %d %s", res.StatusCode, raw)
	}
}
