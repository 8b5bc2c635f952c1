package hub

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// Device queries (POST /devices/query) support the subset of IoT Hub's query
// language that selects twins and aggregates them:
//
//	SELECT * FROM devices [WHERE condition]
//	SELECT aggregate [AS alias], … FROM devices [WHERE condition]
//	SELECT path [AS alias], aggregate [AS alias], … FROM devices [WHERE condition] GROUP BY path
//
// where a condition combines, with AND, OR, NOT and parentheses,
// comparisons of a twin path (deviceId, status, connectionState,
// tags.a.b, properties.reported.x, …) with a literal ('string', "string",
// number, true, false, null) using = != <> < <= > >=, membership tests
// path IN [literal, …] and path NIN [literal, …], and IS_DEFINED(path).
// Keywords are case-insensitive, paths and values are not. Strings take the
// JSON escapes (\' \" \\ \/ \b \f \n \r \t \uNNNN). Comparing values of
// different types, or a missing property, is false.
//
// The aggregates are IoT Hub's: COUNT(), AVG(path), SUM(path), MIN(path) and
// MAX(path); GROUP BY takes one path (query_group.go has the rules and
// the refusals). Without GROUP BY an aggregate query answers one row,
// [{"alias": n}], whatever the page size; a column without AS is named "$1",
// "$2", … as SQL engines of IoT Hub's lineage (Cosmos DB) name unnamed
// projections. With GROUP BY it answers a row per value of the path, paged
// like twins.
//
// A query that does not parse is refused with the 1-based line and column of
// the offending token and the reason.
// Pages hold x-ms-max-item-count twins or groups (default 100, at most 1000); a
// response with more to come carries an x-ms-continuation header to send
// back with the same query.

const (
	defaultQueryPage = 100
	maxQueryPage     = 1000
	maxQueryLen      = 8192 // IoT Hub's limit on query text
)

// query is a parsed device query.
type query struct {
	where expr // nil selects every twin
	// cols are the columns of an aggregate query (query_group.go); nil for SELECT *.
	cols []column
	// group is the GROUP BY path; nil without GROUP BY.
	group []string
}

// queryError is a syntax error at a byte offset of the query text.
type queryError struct {
	src    string
	pos    int // byte offset; len(src) for the end of the query
	reason string
}

func (e *queryError) Error() string {
	line, col := 1, 1
	for _, r := range e.src[:min(e.pos, len(e.src))] {
		if r == '\n' {
			line, col = line+1, 1
			continue
		}
		col++
	}
	return fmt.Sprintf("syntax error at line %d, column %d: %s", line, col, e.reason)
}

// expr is a condition evaluated against a twin document.
type expr interface {
	eval(doc map[string]any) bool
}

type andExpr struct{ l, r expr }
type orExpr struct{ l, r expr }
type notExpr struct{ e expr }
type definedExpr struct{ path []string }
type cmpExpr struct {
	path []string
	op   string
	lit  any // string, float64, bool or nil
}
type inExpr struct {
	path []string
	list []any
	not  bool
}

func (e andExpr) eval(d map[string]any) bool { return e.l.eval(d) && e.r.eval(d) }
func (e orExpr) eval(d map[string]any) bool  { return e.l.eval(d) || e.r.eval(d) }
func (e notExpr) eval(d map[string]any) bool { return !e.e.eval(d) }
func (e definedExpr) eval(d map[string]any) bool {
	_, ok := lookup(d, e.path)
	return ok
}

func (e cmpExpr) eval(d map[string]any) bool {
	v, ok := lookup(d, e.path)
	if !ok {
		return false
	}
	c, ok := compareValues(v, e.lit)
	if !ok {
		return false
	}
	switch e.op {
	case "=":
		return c == 0
	case "!=":
		return c != 0
	case "<":
		return c < 0
	case "<=":
		return c <= 0
	case ">":
		return c > 0
	default: // ">="
		return c >= 0
	}
}

func (e inExpr) eval(d map[string]any) bool {
	v, ok := lookup(d, e.path)
	if !ok {
		return false
	}
	for _, lit := range e.list {
		if c, ok := compareValues(v, lit); ok && c == 0 {
			return !e.not
		}
	}
	return e.not
}

