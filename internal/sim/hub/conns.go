package hub

import (
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// connTable tracks which MQTT client currently speaks for each device.
// Connection state is deliberately not durable: after a restart every device
// is Disconnected until it connects again.
type connTable struct {
	mu      sync.Mutex
	devices map[string]*deviceConn
	// stateTime is when each device last connected or disconnected, and
	// activity when it last sent anything; both outlive the connection.
	stateTime map[string]time.Time
	activity  map[string]time.Time
	// changed is closed and replaced whenever a device connects, subscribes
	// or disconnects, waking callers that wait for a device.
	changed chan struct{}
	// waiting counts, by device, the direct-method calls in
	// Hub.waitForMethods: tests connect a device once a call is seen to
	// wait for it, rather than after a pause that guesses when it does.
	waiting map[string]int
}

type deviceConn struct {
	client *mqtt.Client
	// methodsSince is when the client subscribed to direct methods.
	methodsSince time.Time
	// expiry disconnects the client when its SAS token expires.
	expiry *time.Timer
}

func newConnTable() *connTable {
	return &connTable{
		devices:   map[string]*deviceConn{},
		stateTime: map[string]time.Time{},
		activity:  map[string]time.Time{},
		changed:   make(chan struct{}),
		waiting:   map[string]int{},
	}
}

func (t *connTable) notifyLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// connected records cl as the device's connection, replacing (taking over
// from) any earlier one.
func (t *connTable) connected(deviceID string, cl *mqtt.Client, expiry *time.Timer, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.devices[deviceID]; old != nil && old.expiry != nil {
		old.expiry.Stop()
	}
	t.devices[deviceID] = &deviceConn{client: cl, expiry: expiry}
	t.stateTime[deviceID] = now
	t.activity[deviceID] = now
	t.notifyLocked()
}

// disconnected forgets cl if it is still the device's connection; a client
// that was taken over by a newer one changes nothing. It reports whether
// the device went offline.
func (t *connTable) disconnected(deviceID string, cl *mqtt.Client, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.devices[deviceID]
	if c == nil || c.client != cl {
		return false
	}
	if c.expiry != nil {
		c.expiry.Stop()
	}
	delete(t.devices, deviceID)
	t.stateTime[deviceID] = now
	t.notifyLocked()
	return true
}

// subscribedMethods records that cl subscribed to direct methods.
func (t *connTable) subscribedMethods(deviceID string, cl *mqtt.Client, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.devices[deviceID]; c != nil && c.client == cl {
		c.methodsSince = now
		t.notifyLocked()
	}
}

func (t *connTable) touch(deviceID string, now time.Time) {
	t.mu.Lock()
	t.activity[deviceID] = now
	t.mu.Unlock()
}

// client returns the device's current client (nil when offline), when it
// subscribed to methods, and a channel closed at the next change.
func (t *connTable) client(deviceID string) (*mqtt.Client, time.Time, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.devices[deviceID]
	if c == nil || c.client.Closed() {
		return nil, time.Time{}, t.changed
	}
	return c.client, c.methodsSince, t.changed
}

// wait counts a call waiting for deviceID until the returned func is
// called.
func (t *connTable) wait(deviceID string) (done func()) {
	t.mu.Lock()
	t.waiting[deviceID]++
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.waiting[deviceID]--; t.waiting[deviceID] == 0 {
			delete(t.waiting, deviceID)
		}
	}
}

// waiters returns how many calls wait for deviceID (see wait).
func (t *connTable) waiters(deviceID string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.waiting[deviceID]
}

// state returns what the registry shows about a device's connection.
func (t *connTable) state(deviceID string) (connected bool, stateTime, activity time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.devices[deviceID]
	connected = c != nil && !c.client.Closed()
	return connected, t.stateTime[deviceID], t.activity[deviceID]
}

// forget drops what is known about a deleted device.
func (t *connTable) forget(deviceID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.stateTime, deviceID)
	delete(t.activity, deviceID)
}

func (t *connTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.devices)
}

func (t *connTable) stopTimers() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.devices {
		if c.expiry != nil {
			c.expiry.Stop()
		}
	}
}

// subscribed reports whether one of cl's subscriptions matches topic. The
// hub writes its messages straight to one client, bypassing the broker's
// routing, so it applies MQTT's rule itself: no subscription, no message.
func subscribed(cl *mqtt.Client, topic string) bool {
	for filter := range cl.State.Subscriptions.GetAll() {
		if topicMatches(filter, topic) {
			return true
		}
	}
	return false
}

// topicMatches reports whether an MQTT topic filter matches a topic name.
func topicMatches(filter, topic string) bool {
	fs := strings.Split(filter, "/")
	ts := strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (fs[0] == "#" || fs[0] == "+") {
		return false // [MQTT-4.7.2-1]: wildcards do not reach $ topics
	}
	for i, f := range fs {
		switch {
		case f == "#":
			return true
		case i >= len(ts):
			return false
		case f == "+":
		case f != ts[i]:
			return false
		}
	}
	return len(fs) == len(ts)
}
