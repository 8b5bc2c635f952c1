package hubconn

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodePage(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		next    string
		twins   []string
		wantErr string
	}{
		{name: "twins", body: `[{"deviceId":"a"},{"deviceId":"b","tags":{"ring":"beta"}}]`, next: `{"token":"x"}`, twins: []string{`{"deviceId":"a"}`, `{"deviceId":"b","tags":{"ring":"beta"}}`}},
		{name: "last page", body: `[{"deviceId":"a"}]`, twins: []string{`{"deviceId":"a"}`}},
		{name: "no twins", body: `[]`, twins: []string{}},
		{name: "rows that are not twins are the caller's", body: `[1,null,{}]`, twins: []string{`1`, `null`, `{}`}},
		{name: "null", body: `null`, wantErr: "not a list of twins"},
		{name: "object", body: `{"deviceId":"a"}`, wantErr: "not a list of twins"},
		{name: "cut short", body: `[{"deviceId":"a"`, wantErr: "not a list of twins"},
		{name: "html", body: `<html>gateway</html>`, wantErr: `"<html>gateway</html>"`},
		{name: "empty", body: ``, wantErr: "not a list of twins"},
		{name: "token with a newline", body: `[]`, next: "a\nb", wantErr: "cannot be sent back"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := decodePage([]byte(tc.body), tc.next)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			got := make([]string, len(p.Twins))
			for i, tw := range p.Twins {
				got[i] = string(tw)
			}
			assert.Equal(t, tc.twins, got)
			assert.Equal(t, tc.next, p.Next)
		})
	}

	_, err := decodePage([]byte(strings.Repeat("x", 1000)), "")
	assert.Less(t, len(err.Error()), 400, "the body is cut in the message")
}

func TestCheckContinuation(t *testing.T) {
	for _, tc := range []struct {
		token string
		ok    bool
	}{
		{"", true},
		{"cS0xMjM", true},
		{`{"token":"+RID:~abc==#RT:1#TRC:1000","range":{"min":"","max":"FF"}}`, true},
		{"a b", true},
		{"a\nb", false},
		{"a\r\nX-Injected: 1", false},
		{"tab\there", false},
		{"ø", false},
		{"\x7f", false},
	} {
		t.Run(tc.token, func(t *testing.T) {
			err := CheckContinuation(tc.token)
			if tc.ok {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.NotContains(t, err.Error(), tc.token, "the token is not quoted")
		})
	}
}

func TestQueryPage(t *testing.T) {
	type request struct {
		path, apiVersion, auth, maxItems, continuation string
		hasContinuation                                bool
		body                                           map[string]string
	}
	var got []request
	c, _ := hubAt(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := request{
			path:         r.URL.Path,
			apiVersion:   r.URL.Query().Get("api-version"),
			auth:         r.Header.Get("Authorization"),
			maxItems:     r.Header.Get("x-ms-max-item-count"),
			continuation: r.Header.Get("x-ms-continuation"),
		}
		_, req.hasContinuation = r.Header["X-Ms-Continuation"]
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &req.body)
		got = append(got, req)
		switch req.continuation {
		case "":
			w.Header().Set("x-ms-continuation", "page-2")
			_, _ = io.WriteString(w, `[{"deviceId":"a"},{"deviceId":"b"}]`)
		case "page-2":
			_, _ = io.WriteString(w, `[{"deviceId":"c"}]`)
		default:
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"Message":"ErrorCode:ArgumentInvalid;bad continuation token","ErrorCode":400004}`)
		}
	}))
	ctx := context.Background()
	const q = "SELECT * FROM devices WHERE tags.ring = 'beta'"

	p, err := c.QueryPage(ctx, q, 2, "")
	require.NoError(t, err)
	assert.Len(t, p.Twins, 2)
	assert.Equal(t, "page-2", p.Next)

	p, err = c.QueryPage(ctx, q, MaxQueryPageSize, p.Next)
	require.NoError(t, err)
	assert.JSONEq(t, `{"deviceId":"c"}`, string(p.Twins[0]))
	assert.Empty(t, p.Next, "the last page")

	require.Len(t, got, 2)
	for _, r := range got {
		assert.Equal(t, "/devices/query", r.path)
		assert.Equal(t, apiVersion, r.apiVersion)
		assert.True(t, strings.HasPrefix(r.auth, "SharedAccessSignature sr="), "signed: %q", r.auth)
		assert.Equal(t, map[string]string{"query": q}, r.body)
	}
	assert.Equal(t, "2", got[0].maxItems)
	assert.False(t, got[0].hasContinuation, "the first page sends no token")
	assert.Equal(t, "1000", got[1].maxItems)
	assert.Equal(t, "page-2", got[1].continuation)

	_, err = c.QueryPage(ctx, q, 10, "stale")
	var re *iotservice.RequestError
	require.True(t, errors.As(err, &re), "%v", err)
	assert.Equal(t, http.StatusBadRequest, re.Code)
	assert.Contains(t, string(re.Body), "400004")

	// Refused before any request.
	n := len(got)
	for _, size := range []int{0, -1, MaxQueryPageSize + 1} {
		_, err = c.QueryPage(ctx, q, size, "")
		assert.ErrorContains(t, err, "1 to 1000 twins a page")
	}
	_, err = c.QueryPage(ctx, q, 10, "a\r\nb")
	assert.ErrorContains(t, err, "printable ASCII")
	assert.Len(t, got, n)
}