// lookup follows a path through nested objects.
func lookup(doc map[string]any, path []string) (any, bool) {
	var cur any = doc
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// compareValues orders a document value against a literal of the same type;
// ok is false for values of different types. null equals only null.
func compareValues(v, lit any) (int, bool) {
	switch l := lit.(type) {
	case nil:
		if v == nil {
			return 0, true
		}
		return 0, false
	case string:
		s, ok := v.(string)
		if !ok {
			return 0, false
		}
		return strings.Compare(s, l), true
	case bool:
		b, ok := v.(bool)
		if !ok {
			return 0, false
		}
		if b == l {
			return 0, true
		}
		if !b {
			return -1, true
		}
		return 1, true
	case float64:
		var f float64
		switch n := v.(type) {
		case json.Number:
			var err error
			if f, err = n.Float64(); err != nil {
				return 0, false
			}
		case float64:
			f = n
		default:
			return 0, false
		}
		switch {
		case f < l:
			return -1, true
		case f > l:
			return 1, true
		}
		return 0, true
	}
	return 0, false
}

// parseQuery parses the query text.
func parseQuery(s string) (query, error) {
	if len(s) > maxQueryLen {
		return query{}, &queryError{s, maxQueryLen, fmt.Sprintf("query is longer than %d characters", maxQueryLen)}
	}
	toks, err := lex(s)
	if err != nil {
		return query{}, err
	}
	p := &parser{src: s, toks: toks}
	var q query
	if err := p.expectWord("SELECT"); err != nil {
		return query{}, err
	}
	if !p.acceptSymbol("*") {
		if q.cols, err = p.selectList(); err != nil {
			return query{}, err
		}
	}
	if err := p.expectWord("FROM"); err != nil {
		return query{}, err
	}
	if err := p.expectWord("DEVICES"); err != nil {
		return query{}, err
	}
	if p.acceptWord("WHERE") {
		if q.where, err = p.or(); err != nil {
			return query{}, err
		}
	}
	groupPos := p.peek().pos
	if p.acceptWord("GROUP") {
		if q.group, err = p.groupBy(); err != nil {
			return query{}, err
		}
	}
	if !p.done() {
		return query{}, p.errorf("unexpected %s", p.found())
	}
	if err := q.check(s, groupPos); err != nil {
		return query{}, err
	}
	return q, nil
}

// keywords cannot name a property or an alias without brackets, which
// localhub does not support.
var keywords = []string{"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "NIN", "AS", "TOP", "GROUP", "BY", "TRUE", "FALSE", "NULL"}

func isKeyword(w string) bool {
	for _, k := range keywords {
		if strings.EqualFold(w, k) {
			return true
		}
	}
	return false
}

type tokKind int

const (
	tokWord tokKind = iota
	tokString
	tokNumber
	tokSymbol
)

type token struct {
	kind tokKind
	text string // word, symbol, decoded string or number text
	pos  int    // byte offset in the query
}

// lex splits the query into tokens. Strings are decoded here: IoT Hub's
// string literals take JSON's escapes in either quote style.
func lex(s string) ([]token, error) {
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '\'' || c == '"':
			text, n, err := lexString(s, i)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{tokString, text, i})
			i += n
		case c == '-' || (c >= '0' && c <= '9'):
			j := i + 1
			for j < len(s) && strings.IndexByte("0123456789.eE+-", s[j]) >= 0 {
				if (s[j] == '+' || s[j] == '-') && s[j-1] != 'e' && s[j-1] != 'E' {
					break
				}
				j++
			}
			if f, err := strconv.ParseFloat(s[i:j], 64); err != nil || math.IsInf(f, 0) {
				return nil, &queryError{s, i, fmt.Sprintf("bad number %q", s[i:j])}
			}
			toks = append(toks, token{tokNumber, s[i:j], i})
			i = j
		case isWordByte(c):
			j := i
			for j < len(s) && (isWordByte(s[j]) || (s[j] >= '0' && s[j] <= '9')) {
				j++
			}
			toks = append(toks, token{tokWord, s[i:j], i})
			i = j
		default:
			sym := s[i : i+1]
			if i+1 < len(s) {
				if two := s[i : i+2]; two == "!=" || two == "<>" || two == "<=" || two == ">=" {
					sym = two
				}
			}
			if len(sym) == 1 && !strings.Contains("()[],.=<>*", sym) {
				r, _ := utf8.DecodeRuneInString(s[i:])
				return nil, &queryError{s, i, fmt.Sprintf("unexpected character %q", r)}
			}
			toks = append(toks, token{tokSymbol, sym, i})
			i += len(sym)
		}
	}
	return toks, nil
}

