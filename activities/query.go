package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"unicode/utf8"

	"github.com/dmflow/dmflow/internal/hubconn"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
)

const (
	// maxQueryLen is IoT Hub's limit on the text of a query.
	maxQueryLen = 8192
	// queryExample is the query the errors about a query's form show.
	queryExample = "SELECT * FROM devices WHERE tags.ring = 'beta'"
)

// queryForm matches the queries QueryDevices runs: whole twins of devices, filtered or not.
// Keywords are case-insensitive as in IoT Hub; the condition is left to the hub, which says where
// it fails to parse. Group 1 is the condition. The rule is here once: Rollout's validation and
// target query use it through DeviceQueryCondition.
var queryForm = regexp.MustCompile(`(?is)^\s*SELECT\s*\*\s*FROM\s+devices(?:\s+WHERE\b\s*(\S.*?))?\s*$`)

// DeviceQueryCondition reports whether q is a query QueryDevices runs (SELECT * FROM devices
// [WHERE …]) and returns its condition ("" when it has none).
func DeviceQueryCondition(q string) (condition string, ok bool) {
	m := queryForm.FindStringSubmatch(q)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// QueryDevicesInput asks for the devices an IoT Hub device query selects.
type QueryDevicesInput struct {
	// Query is an IoT Hub query of the form SELECT * FROM devices [WHERE …].
	Query string `json:"query"`
	// Properties are dotted paths into each twin's reported properties to return with each device,
	// e.g. "firmwareVersion"; at most 32.
	Properties []string `json:"properties,omitempty"`
	// MaxDevices fails the activity with the non-retryable ErrTooManyDevices when the query selects
	// more devices; zero means no limit.
	MaxDevices int `json:"maxDevices,omitempty"`
	// Rate, when set, draws a token for every page requested.
	Rate *HubRate `json:"rate,omitempty"`
}

// QueriedDevice is one device a query selected.
type QueriedDevice struct {
	DeviceID string `json:"id"`
	// Reported maps each requested property the device reports (not null) to its value.
	Reported map[string]any `json:"reported,omitempty"`
}

// QueryDevicesResult is every device the query selected, in the hub's order.
type QueryDevicesResult struct {
	Devices []QueriedDevice `json:"devices"`
	// Pages is the number of query pages read: the calls the query cost the hub's quota.
	Pages int `json:"pages"`
}

// QueryDevicesProgress is what QueryDevices records in its heartbeat details after every page:
// counts and the continuation token of the next page, small whatever the fleet's size.
//
// A retried attempt starts the query over from the first page all the same: the token alone
// would skip the devices of the pages already read, which the details do not hold (a page is up
// to 1,000 twins, a rollout up to 20 pages). QueryDevicesPage, with the token kept in workflow
// state between pages, is the form that resumes.
type QueryDevicesProgress struct {
	Pages   int `json:"pages"`
	Devices int `json:"devices"`
	// Next is the continuation token of the page after the last one read; "" before the first
	// page and after the last.
	Next string `json:"next,omitempty"`
}

// ErrTooManyDevices: QueryDevices selected more devices than QueryDevicesInput.MaxDevices.
const ErrTooManyDevices = "TooManyDevices"

// QueryDevices runs an IoT Hub device query and returns the devices it selects, each with the
// requested reported properties, in the hub's order and without repeats.
//
// Queries are the scarcest hub operation (20 a minute per unit on S1, one per page), so the
// activity reads pages of the most twins IoT Hub returns, 1,000, reads each page once, stops
// reading after the page on which the query selects more than in.MaxDevices, and with in.Rate
// draws a token before every page. It heartbeats a QueryDevicesProgress after every page.
//
// Errors: a query not of the form SELECT * FROM devices [WHERE …], or bad properties →
// ErrBadRequest before any call; a query the hub refuses (HTTP 400, with the hub's reason and the
// position of the error) → ErrBadRequest; more than in.MaxDevices devices → ErrTooManyDevices;
// throttling (429), server and network errors → a plain error, which Temporal retries with the
// query started over (see QueryDevicesProgress).
func (a *Activities) QueryDevices(ctx context.Context, in QueryDevicesInput) (QueryDevicesResult, error) {
	logger := log.With(activity.GetLogger(ctx), "query", in.Query)
	if err := in.validate(); err != nil {
		return QueryDevicesResult{}, err
	}
	if a.Hub == nil {
		return QueryDevicesResult{}, errNoHub
	}

	out := QueryDevicesResult{Devices: []QueriedDevice{}}
	var progress QueryDevicesProgress
	beat := func() { activity.RecordHeartbeat(ctx, progress) }
	seen := make(map[string]bool)
	skipped := 0
	for {
		page, err := a.queryPage(ctx, logger, pageRequest{
			query: in.Query, props: in.Properties, token: progress.Next, size: hubconn.MaxQueryPageSize, rate: in.Rate,
		}, beat)
		if err != nil {
			logger.Warn("query failed", "error", err, "pages", out.Pages, "devices", len(out.Devices))
			return QueryDevicesResult{}, err
		}
		out.Pages++
		skipped += page.skipped
		for _, d := range page.Devices {
			// A twin that changed while the query was read may come again on a later page.
			if !seen[d.DeviceID] {
				seen[d.DeviceID] = true
				out.Devices = append(out.Devices, d)
			}
		}
		progress = QueryDevicesProgress{Pages: out.Pages, Devices: len(out.Devices), Next: page.Next}
		beat()
		logger.Debug("query page read", "pages", out.Pages, "devices", len(out.Devices))
		if in.MaxDevices > 0 && len(out.Devices) > in.MaxDevices {
			// Reading on would cost a query per page only to name the exact count.
			err := temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("query devices: the query selects more than %d devices (the limit, maxDevices): %d seen in %s when reading stopped: narrow the query's WHERE clause or split the rollout into rollouts of at most %d devices",
					in.MaxDevices, len(out.Devices), pagesRead(out.Pages), in.MaxDevices),
				ErrTooManyDevices, nil, QueryDevicesProgress{Pages: out.Pages, Devices: len(out.Devices)})
			logger.Warn("query selects too many devices", "error", err)
			return QueryDevicesResult{}, err
		}
		if page.Next == "" {
			break
		}
	}
	if skipped > 0 {
		logger.Warn("query returned rows without a device ID, skipped", "rows", skipped)
	}
	logger.Info("query read", "devices", len(out.Devices), "pages", out.Pages)
	return out, nil
}

