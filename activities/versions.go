package activities

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/protocol"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
)

// The compliance view: how many devices report each firmwareVersion, from one grouped query.
//
//	SELECT properties.reported.firmwareVersion AS v, COUNT() AS n
//	  FROM devices [WHERE condition] GROUP BY properties.reported.firmwareVersion
//
// IoT Hub answers a row per version, {"n": 6, "v": "2.1.0"}, and one row without v for the
// devices that report none (an undefined value is left out of a projection). The query costs one
// query of the hub's quota per page of up to 1,000 versions, whatever the fleet's size, where
// listing the twins would cost one per 1,000 devices.

// versionsPath is the grouped property: the version a device reports it runs.
const versionsPath = "properties.reported." + protocol.PropFirmwareVersion

// conditionExample is the condition the errors about a fleet query show.
const conditionExample = "tags.ring = 'beta'"

// VersionsQuery is the grouped query CountVersions runs for the devices matching condition (a
// WHERE clause without the keyword; "" for every device).
func VersionsQuery(condition string) string {
	where := ""
	if condition != "" {
		where = " WHERE " + condition
	}
	return "SELECT " + versionsPath + " AS v, COUNT() AS n FROM devices" + where + " GROUP BY " + versionsPath
}

// whereForm reads a condition given with its keyword: WHERE tags.ring = 'beta'.
var whereForm = regexp.MustCompile(`(?is)^\s*WHERE\b\s*(.*?)\s*$`)

// selectForm spots a query of another form than SELECT * FROM devices, to say what to give instead.
var selectForm = regexp.MustCompile(`(?is)^\s*SELECT\b`)

// FleetCondition reads which devices a fleet view counts, given the way people write it: a
// condition (tags.ring = 'beta'), the same with its WHERE, a whole SELECT * FROM devices [WHERE
// …] query, or "" for every device. It returns the condition alone ("" for every device), or an
// error that names the fix. It checks what it can without a parser of IoT Hub's language (the
// form, GROUP BY, quotes and parentheses, the hub's length limit); the hub checks the rest.
func FleetCondition(query string) (string, error) {
	q := strings.TrimSpace(query)
	switch {
	case q == "":
		return "", nil
	case selectForm.MatchString(q):
		cond, ok := DeviceQueryCondition(q)
		if !ok {
			return "", fmt.Errorf("query %s is not of the form SELECT * FROM devices [WHERE …]: give the devices to count as a condition, e.g. %s, or as SELECT * FROM devices WHERE %[2]s",
				quoteQuery(q), conditionExample)
		}
		q = strings.TrimSpace(cond)
	default:
		if m := whereForm.FindStringSubmatch(q); m != nil {
			q = m[1]
			if q == "" {
				return "", fmt.Errorf("query %s has WHERE but no condition: give one after it, e.g. WHERE %s, or no query to count every device", quoteQuery(query), conditionExample)
			}
		}
	}
	if err := checkCondition(q); err != nil {
		return "", err
	}
	if n := len(VersionsQuery(q)); n > maxQueryLen {
		return "", fmt.Errorf("query condition of %d characters makes a query of %d, IoT Hub accepts at most %d: shorten the condition", len(q), n, maxQueryLen)
	}
	return q, nil
}

// checkCondition scans a condition outside its string literals: quotes closed, parentheses
// balanced, and no GROUP BY, which the view adds itself.
func checkCondition(cond string) error {
	depth := 0
	var words []string // the last two words outside strings, upper-cased
	for i := 0; i < len(cond); i++ {
		c := cond[i]
		switch {
		case c == '\'' || c == '"':
			j := i + 1
			for ; j < len(cond) && cond[j] != c; j++ {
				if cond[j] == '\\' {
					j++
				}
			}
			if j >= len(cond) {
				return fmt.Errorf("query condition %s: the string at character %d is not closed: end it with %c", quoteQuery(cond), i+1, c)
			}
			i = j
			words = nil
		case c == '(':
			depth++
		case c == ')':
			if depth--; depth < 0 {
				return fmt.Errorf("query condition %s: the ) at character %d closes no (: remove it or open one before", quoteQuery(cond), i+1)
			}
		case isConditionWordByte(c):
			j := i
			for j < len(cond) && (isConditionWordByte(cond[j]) || (cond[j] >= '0' && cond[j] <= '9') || cond[j] == '.') {
				j++
			}
			words = append(words, strings.ToUpper(cond[i:j]))
			if n := len(words); n >= 2 && words[n-2] == "GROUP" && words[n-1] == "BY" {
				return fmt.Errorf("query condition %s has GROUP BY: fleet versions groups by %s itself: give only the condition, e.g. %s",
					quoteQuery(cond), versionsPath, conditionExample)
			}
			i = j - 1
		}
	}
	if depth > 0 {
		return fmt.Errorf("query condition %s opens %d ( more than it closes: close them", quoteQuery(cond), depth)
	}
	return nil
}