// lexString decodes the string literal starting at s[i] and returns it with
// the number of bytes it takes.
func lexString(s string, i int) (string, int, error) {
	quote := s[i]
	var b strings.Builder
	for j := i + 1; j < len(s); j++ {
		c := s[j]
		switch {
		case c == quote:
			return b.String(), j + 1 - i, nil
		case c != '\\':
			b.WriteByte(c)
			continue
		}
		if j+1 >= len(s) {
			break
		}
		j++
		switch e := s[j]; e {
		case '\'', '"', '\\', '/':
			b.WriteByte(e)
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			if j+5 > len(s) {
				return "", 0, &queryError{s, j - 1, `bad \u escape: want four hex digits`}
			}
			n, err := strconv.ParseUint(s[j+1:j+5], 16, 16)
			if err != nil {
				return "", 0, &queryError{s, j - 1, `bad \u escape: want four hex digits`}
			}
			b.WriteRune(rune(n))
			j += 4
		default:
			return "", 0, &queryError{s, j - 1, fmt.Sprintf(`unknown escape \%c in string`, e)}
		}
	}
	return "", 0, &queryError{s, i, "unterminated string"}
}

func isWordByte(c byte) bool {
	return c == '_' || c == '$' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

type parser struct {
	src  string
	toks []token
	i    int
}

func (p *parser) done() bool { return p.i >= len(p.toks) }

func (p *parser) peek() token {
	if p.done() {
		return token{kind: tokSymbol, text: "end of query", pos: len(p.src)}
	}
	return p.toks[p.i]
}

// found describes the next token for an error message.
func (p *parser) found() string {
	if p.done() {
		return "the end of the query"
	}
	t := p.peek()
	if t.kind == tokString {
		return fmt.Sprintf("string %q", t.text)
	}
	return fmt.Sprintf("%q", t.text)
}

// errorf reports a syntax error at the next token.
func (p *parser) errorf(format string, args ...any) error {
	return &queryError{p.src, p.peek().pos, fmt.Sprintf(format, args...)}
}

func (p *parser) acceptWord(w string) bool {
	t := p.peek()
	if !p.done() && (t.kind == tokWord || t.kind == tokSymbol) && strings.EqualFold(t.text, w) {
		p.i++
		return true
	}
	return false
}

func (p *parser) expectWord(w string) error {
	if !p.acceptWord(w) {
		return p.errorf("expected %s, found %s", w, p.found())
	}
	return nil
}

func (p *parser) acceptSymbol(sym string) bool {
	if t := p.peek(); !p.done() && t.kind == tokSymbol && t.text == sym {
		p.i++
		return true
	}
	return false
}

func (p *parser) or() (expr, error) {
	return p.chain("OR", p.and, func(l, r expr) expr { return orExpr{l, r} })
}

func (p *parser) and() (expr, error) {
	return p.chain("AND", p.not, func(l, r expr) expr { return andExpr{l, r} })
}

// chain parses operands joined by the keyword op, left-associative: a OP b OP c is (a OP b) OP c.
func (p *parser) chain(op string, operand func() (expr, error), join func(l, r expr) expr) (expr, error) {
	l, err := operand()
	if err != nil {
		return nil, err
	}
	for p.acceptWord(op) {
		r, err := operand()
		if err != nil {
			return nil, err
		}
		l = join(l, r)
	}
	return l, nil
}

// not binds tighter than AND and OR and looser than a comparison, as in SQL:
// NOT a = 1 AND b = 2 is (NOT (a = 1)) AND (b = 2).
func (p *parser) not() (expr, error) {
	if p.acceptWord("NOT") {
		e, err := p.not()
		if err != nil {
			return nil, err
		}
		return notExpr{e}, nil
	}
	return p.primary()
}

func (p *parser) primary() (expr, error) {
	if p.acceptSymbol("(") {
		e, err := p.or()
		if err != nil {
			return nil, err
		}
		if !p.acceptSymbol(")") {
			return nil, p.errorf("expected ), found %s", p.found())
		}
		return e, nil
	}
	if p.acceptWord("IS_DEFINED") {
		if !p.acceptSymbol("(") {
			return nil, p.errorf("expected ( after IS_DEFINED, found %s", p.found())
		}
		path, err := p.path()
		if err != nil {
			return nil, err
		}
		if !p.acceptSymbol(")") {
			return nil, p.errorf("expected ), found %s", p.found())
		}
		return definedExpr{path}, nil
	}
	path, err := p.path()
	if err != nil {
		return nil, err
	}
	for _, w := range []string{"IN", "NIN"} {
		if p.acceptWord(w) {
			list, err := p.list()
			if err != nil {
				return nil, err
			}
			return inExpr{path: path, list: list, not: w == "NIN"}, nil
		}
	}
	op := p.peek()
	if p.done() || op.kind != tokSymbol || !strings.Contains(" = != <> < <= > >= ", " "+op.text+" ") {
		return nil, p.errorf("expected a comparison after %s, found %s", strings.Join(path, "."), p.found())
	}
	p.i++
	lit, err := p.literal()
	if err != nil {
		return nil, err
	}
	if op.text == "<>" {
		op.text = "!="
	}
	return cmpExpr{path: path, op: op.text, lit: lit}, nil
}

func (p *parser) path() ([]string, error) {
	var path []string
	for {
		t := p.peek()
		// Only a leading keyword is refused: after a dot it can only be a name.
		if p.done() || t.kind != tokWord || (len(path) == 0 && isKeyword(t.text)) {
			return nil, p.errorf("expected a property name, found %s", p.found())
		}
		p.i++
		path = append(path, t.text)
		if !p.acceptSymbol(".") {
			return path, nil
		}
	}
}

func (p *parser) list() ([]any, error) {
	if !p.acceptSymbol("[") {
		return nil, p.errorf("expected [, found %s", p.found())
	}
	var list []any
	for !p.acceptSymbol("]") {
		if len(list) > 0 && !p.acceptSymbol(",") {
			return nil, p.errorf("expected , or ], found %s", p.found())
		}
		lit, err := p.literal()
		if err != nil {
			return nil, err
		}
		list = append(list, lit)
	}
	return list, nil
}

func (p *parser) literal() (any, error) {
	t := p.peek()
	switch {
	case p.done():
	case t.kind == tokString:
		p.i++
		return t.text, nil
	case t.kind == tokNumber:
		p.i++
		f, _ := strconv.ParseFloat(t.text, 64)
		return f, nil
	case t.kind == tokWord && strings.EqualFold(t.text, "true"):
		p.i++
		return true, nil
	case t.kind == tokWord && strings.EqualFold(t.text, "false"):
		p.i++
		return false, nil
	case t.kind == tokWord && strings.EqualFold(t.text, "null"):
		p.i++
		return nil, nil
	}
	return nil, p.errorf("expected a value, found %s", p.found())
}

// parseQueryBody decodes the body of POST /devices/query and parses its
// query. Errors are ArgumentInvalid.
func parseQueryBody(body []byte) (query, error) {
	var req struct {
		Query string `json:"query"` // the Go SDK sends "Query"; JSON keys match case-insensitively
	}
	if err := decodeJSON(body, &req); err != nil {
		return query{}, err
	}
	q, err := parseQuery(req.Query)
	if err != nil {
		return query{}, errorf(ErrArgumentInvalid, "query: %v", err)
	}
	return q, nil
}

func (h *Hub) handleQuery(w http.ResponseWriter, r *http.Request) {
	q, ok := readRequest(h, w, r, parseQueryBody)
	if !ok {
		return
	}
	page := defaultQueryPage
	if s := r.Header.Get("x-ms-max-item-count"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxQueryPage {
			h.fail(w, r, errorf(ErrArgumentInvalid, "x-ms-max-item-count must be a number from 1 to %d", maxQueryPage))
			return
		}
		page = n
	}
	after := ""
	if s := r.Header.Get("x-ms-continuation"); s != "" {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			h.fail(w, r, errorf(ErrArgumentInvalid, "x-ms-continuation is not a token this hub issued"))
			return
		}
		after = string(b)
	}
	if q.cols != nil {
		h.serveAggregate(w, r, q, after, page)
		return
	}
	twins, next, err := h.runQuery(q, after, page)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if next != "" {
		w.Header().Set("x-ms-continuation", base64.RawURLEncoding.EncodeToString([]byte(next)))
	}
	w.Header().Set("x-ms-item-type", "DeviceTwin")
	writeJSON(w, http.StatusOK, twins)
}

// runQuery returns up to page matching twins with device IDs after after,
// and the ID to continue after when more may match.
func (h *Hub) runQuery(q query, after string, page int) ([]map[string]any, string, error) {
	out := []map[string]any{}
	next := ""
	err := h.store.View(func(tx *store.Tx) error {
		return tx.Devices(after, func(d store.Device) (bool, error) {
			tw, err := tx.Twin(d.ID)
			if err != nil {
				return false, fmt.Errorf("twin %s: %w", d.ID, err)
			}
			doc, err := asDocument(h.twinView(d, tw))
			if err != nil {
				return false, err
			}
			if q.where != nil && !q.where.eval(doc) {
				return true, nil
			}
			if len(out) == page {
				next = out[len(out)-1]["deviceId"].(string)
				return false, nil
			}
			out = append(out, doc)
			return true, nil
		})
	})
	if err != nil {
		return nil, "", fmt.Errorf("run query: %w", err)
	}
	return out, next, nil
}

// asDocument turns a view into the generic JSON document queries see.
func asDocument(v any) (map[string]any, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var doc map[string]any
	return doc, dec.Decode(&doc)
}