// pagesRead is n pages, for a message.
func pagesRead(n int) string {
	if n == 1 {
		return "1 page"
	}
	return fmt.Sprintf("%d pages", n)
}

// QueryDevicesPageInput asks for one page of the devices an IoT Hub device query selects.
type QueryDevicesPageInput struct {
	// Query is an IoT Hub query of the form SELECT * FROM devices [WHERE …].
	Query string `json:"query"`
	// Properties are dotted paths into each twin's reported properties to return with each device,
	// e.g. "firmwareVersion"; at most 32.
	Properties []string `json:"properties,omitempty"`
	// Token is the continuation token the page before returned (QueryDevicesPageResult.Next), sent
	// back unchanged with the same Query; "" asks for the first page.
	Token string `json:"token,omitempty"`
	// PageSize is the most twins the page holds, 1 to 1,000; zero means 1,000, the most IoT Hub
	// returns. A larger one is refused (ErrBadRequest) before any call, as localhub refuses an
	// x-ms-max-item-count over 1,000 with 400, rather than read as 1,000: a caller that sizes its
	// state by PageSize learns of the mistake.
	PageSize int `json:"pageSize,omitempty"`
	// Rate, when set, draws a token before the page is requested.
	Rate *HubRate `json:"rate,omitempty"`
}

