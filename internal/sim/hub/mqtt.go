package hub

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/internal/sim/hub/sas"
	"github.com/dmflow/dmflow/internal/sim/hub/store"
)

// Device-side topics (MQTT 3.1.1, see IoT Hub's MQTT support documentation).
const (
	topicMethodsPOST     = "$iothub/methods/POST/"
	topicMethodsRes      = "$iothub/methods/res/"
	topicTwinGET         = "$iothub/twin/GET/"
	topicTwinReported    = "$iothub/twin/PATCH/properties/reported/"
	topicTwinDesired     = "$iothub/twin/PATCH/properties/desired/"
	topicTwinRes         = "$iothub/twin/res/"
	topicDevicesPrefix   = "devices/"
	topicEventsSuffix    = "/messages/events"
	topicDeviceBoundPart = "/messages/devicebound"
)

// errTokenExpired ends a connection whose SAS token expired, as IoT Hub
// does; the SDKs reconnect with a fresh token.
var errTokenExpired = errors.New("sas token expired")

// deviceHook plugs IoT Hub's device protocol into the mochi broker:
// authentication, per-device topic rights, and the $iothub request topics,
// which the hub answers itself instead of routing them to subscribers.
type deviceHook struct {
	mqtt.HookBase
	hub    *Hub
	broker *mqtt.Server
	// authed marks clients that OnConnect authenticated, for the
	// OnConnectAuthenticate call that follows it on the same goroutine.
	authed sync.Map // *mqtt.Client → struct{}
}

func (k *deviceHook) ID() string { return "localhub-device" }

func (k *deviceHook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnACLCheck,
		mqtt.OnSessionEstablish,
		mqtt.OnDisconnect,
		mqtt.OnSubscribed,
		mqtt.OnPublish,
	}, []byte{b})
}

// CONNACK refusals. IoT Hub answers MQTT 3.1.1 clients with 4 for malformed
// credentials, 5 ("not authorized") for credentials it refuses and 3
// ("server unavailable", which the C and Java SDKs report as "device
// disabled") for disabled devices. The values are MQTT 5 codes because
// mochi translates those for 3.1.1 clients (0x86 becomes 5).
var (
	connackMalformed   = packets.ErrMalformedPassword
	connackRefused     = packets.ErrBadUsernameOrPassword
	connackDisabled    = packets.ErrServerUnavailable
	connackBadClientID = packets.ErrClientIdentifierNotValid
	// connackThrottled refuses a connection above the new-connection rate
	// with 3 ("server unavailable"), IoT Hub's answer when it throttles.
	connackThrottled = packets.ErrServerUnavailable
)

// OnConnect authenticates the device. It runs here rather than in
// OnConnectAuthenticate because mochi answers a failed OnConnectAuthenticate
// always with the same code, while IoT Hub tells the cases apart.
func (k *deviceHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	h := k.hub
	// New connections are metered before authentication: IoT Hub limits
	// the rate of connection attempts, and a refused device retries.
	if err := h.limits.wait(h.ctx, hubquota.Connections, 1); err != nil {
		h.log.Warn("device connection refused", "device", pk.Connect.ClientIdentifier, "remote", cl.Net.Remote, "reason", "new connection rate exceeded")
		if err := k.broker.SendConnack(cl, connackThrottled, false, nil); err != nil {
			return fmt.Errorf("send connack: %w", err)
		}
		return connackThrottled
	}
	code, reason := h.authenticateDevice(pk.Connect.ClientIdentifier, string(pk.Connect.Username), string(pk.Connect.Password), time.Now())
	if code == packets.CodeSuccess && pk.Connect.WillFlag && !allowedPublish(pk.Connect.ClientIdentifier, pk.Connect.WillTopic) {
		// mochi publishes wills without an ACL check, so a will on another
		// device's topic would reach that device.
		code, reason = connackRefused, "will topic is not this device's telemetry topic"
	}
	if code != packets.CodeSuccess {
		h.log.Warn("device connection refused", "device", pk.Connect.ClientIdentifier, "remote", cl.Net.Remote, "reason", reason)
		if err := k.broker.SendConnack(cl, code, false, nil); err != nil {
			return fmt.Errorf("send connack: %w", err)
		}
		return code
	}
	k.authed.Store(cl, struct{}{})
	return nil
}

// OnConnectAuthenticate admits exactly the clients OnConnect authenticated.
func (k *deviceHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	_, ok := k.authed.LoadAndDelete(cl)
	return ok
}

