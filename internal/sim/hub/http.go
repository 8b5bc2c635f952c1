package hub

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/sim/hub/sas"
	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// maxBodyBytes bounds request bodies: twins are at most 8+32 KB, method
// payloads 128 KB; the rest is headroom for JSON framing.
const maxBodyBytes = 512 * 1024

// maxListTop is the most identities GET /devices returns, as on IoT Hub.
const maxListTop = 1000

// Handler returns the service-side REST API: the IoT Hub routes the Go SDK
// uses plus GET /_localhub/stats and GET /_localhub/methods.
func (h *Hub) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, need Permission, op hubquota.Op, handler http.HandlerFunc) {
		if op != "" {
			handler = h.throttled(op, handler)
		}
		mux.HandleFunc(pattern, h.permitted(need, handler))
	}
	route("PUT /devices/{id}", RegistryWrite, hubquota.Registry, h.handlePutDevice)
	route("GET /devices/{id}", RegistryRead, hubquota.Registry, h.handleGetDevice)
	route("DELETE /devices/{id}", RegistryWrite, hubquota.Registry, h.handleDeleteDevice)
	route("GET /devices", RegistryRead, hubquota.Registry, h.handleListDevices)
	route("POST /devices", RegistryWrite, hubquota.Registry, h.handleBulkDevices) // one op per request
	route("POST /devices/query", RegistryRead, hubquota.Queries, h.handleQuery)
	route("GET /twins/{id}", ServiceConnect, hubquota.TwinReads, h.handleGetTwin)
	route("PATCH /twins/{id}", ServiceConnect, hubquota.TwinUpdates, h.handleUpdateTwin)
	route("PUT /twins/{id}", ServiceConnect, hubquota.TwinUpdates, h.handleUpdateTwin)
	// Direct methods are metered by payload size in invokeMethod.
	route("POST /twins/{id}/methods", ServiceConnect, "", h.handleInvokeMethod)
	route("GET /statistics/devices", RegistryRead, "", h.handleDeviceStats)
	route("GET /statistics/service", ServiceConnect, "", h.handleServiceStats)
	route("GET /_localhub/stats", allPermissions, "", h.handleStats)
	route("GET /_localhub/methods", allPermissions, "", h.handleMethodLog)
	// Method-less patterns catch the methods a route does not serve, so that
	// they get an IoT Hub error body rather than the mux's plain text.
	for _, path := range []string{"/devices/{id}", "/devices", "/twins/{id}", "/twins/{id}/methods",
		"/statistics/devices", "/statistics/service", "/_localhub/stats", "/_localhub/methods"} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			h.fail(w, r, errorf(ErrMethodNotAllowed, "%s is not supported on %s", r.Method, r.URL.Path))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, r, errorf(ErrNotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return h.withAuth(mux)
}

// policyContextKey keys the request's authenticated policy in its context.
type policyContextKey struct{}

// permitted runs next if the request's policy grants need, and answers 401
// IotHubUnauthorizedAccess otherwise, as IoT Hub does.
func (h *Hub) permitted(need Permission, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, _ := r.Context().Value(policyContextKey{}).(Policy)
		if p.Permissions&need != need {
			err := errorf(ErrIotHubUnauthorizedAccess, "Unauthorized: shared access policy %q has %s; %s %s needs %s", p.Name, p.Permissions, r.Method, r.URL.Path, need)
			h.log.Warn("service request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", err.Message)
			h.fail(w, r, err)
			return
		}
		next(w, r)
	}
}

// throttled admits a request to next once op's quota allows it, or
// answers 429 ThrottlingException (see throttle.wait).
func (h *Hub) throttled(op hubquota.Op, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h.limits.wait(r.Context(), op, 1); err != nil {
			if r.Context().Err() == nil {
				h.fail(w, r, err)
			}
			return
		}
		next(w, r)
	}
}

