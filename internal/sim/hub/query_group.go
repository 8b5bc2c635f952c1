package hub

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// Aggregate queries: IoT Hub's SELECT list of aggregates, with or without one GROUP BY path.
//
//	SELECT properties.reported.firmwareVersion AS v, COUNT() AS n
//	  FROM devices [WHERE …] GROUP BY properties.reported.firmwareVersion
//
// answers a row per value of the grouped path, [{"n": 6, "v": "2.1.0"}, …], as IoT Hub's
// "Queries for device and module twins" shows its GROUP BY example. What IoT Hub documents
// (the SELECT and GROUP BY grammars of its query language page):
//   - an aggregate is COUNT(), AVG(path), SUM(path), MIN(path) or MAX(path);
//   - GROUP BY takes one attribute path, and is supported on device twins only (localhub
//     queries nothing else);
//   - aggregate queries are queries like any other: throttled per request (a page is one
//     query of the quota) and billed by result size in 4 KB chunks, so a grouped count costs
//     one query however many twins it counts, where SELECT * pages through all of them.
//
// What IoT Hub leaves undocumented, localhub takes from the query engine of its lineage
// (Cosmos DB), and says so where it refuses:
//   - the twins without the grouped property form one group, whose row has no column for the
//     path (an undefined value is left out of a projection): [{"n": 2}]; a null value is a
//     group of its own, with the column null;
//   - groups come in the order of their values: missing, null, false, true, numbers, strings,
//     arrays and objects (IoT Hub promises no order: callers sort);
//   - a column that is neither aggregated nor the grouped path is refused, as SQL does; a
//     select list without an aggregate and without GROUP BY (a projection, which IoT Hub
//     answers) is refused as something localhub does not implement;
//   - SUM and AVG skip twins without the property and are left out of the row when a value is
//     not a number, no twin has one or the sum overflows; MIN and MAX order values as groups are ordered and are
//     left out when a value is an object or an array, or no twin has one.
//
// A grouped result is paged like twins: x-ms-max-item-count groups a page, and a continuation
// token naming the last group sent, so that a page after a change in the fleet repeats no group.

// Aggregate functions.
const (
	aggCount = "COUNT"
	aggAvg   = "AVG"
	aggSum   = "SUM"
	aggMin   = "MIN"
	aggMax   = "MAX"
)

var aggregates = []string{aggCount, aggAvg, aggSum, aggMin, aggMax}

// groupExample is the grouped query refusals show as the form to follow.
const groupExample = "SELECT properties.reported.firmwareVersion AS v, COUNT() AS n FROM devices GROUP BY properties.reported.firmwareVersion"

// column is one element of an aggregate query's select list.
type column struct {
	fn   string   // an aggregate; "" for a property
	path []string // the property, or the aggregate's argument (nil for COUNT())
	name string   // the alias, or the implicit name
	pos  int      // byte offset of the element, for errors
}

// selectList parses the select list of an aggregate query: elements separated by commas, each
// a property path or an aggregate, optionally followed by AS alias.
func (p *parser) selectList() ([]column, error) {
	var cols []column
	unnamed := 0
	for {
		c, err := p.selectElement()
		if err != nil {
			return nil, err
		}
		switch {
		case p.acceptWord("AS"):
			t := p.peek()
			if p.done() || t.kind != tokWord || isKeyword(t.text) {
				return nil, p.errorf("expected an alias after AS, found %s", p.found())
			}
			p.i++
			c.name = t.text
		case c.fn == "":
			// A property is named by its last segment (SELECT deviceId answers "deviceId").
			c.name = c.path[len(c.path)-1]
		default:
			unnamed++
			c.name = "$" + strconv.Itoa(unnamed)
		}
		cols = append(cols, c)
		if !p.acceptSymbol(",") {
			return cols, nil
		}
	}
}

