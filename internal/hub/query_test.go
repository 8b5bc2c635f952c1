package hub

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotdevice"
)

func TestParseQuery(t *testing.T) {
	tests := []struct {
		q  string
		ok bool
	}{
		{"SELECT * FROM devices", true},
		{"select * from DEVICES", true},
		{"SELECT * FROM devices WHERE deviceId = 'a'", true},
		{`SELECT * FROM devices WHERE tags.site.city = "Oslo" AND properties.reported.n >= -1.5e2`, true},
		{"SELECT * FROM devices WHERE NOT (status = 'enabled' OR connectionState <> 'Connected')", true},
		{"SELECT * FROM devices WHERE deviceId IN ['a', 'b'] AND deviceId NIN []", true},
		{"SELECT * FROM devices WHERE IS_DEFINED(properties.reported.rebootTime)", true},
		{"SELECT * FROM devices WHERE properties.desired.$version > 1", true},
		{"SELECT * FROM devices WHERE tags.x = null OR tags.y = true", true},
		{"SELECT * FROM devices WHERE deviceId = 'it\\'s'", true},
		{"", false},
		{"SELECT deviceId FROM devices", false},
		{"SELECT * FROM devices.modules", false},
		{"SELECT * FROM devices WHERE", false},
		{"SELECT * FROM devices WHERE deviceId", false},
		{"SELECT * FROM devices WHERE deviceId = ", false},
		{"SELECT * FROM devices WHERE deviceId == 'a'", false},
		{"SELECT * FROM devices WHERE deviceId = 'a", false},
		{"SELECT * FROM devices WHERE (deviceId = 'a'", false},
		{"SELECT * FROM devices WHERE deviceId IN ('a')", false},
		{"SELECT * FROM devices WHERE deviceId = 'a' extra", false},
		{"SELECT * FROM devices WHERE a = 1 ; DROP", false},
		{"SELECT * FROM devices WHERE a = --1", false},
	}
	for _, tc := range tests {
		t.Run(tc.q, func(t *testing.T) {
			_, err := parseQuery(tc.q)
			if (err == nil) != tc.ok {
				t.Errorf("parseQuery = %v, want ok=%v", err, tc.ok)
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

func FuzzParseQuery(f *testing.F) {
	f.Add("SELECT * FROM devices WHERE tags.a.b = 'x' AND (n > 1 OR NOT IS_DEFINED(c)) AND d IN [1, 'two', null]")
	f.Add("SELECT * FROM devices WHERE a = \"q\\\"\"")
	f.Add("select * from devices where x nin []")
	f.Fuzz(func(t *testing.T, s string) {
		q, err := parseQuery(s)
		if err != nil || q.where == nil {
			return
		}
		doc := map[string]any{"a": "x", "n": json.Number("2"), "tags": map[string]any{"a": map[string]any{"b": "x"}}}
		q.where.eval(doc) // must not panic
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
