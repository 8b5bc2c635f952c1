package hubconn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/amenzhinsky/iothub/common"
	"github.com/amenzhinsky/iothub/iotservice"
)

// MethodCall is a direct-method request as IoT Hub's REST API takes it
// (POST /twins/{id}/methods), with the payload as raw JSON.
type MethodCall struct {
	Method string
	// Payload is any JSON document; empty sends none.
	Payload json.RawMessage
	// ResponseTimeout and ConnectTimeout are in whole seconds; zero leaves
	// them out, so that the hub applies its defaults (30 s and 0 s).
	ResponseTimeout uint
	ConnectTimeout  uint
}

// MethodAnswer is the device's answer as the hub relays it.
type MethodAnswer struct {
	// Status is the status the device answered with.
	Status int
	// Payload is the device's payload exactly as the hub relayed it: any
	// JSON value (object, array, string, number, true, false, null), or
	// empty when the device sent no body. IoT Hub documents a method's
	// payload as a JSON document of up to 128 KB, not as an object, which is
	// why this does not go through iotservice.MethodResult (a map).
	Payload json.RawMessage
}

// NotSentError is a direct-method call that failed before its request was
// written to the hub: a refused connection, a failed TLS handshake, a
// cancelled context. The device cannot have received it.
type NotSentError struct{ Err error }

func (e *NotSentError) Error() string { return "request not sent: " + e.Err.Error() }
func (e *NotSentError) Unwrap() error { return e.Err }

// ServiceClient is the amenzhinsky service client with direct-method calls
// that keep the device's answer as raw JSON (CallMethod) and device queries
// read one page at a time (QueryPage). Everything else is the embedded
// client's.
type ServiceClient struct {
	*iotservice.Client
	sak  *common.SharedAccessKey
	http *http.Client
}

// NewServiceHub builds a ServiceClient for s that trusts caFile.
func NewServiceHub(s Service, caFile string) (*ServiceClient, error) {
	c, httpClient, err := newServiceClient(s, caFile)
	if err != nil {
		return nil, err
	}
	sak, err := iotservice.ParseConnectionString(s.String())
	if err != nil {
		// ParseService accepted it; this is the client's own parser.
		return nil, errors.New("the service connection string does not parse as HostName=…;SharedAccessKeyName=…;SharedAccessKey=…")
	}
	return &ServiceClient{Client: c, sak: sak, http: httpClient}, nil
}

// tokenLifetime is the validity of the SAS token of one call, as the
// amenzhinsky client signs its own.
const tokenLifetime = time.Hour

// apiVersion is the REST API version of the calls made here, the one the
// amenzhinsky client sends with its own.
const apiVersion = "2020-09-30"

// newRequest builds a POST of the JSON body to path on the hub, signed with
// the service key as the amenzhinsky client signs its calls.
func (c *ServiceClient) newRequest(ctx context.Context, path string, body []byte) (*http.Request, error) {
	sas, err := c.sak.Token(c.sak.HostName, tokenLifetime)
	if err != nil {
		return nil, errors.New("cannot sign the request with the service key")
	}
	uri := "https://" + c.sak.HostName + path + "?api-version=" + apiVersion
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, uri, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("Authorization", sas.String())
	return req, nil
}

// CallMethod invokes a direct method on a device. Hub errors come back as
// *iotservice.RequestError (status and body), as from the amenzhinsky
// client; a call that failed before its request was written comes back as
// *NotSentError, so that a caller can tell a call the device cannot have
// received from one it may have.
//
// A 200 from the hub is the device's answer. A 200 whose body is not the
// hub's {"status": …, "payload": …} is returned as an error that is neither
// of the above: the request was delivered, the answer is unreadable.
func (c *ServiceClient) CallMethod(ctx context.Context, deviceID string, call MethodCall) (MethodAnswer, error) {
	body := struct {
		MethodName      string          `json:"methodName"`
		ResponseTimeout uint            `json:"responseTimeoutInSeconds,omitempty"`
		ConnectTimeout  uint            `json:"connectTimeoutInSeconds,omitempty"`
		Payload         json.RawMessage `json:"payload,omitempty"`
	}{call.Method, call.ResponseTimeout, call.ConnectTimeout, call.Payload}
	b, err := json.Marshal(body)
	if err != nil {
		return MethodAnswer{}, &NotSentError{fmt.Errorf("encode the call: %w", err)}
	}
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				wrote.Store(true)
			}
		},
	})
	req, err := c.newRequest(ctx, "/twins/"+url.PathEscape(deviceID)+"/methods", b)
	if err != nil {
		return MethodAnswer{}, &NotSentError{err}
	}
	res, err := c.http.Do(req)
	if err != nil {
		if !wrote.Load() {
			return MethodAnswer{}, &NotSentError{err}
		}
		return MethodAnswer{}, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, maxAnswerBytes))
	if err != nil {
		return MethodAnswer{}, fmt.Errorf("read the hub's answer (HTTP %d): %w", res.StatusCode, err)
	}
	if res.StatusCode != http.StatusOK {
		return MethodAnswer{}, &iotservice.RequestError{Code: res.StatusCode, Body: raw}
	}
	return decodeAnswer(raw)
}

// maxAnswerBytes bounds the hub's answer: a 128 KB payload, JSON-escaped at
// worst six bytes a byte, plus the envelope.
const maxAnswerBytes = 6*128*1024 + 4096

// decodeAnswer reads the hub's {"status": n, "payload": …}. A missing or
// null payload is a device that sent no body; it is returned empty.
func decodeAnswer(raw []byte) (MethodAnswer, error) {
	var env struct {
		Status  *int            `json:"status"`
		Payload json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(raw, &env); err != nil || env.Status == nil {
		return MethodAnswer{}, &UnreadableAnswerError{Body: raw}
	}
	p := env.Payload
	if string(bytes.TrimSpace(p)) == "null" {
		p = nil
	}
	return MethodAnswer{Status: *env.Status, Payload: p}, nil
}

// UnreadableAnswerError is a 200 from the hub whose body is not a method
// answer: the call reached the hub and, most likely, the device.
type UnreadableAnswerError struct{ Body []byte }

func (e *UnreadableAnswerError) Error() string {
	const limit = 200
	b := e.Body
	if len(b) > limit {
		b = b[:limit]
	}
	return fmt.Sprintf("the hub answered 200 with a body that is not a method answer: %q", b)
}