// withAuth checks the service SAS token before any route runs, as IoT Hub
// does (an unauthenticated caller learns nothing, not even a 404).
func (h *Hub) withAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		if p, err := h.checkServiceToken(r.Header.Get("Authorization"), start); err != nil {
			h.log.Warn("service request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", err.Error())
			h.fail(sw, r, err)
		} else {
			next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), policyContextKey{}, p)))
		}
		h.log.Debug("http request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", time.Since(start))
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// checkServiceToken verifies "SharedAccessSignature sr={host}&sig=…&se=…&skn={policy}"
// and returns the policy that signed it.
func (h *Hub) checkServiceToken(header string, now time.Time) (Policy, error) {
	if header == "" {
		return Policy{}, errorf(ErrIotHubUnauthorizedAccess, "Unauthorized: the Authorization header is missing")
	}
	tok, err := sas.Parse(header)
	if err != nil {
		return Policy{}, errorf(ErrIotHubUnauthorizedAccess, "Unauthorized: %v", err)
	}
	if tok.KeyName == "" {
		return Policy{}, errorf(ErrIotHubUnauthorizedAccess, "Unauthorized: the token names no shared access policy (skn); a device token does not reach the service API")
	}
	p, ok := lookupPolicy(tok.KeyName)
	if !ok {
		return Policy{}, errorf(ErrIotHubUnauthorizedAccess, "Unauthorized: unknown shared access policy %q", tok.KeyName)
	}
	if !h.coversService(tok.ResourceURI()) {
		return Policy{}, errorf(ErrIotHubUnauthorizedAccess, "Unauthorized: token resource %q is not this hub", tok.ResourceURI())
	}
	if err := tok.Verify(policyKey(h.policyKey, p.Name), now); err != nil {
		return Policy{}, errorf(ErrIotHubUnauthorizedAccess, "Unauthorized: %v", err)
	}
	return p, nil
}

// errorBody is IoT Hub's REST error shape. ErrorCode repeats the numeric code
// that IoT Hub otherwise only embeds in messages and headers.
type errorBody struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
	ErrorCode        int    `json:"ErrorCode"`
}

// fail logs internal errors and writes err as an IoT Hub error response.
func (h *Hub) fail(w http.ResponseWriter, r *http.Request, err error) {
	if ErrorCode(err) == ErrServerError {
		h.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	}
	writeError(w, err)
}

