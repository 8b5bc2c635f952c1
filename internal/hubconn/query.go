package hubconn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/amenzhinsky/iothub/iotservice"
)

// MaxQueryPageSize is the most twins IoT Hub returns in one page of a query
// (x-ms-max-item-count); QueryPage asks for no more, and localhub refuses a
// request for more with 400. Without the header a page holds 100, which is
// all the amenzhinsky client ever asks for.
const MaxQueryPageSize = 1000

// TwinPage is one page of a device query's result.
type TwinPage struct {
	// Twins are the page's rows, one JSON twin each, as the hub sent them.
	Twins []json.RawMessage
	// Next is the continuation token to send for the page after this one;
	// "" when this page is the last.
	Next string
}

// QueryPage requests one page of a device query (POST /devices/query): up
// to pageSize twins (1 to MaxQueryPageSize), starting where the page that
// returned token ended, or at the start when token is "". The hub's
// continuation token is opaque and valid only for the query that issued
// it; unlike the amenzhinsky client's QueryDevices, which keeps it to
// itself, this hands it to the caller, who can resume from it in another
// process.
//
// Hub errors come back as *iotservice.RequestError (status and body), as
// from CallMethod; a 200 whose body is not a list of twins is an error of
// its own; transport failures come back as they are. A query reads
// nothing, so every failure is safe to retry.
func (c *ServiceClient) QueryPage(ctx context.Context, query string, pageSize int, token string) (TwinPage, error) {
	if pageSize < 1 || pageSize > MaxQueryPageSize {
		return TwinPage{}, fmt.Errorf("query page size %d: IoT Hub returns 1 to %d twins a page", pageSize, MaxQueryPageSize)
	}
	if err := CheckContinuation(token); err != nil {
		return TwinPage{}, err
	}
	b, err := json.Marshal(struct {
		Query string `json:"query"`
	}{query})
	if err != nil {
		return TwinPage{}, fmt.Errorf("encode the query: %w", err)
	}
	req, err := c.newRequest(ctx, "/devices/query", b)
	if err != nil {
		return TwinPage{}, err
	}
	req.Header.Set("x-ms-max-item-count", strconv.Itoa(pageSize))
	if token != "" {
		req.Header.Set("x-ms-continuation", token)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return TwinPage{}, err
	}
	defer res.Body.Close()
	// Unbounded, as the amenzhinsky client reads a page: a page is at most
	// pageSize twins of the hub's bounded size, and the hub is trusted.
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return TwinPage{}, fmt.Errorf("read the hub's answer to a query (HTTP %d): %w", res.StatusCode, err)
	}
	if res.StatusCode != http.StatusOK {
		return TwinPage{}, &iotservice.RequestError{Code: res.StatusCode, Body: raw}
	}
	return decodePage(raw, res.Header.Get("x-ms-continuation"))
}

// decodePage reads the body of a query's 200, a JSON array of twins, and
// the continuation header that came with it. A row that is not a JSON
// object is left to the caller, who skips rows without a device ID.
func decodePage(body []byte, next string) (TwinPage, error) {
	var twins []json.RawMessage
	if err := json.Unmarshal(body, &twins); err != nil || twins == nil {
		// null decodes without an error into a nil slice: no list either.
		const limit = 200
		if len(body) > limit {
			body = body[:limit]
		}
		return TwinPage{}, fmt.Errorf("the hub answered 200 to a query with a body that is not a list of twins: %q", body)
	}
	if err := CheckContinuation(next); err != nil {
		return TwinPage{}, fmt.Errorf("the hub answered a query with a continuation token that cannot be sent back: %w", err)
	}
	return TwinPage{Twins: twins, Next: next}, nil
}

// errBadContinuation is the reason CheckContinuation gives; it never quotes
// the token, which may be long.
var errBadContinuation = errors.New("a continuation token is printable ASCII: pass the token a query page returned, unchanged")

// CheckContinuation reports whether token can go back to the hub as
// x-ms-continuation: IoT Hub's tokens are printable ASCII (JSON or base64
// text), and anything else would not even make a valid header. "" (the
// first page) is valid.
func CheckContinuation(token string) error {
	for i := 0; i < len(token); i++ {
		if c := token[i]; c < 0x20 || c > 0x7e {
			return errBadContinuation
		}
	}
	return nil
}
