package hub

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// Documented twin limits.
const (
	maxTagsBytes       = 8 * 1024
	maxPropertiesBytes = 32 * 1024 // desired and reported, each
	maxDepth           = 10
	maxKeyBytes        = 1024
	maxStringBytes     = 4 * 1024
)

// twinETag derives the twin etag from its version, in IoT Hub's format
// (base64 of a 64-bit big-endian counter, e.g. "AAAAAAAAAAE=").
func twinETag(version uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], version)
	return base64.StdEncoding.EncodeToString(b[:])
}

// deviceETag derives the identity etag from its version, in IoT Hub's format
// (base64 of a decimal number, e.g. "MQ==").
func deviceETag(version uint64) string {
	return base64.StdEncoding.EncodeToString([]byte(fmt.Sprint(version)))
}

// etagMatches applies an If-Match header value to current, an etag as the
// JSON bodies carry it (unquoted). Empty matches anything, and so does the
// wildcard, bare (*) or quoted ("*"): Microsoft's service SDKs quote
// whatever etag they hold, so an unconditional update or delete reaches the
// hub as If-Match: "*", which IoT Hub accepts. Otherwise one of the listed
// etags must equal current, quoted as HTTP has it (the form of localhub's
// ETag headers and of the Go SDK's If-Match), weak (W/"…") or not, or bare
// (clients that copy the body's etag): IoT Hub's etags are base64, so
// quotes and commas are never part of one.
func etagMatches(ifMatch, current string) bool {
	if strings.TrimSpace(ifMatch) == "" {
		return true
	}
	for _, tag := range strings.Split(ifMatch, ",") {
		tag = strings.TrimSpace(tag)
		if strings.HasPrefix(tag, `W/"`) {
			tag = tag[len("W/"):]
		}
		tag = strings.Trim(tag, `"`)
		if tag == "*" || (tag != "" && tag == current) {
			return true
		}
	}
	return false
}

// decodeDocument parses a JSON object keeping numbers as json.Number, so that
// values pass through the hub unchanged.
func decodeDocument(raw []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return nil, err
	}
	if rest := bytes.TrimSpace(raw[dec.InputOffset():]); len(rest) > 0 {
		return nil, errors.New("trailing data after the JSON object")
	}
	if doc == nil {
		return nil, errors.New("not a JSON object")
	}
	return doc, nil
}

// stripSystemProperties removes "$version" and "$metadata" from the top of a
// property patch: clients that read a twin, change it and send it back
// carry them along, and they are the hub's to set.
func stripSystemProperties(doc map[string]any) {
	delete(doc, "$version")
	delete(doc, "$metadata")
}

// validatePatch enforces IoT Hub's rules on twin documents: keys are
// non-empty, at most 1 KB, without '.', '$', spaces or control characters;
// strings at most 4 KB; objects nested at most 10 deep.
func validatePatch(doc map[string]any, what string) error {
	return validateObject(doc, what, 1)
}

func validateObject(doc map[string]any, path string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%s: objects are nested more than %d levels deep", path, maxDepth)
	}
	for k, v := range doc {
		if err := validateKey(k); err != nil {
			return fmt.Errorf("%s: key %q %w", path, truncateKey(k), err)
		}
		if err := validateValue(v, path+"."+k, depth); err != nil {
			return err
		}
	}
	return nil
}

func validateValue(v any, path string, depth int) error {
	switch v := v.(type) {
	case map[string]any:
		return validateObject(v, path, depth+1)
	case []any:
		for _, e := range v {
			if err := validateValue(e, path, depth+1); err != nil {
				return err
			}
		}
	case string:
		if len(v) > maxStringBytes {
			return fmt.Errorf("%s: string longer than %d bytes", path, maxStringBytes)
		}
	}
	return nil
}

func validateKey(k string) error {
	if k == "" {
		return errors.New("is empty")
	}
	if len(k) > maxKeyBytes {
		return fmt.Errorf("is longer than %d bytes", maxKeyBytes)
	}
	if !utf8.ValidString(k) {
		return errors.New("is not UTF-8")
	}
	for _, r := range k {
		if r == '.' || r == '$' || r == ' ' || unicode.IsControl(r) {
			return errors.New("contains '.', '$', a space or a control character")
		}
	}
	return nil
}

