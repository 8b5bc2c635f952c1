package hub

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestIfMatch sends every form of If-Match to every route that reads it, as
// raw HTTPS: the Go SDK sends only * and quoted etags, Microsoft's SDKs send
// "*" for an unconditional change, and other clients send bare etags.
func TestIfMatch(t *testing.T) {
	h := startHub(t, "")
	auth := serviceToken(t, h, time.Now().Add(time.Hour))

	routes := []struct {
		name   string
		method string
		path   string // "%s" is the device ID
		body   string
		twin   bool // the route's etag is the twin's, not the identity's
		ok     int  // status of an accepted request
		absent int  // status without If-Match
	}{
		{name: "PUT device", method: http.MethodPut, path: "/devices/%s", body: `{"status":"disabled"}`, ok: http.StatusOK, absent: http.StatusConflict},
		{name: "DELETE device", method: http.MethodDelete, path: "/devices/%s", ok: http.StatusNoContent, absent: http.StatusNoContent},
		{name: "PATCH twin", method: http.MethodPatch, path: "/twins/%s", body: `{"properties":{"desired":{"k":1}}}`, twin: true, ok: http.StatusOK, absent: http.StatusOK},
		{name: "PUT twin", method: http.MethodPut, path: "/twins/%s", body: `{"properties":{"desired":{"k":1}}}`, twin: true, ok: http.StatusOK, absent: http.StatusOK},
	}
	// In ifMatch, {etag} is the route's current etag, {other} the etag of
	// the other kind (the twin's for identity routes and the reverse), a
	// value the client may hold by mistake.
	forms := []struct {
		name    string
		ifMatch string
		absent  bool
		match   bool
	}{
		{name: "absent", absent: true},
		{name: "wildcard", ifMatch: `*`, match: true},
		{name: "quoted wildcard", ifMatch: `"*"`, match: true},
		{name: "quoted wildcard padded", ifMatch: ` "*" `, match: true},
		{name: "current quoted", ifMatch: `"{etag}"`, match: true},
		{name: "current bare", ifMatch: `{etag}`, match: true},
		{name: "current weak", ifMatch: `W/"{etag}"`, match: true},
		{name: "list holding current", ifMatch: `"c3RhbGU=", "{etag}"`, match: true},
		{name: "stale quoted", ifMatch: `"c3RhbGU="`},
		{name: "stale bare", ifMatch: `c3RhbGU=`},
		{name: "empty quotes", ifMatch: `""`},
		{name: "other kind of etag", ifMatch: `"{other}"`},
		{name: "wildcard in a word", ifMatch: `"a*"`},
	}
	for ri, rt := range routes {
		for fi, f := range forms {
			t.Run(rt.name+"/"+f.name, func(t *testing.T) {
				id := fmt.Sprintf("im-%d-%d", ri, fi)
				path := fmt.Sprintf(rt.path, id) + "?api-version=2020-09-30"
				if res, raw := rawRequest(t, h, http.MethodPut, "/devices/"+id+"?api-version=2020-09-30", auth, strings.NewReader(`{}`)); res.StatusCode != http.StatusOK {
					t.Fatalf("create %s = %d %s", id, res.StatusCode, raw)
				}
				deviceTag, twinTag := readETags(t, h, auth, id)
				etag, other := deviceTag, twinTag
				if rt.twin {
					etag, other = twinTag, deviceTag
				}

				header := http.Header{"Authorization": {auth}}
				if !f.absent {
					header.Set("If-Match", strings.NewReplacer("{etag}", etag, "{other}", other).Replace(f.ifMatch))
				}
				res, raw := rawRequestHeader(t, h, rt.method, path, header, strings.NewReader(rt.body))

				want := http.StatusPreconditionFailed
				switch {
				case f.absent:
					want = rt.absent
				case f.match:
					want = rt.ok
				}
				if res.StatusCode != want {
					t.Fatalf("%s If-Match %q = %d %s, want %d", rt.method, header.Get("If-Match"), res.StatusCode, raw, want)
				}
				switch res.StatusCode {
				case http.StatusPreconditionFailed:
					var body errorBody
					if json.Unmarshal(raw, &body) != nil || body.ErrorCode != 412001 || res.Header.Get("iothub-errorcode") != ErrPreconditionFailed {
						t.Errorf("refusal = %s, iothub-errorcode %q; want 412001 PreconditionFailed", raw, res.Header.Get("iothub-errorcode"))
					}
					if d, tw := readETags(t, h, auth, id); d != deviceTag || tw != twinTag {
						t.Errorf("refused request changed the etags from %s/%s to %s/%s", deviceTag, twinTag, d, tw)
					}
				case http.StatusNoContent:
					if res, _ := rawRequest(t, h, http.MethodGet, "/devices/"+id+"?api-version=2020-09-30", auth, nil); res.StatusCode != http.StatusNotFound {
						t.Errorf("deleted device reads %d, want 404", res.StatusCode)
					}
				case http.StatusOK:
					var view struct {
						ETag string `json:"etag"`
					}
					if err := json.Unmarshal(raw, &view); err != nil {
						t.Fatalf("answer %s: %v", raw, err)
					}
					if view.ETag == etag || res.Header.Get("ETag") != `"`+view.ETag+`"` {
						t.Errorf("accepted change: etag %q (was %q), ETag header %q", view.ETag, etag, res.Header.Get("ETag"))
					}
				}
			})
		}
	}
}

// readETags reads a device's identity and twin etags from the JSON bodies
// and checks that the ETag headers carry them in quotes.
func readETags(t *testing.T, h *Hub, auth, id string) (device, twin string) {
	t.Helper()
	read := func(path string) string {
		res, raw := rawRequest(t, h, http.MethodGet, path+"?api-version=2020-09-30", auth, nil)
		var view struct {
			ETag string `json:"etag"`
		}
		if res.StatusCode != http.StatusOK || json.Unmarshal(raw, &view) != nil || view.ETag == "" {
			t.Fatalf("GET %s = %d %s", path, res.StatusCode, raw)
		}
		if got := res.Header.Get("ETag"); got != `"`+view.ETag+`"` {
			t.Errorf("GET %s: ETag header %q, body etag %q", path, got, view.ETag)
		}
		return view.ETag
	}
	return read("/devices/" + id), read("/twins/" + id)
}
