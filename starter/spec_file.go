package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/dmflow/dmflow/workflows"
	"go.yaml.in/yaml/v3"
)

// The spec file: YAML, or JSON (by the extension .json, or a document that starts with '{'). Both
// are read into YAML nodes (JSON through encoding/json, which YAML's parser does not match in
// every escape) and walked field by field, so that every unknown field and bad value is reported
// with its path and line, all at once, rather than the first one as a decoder's error.

// maxSpecSize bounds a spec file: a spec is a few lines; a long device list belongs in devicesFile.
const maxSpecSize = 1 << 20

// specFields maps each spec flag to its field in a spec file, for messages.
var specFields = map[string]string{
	"name": "name", "query": "query", "devices": "devices", "devices-file": "devicesFile",
	"firmware": "firmware.uri", "version": "firmware.version", "reboot": "reboot", "stage-timeout": "firmware.stageTimeout",
	"deadline": "firmware.deadline", "method-timeout": "reboot.methodTimeout",
	"canary": "canary", "growth": "growth", "max-concurrent": "maxConcurrent", "rate": "rate", "max-failures": "maxFailures",
	"min-devices": "minDevices", "retry-failed": "retryFailed", "reconcile": "reconcile", "window": "windows",
	"max-per-minute": "maxPerMinute", "ramp": "ramp", "ramp-max": "ramp.max",
	"continuous": "continuous", "until": "until", "look-every": "continuous.every",
}

// specDoc is a parsed spec file: the values, and for each flag it sets the field it came from.
type specDoc struct {
	v   specFlags
	set map[string]string
}

// parseSpec reads a spec file; path names it in messages ("-" for standard input). All problems
// are reported at once, each with its line and field.
func parseSpec(data []byte, path string) (specDoc, error) {
	src := specSource(path)
	if len(data) > maxSpecSize {
		return specDoc{}, fmt.Errorf("%s is larger than %d bytes: a spec is a few lines; list many devices in devicesFile", src, maxSpecSize)
	}
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	var root *yaml.Node
	var err error
	if isJSON(data, path) {
		root, err = jsonNode(data)
		if err != nil {
			return specDoc{}, fmt.Errorf("%s: %w", src, err)
		}
	} else {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil && err != io.EOF {
			return specDoc{}, fmt.Errorf("%s: %v", src, err)
		}
		if len(doc.Content) > 0 {
			root = doc.Content[0]
		}
		var more yaml.Node
		if err := dec.Decode(&more); err != io.EOF {
			return specDoc{}, fmt.Errorf("%s holds more than one YAML document (---): give one spec per file", src)
		}
	}
	if root == nil || root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return specDoc{}, fmt.Errorf("%s holds no rollout spec: give its fields, e.g. query, firmware: {uri, version}", src)
	}
	d := &specDecoder{src: src, doc: specDoc{set: map[string]string{}}}
	d.top(root)
	if len(d.problems) > 0 {
		return specDoc{}, errors.New(strings.Join(d.problems, "; "))
	}
	return d.doc, nil
}

// isJSON tells a JSON spec by its extension, or else by its first character.
func isJSON(data []byte, path string) bool {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		return true
	case ".yaml", ".yml":
		return false
	}
	return bytes.HasPrefix(bytes.TrimSpace(data), []byte("{"))
}

// specDecoder walks a spec's nodes, collecting problems.
type specDecoder struct {
	src      string
	doc      specDoc
	problems []string
}

func (d *specDecoder) fail(n *yaml.Node, path, format string, args ...any) {
	if path != "" {
		path = ", " + path
	}
	d.problems = append(d.problems, fmt.Sprintf("%s line %d%s: %s", d.src, n.Line, path, fmt.Sprintf(format, args...)))
}

// specField is one field of a mapping and what to do with its value.
type specField struct {
	key    string
	decode func(v *yaml.Node, path string)
}

// pathKey is a key as an error's path shows it: as written, or quoted where it holds a character
// a one-line message cannot show (a line break, a control character).
func pathKey(key string) string {
	for _, r := range key {
		if !unicode.IsPrint(r) {
			return strconv.Quote(key)
		}
	}
	return key
}