// selectElement parses a property path or an aggregate call.
func (p *parser) selectElement() (column, error) {
	t := p.peek()
	pos := t.pos
	if !p.done() && t.kind == tokWord {
		for _, fn := range aggregates {
			if !strings.EqualFold(t.text, fn) {
				continue
			}
			p.i++
			if fn == aggCount {
				if !p.acceptSymbol("(") || !p.acceptSymbol(")") {
					return column{}, p.errorf("expected COUNT(), found %s: COUNT takes no argument", p.found())
				}
				return column{fn: fn, pos: pos}, nil
			}
			if !p.acceptSymbol("(") {
				return column{}, p.errorf("expected ( after %s, found %s", fn, p.found())
			}
			if p.acceptSymbol(")") {
				return column{}, &queryError{p.src, pos, fmt.Sprintf("%s takes a property, e.g. %s(properties.reported.temperature)", fn, fn)}
			}
			path, err := p.path()
			if err != nil {
				return column{}, err
			}
			if !p.acceptSymbol(")") {
				return column{}, p.errorf("expected ), found %s: %s takes one property", p.found(), fn)
			}
			return column{fn: fn, path: path, pos: pos}, nil
		}
	}
	if p.done() || t.kind != tokWord || isKeyword(t.text) {
		return column{}, p.errorf("expected *, a property or an aggregate (COUNT(), AVG, SUM, MIN, MAX), found %s", p.found())
	}
	path, err := p.path()
	if err != nil {
		return column{}, err
	}
	return column{path: path, pos: pos}, nil
}

// groupBy parses what follows GROUP: BY and one path.
func (p *parser) groupBy() ([]string, error) {
	if err := p.expectWord("BY"); err != nil {
		return nil, err
	}
	path, err := p.path()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); !p.done() && t.kind == tokSymbol && t.text == "," {
		return nil, p.errorf("GROUP BY takes one property in IoT Hub's query language: group by %s and filter on the others with WHERE", strings.Join(path, "."))
	}
	return path, nil
}

// check refuses what parses but does not make an aggregate query: groupPos is where GROUP BY
// begins (or the end of the query).
func (q query) check(src string, groupPos int) error {
	if q.cols == nil {
		if q.group != nil {
			return &queryError{src, groupPos, "SELECT * cannot be grouped: select the grouped property and aggregates, e.g. " + groupExample}
		}
		return nil
	}
	names := make(map[string]bool, len(q.cols))
	aggregated := false
	for _, c := range q.cols {
		if names[c.name] {
			return &queryError{src, c.pos, fmt.Sprintf("column name %s is used twice: give each column its own alias with AS", c.name)}
		}
		names[c.name] = true
		aggregated = aggregated || c.fn != ""
	}
	for _, c := range q.cols {
		if c.fn != "" {
			continue
		}
		p := strings.Join(c.path, ".")
		switch {
		case q.group != nil && !slices.Equal(c.path, q.group):
			return &queryError{src, c.pos, fmt.Sprintf("%s is neither aggregated nor grouped: select %s, the property grouped by, or an aggregate of it",
				p, strings.Join(q.group, "."))}
		case q.group == nil && aggregated:
			return &queryError{src, c.pos, fmt.Sprintf("%s is not aggregated: with aggregates, select a property only with GROUP BY it, e.g. %s", p, groupExample)}
		case q.group == nil:
			return &queryError{src, c.pos, fmt.Sprintf("localhub does not support projections (SELECT %s): select *, or aggregates (COUNT(), AVG, SUM, MIN, MAX) with or without GROUP BY", p)}
		}
	}
	return nil
}

// groupKey orders the values of a grouped path: by type (typeRank), then by value. It is also
// the continuation token of a grouped result, which names the last group sent.
type groupKey struct {
	Rank int `json:"r"`
	// Num is the value of a number.
	Num float64 `json:"n,omitempty"`
	// Text is a string, or the canonical JSON of an array or an object; "true" or "" for a
	// boolean.
	Text string `json:"t,omitempty"`
}

// Value types in the order groups and MIN/MAX follow.
const (
	rankUndefined = iota
	rankNull
	rankBool
	rankNumber
	rankString
	rankArray
	rankObject
)

