package hub

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// versionQuery is the query starter fleet versions sends, without a condition.
const versionQuery = "SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices GROUP BY properties.reported.firmwareVersion"

// aggregateDocs are twins as queries see them: versions of several types, some missing, tags
// with numbers and a string where a number is expected.
var aggregateDocs = []string{
	`{"deviceId": "d1", "tags": {"ring": "beta", "n": 3}, "properties": {"reported": {"firmwareVersion": "2.1.0"}}}`,
	`{"deviceId": "d2", "tags": {"ring": "prod", "n": 5}, "properties": {"reported": {"firmwareVersion": "2.1.0"}}}`,
	`{"deviceId": "d3", "tags": {"ring": "beta", "n": "x"}, "properties": {"reported": {"firmwareVersion": "1.0.0"}}}`,
	`{"deviceId": "d4", "tags": {"ring": "prod", "n": 1, "v": null}, "properties": {"reported": {}}}`,
	`{"deviceId": "d5", "tags": {"v": null}, "properties": {"reported": {"firmwareVersion": 2}}}`,
	`{"deviceId": "d6", "tags": {"ring": "prod", "n": 1.0, "big": 1e308}, "properties": {"reported": {"firmwareVersion": 2.0}}}`,
	`{"deviceId": "d7", "tags": {"ring": "lab", "n": -4.5, "big": 1e308, "v": {"b": 1, "a": [1, 2]}}, "properties": {"reported": {"firmwareVersion": ""}}}`,
}

