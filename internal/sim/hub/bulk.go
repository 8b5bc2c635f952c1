package hub

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// maxBulkDevices is how many identities one bulk registry request may
// carry, IoT Hub's limit.
const maxBulkDevices = 100

// Import modes of the bulk registry API (ExportImportDevice.importMode),
// compared case-insensitively: the Go SDK sends "create" but "Update".
const (
	modeCreate            = "create"
	modeCreateOrUpdate    = "createorupdate"
	modeUpdate            = "update"
	modeUpdateIfMatchETag = "updateifmatchetag"
	modeDelete            = "delete"
	modeDeleteIfMatchETag = "deleteifmatchetag"
)

// bulkDevice is one ExportImportDevice of POST /devices. JSON field names
// match case-insensitively, so the SDK's "etag" fills ETag.
type bulkDevice struct {
	ID         string `json:"id"`
	ETag       string `json:"eTag"`
	ImportMode string `json:"importMode"`
	identityBody
}

// bulkResult is IoT Hub's BulkRegistryOperationResult.
type bulkResult struct {
	IsSuccessful bool        `json:"isSuccessful"`
	Errors       []bulkError `json:"errors"`
	Warnings     []any       `json:"warnings"`
}

// bulkError is a DeviceRegistryOperationError: the numeric error code (as
// the SDKs decode it) and the message.
type bulkError struct {
	DeviceID    string `json:"deviceId"`
	ErrorCode   int    `json:"errorCode"`
	ErrorStatus string `json:"errorStatus"`
}

// handleBulkDevices serves POST /devices: create, update or delete up to
// maxBulkDevices identities in one transaction. Each device succeeds or
// fails on its own; with any failure the answer is 400 and lists them, as
// on IoT Hub. Twin import modes are not supported.
func (h *Hub) handleBulkDevices(w http.ResponseWriter, r *http.Request) {
	req, ok := readRequest(h, w, r, parseBulkBody)
	if !ok {
		return
	}
	res, err := h.bulkDevices(req, time.Now())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.log.Info("device identities saved in bulk", "devices", len(req), "failed", len(res.Errors))
	status := http.StatusOK
	if !res.IsSuccessful {
		status = http.StatusBadRequest
	}
	writeJSON(w, status, res)
}

// parseBulkBody decodes the body of POST /devices and checks it as a whole
// (checkBulk); each device's operation is checked when it is applied, and
// fails on its own.
func parseBulkBody(body []byte) ([]bulkDevice, error) {
	var req []bulkDevice
	if err := decodeJSON(body, &req); err != nil {
		return nil, err
	}
	return req, checkBulk(req)
}

// checkBulk refuses a request as a whole: too many devices, or one twice.
func checkBulk(req []bulkDevice) error {
	switch {
	case len(req) == 0:
		return errorf(ErrArgumentInvalid, "the request lists no devices")
	case len(req) > maxBulkDevices:
		return errorf(ErrArgumentInvalid, "the request lists %d devices; at most %d are allowed per call", len(req), maxBulkDevices)
	}
	seen := make(map[string]bool, len(req))
	for _, d := range req {
		if seen[d.ID] {
			return errorf(ErrArgumentInvalid, "device %q is listed more than once; a device may be specified only once", d.ID)
		}
		seen[d.ID] = true
	}
	return nil
}

// bulkDevices applies req in one transaction and answers per device.
func (h *Hub) bulkDevices(req []bulkDevice, now time.Time) (bulkResult, error) {
	res := bulkResult{IsSuccessful: true, Errors: []bulkError{}, Warnings: []any{}}
	var disabled, deleted []string
	err := h.store.Update(func(tx *store.Tx) error {
		for _, d := range req {
			dis, del, err := applyBulk(tx, d, now)
			var e *Error
			switch {
			case errors.As(err, &e):
				_, number := errorStatus(e.Code)
				res.Errors = append(res.Errors, bulkError{DeviceID: d.ID, ErrorCode: number, ErrorStatus: e.Message})
			case err != nil:
				return err
			case dis:
				disabled = append(disabled, d.ID)
			case del:
				deleted = append(deleted, d.ID)
			}
		}
		return nil
	})
	if err != nil {
		return bulkResult{}, err
	}
	res.IsSuccessful = len(res.Errors) == 0
	for _, id := range disabled {
		h.disconnectDevice(id, errDeviceDisabled)
	}
	for _, id := range deleted {
		h.forgetDevice(id)
	}
	return res, nil
}

// bulkSpec is the identity a bulk request's device entry describes.
func bulkSpec(d bulkDevice) deviceSpec { return d.spec(d.ID) }

// bulkOperation returns a device entry's import mode, lower-case, after
// checking that the modes that compare etags have one.
func bulkOperation(d bulkDevice) (string, error) {
	mode := strings.ToLower(d.ImportMode)
	switch mode {
	case modeCreate, modeCreateOrUpdate, modeUpdate, modeDelete:
	case modeUpdateIfMatchETag, modeDeleteIfMatchETag:
		if strings.Trim(d.ETag, `"`) == "" {
			return "", errorf(ErrArgumentInvalid, "importMode %s needs the device's eTag", d.ImportMode)
		}
	default:
		return "", errorf(ErrArgumentInvalid, "importMode %q is not supported by localhub; use create, createOrUpdate, update, updateIfMatchETag, delete or deleteIfMatchETag", d.ImportMode)
	}
	return mode, nil
}

// applyBulk applies one device's operation and reports whether it disabled
// or deleted the device.
func applyBulk(tx *store.Tx, d bulkDevice, now time.Time) (disabled, deleted bool, err error) {
	mode, err := bulkOperation(d)
	if err != nil {
		return false, false, err
	}
	spec := bulkSpec(d)
	etag := `"` + strings.Trim(d.ETag, `"`) + `"`
	switch mode {
	case modeCreate:
		_, _, err = putDeviceTx(tx, spec, "", now)
	case modeCreateOrUpdate:
		if _, err := tx.Device(d.ID); errors.Is(err, store.ErrNotFound) {
			_, _, err = putDeviceTx(tx, spec, "", now)
			return false, false, err
		}
		_, disabled, err = putDeviceTx(tx, spec, "*", now)
	case modeUpdate:
		_, disabled, err = putDeviceTx(tx, spec, "*", now)
	case modeUpdateIfMatchETag:
		_, disabled, err = putDeviceTx(tx, spec, etag, now)
	case modeDelete:
		err = deleteDeviceTx(tx, d.ID, "*")
		deleted = err == nil
	case modeDeleteIfMatchETag:
		err = deleteDeviceTx(tx, d.ID, etag)
		deleted = err == nil
	}
	return disabled, deleted, err
}