func truncateKey(k string) string {
	if len(k) > 40 {
		return k[:40] + "…"
	}
	return k
}

// checkSize enforces the size limit of a whole twin section, measured as
// IoT Hub documents it (documentSize). The documented measure counts
// nothing for control characters, nulls and empty objects or arrays, so
// localhub also caps the section's encoded JSON at maxEncodedFactor times
// the limit, which no real document near the limit reaches (a section of
// one-character string properties encodes to four times its measure).
func checkSize(doc map[string]any, limit int, what string) error {
	if n := documentSize(doc); n > limit {
		return fmt.Errorf("%s would be %d bytes, more than the %d allowed", what, n, limit)
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if len(raw) > maxEncodedFactor*limit {
		return fmt.Errorf("%s would encode to %d bytes of JSON, more than localhub's %d", what, len(raw), maxEncodedFactor*limit)
	}
	return nil
}

// maxEncodedFactor bounds a twin section's JSON against its size limit.
const maxEncodedFactor = 8

// documentSize measures a twin section as IoT Hub documents it: for each
// property the length of its key plus the size of its value, where a
// string counts its UTF-8 bytes other than control characters (C0 and C1),
// a number 8 bytes, a boolean 4, and an object or array the sum of what it
// holds. $version and $metadata are not part of the documents measured.
func documentSize(doc map[string]any) int {
	n := 0
	for k, v := range doc {
		n += stringSize(k) + valueSize(v)
	}
	return n
}

func valueSize(v any) int {
	switch v := v.(type) {
	case map[string]any:
		return documentSize(v)
	case []any:
		n := 0
		for _, e := range v {
			n += valueSize(e)
		}
		return n
	case string:
		return stringSize(v)
	case json.Number, float64, int, int64:
		return 8
	case bool:
		return 4
	}
	return 0 // null
}

func stringSize(s string) int {
	n := 0
	for _, r := range s {
		if !unicode.IsControl(r) {
			n += utf8.RuneLen(r)
		}
	}
	return n
}

// mergePatch applies a JSON merge patch: null deletes a property, an object
// merges into an object, anything else replaces. meta mirrors doc and gets
// stamp (the $lastUpdated metadata) on every node the patch touches.
func mergePatch(doc, meta, patch map[string]any, stamp map[string]any) {
	for k, v := range patch {
		if v == nil {
			delete(doc, k)
			delete(meta, k)
			continue
		}
		if pv, ok := v.(map[string]any); ok {
			dv, ok := doc[k].(map[string]any)
			if !ok {
				dv = map[string]any{}
				doc[k] = dv
			}
			mv, ok := meta[k].(map[string]any)
			if !ok {
				mv = map[string]any{}
				meta[k] = mv
			}
			mergePatch(dv, mv, pv, stamp)
			for sk, sv := range stamp {
				mv[sk] = sv
			}
			continue
		}
		doc[k] = v
		meta[k] = copyStamp(stamp)
	}
	for sk, sv := range stamp {
		meta[sk] = sv
	}
}

func copyStamp(stamp map[string]any) map[string]any {
	m := make(map[string]any, len(stamp))
	for k, v := range stamp {
		m[k] = v
	}
	return m
}

func desiredStamp(now time.Time, version int64) map[string]any {
	return map[string]any{"$lastUpdated": msTime(now), "$lastUpdatedVersion": version}
}

func reportedStamp(now time.Time) map[string]any {
	return map[string]any{"$lastUpdated": msTime(now)}
}

// withVersion returns a shallow copy of doc with "$version" (and metadata,
// when meta is not nil) added, the shape both the REST twin and the device's
// twin GET use.
func withVersion(doc map[string]any, version int64, meta map[string]any) map[string]any {
	out := make(map[string]any, len(doc)+2)
	for k, v := range doc {
		out[k] = v
	}
	if meta != nil {
		out["$metadata"] = meta
	}
	out["$version"] = version
	return out
}

// newTwin is the twin of a new device: empty sections at version 1.
func newTwin(now time.Time) store.Twin {
	return store.Twin{
		Version:         1,
		Tags:            map[string]any{},
		Desired:         map[string]any{},
		DesiredVersion:  1,
		DesiredMeta:     map[string]any{"$lastUpdated": msTime(now), "$lastUpdatedVersion": int64(1)},
		Reported:        map[string]any{},
		ReportedVersion: 1,
		ReportedMeta:    map[string]any{"$lastUpdated": msTime(now)},
	}
}

// throttleDevice takes a token of op for a device's twin request and
// reports whether the request was refused; a refused request is answered
// with status 429 on the twin response topic, as IoT Hub does.
func (h *Hub) throttleDevice(cl *mqtt.Client, op hubquota.Op, rid string) bool {
	if err := h.limits.wait(h.ctx, op, 1); err != nil {
		h.log.Debug("device twin request throttled", "device", cl.ID, "operation", op)
		h.sendToClient(cl, topicTwinRes+"429/?$rid="+rid, nil)
		return true
	}
	return false
}

// deviceGetTwin answers $iothub/twin/GET/?$rid={rid} with the desired and
// reported sections (no metadata, as IoT Hub sends them to devices).
func (h *Hub) deviceGetTwin(cl *mqtt.Client, rid string) {
	if h.throttleDevice(cl, hubquota.TwinReads, rid) {
		return
	}
	var tw store.Twin
	err := h.store.View(func(tx *store.Tx) error {
		var err error
		tw, err = tx.Twin(cl.ID)
		return err
	})
	if err != nil {
		status := "500"
		if errors.Is(err, store.ErrNotFound) {
			status = "404"
		} else {
			h.log.Error("read twin", "device", cl.ID, "error", err)
		}
		h.sendToClient(cl, topicTwinRes+status+"/?$rid="+rid, nil)
		return
	}
	body, err := json.Marshal(map[string]any{
		"desired":  withVersion(tw.Desired, tw.DesiredVersion, nil),
		"reported": withVersion(tw.Reported, tw.ReportedVersion, nil),
	})
	if err != nil {
		h.log.Error("encode twin", "device", cl.ID, "error", err)
		h.sendToClient(cl, topicTwinRes+"500/?$rid="+rid, nil)
		return
	}
	h.sendToClient(cl, topicTwinRes+"200/?$rid="+rid, body)
}

// devicePatchReported applies $iothub/twin/PATCH/properties/reported/?$rid=…
// and answers 204 with the new reported $version, or 400 for a patch that
// is not a valid twin document.
func (h *Hub) devicePatchReported(cl *mqtt.Client, rid string, payload []byte) {
	if h.throttleDevice(cl, hubquota.TwinUpdates, rid) {
		return
	}
	version, err := h.patchReported(cl.ID, payload, time.Now())
	if err != nil {
		status := "400"
		switch ErrorCode(err) {
		case ErrArgumentInvalid:
		case ErrDeviceNotFound:
			status = "404"
		default:
			status = "500"
			h.log.Error("patch reported properties", "device", cl.ID, "error", err)
		}
		h.log.Debug("reported patch refused", "device", cl.ID, "error", err)
		h.sendToClient(cl, topicTwinRes+status+"/?$rid="+rid, nil)
		return
	}
	h.sendToClient(cl, topicTwinRes+"204/?$rid="+rid+"&$version="+itoa(version), nil)
}

// parseReportedPatch decodes and checks the payload of a reported
// properties patch. Errors are ArgumentInvalid.
func parseReportedPatch(payload []byte) (map[string]any, error) {
	patch, err := decodeDocument(payload)
	if err != nil {
		return nil, errorf(ErrArgumentInvalid, "reported properties patch is not a JSON object: %v", err)
	}
	stripSystemProperties(patch)
	if err := validatePatch(patch, "reported"); err != nil {
		return nil, errorf(ErrArgumentInvalid, "%v", err)
	}
	return patch, nil
}

func (h *Hub) patchReported(deviceID string, payload []byte, now time.Time) (int64, error) {
	patch, err := parseReportedPatch(payload)
	if err != nil {
		return 0, err
	}
	var version int64
	err = h.store.Update(func(tx *store.Tx) error {
		tw, err := tx.Twin(deviceID)
		if errors.Is(err, store.ErrNotFound) {
			return errorf(ErrDeviceNotFound, "device %q is not registered", deviceID)
		}
		if err != nil {
			return err
		}
		mergePatch(tw.Reported, tw.ReportedMeta, patch, reportedStamp(now))
		if err := checkSize(tw.Reported, maxPropertiesBytes, "reported properties"); err != nil {
			return errorf(ErrArgumentInvalid, "%v", err)
		}
		tw.ReportedVersion++
		tw.Version++
		version = tw.ReportedVersion
		return tx.PutTwin(deviceID, tw)
	})
	return version, err
}

// twinUpdate is a service-side change of a twin.
type twinUpdate struct {
	replace bool           // PUT replaces tags and desired; PATCH merges
	tags    map[string]any // nil: unchanged
	desired map[string]any // nil: unchanged
	ifMatch string
}

// updateTwin applies a service-side twin change and pushes desired changes
// to the device. The per-device lock keeps notifications in version order.
//
// u comes from parseTwinBody, which validated its documents.
func (h *Hub) updateTwin(deviceID string, u twinUpdate, now time.Time) (store.Device, store.Twin, error) {
	unlock := h.twinMu.lock(deviceID)
	defer unlock()

	var (
		dev          store.Device
		tw           store.Twin
		notification map[string]any
	)
	err := h.store.Update(func(tx *store.Tx) error {
		var err error
		if dev, err = tx.Device(deviceID); errors.Is(err, store.ErrNotFound) {
			return errorf(ErrDeviceNotFound, "device %q is not registered", deviceID)
		} else if err != nil {
			return err
		}
		if tw, err = tx.Twin(deviceID); err != nil {
			return err
		}
		if !etagMatches(u.ifMatch, twinETag(tw.Version)) {
			return errorf(ErrPreconditionFailed, "the twin etag does not match If-Match %s", u.ifMatch)
		}
		if u.tags == nil && u.desired == nil {
			return nil // nothing the service may change: no new version
		}
		if u.tags != nil {
			if u.replace {
				tw.Tags = dropNulls(u.tags)
			} else {
				mergePatch(tw.Tags, map[string]any{}, u.tags, nil)
			}
			if err := checkSize(tw.Tags, maxTagsBytes, "tags"); err != nil {
				return errorf(ErrArgumentInvalid, "%v", err)
			}
		}
		if u.desired != nil {
			version := tw.DesiredVersion + 1
			stamp := desiredStamp(now, version)
			if u.replace {
				// The device gets the new document plus a null for each
				// property that went away, so that applying it as a patch
				// leaves the device with exactly the new document.
				notification = dropNulls(u.desired)
				for k := range tw.Desired {
					if _, ok := notification[k]; !ok {
						notification[k] = nil
					}
				}
				tw.Desired, tw.DesiredMeta = map[string]any{}, map[string]any{}
				mergePatch(tw.Desired, tw.DesiredMeta, dropNulls(u.desired), stamp)
			} else {
				notification = u.desired
				mergePatch(tw.Desired, tw.DesiredMeta, u.desired, stamp)
			}
			if err := checkSize(tw.Desired, maxPropertiesBytes, "desired properties"); err != nil {
				return errorf(ErrArgumentInvalid, "%v", err)
			}
			tw.DesiredVersion = version
		}
		tw.Version++
		return tx.PutTwin(deviceID, tw)
	})
	if err != nil {
		return store.Device{}, store.Twin{}, err
	}
	if notification != nil {
		body, err := json.Marshal(withVersion(notification, tw.DesiredVersion, nil))
		if err == nil {
			h.sendToDevice(deviceID, topicTwinDesired+"?$version="+itoa(tw.DesiredVersion), body)
		}
	}
	return dev, tw, nil
}

// dropNulls removes null values, which mean nothing in a replacement.
func dropNulls(doc map[string]any) map[string]any {
	out := make(map[string]any, len(doc))
	for k, v := range doc {
		if v == nil {
			continue
		}
		if m, ok := v.(map[string]any); ok {
			v = dropNulls(m)
		}
		out[k] = v
	}
	return out
}