// authenticateDevice checks a CONNECT's client ID, user name and SAS token.
func (h *Hub) authenticateDevice(clientID, username, password string, now time.Time) (packets.Code, string) {
	if clientID == "" {
		return connackBadClientID, "empty client ID (it must be the device ID)"
	}
	host, deviceID, ok := parseUsername(username)
	if !ok {
		return connackMalformed, "user name is not {host}/{deviceId}/?api-version=…"
	}
	if deviceID != clientID {
		return connackRefused, "user name names another device than the client ID"
	}
	if !h.isHubHost(host) {
		return connackRefused, fmt.Sprintf("user name names host %q, not this hub", host)
	}
	tok, err := sas.Parse(password)
	if err != nil {
		return connackMalformed, err.Error()
	}
	if !h.coversDevice(tok.ResourceURI(), deviceID) {
		return connackRefused, fmt.Sprintf("token resource %q does not cover this device", tok.ResourceURI())
	}
	var d store.Device
	err = h.store.View(func(tx *store.Tx) error {
		var err error
		d, err = tx.Device(deviceID)
		return err
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return connackRefused, "device is not registered"
	case err != nil:
		h.log.Error("read device", "device", deviceID, "error", err)
		return connackDisabled, "registry unavailable"
	case d.AuthType != authSAS:
		return connackRefused, "device does not use symmetric keys"
	}
	var keys [][]byte
	if tok.KeyName != "" {
		// A token naming a policy is signed with the policy's key, and
		// connects any device if the policy has DeviceConnect.
		p, ok := lookupPolicy(tok.KeyName)
		switch {
		case !ok:
			return connackRefused, fmt.Sprintf("unknown shared access policy %q", tok.KeyName)
		case p.Permissions&DeviceConnect == 0:
			return connackRefused, fmt.Sprintf("shared access policy %q has %s, not DeviceConnect", p.Name, p.Permissions)
		}
		keys = [][]byte{policyKey(h.policyKey, p.Name)}
	} else {
		for _, k := range []string{d.PrimaryKey, d.SecondaryKey} {
			if b, err := sas.DecodeKey(k); err == nil {
				keys = append(keys, b)
			}
		}
	}
	if err := tok.VerifyAny(keys, now); err != nil {
		return connackRefused, err.Error()
	}
	if d.Status != statusEnabled {
		return connackDisabled, "device is disabled"
	}
	return packets.CodeSuccess, ""
}

// parseUsername splits "{host}/{deviceId}/?api-version=…" and the Go SDK's
// "{host}/{deviceId}/api-version=…". The host may carry a port.
func parseUsername(u string) (host, deviceID string, ok bool) {
	parts := strings.SplitN(u, "/", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return "", "", false
	}
	rest := strings.TrimPrefix(parts[2], "?")
	if !strings.HasPrefix(rest, "api-version=") {
		return "", "", false
	}
	return parts[0], parts[1], true
}

// isHubHost reports whether s names this hub: its host name, with or
// without a port, compared case-insensitively as DNS names are.
func (h *Hub) isHubHost(s string) bool {
	if host, port, err := net.SplitHostPort(s); err == nil && port != "" {
		s = host
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	return strings.EqualFold(s, h.opts.HostName)
}

// coversDevice reports whether a token resource grants access to a device.
// IoT Hub treats the resource as a prefix, by path segment, of the
// endpoints the token may reach: "{host}", "{host}/devices" and
// "{host}/devices/{id}" all cover the device. The Go SDK signs "{host}".
func (h *Hub) coversDevice(resource, deviceID string) bool {
	host, path, _ := strings.Cut(strings.TrimSuffix(resource, "/"), "/")
	if !h.isHubHost(host) {
		return false
	}
	return path == "" || path == "devices" || path == "devices/"+deviceID
}

// coversService reports whether a token resource grants hub-wide access.
func (h *Hub) coversService(resource string) bool {
	return !strings.Contains(strings.TrimSuffix(resource, "/"), "/") && h.isHubHost(strings.TrimSuffix(resource, "/"))
}

// OnSessionEstablish records the device as connected and arms the
// disconnect at token expiry. It runs before the CONNACK is sent, so a
// service call made as soon as the device sees its CONNACK finds it online
// (after the CONNACK, a call could race the bookkeeping and be answered
// 404 DeviceNotOnline). Should the CONNACK fail, the client is closed, which
// the connection table reads as offline.
func (k *deviceHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	h := k.hub
	deviceID := cl.ID
	var timer *time.Timer
	if tok, err := sas.Parse(string(pk.Connect.Password)); err == nil {
		timer = time.AfterFunc(time.Until(tok.Expiry), func() {
			h.log.Info("device disconnected: sas token expired", "device", deviceID)
			cl.Stop(errTokenExpired)
		})
	}
	h.conns.connected(deviceID, cl, timer, time.Now())
	// local is the address the device dialled: a hub listening on
	// 0.0.0.0 is reached on 127.0.0.1, 127.0.0.2, … by a fleet spread over
	// them (fleet.Config.Brokers), and this shows which.
	local := ""
	if cl.Net.Conn != nil {
		local = cl.Net.Conn.LocalAddr().String()
	}
	h.log.Info("device connected", "device", deviceID, "remote", cl.Net.Remote, "local", local)
}

// OnDisconnect records the device as disconnected unless a newer connection
// took over its client ID.
func (k *deviceHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	h := k.hub
	if h.conns.disconnected(cl.ID, cl, time.Now()) {
		h.log.Info("device disconnected", "device", cl.ID, "reason", err)
	}
}

// OnACLCheck limits a device to its own topics. It sees publish topics
// (write) and subscription filters (read).
func (k *deviceHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if write {
		return allowedPublish(cl.ID, topic)
	}
	return allowedSubscribe(cl.ID, topic)
}

// allowedPublish lists what a device may send: telemetry on its own events
// topic, twin requests and method responses.
func allowedPublish(deviceID, topic string) bool {
	own := topicDevicesPrefix + deviceID + topicEventsSuffix
	return topic == own || strings.HasPrefix(topic, own+"/") ||
		strings.HasPrefix(topic, topicTwinGET) ||
		strings.HasPrefix(topic, topicTwinReported) ||
		strings.HasPrefix(topic, topicMethodsRes)
}

// allowedSubscribe lists what a device may subscribe to: its own
// cloud-to-device topic, method requests, twin responses and desired
// property updates. The $iothub filters are shared by all devices; the hub
// delivers on them only to the device concerned.
func allowedSubscribe(deviceID, filter string) bool {
	own := topicDevicesPrefix + deviceID + topicDeviceBoundPart
	for _, prefix := range []string{own, topicMethodsPOST, topicTwinRes, topicTwinDesired} {
		base := strings.TrimSuffix(prefix, "/")
		if filter == base || filter == base+"/#" || strings.HasPrefix(filter, base+"/") {
			return true
		}
	}
	return false
}

// OnSubscribed notes a direct-method subscription so that calls waiting for
// the device can go ahead.
func (k *deviceHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	for i, sub := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] < packets.ErrUnspecifiedError.Code &&
			topicMatches(sub.Filter, topicMethodsPOST+"m/?$rid=1") {
			k.hub.conns.subscribedMethods(cl.ID, cl, time.Now())
		}
	}
}