// mapping decodes the fields of a mapping node; unknown and repeated keys are problems.
func (d *specDecoder) mapping(n *yaml.Node, path string, fields []specField) {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "want a mapping of %s, got %s", keysOf(fields), describeNode(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		key := k.Value
		kpath := pathKey(key)
		if path != "" {
			kpath = path + "." + kpath
		}
		if seen[key] {
			d.fail(k, kpath, "repeated: give each field once")
			continue
		}
		seen[key] = true
		var field *specField
		for j := range fields {
			if fields[j].key == key {
				field = &fields[j]
			}
		}
		if field == nil {
			d.fail(k, kpath, "unknown field%s", unknownHint(key, fields))
			continue
		}
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
			d.fail(v, kpath, "no value: give one, or remove the field")
			continue
		}
		field.decode(v, kpath)
	}
}

// unknownHint suggests the field meant: the camelCase form of a kebab-case key, a field differing
// in case, or else the list of fields.
func unknownHint(key string, fields []specField) string {
	camel := key
	if strings.ContainsAny(key, "-_") {
		parts := strings.FieldsFunc(key, func(r rune) bool { return r == '-' || r == '_' })
		for i := 1; i < len(parts); i++ {
			parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
		}
		camel = strings.Join(parts, "")
	}
	for _, f := range fields {
		if strings.EqualFold(f.key, camel) {
			return fmt.Sprintf(": did you mean %s? (fields are camelCase)", f.key)
		}
	}
	return ": the fields here are " + keysOf(fields)
}

func keysOf(fields []specField) string {
	keys := make([]string, len(fields))
	for i, f := range fields {
		keys[i] = f.key
	}
	return strings.Join(keys, ", ")
}

// resolve follows a YAML alias to its node.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// describeNode says what a node is, for "want X, got Y".
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return strconv.Quote(n.Value)
}

// text reads a scalar as text: a string, or a number as written (version: 2.10 stays "2.10").
func (d *specDecoder) text(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!bool" {
		d.fail(n, path, "want text, got %s", describeNode(n))
		return "", false
	}
	return n.Value, true
}

func (d *specDecoder) boolean(n *yaml.Node, path string) (bool, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		d.fail(n, path, "want true or false, got %s", describeNode(n))
		return false, false
	}
	b, err := strconv.ParseBool(strings.ToLower(n.Value))
	if err != nil {
		d.fail(n, path, "want true or false, got %s", describeNode(n))
	}
	return b, err == nil
}

func (d *specDecoder) integer(n *yaml.Node, path string) (int, bool) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
		if v, err := strconv.ParseInt(n.Value, 0, 32); err == nil {
			return int(v), true
		}
	}
	d.fail(n, path, "want a whole number, got %s", describeNode(n))
	return 0, false
}

func (d *specDecoder) number(n *yaml.Node, path string) (float64, bool) {
	if n.Kind == yaml.ScalarNode && (n.Tag == "!!int" || n.Tag == "!!float") {
		if v, err := strconv.ParseFloat(n.Value, 64); err == nil {
			return v, true
		}
	}
	d.fail(n, path, "want a number, got %s", describeNode(n))
	return 0, false
}

func (d *specDecoder) duration(n *yaml.Node, path string) (time.Duration, bool) {
	s, ok := d.text(n, path)
	if !ok {
		return 0, false
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		d.fail(n, path, "%q is not a duration: give a Go duration with its unit, e.g. 90s, 2m, 1h30m", s)
		return 0, false
	}
	return v, true
}

func (d *specDecoder) timestamp(n *yaml.Node, path string) (time.Time, bool) {
	s, ok := d.text(n, path)
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(s))
	if err != nil {
		d.fail(n, path, "%q is not an RFC 3339 time, e.g. 2026-11-29T02:00:00+01:00", s)
		return time.Time{}, false
	}
	return t, true
}

// setText, setInt, … decode a value into the doc and record the flag it stands for.
func (d *specDecoder) setText(flag string, dst *string) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if v, ok := d.text(n, path); ok {
			*dst, d.doc.set[flag] = strings.TrimSpace(v), path
		}
	}
}

func (d *specDecoder) setBool(flag string, dst *bool) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if v, ok := d.boolean(n, path); ok {
			*dst, d.doc.set[flag] = v, path
		}
	}
}

func (d *specDecoder) setInt(flag string, dst *int) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if v, ok := d.integer(n, path); ok {
			*dst, d.doc.set[flag] = v, path
		}
	}
}

