// Package hub implements localhub, an IoT Hub-compatible endpoint for
// development and tests: devices connect over MQTT 3.1.1 with TLS (port
// 8883 by default) and services call the REST API over HTTPS (8443), both
// with the SAS authentication, topics, routes, limits and error codes that
// Azure IoT Hub documents. The unchanged github.com/amenzhinsky/iothub device
// and service clients work against it.
//
// State (identities, keys, twins) is durable in a bbolt file in the state
// directory, next to the TLS material (ca.pem, server.pem, server-key.pem,
// ca-key.pem) and the iothubowner policy key (iothubowner.key). Connection
// state is not durable: after a restart every device is Disconnected until
// it reconnects. The method log is saved in the bbolt file when the hub
// stops (Close: SIGINT or SIGTERM to the localhub command) and read back at
// the next start; a hub that is killed loses the entries since its start.
//
// Supported REST routes (any api-version), with the permission each needs:
//
//	PUT    /devices/{id}         RegistryWrite   create (no If-Match) or update (If-Match) an identity
//	GET    /devices/{id}         RegistryRead    read an identity
//	DELETE /devices/{id}         RegistryWrite   delete an identity (If-Match optional)
//	GET    /devices?top=N        RegistryRead    list identities
//	POST   /devices              RegistryWrite   bulk registry: create, update or delete up to 100 identities
//	POST   /devices/query        RegistryRead    query twins (see the query grammar in query.go)
//	GET    /twins/{id}           ServiceConnect  read a twin
//	PATCH  /twins/{id}           ServiceConnect  merge tags and desired properties (If-Match optional)
//	PUT    /twins/{id}           ServiceConnect  replace tags and desired properties (If-Match optional)
//	POST   /twins/{id}/methods   ServiceConnect  invoke a direct method
//	GET    /statistics/devices   RegistryRead    registry counts
//	GET    /statistics/service   ServiceConnect  connected device count
//	GET    /_localhub/stats      all (iothubowner) localhub counters (see Stats; ?since= narrows perSecond)
//	GET    /_localhub/methods    all (iothubowner) the method log (see MethodLog)
//
// If-Match accepts the wildcard bare (*) or quoted ("*", as Microsoft's
// service SDKs send it) and the current etag quoted (as the ETag header
// carries it) or bare (as the JSON bodies do).
//
// A direct method's answer reaches the caller as {"status": s, "payload": p}
// with s the device's status and p its JSON as the device sent it (object,
// array, string, number, true, false or null); an empty answer is null, and
// one that is not JSON a JSON string of its text (see responsePayload).
//
// The shared access policies are IoT Hub's built-in ones (Policies):
// iothubowner (every permission), service, device, registryRead and
// registryReadWrite. A token whose policy lacks a route's permission is
// refused with 401 IotHubUnauthorizedAccess, as is a device token (no skn);
// a device may connect with a policy token only if the policy has
// DeviceConnect.
//
// Documented limits enforced: direct-method payloads of at most 128 KB both
// ways (a larger request is 400 ArgumentInvalid, a larger device answer 413
// MessageTooLarge); twin tags of at most 8 KB and desired and reported
// properties of at most 32 KB each, measured as IoT Hub documents
// (documentSize), keys of at most 1 KB, strings of at most 4 KB, objects
// nested at most 10 deep (400 ArgumentInvalid, or status 400 on the twin
// response topic); MQTT packets of at most MaxPacketBytes (256 KB plus
// framing: a larger one ends its connection); request bodies of at most
// 512 KB.
//
// Device topics: $iothub/methods/POST/# (requests) and
// $iothub/methods/res/{status}/?$rid= (answers), $iothub/twin/GET/?$rid=,
// $iothub/twin/PATCH/properties/reported/?$rid=, $iothub/twin/res/#,
// $iothub/twin/PATCH/properties/desired/# and
// devices/{id}/messages/events/… (telemetry, counted and dropped). A device
// may use only its own topics; what the hub sends goes to the one device it
// concerns.
//
// GET /_localhub/stats (iothubowner token required) answers, for tests and
// load runs:
//
//	{
//	  "connectedDevices": 2,
//	  "telemetryMessages": 17,
//	  "methodInvocations": {"dev-1": {"rebootDevice": 1}},
//	  "serviceTwinReads": {"dev-1": 4},
//	  "throttled": {"methods": 3},
//	  "perSecond": {
//	    "methods": {"peak": 40, "at": "2026-01-02T03:04:07Z", "total": 412, "from": "2026-01-02T03:04:00Z"},
//	    "twinReads": {"peak": 0, "at": "0001-01-01T00:00:00Z", "total": 0, "from": "2026-01-02T03:04:00Z"},
//	    …
//	  }
//	}
//
// methodInvocations counts requests delivered to devices since start, by
// device and method name; (*Hub).MethodInvocations returns one device's row.
// throttled counts requests refused by the throttles, by operation
// (hubquota.Ops). perSecond has a PeakRecord for every operation: of the
// requests its throttle admitted (not refused; with Options.Unlimited,
// all), counted in whole calendar seconds of the hub's clock, peak is the
// most in one second, at the start of the first such second, total the sum
// from "from" on. A direct method counts once whatever its 4 KB chunks, a
// bulk registry request once, twin reads and updates from devices and
// services alike, connections as attempts before authentication. These
// counters start at zero with every start of the hub, and "from" is that
// start.
//
// GET /_localhub/stats?since=2026-01-02T03:04:05Z (RFC 3339) answers the same
// with perSecond narrowed to the seconds from since on, the second since
// falls in included, and each record listing its seconds with requests,
// oldest first: "seconds": [{"at": "2026-01-02T03:04:05Z", "count": 12}, …].
// localhub keeps the last PerSecondWindow (600) seconds; "from" says where
// a record starts when since is older (see (*Hub).PerSecondSince). A test
// takes since before the phase it checks and compares each peak with its
// budget.
//
// GET /_localhub/methods?deviceId=&after=&limit= (iothubowner token
// required) pages through the method log: every direct-method invocation
// localhub received, delivered or not, in the order the calls ended, each
// with its time, device, method, the request's updateId or requestId from
// the payload, whether it was delivered to the device, and the device's
// status and answer or the error code localhub answered with instead (see
// MethodLogEntry). Tests read it to tell whether a device saw a request,
// answered it, or saw it twice. It answers a MethodLogPage: up to limit
// entries (default 1000, at most 10,000) with seq above after, of deviceId
// when given; "next" is the after of the next page and "more" says whether
// one follows. The log holds the newest Options.MethodLogSize entries
// (default 100,000, over all devices) and counts the ones it evicted in
// "dropped":
//
//	{"entries": [{"seq": 7, "time": "2026-01-02T03:04:05.123Z", "duration": 41000000,
//	  "deviceId": "dev-1", "method": "firmwareUpdate", "requestId": "rollout:fw-2",
//	  "delivered": true, "status": 200, "response": "{\"Response\":\"Firmware update started\"}"}],
//	 "next": 7, "more": false, "dropped": 0}
//
// Throttling follows IoT Hub's documented per-hub quotas for Options.Tier
// (default S1) and Options.Units (default 1), one token bucket per
// operation (see hubquota.Documented), overridable per operation
// (Options.Quotas) or off (Options.Unlimited). A bucket holds one metering
// window's worth: a second, or a minute for queries and registry
// operations. Direct methods cost one token per 4 KB of request payload; a
// bulk registry request is one registry operation. A request above the rate
// waits for its token up to Options.MaxQueueDelay (1 s; IoT Hub's traffic
// shaping) and is refused when it would wait longer: REST calls with 429
// ThrottlingException (429001), device twin requests with
// $iothub/twin/res/429/?$rid=…, new connections with CONNACK 3 (server
// unavailable); telemetry above the rate is acknowledged and dropped.
//
// Errors have IoT Hub's body, {"Message": "ErrorCode:<name>;<text>",
// "ExceptionMessage": "Tracking ID:…", "ErrorCode": <number>}, and an
// iothub-errorcode header; errorStatus in errors.go is the one mapping from
// error codes to HTTP status and number. Devices are refused with CONNACK 4
// (malformed credentials), 5 (refused credentials, unknown device) or 3
// (disabled device, or throttled).
//
// Not implemented: cloud-to-device messages, modules, jobs, configurations,
// X.509 authentication, the Event Hub-compatible endpoint (AMQP).
package hub