// keyOf is the group key of a document value; defined is false for a missing property.
func keyOf(v any, defined bool) groupKey {
	if !defined {
		return groupKey{Rank: rankUndefined}
	}
	switch x := v.(type) {
	case nil:
		return groupKey{Rank: rankNull}
	case bool:
		if x {
			return groupKey{Rank: rankBool, Text: "true"}
		}
		return groupKey{Rank: rankBool}
	case json.Number:
		// A number beyond float64 parses as an infinity, which the token could not carry.
		f, _ := strconv.ParseFloat(x.String(), 64)
		return groupKey{Rank: rankNumber, Num: max(-math.MaxFloat64, min(f, math.MaxFloat64))}
	case float64:
		return groupKey{Rank: rankNumber, Num: x}
	case string:
		return groupKey{Rank: rankString, Text: x}
	case []any:
		return groupKey{Rank: rankArray, Text: canonical(x)}
	default:
		return groupKey{Rank: rankObject, Text: canonical(x)}
	}
}

// canonical is v as JSON with numbers written one way, so that 1 and 1.0 group together.
func canonical(v any) string {
	raw, err := json.Marshal(normalize(v))
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(raw)
}

func normalize(v any) any {
	switch x := v.(type) {
	case json.Number:
		if f, err := x.Float64(); err == nil {
			return f
		}
		return x.String()
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = normalize(e)
		}
		return out
	}
	return v
}

func (a groupKey) compare(b groupKey) int {
	if a.Rank != b.Rank {
		return a.Rank - b.Rank
	}
	if a.Rank == rankNumber {
		switch {
		case a.Num < b.Num:
			return -1
		case a.Num > b.Num:
			return 1
		}
		return 0
	}
	return strings.Compare(a.Text, b.Text)
}

// groupTokenPrefix marks the continuation tokens of grouped results, which take no device ID.
const groupTokenPrefix = "g"

func (a groupKey) token() string {
	raw, _ := json.Marshal(a) // a struct of a number and strings: it encodes
	return base64.RawURLEncoding.EncodeToString(append([]byte(groupTokenPrefix), raw...))
}

// parseGroupToken reads the continuation token of a grouped result, already base64-decoded.
func parseGroupToken(s string) (groupKey, error) {
	var k groupKey
	rest, ok := strings.CutPrefix(s, groupTokenPrefix)
	if !ok || json.Unmarshal([]byte(rest), &k) != nil || k.Rank < rankUndefined || k.Rank > rankObject ||
		math.IsNaN(k.Num) || math.IsInf(k.Num, 0) {
		return groupKey{}, errorf(ErrArgumentInvalid, "x-ms-continuation is not a token this hub issued for a grouped query: send the query again without it")
	}
	return k, nil
}

// group is the twins of one value of the grouped path, or all of them without GROUP BY.
type group struct {
	key   groupKey
	value any // the grouped value, numbers written one way (2.0 is 2)
	count int
	accs  []accumulator // one per column
}

// accumulator folds a column's values over a group's twins.
type accumulator struct {
	sum     float64
	numbers int
	invalid bool // a value SUM/AVG cannot add, or MIN/MAX cannot order
	best    any  // MIN or MAX so far
	bestKey groupKey
	seen    bool
}

func (a *accumulator) add(fn string, v any, defined bool) {
	if !defined || a.invalid {
		return
	}
	switch fn {
	case aggSum, aggAvg:
		k := keyOf(v, true)
		if k.Rank != rankNumber {
			a.invalid = true
			return
		}
		a.sum += k.Num
		a.numbers++
	case aggMin, aggMax:
		k := keyOf(v, true)
		if k.Rank >= rankArray {
			a.invalid = true
			return
		}
		c := k.compare(a.bestKey)
		if !a.seen || (fn == aggMin && c < 0) || (fn == aggMax && c > 0) {
			a.best, a.bestKey, a.seen = v, k, true
		}
	}
}

// result is the column's value for the group; ok is false when it is undefined.
func (a *accumulator) result(fn string, count int) (any, bool) {
	switch fn {
	case aggCount:
		return count, true
	case aggSum, aggAvg:
		// A sum beyond float64 is left out too: JSON has no infinity.
		if a.invalid || a.numbers == 0 || math.IsInf(a.sum, 0) {
			return nil, false
		}
		if fn == aggAvg {
			return a.sum / float64(a.numbers), true
		}
		return a.sum, true
	default:
		return a.best, a.seen && !a.invalid
	}
}

