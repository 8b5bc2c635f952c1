package activities

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/sim/fleet"
	"github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/internal/testlog"
)

// Queries of a fleet bigger than a page, against a real localhub, which pages as IoT Hub does:
// x-ms-max-item-count up to 1,000 and the x-ms-continuation token.

// pagedFleetSize is enough devices for three pages of 1,000, the last one short.
const pagedFleetSize = 2500

func pagedID(i int) string { return fmt.Sprintf("p-%04d", i) }

// pageLog is a Hub that records every page requested of the hub underneath and what came back:
// the calls the query cost the hub's quota.
type pageLog struct {
	Hub

	mu    sync.Mutex
	pages []loggedPage
}

type loggedPage struct {
	size  int
	token string
	rows  int
	next  bool // the hub handed out a token for another page
	err   error
}

func (l *pageLog) QueryPage(ctx context.Context, query string, size int, token string) (hubconn.TwinPage, error) {
	p, err := l.Hub.QueryPage(ctx, query, size, token)
	l.mu.Lock()
	l.pages = append(l.pages, loggedPage{size: size, token: token, rows: len(p.Twins), next: p.Next != "", err: err})
	l.mu.Unlock()
	return p, err
}

// take returns the pages logged since the last take.
func (l *pageLog) take() []loggedPage {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.pages
	l.pages = nil
	return p
}

func queryPageOn(t *testing.T, a *Activities, in QueryDevicesPageInput) (QueryDevicesPageResult, error) {
	t.Helper()
	env, _ := newEnv(t, a)
	val, err := env.ExecuteActivity((&Activities{}).QueryDevicesPage, in)
	var res QueryDevicesPageResult
	if err == nil {
		require.NoError(t, val.Get(&res))
	}
	return res, err
}

func TestQueryPagesOnLocalhub(t *testing.T) {
	h := startLocalhub(t, func(o *hub.Options) { o.Unlimited = true })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want := make([]string, pagedFleetSize)
	for i := range want {
		want[i] = pagedID(i)
	}
	// 25 bulk requests of 100, one at a time (see TestQueryDevicesOnLocalhub).
	_, err := fleet.Register(ctx, h.svc.Client, want, 1, testlog.Logger(t))
	require.NoError(t, err)
	const all = "SELECT * FROM devices"

	t.Run("query devices reads pages of 1000", func(t *testing.T) {
		log := &pageLog{Hub: h.svc}
		res, _, err := queryOn(t, &Activities{Hub: log}, QueryDevicesInput{Query: all})
		require.NoError(t, err)
		assert.Equal(t, want, ids(res.Devices), "every device once, in the hub's order")
		assert.Equal(t, 3, res.Pages)
		pages := log.take()
		require.Len(t, pages, 3, "three requests to the hub")
		for i, p := range pages {
			assert.Equal(t, 1000, p.size, "page %d asked for", i+1)
			assert.Equal(t, i == 0, p.token == "", "page %d sends the token of the one before", i+1)
		}
		assert.Equal(t, []int{1000, 1000, 500}, []int{pages[0].rows, pages[1].rows, pages[2].rows})
		assert.False(t, pages[2].next, "the last page has no token")
	})

	t.Run("a page at a time, resumed by a fresh worker", func(t *testing.T) {
		log := &pageLog{Hub: h.svc}
		first, err := queryPageOn(t, &Activities{Hub: log}, QueryDevicesPageInput{Query: all, Properties: []string{"firmwareVersion"}})
		require.NoError(t, err)
		assert.Len(t, first.Devices, 1000, "PageSize 0 is 1,000")
		assert.Equal(t, 1000, first.Rows)
		require.NotEmpty(t, first.Next)
		require.Len(t, log.take(), 1, "one request")

		// The token is all a fresh worker, with a client of its own, needs to read on.
		got := ids(first.Devices)
		token := first.Next
		fresh := &pageLog{Hub: h.serviceClient(t, h.ServiceConnectionString())}
		var sizes []int
		for token != "" {
			page, err := queryPageOn(t, &Activities{Hub: fresh}, QueryDevicesPageInput{Query: all, Token: token, PageSize: 700})
			require.NoError(t, err)
			require.LessOrEqual(t, len(page.Devices), 700)
			sizes = append(sizes, len(page.Devices))
			got = append(got, ids(page.Devices)...)
			token = page.Next
		}
		assert.Equal(t, []int{700, 700, 100}, sizes)
		assert.Equal(t, want, got, "every device exactly once, in order")
		assert.Len(t, fresh.take(), 3, "one request a page")
	})

	t.Run("the same token twice is the same page", func(t *testing.T) {
		a := &Activities{Hub: h.svc}
		first, err := queryPageOn(t, a, QueryDevicesPageInput{Query: all, PageSize: 10})
		require.NoError(t, err)
		p1, err := queryPageOn(t, a, QueryDevicesPageInput{Query: all, PageSize: 10, Token: first.Next})
		require.NoError(t, err)
		p2, err := queryPageOn(t, a, QueryDevicesPageInput{Query: all, PageSize: 10, Token: first.Next})
		require.NoError(t, err)
		assert.Equal(t, want[10:20], ids(p1.Devices))
		assert.Equal(t, p1, p2, "a retried page reads the same page")
	})

	t.Run("a token the hub did not issue", func(t *testing.T) {
		_, err := queryPageOn(t, &Activities{Hub: h.svc}, QueryDevicesPageInput{Query: all, Token: "not a token!"})
		requireNonRetryable(t, err, ErrBadRequest)
		for _, s := range []string{"HTTP 400", "x-ms-continuation is not a token this hub issued", "read the query again from the first page, without a token"} {
			assert.Contains(t, err.Error(), s)
		}
	})

	t.Run("page size", func(t *testing.T) {
		// Refused, as localhub and IoT Hub refuse x-ms-max-item-count over 1,000, not clamped,
		// and before any request.
		log := &pageLog{Hub: h.svc}
		for _, size := range []int{1001, -1} {
			_, err := queryPageOn(t, &Activities{Hub: log}, QueryDevicesPageInput{Query: all, PageSize: size})
			requireNonRetryable(t, err, ErrBadRequest)
			assert.Contains(t, err.Error(), "1 to 1000 twins a page")
		}
		assert.Empty(t, log.take())

		res, err := queryPageOn(t, &Activities{Hub: log}, QueryDevicesPageInput{Query: all, PageSize: 1})
		require.NoError(t, err)
		assert.Equal(t, []string{want[0]}, ids(res.Devices))
	})

	t.Run("filtered, across pages", func(t *testing.T) {
		// Every tenth device, in pages of 100: the hub skips the others inside each page.
		q := "SELECT * FROM devices WHERE deviceId IN ["
		var tenth []string
		for i := 0; i < pagedFleetSize; i += 10 {
			if len(tenth) > 0 {
				q += ", "
			}
			q += "'" + pagedID(i) + "'"
			tenth = append(tenth, pagedID(i))
		}
		q += "]"
		var got []string
		pages := 0
		for token := ""; pages == 0 || token != ""; pages++ {
			page, err := queryPageOn(t, &Activities{Hub: h.svc}, QueryDevicesPageInput{Query: q, Token: token, PageSize: 100})
			require.NoError(t, err)
			got = append(got, ids(page.Devices)...)
			token = page.Next
		}
		assert.Equal(t, tenth, got)
		assert.Equal(t, 3, pages, "250 devices in pages of 100")
	})
}