// writeError writes err with the status and codes errorStatus assigns.
// Internal errors are not detailed to the client.
func writeError(w http.ResponseWriter, err error) {
	code := ErrorCode(err)
	status, number := errorStatus(code)
	msg := "internal error; see the localhub log"
	var e *Error
	if errors.As(err, &e) {
		msg = e.Message
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	w.Header().Set("iothub-errorcode", code)
	writeJSON(w, status, errorBody{
		Message:          "ErrorCode:" + code + ";" + msg,
		ExceptionMessage: "Tracking ID:" + hex.EncodeToString(id[:]) + "-TimeStamp:" + time.Now().UTC().Format("01/02/2006 15:04:05"),
		ErrorCode:        number,
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"Message":"ErrorCode:ServerError;cannot encode response","ExceptionMessage":"","ErrorCode":500001}`)
	}
	writeRawJSON(w, status, body)
}

// writeRawJSON writes body, which must be JSON.
func writeRawJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// readBody reads a request body of at most maxBodyBytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, errorf(ErrArgumentInvalid, "request body exceeds %d bytes", maxBodyBytes)
	}
	if err != nil {
		return nil, errorf(ErrArgumentInvalid, "read request body: %v", err)
	}
	return body, nil
}

// readRequest reads the request's body and parses it with parse; where either fails it answers
// with the error, and ok is false.
func readRequest[T any](h *Hub, w http.ResponseWriter, r *http.Request, parse func([]byte) (T, error)) (v T, ok bool) {
	body, err := readBody(w, r)
	if err == nil {
		v, err = parse(body)
	}
	if err != nil {
		h.fail(w, r, err)
		return v, false
	}
	return v, true
}

// decodeJSON parses one JSON value, keeping numbers as json.Number, and
// refuses anything after it. Errors are ArgumentInvalid.
func decodeJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return errorf(ErrArgumentInvalid, "request body is not valid JSON of the expected shape: %v", err)
	}
	if rest := bytes.TrimSpace(body[dec.InputOffset():]); len(rest) > 0 {
		return errorf(ErrArgumentInvalid, "request body has data after its JSON value")
	}
	return nil
}

// deviceView is an identity as the registry API returns it.
type deviceView struct {
	DeviceID                   string       `json:"deviceId"`
	GenerationID               string       `json:"generationId"`
	ETag                       string       `json:"etag"`
	ConnectionState            string       `json:"connectionState"`
	Status                     string       `json:"status"`
	StatusReason               *string      `json:"statusReason"`
	ConnectionStateUpdatedTime string       `json:"connectionStateUpdatedTime"`
	StatusUpdatedTime          string       `json:"statusUpdatedTime"`
	LastActivityTime           string       `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int          `json:"cloudToDeviceMessageCount"`
	Authentication             authView     `json:"authentication"`
	Capabilities               capabilities `json:"capabilities"`
}

type authView struct {
	SymmetricKey   *symmetricKey `json:"symmetricKey"`
	X509Thumbprint thumbprint    `json:"x509Thumbprint"`
	Type           string        `json:"type"`
}

type symmetricKey struct {
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
}

type thumbprint struct {
	PrimaryThumbprint   *string `json:"primaryThumbprint"`
	SecondaryThumbprint *string `json:"secondaryThumbprint"`
}

type capabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

func (h *Hub) deviceView(d store.Device) deviceView {
	connected, stateTime, activity := h.conns.state(d.ID)
	v := deviceView{
		DeviceID:                   d.ID,
		GenerationID:               d.GenerationID,
		ETag:                       deviceETag(d.Version),
		ConnectionState:            connectionState(connected),
		Status:                     d.Status,
		ConnectionStateUpdatedTime: msTime(stateTime),
		StatusUpdatedTime:          msTime(d.StatusUpdatedTime),
		LastActivityTime:           msTime(activity),
		Authentication: authView{
			SymmetricKey: &symmetricKey{PrimaryKey: d.PrimaryKey, SecondaryKey: d.SecondaryKey},
			Type:         d.AuthType,
		},
		Capabilities: capabilities{IoTEdge: d.IoTEdge},
	}
	if d.StatusReason != "" {
		v.StatusReason = &d.StatusReason
	}
	return v
}

func connectionState(connected bool) string {
	if connected {
		return "Connected"
	}
	return "Disconnected"
}

// identityBody is the writable part of an identity as a service sends it, in PUT /devices/{id}
// and in each entry of a bulk POST /devices.
type identityBody struct {
	Status         string `json:"status"`
	StatusReason   string `json:"statusReason"`
	Authentication *struct {
		SymmetricKey *symmetricKey `json:"symmetricKey"`
		Type         string        `json:"type"`
	} `json:"authentication"`
	Capabilities *capabilities `json:"capabilities"`
}

// spec is the identity the body describes for the device id.
func (b identityBody) spec(id string) deviceSpec {
	spec := deviceSpec{ID: id, Status: b.Status, StatusReason: b.StatusReason}
	if a := b.Authentication; a != nil {
		spec.AuthType = a.Type
		if a.SymmetricKey != nil {
			spec.PrimaryKey, spec.SecondaryKey = a.SymmetricKey.PrimaryKey, a.SymmetricKey.SecondaryKey
		}
	}
	if b.Capabilities != nil {
		spec.IoTEdge = b.Capabilities.IoTEdge
	}
	return spec
}

// deviceRequest is the body of PUT /devices/{id}.
type deviceRequest struct {
	DeviceID string `json:"deviceId"`
	identityBody
}

// parseDeviceBody decodes and checks the body of PUT /devices/{id}.
func parseDeviceBody(id string, body []byte) (deviceSpec, error) {
	var req deviceRequest
	if err := decodeJSON(body, &req); err != nil {
		return deviceSpec{}, err
	}
	if req.DeviceID != "" && req.DeviceID != id {
		return deviceSpec{}, errorf(ErrArgumentInvalid, "deviceId %q in the body does not match %q in the path", req.DeviceID, id)
	}
	spec := req.spec(id)
	return spec, spec.validate()
}

func (h *Hub) handlePutDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	spec, ok := readRequest(h, w, r, func(body []byte) (deviceSpec, error) { return parseDeviceBody(id, body) })
	if !ok {
		return
	}
	d, err := h.putDevice(spec, r.Header.Get("If-Match"), time.Now())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.log.Info("device identity saved", "device", id, "status", d.Status)
	w.Header().Set("ETag", `"`+deviceETag(d.Version)+`"`)
	writeJSON(w, http.StatusOK, h.deviceView(d))
}

func (h *Hub) handleGetDevice(w http.ResponseWriter, r *http.Request) {
	d, err := h.getDevice(r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("ETag", `"`+deviceETag(d.Version)+`"`)
	writeJSON(w, http.StatusOK, h.deviceView(d))
}

func (h *Hub) handleDeleteDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := h.deleteDevice(id, r.Header.Get("If-Match")); err != nil {
		h.fail(w, r, err)
		return
	}
	h.log.Info("device identity deleted", "device", id)
	w.WriteHeader(http.StatusNoContent)
}

func (h *Hub) handleListDevices(w http.ResponseWriter, r *http.Request) {
	top := maxListTop
	if s := r.URL.Query().Get("top"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxListTop {
			h.fail(w, r, errorf(ErrArgumentInvalid, "top must be a number from 1 to %d", maxListTop))
			return
		}
		top = n
	}
	devices, err := h.listDevices(top)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]deviceView, 0, len(devices))
	for _, d := range devices {
		out = append(out, h.deviceView(d))
	}
	writeJSON(w, http.StatusOK, out)
}