// QueryDevicesPageResult is one page of the devices a query selects.
type QueryDevicesPageResult struct {
	// Devices are the page's devices in the hub's order, each once, at most PageSize. A device
	// whose twin changed while the query was read may come again on a later page: a caller
	// gathering pages drops the repeat.
	Devices []QueriedDevice `json:"devices"`
	// Next is the continuation token of the next page, to pass as Token; "" after the last page.
	Next string `json:"next,omitempty"`
	// Rows is the number of twins the page held, rows without a device ID and repeats included.
	Rows int `json:"rows"`
}

// QueryDevicesPage reads one page of an IoT Hub device query: up to in.PageSize devices from
// in.Token on, each with the requested reported properties, and the token of the next page. It
// costs one query of the hub's quota (and one token of in.Rate), whatever the fleet's size, and
// its result is bounded by the page size: a workflow walks a query of any size page by page,
// keeping the token in its state, and a retried page sends the same token again.
//
// It makes one request and does not heartbeat, except while it waits for a token of in.Rate.
//
// Errors are QueryDevices's: bad input → ErrBadRequest before any call; a query or token the hub
// refuses (HTTP 400) → ErrBadRequest, for a token with how to start over; throttling (429),
// server and network errors → a plain error, which Temporal retries.
func (a *Activities) QueryDevicesPage(ctx context.Context, in QueryDevicesPageInput) (QueryDevicesPageResult, error) {
	logger := log.With(activity.GetLogger(ctx), "query", in.Query)
	if err := in.validate(); err != nil {
		return QueryDevicesPageResult{}, err
	}
	if a.Hub == nil {
		return QueryDevicesPageResult{}, errNoHub
	}
	size := in.PageSize
	if size == 0 {
		size = hubconn.MaxQueryPageSize
	}
	page, err := a.queryPage(ctx, logger, pageRequest{
		query: in.Query, props: in.Properties, token: in.Token, size: size, rate: in.Rate,
	}, func() { activity.RecordHeartbeat(ctx) })
	if err != nil {
		logger.Warn("query page failed", "error", err, "resumed", in.Token != "")
		return QueryDevicesPageResult{}, err
	}
	if page.skipped > 0 {
		logger.Warn("query returned rows without a device ID, skipped", "rows", page.skipped)
	}
	logger.Info("query page read", "devices", len(page.Devices), "last", page.Next == "")
	return page.QueryDevicesPageResult, nil
}

// pageRequest is one page of a query to read, after validation.
type pageRequest struct {
	query string
	props []string
	token string
	size  int
	rate  *HubRate
}

// readPage is a page read, with the number of its rows that had no device ID.
type readPage struct {
	QueryDevicesPageResult
	skipped int
}

// queryPage draws a token of r.rate (heartbeating with beat while it waits), requests the page
// and turns its rows into devices, without repeats within the page. Errors come back classified.
func (a *Activities) queryPage(ctx context.Context, logger log.Logger, r pageRequest, beat func()) (readPage, error) {
	if err := a.takeToken(ctx, hubCall{op: opQueries}, r.rate, beat); err != nil {
		return readPage{}, tokenError(ctx, logger, err)
	}
	page, err := a.Hub.QueryPage(ctx, r.query, r.size, r.token)
	if ctx.Err() != nil {
		return readPage{}, ctx.Err()
	}
	if err != nil {
		return readPage{}, classifyQuery(err, r.token)
	}
	out := readPage{QueryDevicesPageResult: QueryDevicesPageResult{
		Devices: make([]QueriedDevice, 0, len(page.Twins)),
		Next:    page.Next,
		Rows:    len(page.Twins),
	}}
	seen := make(map[string]bool, len(page.Twins))
	for _, raw := range page.Twins {
		d, ok := queriedDevice(raw, r.props)
		switch {
		case !ok:
			out.skipped++
		case !seen[d.DeviceID]:
			seen[d.DeviceID] = true
			out.Devices = append(out.Devices, d)
		}
	}
	return out, nil
}