func isConditionWordByte(c byte) bool {
	return c == '_' || c == '$' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

// quoteQuery quotes a query for a one-line message, shortened.
func quoteQuery(q string) string { return strconv.Quote(shorten(q, 120)) }

// CountVersionsInput asks how many devices report each firmware version.
type CountVersionsInput struct {
	// Condition selects the devices to count: an IoT Hub WHERE clause without the keyword, or
	// anything else FleetCondition reads; "" counts every device.
	Condition string `json:"condition,omitempty"`
	// Rate, when set, draws a token for every page requested.
	Rate *HubRate `json:"rate,omitempty"`
}

// VersionCount is how many devices report one firmware version.
type VersionCount struct {
	// Version is the reported firmwareVersion; a value that is not a string (a number, say)
	// is written as JSON (2, true).
	Version string `json:"version"`
	Devices int    `json:"devices"`
}

// VersionCounts is the fleet's firmware versions, from one grouped query.
type VersionCounts struct {
	// Query is the query run.
	Query string `json:"query"`
	// Versions are the versions reported, by devices descending, then version ascending with
	// numbers in it compared as numbers (1.9.0 before 1.10.0).
	Versions []VersionCount `json:"versions"`
	// None is how many devices report no firmwareVersion.
	None int `json:"none"`
	// Total is every device counted: the sum of Versions and None.
	Total int `json:"total"`
	// Pages is the number of query pages read: the calls the count cost the hub's quota.
	Pages int `json:"pages"`
}

// CountVersionsProgress is what CountVersions records in its heartbeat details after every page.
// A retried attempt starts over from the first page: a count must come from one reading.
type CountVersionsProgress struct {
	Pages    int `json:"pages"`
	Versions int `json:"versions"`
	Devices  int `json:"devices"`
}

// CountVersions counts the devices that report each firmwareVersion, and those that report none,
// among the devices matching in.Condition, from one GROUP BY query: one query of the hub's quota
// per page of up to 1,000 versions. Like QueryDevicesPage it draws a token of the hub budget (and
// of in.Rate) before every page, and it follows every page's continuation token. A version that
// comes on two pages is added up.
//
// Errors: a condition FleetCondition refuses → ErrBadRequest before any call; a query the hub
// refuses (HTTP 400, with its reason and position) → ErrBadRequest; throttling (429), server and
// network errors, and an answer that is not rows of counts → a plain error, which Temporal
// retries with the count started over.
func (a *Activities) CountVersions(ctx context.Context, in CountVersionsInput) (VersionCounts, error) {
	cond, err := FleetCondition(in.Condition)
	if err != nil {
		return VersionCounts{}, badRequest("count versions: %v", err)
	}
	query := VersionsQuery(cond)
	logger := log.With(activity.GetLogger(ctx), "query", query)
	if problem := in.Rate.problem(); problem != "" {
		return VersionCounts{}, badRequest("count versions: %s", problem)
	}
	if a.Hub == nil {
		return VersionCounts{}, errNoHub
	}

	counts := map[string]int{}
	out := VersionCounts{Query: query}
	var progress CountVersionsProgress
	beat := func() { activity.RecordHeartbeat(ctx, progress) }
	token := ""
	for {
		if err := a.takeToken(ctx, hubCall{op: opQueries}, in.Rate, beat); err != nil {
			return VersionCounts{}, tokenError(ctx, logger, err)
		}
		page, err := a.Hub.QueryPage(ctx, query, hubconn.MaxQueryPageSize, token)
		if ctx.Err() != nil {
			return VersionCounts{}, ctx.Err()
		}
		if err != nil {
			err = conditionColumn(classifyQuery(err, token), query)
			logger.Warn("count versions failed", "error", err, "pages", out.Pages)
			return VersionCounts{}, err
		}
		out.Pages++
		for i, raw := range page.Twins {
			version, reported, n, err := versionRow(raw)
			if err != nil {
				return VersionCounts{}, fmt.Errorf("count versions: row %d of page %d: %w", i+1, out.Pages, err)
			}
			if reported {
				counts[version] += n
			} else {
				out.None += n
			}
			out.Total += n
		}
		progress = CountVersionsProgress{Pages: out.Pages, Versions: len(counts), Devices: out.Total}
		beat()
		if token = page.Next; token == "" {
			break
		}
	}
	out.Versions = make([]VersionCount, 0, len(counts))
	for v, n := range counts {
		out.Versions = append(out.Versions, VersionCount{Version: v, Devices: n})
	}
	SortVersions(out.Versions)
	logger.Info("versions counted", "versions", len(out.Versions), "none", out.None, "devices", out.Total, "pages", out.Pages)
	return out, nil
}

// conditionColumn adds to a query the hub refused where the condition starts in it: the hub's
// line and column are the whole query's, and the condition is all the caller wrote.
func conditionColumn(err error, query string) error {
	var appErr *temporal.ApplicationError
	i := strings.Index(query, " WHERE ")
	if i < 0 || !errors.As(err, &appErr) || appErr.Type() != ErrBadRequest {
		return err
	}
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("%s (the condition starts at line 1, column %d of the query)", appErr.Message(), i+len(" WHERE ")+1),
		ErrBadRequest, appErr.Unwrap())
}