// twinView is a twin as the twin API returns it.
type twinView struct {
	DeviceID                  string         `json:"deviceId"`
	ETag                      string         `json:"etag"`
	DeviceETag                string         `json:"deviceEtag"`
	Status                    string         `json:"status"`
	StatusReason              *string        `json:"statusReason,omitempty"`
	StatusUpdateTime          string         `json:"statusUpdateTime"`
	ConnectionState           string         `json:"connectionState"`
	LastActivityTime          string         `json:"lastActivityTime"`
	CloudToDeviceMessageCount int            `json:"cloudToDeviceMessageCount"`
	AuthenticationType        string         `json:"authenticationType"`
	X509Thumbprint            thumbprint     `json:"x509Thumbprint"`
	ModelID                   string         `json:"modelId"`
	Version                   uint64         `json:"version"`
	Tags                      map[string]any `json:"tags,omitempty"`
	Properties                twinProperties `json:"properties"`
	Capabilities              capabilities   `json:"capabilities"`
}

type twinProperties struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
}

func (h *Hub) twinView(d store.Device, tw store.Twin) twinView {
	connected, _, activity := h.conns.state(d.ID)
	v := twinView{
		DeviceID:           d.ID,
		ETag:               twinETag(tw.Version),
		DeviceETag:         deviceETag(d.Version),
		Status:             d.Status,
		StatusUpdateTime:   msTime(d.StatusUpdatedTime),
		ConnectionState:    connectionState(connected),
		LastActivityTime:   msTime(activity),
		AuthenticationType: d.AuthType,
		Version:            tw.Version,
		Properties: twinProperties{
			Desired:  withVersion(tw.Desired, tw.DesiredVersion, tw.DesiredMeta),
			Reported: withVersion(tw.Reported, tw.ReportedVersion, tw.ReportedMeta),
		},
		Capabilities: capabilities{IoTEdge: d.IoTEdge},
	}
	if d.StatusReason != "" {
		v.StatusReason = &d.StatusReason
	}
	if len(tw.Tags) > 0 {
		v.Tags = tw.Tags
	}
	return v
}