// classifyQuery classifies an error of a query page (see classify). A 400 to a page requested
// with a continuation token says how to start over: IoT Hub gives no code of its own for a token
// it does not take (an expired one, one of another query or hub), and the query's text was
// accepted on the first page.
func classifyQuery(err error, token string) error {
	err = classify(err, "query", "devices")
	var appErr *temporal.ApplicationError
	if token == "" || !errors.As(err, &appErr) || appErr.Type() != ErrBadRequest {
		return err
	}
	return temporal.NewNonRetryableApplicationError(
		appErr.Message()+": a continuation token is valid only with the query that returned it, on the same hub: read the query again from the first page, without a token",
		ErrBadRequest, appErr.Unwrap())
}

// validate checks the input before any call to the hub.
func (in QueryDevicesInput) validate() error {
	if err := validateQuery(in.Query, in.Properties, in.Rate); err != nil {
		return err
	}
	if in.MaxDevices < 0 {
		return badRequest("query devices: maxDevices %d is negative: set it to the most devices the query may select, or 0 for no limit", in.MaxDevices)
	}
	return nil
}

// validate checks the input before any call to the hub.
func (in QueryDevicesPageInput) validate() error {
	if err := validateQuery(in.Query, in.Properties, in.Rate); err != nil {
		return err
	}
	if in.PageSize < 0 || in.PageSize > hubconn.MaxQueryPageSize {
		return badRequest("query devices: page size %d: IoT Hub returns 1 to %d twins a page: set pageSize in that range, or 0 for %[2]d",
			in.PageSize, hubconn.MaxQueryPageSize)
	}
	if err := hubconn.CheckContinuation(in.Token); err != nil {
		return badRequest("query devices: continuation token (%d bytes): %v", len(in.Token), err)
	}
	return nil
}

// validateQuery checks what every query activity takes: the query's form and the properties.
func validateQuery(query string, props []string, rate *HubRate) error {
	if len(query) > maxQueryLen {
		return badRequest("query devices: the query has %d characters, IoT Hub accepts at most %d", len(query), maxQueryLen)
	}
	if !queryForm.MatchString(query) {
		return badRequest("query devices: %q is not of the form SELECT * FROM devices [WHERE …]: target queries select whole twins, e.g. %s",
			shorten(query, 200), queryExample)
	}
	if len(props) > maxTwinProperties {
		return badRequest("query devices: ask for at most %d reported properties, not %d", maxTwinProperties, len(props))
	}
	for _, path := range props {
		if !validPath(path) {
			return badRequest("query devices: property path %q is not a dotted path such as firmware.status", path)
		}
	}
	if problem := rate.problem(); problem != "" {
		return badRequest("query devices: %s", problem)
	}
	return nil
}

// queriedDevice reads the device ID and the requested reported properties out of a twin row;
// ok is false for a row without a device ID (or one that is not a twin).
func queriedDevice(raw json.RawMessage, props []string) (d QueriedDevice, ok bool) {
	var row struct {
		DeviceID   string `json:"deviceId"`
		Properties struct {
			Reported map[string]any `json:"reported"`
		} `json:"properties"`
	}
	// The error is left out: a row that is not an object has no device ID, and in one whose
	// field has another type (reported properties that are not an object) Unmarshal skips that
	// field and decodes the rest.
	_ = json.Unmarshal(raw, &row)
	if row.DeviceID == "" {
		return QueriedDevice{}, false
	}
	d.DeviceID = row.DeviceID
	for _, path := range props {
		if v, found := lookup(row.Properties.Reported, path); found {
			if d.Reported == nil {
				d.Reported = make(map[string]any, len(props))
			}
			d.Reported[path] = v
		}
	}
	return d, true
}

// shorten cuts s to at most n bytes, at a rune boundary, for a message, marking the cut.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