// OnPublish answers the device's $iothub requests and counts telemetry. It
// returns CodeSuccessIgnore so that mochi acknowledges the publish (QoS 1)
// but routes it to no subscriber. A publish whose topic does not parse is
// dropped and logged: without a request ID there is no topic to answer on.
func (k *deviceHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h := k.hub
	deviceID := cl.ID
	h.conns.touch(deviceID, time.Now())
	req, err := parseDeviceTopic(deviceID, pk.TopicName)
	if err != nil {
		h.log.Warn("device publish ignored", "device", deviceID, "reason", err.Error())
		return pk, packets.CodeSuccessIgnore
	}
	switch req.kind {
	case reqTwinGet:
		h.deviceGetTwin(cl, req.rid)
	case reqTwinReported:
		h.devicePatchReported(cl, req.rid, pk.Payload)
	case reqMethodResponse:
		h.deviceMethodResponse(cl, req, pk.Payload)
	default:
		// Telemetry above the quota is acknowledged and dropped, counted in
		// Stats.Throttled; the device learns nothing, as with a full queue.
		if err := h.limits.wait(h.ctx, hubquota.Telemetry, 1); err == nil {
			h.telemetry.Add(1)
		}
	}
	return pk, packets.CodeSuccessIgnore
}

// requestKind is what a device's publish asks of the hub.
type requestKind int

const (
	reqTelemetry requestKind = iota
	reqTwinGet
	reqTwinReported
	reqMethodResponse
)

// devicePublish is a device's publish, its topic parsed.
type devicePublish struct {
	kind requestKind
	// rid is the request ID of a twin request or method response, as sent
	// (still encoded): the hub echoes it in its answer's topic.
	rid string
	// status is a method response's status.
	status int
	// props is a telemetry message's property bag.
	props url.Values
}

// maxRequestID bounds a request ID, which the hub echoes in a topic. The
// SDKs send counters or UUIDs.
const maxRequestID = 128