// TestAggregateRows folds documents through aggregate queries and checks the rows as JSON, as
// localhub sends them: keys sorted, groups in value order, undefined columns left out.
func TestAggregateRows(t *testing.T) {
	var docs []map[string]any
	for _, raw := range aggregateDocs {
		doc, err := decodeDocument([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, doc)
	}
	tests := []struct {
		q    string
		want string
	}{
		// Twins without the property are one group whose row has no v; 2 and 2.0 are one
		// number; the empty string is a version like any other.
		{versionQuery, `[{"n":1},{"n":2,"v":2},{"n":1,"v":""},{"n":1,"v":"1.0.0"},{"n":2,"v":"2.1.0"}]`},
		{"SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices WHERE tags.ring = 'prod' GROUP BY properties.reported.firmwareVersion",
			`[{"n":1},{"n":1,"v":2},{"n":1,"v":"2.1.0"}]`},
		{"SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices WHERE tags.ring = 'none' GROUP BY properties.reported.firmwareVersion", `[]`},
		{"SELECT COUNT() AS n FROM devices", `[{"n":7}]`},
		{"SELECT COUNT() FROM devices WHERE tags.ring = 'none'", `[{"$1":0}]`},
		// null is a value of its own, apart from the missing property.
		{"SELECT tags.v AS v, COUNT() AS n FROM devices GROUP BY tags.v", `[{"n":4},{"n":2,"v":null},{"n":1,"v":{"a":[1,2],"b":1}}]`},
		// SUM and AVG: undefined where a value is not a number or none is there.
		{"SELECT tags.ring AS ring, COUNT() AS n, SUM(tags.n) AS s, AVG(tags.n) AS a FROM devices GROUP BY tags.ring",
			`[{"n":1},{"n":2,"ring":"beta"},{"a":-4.5,"n":1,"ring":"lab","s":-4.5},{"a":2.3333333333333335,"n":3,"ring":"prod","s":7}]`},
		// MIN and MAX order across types: numbers before strings.
		{"SELECT MIN(tags.n) AS lo, MAX(tags.n) AS hi, COUNT() AS n FROM devices", `[{"hi":"x","lo":-4.5,"n":7}]`},
		{"SELECT MIN(tags.n) AS lo, MAX(tags.n) AS hi FROM devices WHERE tags.ring = 'prod'", `[{"hi":5,"lo":1}]`},
		// A sum beyond float64 is undefined: JSON has no infinity.
		{"SELECT SUM(tags.big) AS s, MAX(tags.big) AS m, COUNT() AS n FROM devices", `[{"m":1e308,"n":7}]`},
		{"SELECT MAX(tags.v) AS hi, MIN(tags.missing) AS lo, SUM(tags.missing) AS s FROM devices", `[{}]`},
		{"SELECT tags.ring FROM devices GROUP BY tags.ring", `[{},{"ring":"beta"},{"ring":"lab"},{"ring":"prod"}]`},
		{"SELECT COUNT(), properties.reported.firmwareVersion FROM devices WHERE IS_DEFINED(properties.reported.firmwareVersion) GROUP BY properties.reported.firmwareVersion",
			`[{"$1":2,"firmwareVersion":2},{"$1":1,"firmwareVersion":""},{"$1":1,"firmwareVersion":"1.0.0"},{"$1":2,"firmwareVersion":"2.1.0"}]`},
	}
	for _, tc := range tests {
		t.Run(tc.q, func(t *testing.T) {
			q, err := parseQuery(tc.q)
			if err != nil {
				t.Fatal(err)
			}
			agg := newAggregation(q)
			for _, d := range docs {
				agg.add(d)
			}
			rows := []map[string]any{}
			for _, g := range agg.groups() {
				rows = append(rows, q.row(g))
			}
			got, err := json.Marshal(rows)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("rows\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestGroupToken(t *testing.T) {
	for _, k := range []groupKey{
		{Rank: rankUndefined}, {Rank: rankNull}, {Rank: rankBool}, {Rank: rankBool, Text: "true"},
		{Rank: rankNumber, Num: -1.5}, {Rank: rankNumber}, {Rank: rankString, Text: "2.1.0"}, {Rank: rankString},
		{Rank: rankObject, Text: `{"a":1}`},
	} {
		raw, err := base64.RawURLEncoding.DecodeString(k.token())
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseGroupToken(string(raw))
		if err != nil || got != k {
			t.Errorf("token of %+v read back as %+v, %v", k, got, err)
		}
	}
	for _, bad := range []string{"", "dev-001", "g", "g{", `g{"r":9}`, `g{"r":-1}`, `x{"r":1}`, `g{"r":3,"n":"1"}`} {
		if _, err := parseGroupToken(bad); err == nil || ErrorCode(err) != ErrArgumentInvalid {
			t.Errorf("parseGroupToken(%q) = %v, want ArgumentInvalid", bad, err)
		}
	}
}

func FuzzGroupToken(f *testing.F) {
	f.Add(groupKey{Rank: rankString, Text: "2.1.0"}.token())
	f.Add(groupKey{Rank: rankNumber, Num: 3}.token())
	f.Add("ZGV2LTAwMQ")
	f.Fuzz(func(t *testing.T, s string) {
		raw, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			return
		}
		k, err := parseGroupToken(string(raw))
		if err != nil {
			if ErrorCode(err) != ErrArgumentInvalid {
				t.Fatalf("parseGroupToken(%q) = %v: not ArgumentInvalid", raw, err)
			}
			return
		}
		// An accepted token names a key that orders and comes back the same.
		raw2, _ := base64.RawURLEncoding.DecodeString(k.token())
		if k2, err := parseGroupToken(string(raw2)); err != nil || k2.compare(k) != 0 {
			t.Fatalf("token %q: key %+v reads back as %+v, %v", raw, k, k2, err)
		}
	})
}

// TestQueryGroupBy runs grouped queries through the unchanged amenzhinsky client, which follows
// the continuation of a grouped result from page to page as it does for twins, and by hand.
func TestQueryGroupBy(t *testing.T) {
	h := startHub(t, "")
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	now := time.Now()
	// 250 devices: i%5 == 0 report no version, the others one of 121 versions: more than a
	// page of the client's 100 groups.
	const devices = 250
	want := map[string]int{}
	for i := range devices {
		id := fmt.Sprintf("g%03d", i)
		if _, err := h.putDevice(deviceSpec{ID: id}, "", now); err != nil {
			t.Fatal(err)
		}
		if i%5 == 0 {
			want["(none)"]++
			continue
		}
		v := fmt.Sprintf("1.%d.0", i%121)
		want[v]++
		if _, err := h.patchReported(id, []byte(fmt.Sprintf(`{"firmwareVersion": %q}`, v)), now); err != nil {
			t.Fatal(err)
		}
	}

	got := map[string]int{}
	rows := 0
	err := svc.QueryDevices(ctx, versionQuery, func(row map[string]interface{}) error {
		rows++
		v, ok := row["v"].(string)
		if !ok {
			v = "(none)"
		}
		// The client decodes every page into the same maps, so a row without v would keep
		// the v of the row at its index on the page before: v is taken out once read.
		delete(row, "v")
		n, ok := row["n"].(float64)
		if !ok {
			return fmt.Errorf("row without a count: %v", row)
		}
		if _, dup := got[v]; dup {
			return fmt.Errorf("group %s twice", v)
		}
		got[v] = int(n)
		return nil
	})
	if err != nil {
		t.Fatalf("QueryDevices(%s): %v", versionQuery, err)
	}
	if rows != len(want) || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%d rows, groups %v\nwant %d groups %v", rows, got, len(want), want)
	}

	// By hand: pages of 50 groups, each continuing after the last group of the page before.
	auth := serviceToken(t, h, time.Now().Add(time.Hour))
	post := func(q, maxItems, token string) (*http.Response, []byte) {
		t.Helper()
		body, _ := json.Marshal(map[string]string{"query": q})
		req, _ := http.NewRequest(http.MethodPost, "https://"+h.HTTPSAddr()+"/devices/query?api-version=2020-09-30", bytes.NewReader(body))
		req.Header.Set("Authorization", auth)
		if maxItems != "" {
			req.Header.Set("x-ms-max-item-count", maxItems)
		}
		if token != "" {
			req.Header.Set("x-ms-continuation", token)
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
	var pages []int
	total, token := 0, ""
	var first []map[string]any
	for range 10 {
		res, raw := post(versionQuery, "50", token)
		var page []map[string]any
		if err := json.Unmarshal(raw, &page); err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("page %d: %d %s", len(pages), res.StatusCode, raw)
		}
		if first == nil {
			first = page
		}
		pages = append(pages, len(page))
		for _, r := range page {
			total += int(r["n"].(float64))
		}
		if token = res.Header.Get("x-ms-continuation"); token == "" {
			break
		}
		if len(pages) == 1 {
			// A device that reports a version sorting before the token's, between pages,
			// comes in no later page: the token names the last group sent, not a position.
			if _, err := h.putDevice(deviceSpec{ID: "late"}, "", now); err != nil {
				t.Fatal(err)
			}
			if _, err := h.patchReported("late", []byte(`{"firmwareVersion": "0.9"}`), now); err != nil {
				t.Fatal(err)
			}
		}
	}
	if fmt.Sprint(pages) != "[50 50 22]" || total != devices {
		t.Errorf("pages of %v groups counting %d devices, want [50 50 22] and %d", pages, total, devices)
	}
	if _, ok := first[0]["v"]; ok || first[0]["n"] != float64(want["(none)"]) {
		t.Errorf("first group = %v, want the devices without a version first: {n: %d}", first[0], want["(none)"])
	}

	// Without GROUP BY an aggregate is one row in one page, whatever the page size.
	res, raw := post("SELECT COUNT() AS n, MIN(properties.reported.firmwareVersion) AS lo FROM devices", "1", "")
	if res.StatusCode != http.StatusOK || string(raw) != `[{"lo":"0.9","n":251}]` || res.Header.Get("x-ms-continuation") != "" {
		t.Errorf("aggregate = %d %s, continuation %q", res.StatusCode, raw, res.Header.Get("x-ms-continuation"))
	}

	// A token this hub did not issue for a grouped query: a twin query's, or garbage.
	twinToken := base64.RawURLEncoding.EncodeToString([]byte("g100"))
	for _, tok := range []string{twinToken, "!!"} {
		res, raw := post(versionQuery, "", tok)
		var body errorBody
		if err := json.Unmarshal(raw, &body); err != nil || res.StatusCode != http.StatusBadRequest || body.ErrorCode != 400004 ||
			!strings.Contains(body.Message, "x-ms-continuation is not a token this hub issued") {
			t.Errorf("token %q = %d %s", tok, res.StatusCode, raw)
		}
	}

	// Refusals reach the client as IoT Hub's 400 with where and why.
	for q, want := range map[string]string{
		"SELECT * FROM devices GROUP BY properties.reported.firmwareVersion":                                 "column 23: SELECT * cannot be grouped",
		"SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices GROUP BY tags.ring":      "column 8: properties.reported.firmwareVersion is neither aggregated nor grouped",
		"SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices GROUP BY tags.a, tags.b": "GROUP BY takes one property",
	} {
		err := svc.QueryDevices(ctx, q, func(map[string]interface{}) error { return nil })
		code, eb := requestError(t, err)
		if code != http.StatusBadRequest || !strings.HasPrefix(eb.Message, "ErrorCode:ArgumentInvalid;query: syntax error at line 1, ") || !strings.Contains(eb.Message, want) {
			t.Errorf("%s = %d %+v, want 400 saying %q", q, code, eb, want)
		}
	}
}