func (d *specDecoder) setDuration(flag string, dst *time.Duration) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if v, ok := d.duration(n, path); ok {
			*dst, d.doc.set[flag] = v, path
		}
	}
}

// top decodes the spec's fields.
func (d *specDecoder) top(root *yaml.Node) {
	v := &d.doc.v
	var firmwareNode, rebootNode *yaml.Node // a firmware section, a reboot rollout
	d.mapping(root, "", append([]specField{
		{"name", d.setText("name", &v.name)},
		{"query", d.setText("query", &v.query)},
		{"devices", func(n *yaml.Node, path string) {
			if n.Kind != yaml.SequenceNode {
				d.fail(n, path, "want a list of device IDs, e.g. [dev-001, dev-002], got %s", describeNode(n))
				return
			}
			ids := []string{}
			for i, item := range n.Content {
				if id, ok := d.text(resolve(item), fmt.Sprintf("%s[%d]", path, i)); ok {
					ids = append(ids, id)
				}
			}
			v.devices, d.doc.set["devices"] = ids, path
		}},
		{"devicesFile", d.setText("devices-file", &v.devicesFile)},
		{"firmware", func(n *yaml.Node, path string) {
			firmwareNode = n
			d.mapping(n, path, []specField{
				{"uri", d.setText("firmware", &v.firmware)},
				{"version", d.setText("version", &v.version)},
				{"reboot", d.setBool("reboot", &v.reboot)},
				{"stageTimeout", d.setDuration("stage-timeout", &v.stageTimeout)},
				{"deadline", d.setDuration("deadline", &v.deadline)},
			})
			if _, ok := d.doc.set["firmware"]; !ok && n.Kind == yaml.MappingNode {
				d.fail(n, path, "no uri: give the image's http(s) URI as firmware.uri")
			}
		}},
		{"reboot", func(n *yaml.Node, path string) {
			if n.Kind == yaml.MappingNode {
				rebootNode = n
				v.reboot, d.doc.set["reboot"] = true, path
				d.mapping(n, path, []specField{
					{"methodTimeout", d.setDuration("method-timeout", &v.methodTimeout)},
					{"deadline", d.setDuration("deadline", &v.deadline)},
				})
				return
			}
			if b, ok := d.boolean(n, path); ok {
				v.reboot, d.doc.set["reboot"] = b, path
				if b {
					rebootNode = n
				}
			}
		}},
		{"canary", d.setInt("canary", &v.canary)},
		{"growth", func(n *yaml.Node, path string) {
			if g, ok := d.number(n, path); ok {
				v.growth, d.doc.set["growth"] = g, path
			}
		}},
		{"maxConcurrent", d.setInt("max-concurrent", &v.maxConcurrent)},
		{"rate", func(n *yaml.Node, path string) {
			s, ok := d.text(n, path)
			if !ok {
				return
			}
			if _, err := parseRate(s); err != nil {
				d.fail(n, path, "%q: %v", s, err)
				return
			}
			v.rate, d.doc.set["rate"] = s, path
		}},
		{"maxFailures", func(n *yaml.Node, path string) {
			s, ok := d.text(n, path)
			if !ok {
				return
			}
			if _, err := workflows.ParseThreshold(s); err != nil {
				d.fail(n, path, "%v", err)
				return
			}
			v.maxFailures, d.doc.set["max-failures"] = s, path
		}},
		{"minDevices", d.setInt("min-devices", &v.minDevices)},
		{"retryFailed", d.setBool("retry-failed", &v.retryFailed)},
		{"reconcile", d.setBool("reconcile", &v.reconcile)},
		{"windows", func(n *yaml.Node, path string) {
			if n.Kind != yaml.SequenceNode {
				d.fail(n, path, `want a list of windows, e.g. ["0 2 * * SUN for 4h in Europe/Warsaw"], got %s`, describeNode(n))
				return
			}
			ws := []workflows.Window{}
			for i, item := range n.Content {
				if w, ok := d.window(resolve(item), fmt.Sprintf("%s[%d]", path, i)); ok {
					ws = append(ws, w)
				}
			}
			v.fileWindows, d.doc.set["window"] = ws, path
		}},
		d.rollbackField(v), // rollback (policy 1)
		{"maxPerMinute", d.setInt("max-per-minute", &v.maxPerMinute)},
		{"ramp", d.ramp},
		{"continuous", d.continuousField(v)},
		{"until", d.setText("until", &v.until)},
	}, append(d.gateFields(v), d.retryFields(v)...)...))
	if firmwareNode != nil && rebootNode != nil {
		d.fail(rebootNode, "reboot", "a spec has firmware or reboot, not both: a firmware rollout reboots after the update with firmware.reboot: true")
	}
}