// versionRow reads a row of the grouped query: the version (reported false for the devices that
// report none, whose row has no v, or a null one) and the count.
func versionRow(raw json.RawMessage) (version string, reported bool, n int, err error) {
	var row struct {
		V json.RawMessage `json:"v"`
		N json.RawMessage `json:"n"`
	}
	if err := json.Unmarshal(raw, &row); err != nil {
		return "", false, 0, fmt.Errorf("not an object of a version and a count: %s", shorten(string(raw), 200))
	}
	if row.N == nil {
		return "", false, 0, fmt.Errorf("no count (n) in %s", shorten(string(raw), 200))
	}
	count, err := strconv.Atoi(string(row.N))
	if err != nil || count < 0 {
		return "", false, 0, fmt.Errorf("count %s is not a number of devices", shorten(string(row.N), 40))
	}
	switch v := strings.TrimSpace(string(row.V)); {
	case v == "" || v == "null":
		return "", false, count, nil
	case v[0] == '"':
		var s string
		if err := json.Unmarshal(row.V, &s); err != nil {
			return "", false, 0, fmt.Errorf("version %s: %w", shorten(v, 200), err)
		}
		return s, true, count, nil
	default:
		return v, true, count, nil
	}
}

// SortVersions orders counts by devices descending, then by version (compareVersions).
func SortVersions(vs []VersionCount) {
	slices.SortFunc(vs, func(a, b VersionCount) int {
		if c := cmp.Compare(b.Devices, a.Devices); c != 0 {
			return c
		}
		return compareVersions(a.Version, b.Version)
	})
}

// compareVersions orders version strings with their runs of digits compared as numbers, so that
// 1.9.0 comes before 1.10.0; versions equal that way are ordered as strings.
func compareVersions(a, b string) int {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		ca, cb := a[i], b[j]
		if isDigit(ca) && isDigit(cb) {
			si, sj := i, j
			for i < len(a) && isDigit(a[i]) {
				i++
			}
			for j < len(b) && isDigit(b[j]) {
				j++
			}
			na, nb := strings.TrimLeft(a[si:i], "0"), strings.TrimLeft(b[sj:j], "0")
			if c := cmp.Compare(len(na), len(nb)); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			continue
		}
		if ca != cb {
			return cmp.Compare(ca, cb)
		}
		i++
		j++
	}
	if c := cmp.Compare(len(a)-i, len(b)-j); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