func (h *Hub) handleGetTwin(w http.ResponseWriter, r *http.Request) {
	d, tw, err := h.getTwin(r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.countTwinRead(d.ID)
	w.Header().Set("ETag", `"`+twinETag(tw.Version)+`"`)
	writeJSON(w, http.StatusOK, h.twinView(d, tw))
}

// handleUpdateTwin serves PATCH (merge) and PUT (replace) of a twin. Only
// tags and desired properties are the service's to write; other fields of
// the body, including reported properties, are ignored as the twin reads
// them back.
func (h *Hub) handleUpdateTwin(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	u, ok := readRequest(h, w, r, func(body []byte) (twinUpdate, error) { return parseTwinBody(id, body, r.Method == http.MethodPut) })
	if !ok {
		return
	}
	u.ifMatch = r.Header.Get("If-Match")
	d, tw, err := h.updateTwin(id, u, time.Now())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.log.Debug("twin updated", "device", id, "version", tw.Version, "desired_version", tw.DesiredVersion)
	w.Header().Set("ETag", `"`+twinETag(tw.Version)+`"`)
	writeJSON(w, http.StatusOK, h.twinView(d, tw))
}

// parseTwinBody decodes and checks the body of PATCH (replace false) or PUT
// (replace true) /twins/{id}. Only tags and desired properties are the
// service's to write; other fields of the body, including reported
// properties, are ignored as the twin reads them back. The sizes of the
// sections are checked once merged, by updateTwin.
func parseTwinBody(id string, body []byte, replace bool) (twinUpdate, error) {
	var req struct {
		DeviceID   string         `json:"deviceId"`
		Tags       map[string]any `json:"tags"`
		Properties *struct {
			Desired map[string]any `json:"desired"`
		} `json:"properties"`
	}
	if err := decodeJSON(body, &req); err != nil {
		return twinUpdate{}, err
	}
	if req.DeviceID != "" && req.DeviceID != id {
		return twinUpdate{}, errorf(ErrArgumentInvalid, "deviceId %q in the body does not match %q in the path", req.DeviceID, id)
	}
	u := twinUpdate{replace: replace, tags: req.Tags}
	if req.Properties != nil {
		u.desired = req.Properties.Desired
	}
	if u.replace {
		// A replacement without a section empties it.
		if u.tags == nil {
			u.tags = map[string]any{}
		}
		if u.desired == nil {
			u.desired = map[string]any{}
		}
	}
	if u.desired != nil {
		stripSystemProperties(u.desired)
		if err := validatePatch(u.desired, "desired"); err != nil {
			return twinUpdate{}, errorf(ErrArgumentInvalid, "%v", err)
		}
	}
	if u.tags != nil {
		if err := validatePatch(u.tags, "tags"); err != nil {
			return twinUpdate{}, errorf(ErrArgumentInvalid, "%v", err)
		}
	}
	return u, nil
}

func (h *Hub) handleInvokeMethod(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	call, ok := readRequest(h, w, r, parseMethodCall)
	if !ok {
		return
	}
	start := time.Now()
	res, err := h.invokeMethod(r.Context(), id, call)
	if err != nil {
		if r.Context().Err() != nil {
			h.log.Info("direct method abandoned by caller", "device", id, "method", call.name)
			return
		}
		h.log.Info("direct method failed", "device", id, "method", call.name, "code", ErrorCode(err), "duration", time.Since(start))
		h.fail(w, r, err)
		return
	}
	h.log.Info("direct method answered", "device", id, "method", call.name, "status", res.status, "duration", time.Since(start))
	// Assembled by hand rather than through json.Marshal, which would
	// compact the device's JSON and escape its <, > and &: the payload is
	// JSON that responsePayload checked, passed on as the device wrote it.
	out := make([]byte, 0, len(res.payload)+32)
	out = append(out, `{"status":`...)
	out = strconv.AppendInt(out, int64(res.status), 10)
	out = append(out, `,"payload":`...)
	out = append(out, res.payload...)
	out = append(out, '}')
	writeRawJSON(w, http.StatusOK, out)
}

func (h *Hub) handleDeviceStats(w http.ResponseWriter, r *http.Request) {
	var total, enabled int
	err := h.store.View(func(tx *store.Tx) error {
		return tx.Devices("", func(d store.Device) (bool, error) {
			total++
			if d.Status == statusEnabled {
				enabled++
			}
			return true, nil
		})
	})
	if err != nil {
		h.fail(w, r, fmt.Errorf("count devices: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{
		"totalDeviceCount":    total,
		"enabledDeviceCount":  enabled,
		"disabledDeviceCount": total - enabled,
	})
}

func (h *Hub) handleServiceStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]int{"connectedDeviceCount": h.conns.count()})
}