// serveAggregate answers an aggregate query: one row without GROUP BY (in a single page without
// a continuation, whatever x-ms-max-item-count says, as IoT Hub answers COUNT()), else up to
// page groups after the token's.
func (h *Hub) serveAggregate(w http.ResponseWriter, r *http.Request, q query, after string, page int) {
	var from *groupKey
	if q.group != nil && after != "" {
		k, err := parseGroupToken(after)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		from = &k
	}
	groups, err := h.runAggregate(q)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if q.group == nil {
		writeJSON(w, http.StatusOK, []map[string]any{q.row(groups[0])})
		return
	}
	if from != nil {
		i, _ := slices.BinarySearchFunc(groups, *from, func(g *group, k groupKey) int { return g.key.compare(k) })
		for i < len(groups) && groups[i].key.compare(*from) <= 0 {
			i++
		}
		groups = groups[i:]
	}
	if len(groups) > page {
		groups = groups[:page]
		w.Header().Set("x-ms-continuation", groups[page-1].key.token())
	}
	rows := make([]map[string]any, len(groups))
	for i, g := range groups {
		rows[i] = q.row(g)
	}
	writeJSON(w, http.StatusOK, rows)
}

// row is a group's row: a column for the grouped value (left out when the twins lack it) and
// one per aggregate (left out when undefined).
func (q query) row(g *group) map[string]any {
	row := make(map[string]any, len(q.cols))
	for i, c := range q.cols {
		if c.fn == "" {
			if g.key.Rank != rankUndefined {
				row[c.name] = g.value
			}
			continue
		}
		if v, ok := g.accs[i].result(c.fn, g.count); ok {
			row[c.name] = v
		}
	}
	return row
}

// runAggregate folds the twins that match q into groups, in key order: one group, possibly
// empty, without GROUP BY.
func (h *Hub) runAggregate(q query) ([]*group, error) {
	agg := newAggregation(q)
	// COUNT() alone over every twin needs no document.
	needDoc := q.where != nil || q.group != nil || slices.ContainsFunc(q.cols, func(c column) bool { return c.fn != aggCount })
	err := h.store.View(func(tx *store.Tx) error {
		return tx.Devices("", func(d store.Device) (bool, error) {
			var doc map[string]any
			if needDoc {
				tw, err := tx.Twin(d.ID)
				if err != nil {
					return false, fmt.Errorf("twin %s: %w", d.ID, err)
				}
				if doc, err = asDocument(h.twinView(d, tw)); err != nil {
					return false, err
				}
			}
			agg.add(doc)
			return true, nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("run aggregate query: %w", err)
	}
	return agg.groups(), nil
}

// aggregation folds documents into the groups of an aggregate query.
type aggregation struct {
	q     query
	byKey map[groupKey]*group
}

func newAggregation(q query) *aggregation {
	a := &aggregation{q: q, byKey: map[groupKey]*group{}}
	if q.group == nil {
		a.newGroup(groupKey{}, nil)
	}
	return a
}

func (a *aggregation) newGroup(k groupKey, v any) *group {
	g := &group{key: k, value: v, accs: make([]accumulator, len(a.q.cols))}
	a.byKey[k] = g
	return g
}

// add folds doc in when it matches the query's condition; doc is nil only for a query that
// reads nothing of it (COUNT() alone, without WHERE).
func (a *aggregation) add(doc map[string]any) {
	q := a.q
	if q.where != nil && !q.where.eval(doc) {
		return
	}
	var g *group
	if q.group == nil {
		g = a.byKey[groupKey{}]
	} else {
		v, defined := lookup(doc, q.group)
		k := keyOf(v, defined)
		if g = a.byKey[k]; g == nil {
			g = a.newGroup(k, normalize(v))
		}
	}
	g.count++
	for i, c := range q.cols {
		if c.fn != "" && c.fn != aggCount {
			v, defined := lookup(doc, c.path)
			g.accs[i].add(c.fn, v, defined)
		}
	}
}

// groups are the groups in key order.
func (a *aggregation) groups() []*group {
	groups := make([]*group, 0, len(a.byKey))
	for _, g := range a.byKey {
		groups = append(groups, g)
	}
	slices.SortFunc(groups, func(x, y *group) int { return x.key.compare(y.key) })
	return groups
}