// window decodes a maintenance window: a string as --window takes it, or a mapping {cron,
// duration, timeZone} or {start, end}.
func (d *specDecoder) window(n *yaml.Node, path string) (workflows.Window, bool) {
	if n.Kind == yaml.ScalarNode {
		s, ok := d.text(n, path)
		if !ok {
			return workflows.Window{}, false
		}
		w, err := workflows.ParseWindow(s)
		if err != nil {
			d.fail(n, path, "%v", err)
			return workflows.Window{}, false
		}
		return w, true
	}
	var w workflows.Window
	before := len(d.problems)
	d.mapping(n, path, []specField{
		{"cron", func(n *yaml.Node, path string) {
			if s, ok := d.text(n, path); ok {
				w.Cron = strings.TrimSpace(s)
			}
		}},
		{"duration", func(n *yaml.Node, path string) {
			if v, ok := d.duration(n, path); ok {
				w.Duration = v
			}
		}},
		{"timeZone", func(n *yaml.Node, path string) {
			if s, ok := d.text(n, path); ok {
				w.TimeZone = strings.TrimSpace(s)
			}
		}},
		{"start", func(n *yaml.Node, path string) {
			if t, ok := d.timestamp(n, path); ok {
				w.Start = t
			}
		}},
		{"end", func(n *yaml.Node, path string) {
			if t, ok := d.timestamp(n, path); ok {
				w.End = t
			}
		}},
	})
	if len(d.problems) > before {
		return workflows.Window{}, false
	}
	if err := w.Check(); err != nil {
		d.fail(n, path, "%v", err)
		return workflows.Window{}, false
	}
	return w, true
}

// jsonNode reads a JSON document into YAML nodes, with lines, so that a JSON spec is checked as a
// YAML one is.
func jsonNode(data []byte) (*yaml.Node, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	line := func() int { return 1 + bytes.Count(data[:dec.InputOffset()], []byte("\n")) }
	var value func() (*yaml.Node, error)
	value = func() (*yaml.Node, error) {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		n := &yaml.Node{Kind: yaml.ScalarNode, Line: line()}
		switch t := tok.(type) {
		case json.Delim:
			if t == '{' {
				n.Kind, n.Tag = yaml.MappingNode, "!!map"
			} else {
				n.Kind, n.Tag = yaml.SequenceNode, "!!seq"
			}
			for dec.More() {
				if n.Kind == yaml.MappingNode {
					k, err := dec.Token()
					if err != nil {
						return nil, err
					}
					n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k.(string), Line: line()})
				}
				v, err := value()
				if err != nil {
					return nil, err
				}
				n.Content = append(n.Content, v)
			}
			if _, err := dec.Token(); err != nil { // the closing delimiter
				return nil, err
			}
		case string:
			n.Tag, n.Value = "!!str", t
		case json.Number:
			n.Tag, n.Value = "!!int", t.String()
			if strings.ContainsAny(t.String(), ".eE") {
				n.Tag = "!!float"
			}
		case bool:
			n.Tag, n.Value = "!!bool", strconv.FormatBool(t)
		case nil:
			n.Tag, n.Value = "!!null", "null"
		}
		return n, nil
	}
	root, err := value()
	if err == nil {
		if _, more := dec.Token(); more != io.EOF {
			err = errors.New("more than one JSON value: give one object")
		}
	}
	if err != nil {
		if err == io.EOF {
			return nil, nil
		}
		at := line()
		var se *json.SyntaxError
		if errors.As(err, &se) {
			at = 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
		}
		return nil, fmt.Errorf("line %d: invalid JSON: %v", at, err)
	}
	return root, nil
}

