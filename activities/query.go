package activities

import (
	"context"
	"fmt"
	"reflect"
	"regexp"
	"unicode/utf8"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
)

const (
	// maxQueryLen is IoT Hub's limit on the text of a query.
	maxQueryLen = 8192
	// maxQueryPage is the most twins IoT Hub returns in one page (x-ms-max-item-count); the
	// default is 100. It bounds the page count from below when pages cannot be told apart.
	maxQueryPage = 1000
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

// QueryDevicesProgress is what QueryDevices records in its heartbeat details after every page.
// A retried attempt starts the query over: the service client keeps the continuation token to
// itself, so there is nothing to resume from.
type QueryDevicesProgress struct {
	Pages   int `json:"pages"`
	Devices int `json:"devices"`
}

// ErrTooManyDevices: QueryDevices selected more devices than QueryDevicesInput.MaxDevices.
const ErrTooManyDevices = "TooManyDevices"

// QueryDevices runs an IoT Hub device query and returns the devices it selects, each with the
// requested reported properties, in the hub's order and without repeats.
//
// Queries are the scarcest hub operation (20 a minute per unit on S1, one per page of up to 100
// twins), so the activity reads each page once, stops reading as soon as the query selects more
// than in.MaxDevices, and with in.Rate draws a token per page. It heartbeats a
// QueryDevicesProgress after every page.
//
// Errors: a query not of the form SELECT * FROM devices [WHERE …], or bad properties →
// ErrBadRequest before any call; a query the hub refuses (HTTP 400, with the hub's reason and the
// position of the error) → ErrBadRequest; more than in.MaxDevices devices → ErrTooManyDevices;
// throttling (429), server and network errors → a plain error, which Temporal retries with the
// query started over.
func (a *Activities) QueryDevices(ctx context.Context, in QueryDevicesInput) (QueryDevicesResult, error) {
	logger := log.With(activity.GetLogger(ctx), "query", in.Query)
	if err := in.validate(); err != nil {
		return QueryDevicesResult{}, err
	}
	if a.Hub == nil {
		return QueryDevicesResult{}, errNoHub
	}

	out := QueryDevicesResult{Devices: []QueriedDevice{}}
	beat := func() {
		activity.RecordHeartbeat(ctx, QueryDevicesProgress{Pages: out.Pages, Devices: len(out.Devices)})
	}
	if err := a.takeToken(ctx, in.Rate, beat); err != nil {
		return QueryDevicesResult{}, tokenError(ctx, logger, err)
	}
	out.Pages = 1

	var (
		seen     = make(map[string]bool)
		firstRow reflect.Value // the row map of page 1's first twin
		rows     int
		skipped  int
		stop     error // why fn ended the query, returned as is
	)
	err := a.Hub.QueryDevices(ctx, in.Query, func(row map[string]any) error {
		// The client decodes every page into the row maps of the first one, so the first twin
		// of every later page arrives in page 1's first map: that is how a new page shows.
		// (A client that allocated fresh maps would make every query one page; rows/maxQueryPage
		// below still bounds the count from below.)
		if v := reflect.ValueOf(row); !firstRow.IsValid() {
			firstRow = v
		} else if v.UnsafePointer() == firstRow.UnsafePointer() {
			beat()
			logger.Debug("query page read", "pages", out.Pages, "devices", len(out.Devices))
			// The client sent the request for this page as the last page's last twin was
			// handled, before any code here could run: the page's token is drawn now, and the
			// next request waits for it, so the bucket holds the pages to its rate with one
			// page of lead.
			if err := a.takeToken(ctx, in.Rate, beat); err != nil {
				stop = tokenError(ctx, logger, err)
				return stop
			}
			out.Pages++
		}
		rows++

		d, ok := queriedDevice(row, in.Properties)
		// Emptied, the map takes the next page's twin without keys left over from this one.
		clear(row)
		switch {
		case !ok:
			skipped++
			return nil
		case seen[d.DeviceID]:
			return nil
		case in.MaxDevices > 0 && len(out.Devices) == in.MaxDevices:
			// Reading on would cost a query per page only to name the exact count.
			stop = temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("query devices: the query selects more than %d devices (the limit, maxDevices): %d seen in %d pages when reading stopped: narrow the query's WHERE clause or split the rollout into rollouts of at most %d devices",
					in.MaxDevices, len(out.Devices)+1, out.Pages, in.MaxDevices),
				ErrTooManyDevices, nil, QueryDevicesProgress{Pages: out.Pages, Devices: len(out.Devices) + 1})
			return stop
		}
		seen[d.DeviceID] = true
		out.Devices = append(out.Devices, d)
		return nil
	})
	if ctx.Err() != nil {
		return QueryDevicesResult{}, ctx.Err()
	}
	if stop != nil {
		if isNonRetryable(stop) {
			logger.Warn("query selects too many devices", "error", stop)
		}
		return QueryDevicesResult{}, stop
	}
	if err != nil {
		err = classify(err, "query", "devices")
		logger.Warn("query failed", "error", err, "pages", out.Pages, "devices", len(out.Devices))
		return QueryDevicesResult{}, err
	}
	out.Pages = max(out.Pages, (rows+maxQueryPage-1)/maxQueryPage)
	beat()
	if skipped > 0 {
		logger.Warn("query returned rows without a device ID, skipped", "rows", skipped)
	}
	logger.Info("query read", "devices", len(out.Devices), "pages", out.Pages)
	return out, nil
}

// validate checks the input before any call to the hub.
func (in QueryDevicesInput) validate() error {
	if len(in.Query) > maxQueryLen {
		return badRequest("query devices: the query has %d characters, IoT Hub accepts at most %d", len(in.Query), maxQueryLen)
	}
	if !queryForm.MatchString(in.Query) {
		return badRequest("query devices: %q is not of the form SELECT * FROM devices [WHERE …]: target queries select whole twins, e.g. %s",
			shorten(in.Query, 200), queryExample)
	}
	if len(in.Properties) > maxTwinProperties {
		return badRequest("query devices: ask for at most %d reported properties, not %d", maxTwinProperties, len(in.Properties))
	}
	for _, path := range in.Properties {
		if !validPath(path) {
			return badRequest("query devices: property path %q is not a dotted path such as firmware.status", path)
		}
	}
	if in.MaxDevices < 0 {
		return badRequest("query devices: maxDevices %d is negative: set it to the most devices the query may select, or 0 for no limit", in.MaxDevices)
	}
	if problem := in.Rate.problem(); problem != "" {
		return badRequest("query devices: %s", problem)
	}
	return nil
}

// queriedDevice copies the device ID and the requested reported properties out of a twin row;
// ok is false for a row without a device ID. The values are copied, not referenced: the row
// belongs to the client, which decodes the next page into it.
func queriedDevice(row map[string]any, props []string) (d QueriedDevice, ok bool) {
	id, _ := row["deviceId"].(string)
	if id == "" {
		return QueriedDevice{}, false
	}
	d.DeviceID = id
	if len(props) == 0 {
		return d, true
	}
	properties, _ := row["properties"].(map[string]any)
	reported, _ := properties["reported"].(map[string]any)
	for _, path := range props {
		if v, found := lookup(reported, path); found {
			if d.Reported == nil {
				d.Reported = make(map[string]any, len(props))
			}
			d.Reported[path] = copyJSON(v)
		}
	}
	return d, true
}

// copyJSON deep-copies a decoded JSON value.
func copyJSON(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = copyJSON(e)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, e := range v {
			s[i] = copyJSON(e)
		}
		return s
	}
	return v
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