// parseDeviceTopic parses the topic of a device's publish:
//
//	$iothub/twin/GET/?$rid={rid}
//	$iothub/twin/PATCH/properties/reported/?$rid={rid}
//	$iothub/methods/res/{status}/?$rid={rid}
//	devices/{deviceId}/messages/events/[{property bag}]
//
// Errors are ArgumentInvalid.
func parseDeviceTopic(deviceID, topic string) (devicePublish, error) {
	switch {
	case strings.HasPrefix(topic, topicTwinGET):
		rid, err := requestID(topic)
		return devicePublish{kind: reqTwinGet, rid: rid}, err
	case strings.HasPrefix(topic, topicTwinReported):
		rid, err := requestID(topic)
		return devicePublish{kind: reqTwinReported, rid: rid}, err
	case strings.HasPrefix(topic, topicMethodsRes):
		statusText, _, _ := strings.Cut(strings.TrimPrefix(topic, topicMethodsRes), "/")
		// A status is an int32 on IoT Hub's side.
		status, err := strconv.ParseInt(statusText, 10, 32)
		if err != nil {
			return devicePublish{}, errorf(ErrArgumentInvalid, "method response topic %q has no status: use %s{status}/?$rid={rid}", truncateTopic(topic), topicMethodsRes)
		}
		rid, err := requestID(topic)
		return devicePublish{kind: reqMethodResponse, rid: rid, status: int(status)}, err
	}
	own := topicDevicesPrefix + deviceID + topicEventsSuffix
	if topic == own || topic == own+"/" {
		return devicePublish{kind: reqTelemetry}, nil
	}
	if bag, ok := strings.CutPrefix(topic, own+"/"); ok {
		props, err := url.ParseQuery(bag)
		if err != nil {
			return devicePublish{}, errorf(ErrArgumentInvalid, "telemetry property bag %q is not URL-encoded key=value pairs joined by '&'", truncateTopic(bag))
		}
		return devicePublish{kind: reqTelemetry, props: props}, nil
	}
	return devicePublish{}, errorf(ErrArgumentInvalid, "topic %q is not one a device publishes on", truncateTopic(topic))
}

// requestID returns the $rid of a request topic. It must be non-empty,
// short, and safe to echo in a topic name: printable ASCII without MQTT
// wildcards, '/', '?', '&' or spaces.
func requestID(topic string) (string, error) {
	rid, ok := topicQuery(topic, "$rid")
	switch {
	case !ok || rid == "":
		return "", errorf(ErrArgumentInvalid, "topic %q has no $rid: add ?$rid={request id}", truncateTopic(topic))
	case len(rid) > maxRequestID:
		return "", errorf(ErrArgumentInvalid, "$rid is %d bytes, more than %d", len(rid), maxRequestID)
	}
	for i := 0; i < len(rid); i++ {
		if c := rid[i]; c <= ' ' || c >= 0x7f || strings.IndexByte("+#/?&", c) >= 0 {
			return "", errorf(ErrArgumentInvalid, "$rid %q holds %q; use letters, digits and URL escapes", truncateTopic(rid), c)
		}
	}
	return rid, nil
}

func truncateTopic(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// topicQuery returns the raw (still encoded) value of key in the query part
// of a topic like "$iothub/twin/GET/?$rid=1". Values are echoed back
// unchanged, so they are not decoded.
func topicQuery(topic, key string) (string, bool) {
	_, q, ok := strings.Cut(topic, "?")
	if !ok {
		return "", false
	}
	for _, kv := range strings.Split(q, "&") {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v, true
		}
	}
	return "", false
}

// sendToClient writes a message straight to one client, if it subscribed
// to a matching filter. Routing through the broker would not do: every
// device subscribes to the same $iothub filters.
//
// QoS 0 like IoT Hub's own method and twin deliveries: the device answers
// at the application level and the service side times out on loss.
func (h *Hub) sendToClient(cl *mqtt.Client, topic string, payload []byte) bool {
	if cl == nil || cl.Closed() || !subscribed(cl, topic) {
		return false
	}
	err := cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   topic,
		Payload:     payload,
	})
	if err != nil {
		h.log.Debug("write to device failed", "device", cl.ID, "error", err)
		return false
	}
	return true
}

// sendToDevice is sendToClient for the device's current connection.
func (h *Hub) sendToDevice(deviceID, topic string, payload []byte) bool {
	cl, _, _ := h.conns.client(deviceID)
	return h.sendToClient(cl, topic, payload)
}

// disconnectDevice closes the device's connection, e.g. when it is disabled
// or deleted.
func (h *Hub) disconnectDevice(deviceID string, why error) {
	if cl, _, _ := h.conns.client(deviceID); cl != nil {
		cl.Stop(why)
	}
}