// specOut is a rollout spec as a spec file writes it: the fields parseSpec reads, in its order.
type specOut struct {
	Name          string           `yaml:"name,omitempty"`
	Query         string           `yaml:"query,omitempty"`
	Devices       []string         `yaml:"devices,omitempty,flow"`
	Firmware      *specFirmwareOut `yaml:"firmware,omitempty"`
	Reboot        any              `yaml:"reboot,omitempty"`
	Canary        int              `yaml:"canary,omitempty"`
	Growth        float64          `yaml:"growth,omitempty"`
	MaxConcurrent int              `yaml:"maxConcurrent,omitempty"`
	Rate          string           `yaml:"rate,omitempty"`
	MaxFailures   string           `yaml:"maxFailures,omitempty"`
	MinDevices    int              `yaml:"minDevices,omitempty"`
	RetryFailed   bool             `yaml:"retryFailed,omitempty"`
	Reconcile     bool             `yaml:"reconcile,omitempty"`
	Windows       []string         `yaml:"windows,omitempty"`

	// Approval gates, success condition and end time (spec_gates.go).
	ApproveAfterWave string `yaml:"approveAfterWave,omitempty"`
	PauseBelow       string `yaml:"pauseBelow,omitempty"`
	EndAt            string `yaml:"endAt,omitempty"`
	EndAfter         string `yaml:"endAfter,omitempty"`
	EndBehavior      string `yaml:"endBehavior,omitempty"`
	// Retries by failure type (rollout_retries.go).
	Retries     *specRetriesOut `yaml:"retries,omitempty"`
	MaxTimeouts string          `yaml:"maxTimeouts,omitempty"`
	MaxOffline  string          `yaml:"maxOffline,omitempty"`
	// Rollback (policy 1).
	Rollback     *specRollbackOut `yaml:"rollback,omitempty"`
	MaxPerMinute int              `yaml:"maxPerMinute,omitempty"`
	Ramp         any              `yaml:"ramp,omitempty"`
}

type specFirmwareOut struct {
	URI          string `yaml:"uri"`
	Version      string `yaml:"version"`
	Reboot       bool   `yaml:"reboot,omitempty"`
	StageTimeout string `yaml:"stageTimeout,omitempty"`
	Deadline     string `yaml:"deadline,omitempty"`
}

type specRebootOut struct {
	MethodTimeout string `yaml:"methodTimeout,omitempty"`
	Deadline      string `yaml:"deadline,omitempty"`
}

// formatSpec writes a rollout's input as a spec file that parseSpec reads back (describe shows a
// schedule's rollout so). More than maxDevices device IDs are left out, with a comment saying how
// many.
func formatSpec(in workflows.RolloutInput, maxDevices int) []byte {
	dur := func(d time.Duration) string {
		if d == 0 {
			return ""
		}
		return workflows.ShortDuration(d)
	}
	out := specOut{Name: in.Name, Query: in.Query, Devices: in.Devices, Canary: in.Canary, Growth: in.Growth,
		MaxConcurrent: in.MaxConcurrent, MaxFailures: in.MaxFailures, MinDevices: in.MinDevices, RetryFailed: in.RetryFailed,
		Reconcile: in.Reconcile}
	if len(in.Devices) > maxDevices {
		out.Devices = nil
	}
	if in.Rate > 0 {
		out.Rate = formatRate(in.Rate)
	}
	if fw := in.Firmware; fw != nil {
		out.Firmware = &specFirmwareOut{URI: fw.PackageURI, Version: fw.Version, Reboot: fw.Reboot,
			StageTimeout: dur(fw.StageTimeout), Deadline: dur(fw.Deadline)}
	}
	switch {
	case in.Reboot != nil:
		out.Reboot = specRebootOut{MethodTimeout: dur(in.Reboot.MethodTimeout), Deadline: dur(in.Reboot.Deadline)}
	case in.Operation == workflows.OperationReboot:
		out.Reboot = true
	}
	for _, w := range in.Windows {
		out.Windows = append(out.Windows, w.String())
	}
	formatGates(&out, in)
	out.Retries, out.MaxTimeouts, out.MaxOffline = retriesOut(in), in.MaxTimeouts, in.MaxOffline
	out.Rollback = rollbackSpecOut(in.Rollback) // rollback (policy 1)
	out.MaxPerMinute, out.Ramp = startRateOut(in)
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(out); err != nil {
		// Strings, numbers and booleans always encode.
		panic(err)
	}
	if len(in.Devices) > maxDevices {
		fmt.Fprintf(&b, "# devices: %d device IDs (--output json lists them)\n", len(in.Devices))
	}
	return b.Bytes()
}
