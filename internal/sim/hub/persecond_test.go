package hub

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubquota"
)

func TestPerSecondBins(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	sec := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	p := newPerSecond(t0.Add(300 * time.Millisecond))
	// Twin reads: 3 in second 0, 5 in second 1, none in 2, 2 in 3, 2 in 5;
	// one method in second 3.
	for s, n := range map[int]int{0: 3, 1: 5, 3: 2, 5: 2} {
		for i := range n {
			p.add(hubquota.TwinReads, sec(s).Add(time.Duration(i)*150*time.Millisecond))
		}
	}
	p.add(hubquota.Methods, sec(3).Add(999*time.Millisecond))

	all := p.sinceStart()
	assert.Len(t, all, len(hubquota.Ops), "every operation has a record")
	assert.Equal(t, PeakRecord{Peak: 5, At: sec(1), Total: 12, From: t0}, all["twinReads"])
	assert.Equal(t, PeakRecord{Peak: 1, At: sec(3), Total: 1, From: t0}, all["methods"])
	assert.Equal(t, PeakRecord{From: t0}, all["queries"], "an operation without requests")

	tests := []struct {
		name       string
		since, now time.Time
		want       PeakRecord
	}{
		{"from the start", t0.Add(-time.Hour), sec(6), PeakRecord{Peak: 5, At: sec(1), Total: 12, From: t0,
			Seconds: []SecondCount{{sec(0), 3}, {sec(1), 5}, {sec(3), 2}, {sec(5), 2}}}},
		{"the second of since counts whole", sec(1).Add(500 * time.Millisecond), sec(6), PeakRecord{Peak: 5, At: sec(1), Total: 9, From: sec(1),
			Seconds: []SecondCount{{sec(1), 5}, {sec(3), 2}, {sec(5), 2}}}},
		{"a tie goes to the first second", sec(2), sec(6), PeakRecord{Peak: 2, At: sec(3), Total: 4, From: sec(2),
			Seconds: []SecondCount{{sec(3), 2}, {sec(5), 2}}}},
		{"nothing since", sec(6), sec(6), PeakRecord{From: sec(6)}},
		{"only the last window is kept", t0, sec(PerSecondWindow + 3), PeakRecord{Peak: 2, At: sec(5), Total: 2, From: sec(4),
			Seconds: []SecondCount{{sec(5), 2}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, p.since(tc.since, tc.now)["twinReads"])
		})
	}

	// A second a window later takes its slot over; the peak since start stays.
	p.add(hubquota.TwinReads, sec(1+PerSecondWindow))
	got := p.since(t0, sec(1+PerSecondWindow))["twinReads"]
	assert.Equal(t, []SecondCount{{sec(3), 2}, {sec(5), 2}, {sec(1 + PerSecondWindow), 1}}, got.Seconds)
	assert.Equal(t, PeakRecord{Peak: 5, At: sec(1), Total: 13, From: t0}, p.sinceStart()["twinReads"])
}

// statsSince reads GET /_localhub/stats?since= as a test or a load run does.
func statsSince(t *testing.T, h *Hub, since string) (int, Stats, []byte) {
	t.Helper()
	res, raw := rawRequest(t, h, http.MethodGet, "/_localhub/stats?since="+url.QueryEscape(since), serviceToken(t, h, time.Now().Add(time.Hour)), nil)
	var st Stats
	if res.StatusCode == http.StatusOK {
		require.NoError(t, json.Unmarshal(raw, &st), "stats %s", raw)
	}
	return res.StatusCode, st, raw
}

func TestPerSecondCountsAdmittedRequests(t *testing.T) {
	h := startHub(t, "", func(o *Options) {
		o.Unlimited = false
		// A bucket of 10 registry operations that refills in a minute: the
		// test's requests beyond 10 are refused whatever their timing.
		o.Quotas = map[hubquota.Op]float64{hubquota.Registry: 10.0 / 60}
		o.MaxQueueDelay = 10 * time.Millisecond
	})
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	cs := registerDevice(t, h, svc, "d") // registry operation 1
	accepted, refused := 1, 0
	for range 12 {
		_, err := svc.GetDevice(ctx, "d")
		if err == nil {
			accepted++
			continue
		}
		code, _ := requestError(t, err)
		require.Equal(t, http.StatusTooManyRequests, code, "GetDevice")
		refused++
	}
	require.Equal(t, 10, accepted, "the bucket's 10 registry operations pass")

	// A 9 KB method is 3 chunks of the methods quota but one call (the
	// device is offline: 404, after the throttle admitted it).
	_, err := svc.CallDeviceMethod(ctx, "d", &iotservice.MethodCall{MethodName: "x", Payload: map[string]any{"p": strings.Repeat("x", 9*1024)}})
	code, _ := requestError(t, err)
	require.Equal(t, http.StatusNotFound, code, "method call to an offline device")

	// Twin updates count from the service and from the device alike.
	_, err = svc.UpdateDeviceTwin(ctx, &iotservice.Twin{DeviceID: "d", Properties: &iotservice.Properties{Desired: map[string]any{"a": 1}}})
	require.NoError(t, err)
	c, err := rawDevice(t, h, "d", "localhost/d/?api-version=2021-04-12", deviceToken(t, "localhost", deviceKey(cs), time.Now().Add(time.Hour)), nil)
	require.NoError(t, err)
	answers := make(chan string, 1)
	tok := c.Subscribe("$iothub/twin/res/#", 1, func(_ paho.Client, m paho.Message) { answers <- m.Topic() })
	require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "subscribe: %v", tok.Error())
	tok = c.Publish("$iothub/twin/PATCH/properties/reported/?$rid=1", 1, false, `{"b":2}`)
	require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "publish: %v", tok.Error())
	select {
	case topic := <-answers:
		require.True(t, strings.HasPrefix(topic, "$iothub/twin/res/204/"), "reported patch answered on %s", topic)
	case <-time.After(5 * time.Second):
		t.Fatal("no answer to the reported patch")
	}

	st := h.Stats()
	assert.Equal(t, refused, st.Throttled["registry"])
	reg := st.PerSecond["registry"]
	assert.EqualValues(t, accepted, reg.Total, "registry: the refused requests are not counted")
	assert.True(t, reg.Peak >= 1 && reg.Peak <= accepted && !reg.At.IsZero(), "registry peak %+v", reg)
	assert.EqualValues(t, 1, st.PerSecond["methods"].Total, "methods count in calls, not 4 KB chunks")
	assert.EqualValues(t, 2, st.PerSecond["twinUpdates"].Total, "twin updates from the service and the device")
	assert.EqualValues(t, 1, st.PerSecond["connections"].Total)
	assert.Empty(t, reg.Seconds, "Stats lists no seconds")

	// The stats endpoint answers the same since a time before the hub
	// started, with the seconds listed; they add up to the totals.
	code, early, raw := statsSince(t, h, "2000-01-01T00:00:00Z")
	require.Equal(t, http.StatusOK, code, "%s", raw)
	for op, r := range early.PerSecond {
		sum, peak := 0, 0
		for _, s := range r.Seconds {
			sum += s.Count
			peak = max(peak, s.Count)
		}
		assert.EqualValues(t, st.PerSecond[op].Total, sum, "%s: seconds %v", op, r.Seconds)
		assert.Equal(t, st.PerSecond[op].Peak, peak, "%s: seconds %v", op, r.Seconds)
	}

	// Since the start of a later second, only what came after counts.
	later := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(later))
	for range 3 {
		_, err := svc.GetDeviceTwin(ctx, "d")
		require.NoError(t, err)
	}
	code, since, raw := statsSince(t, h, later.Format(time.RFC3339))
	require.Equal(t, http.StatusOK, code, "%s", raw)
	reads := since.PerSecond["twinReads"]
	assert.EqualValues(t, 3, reads.Total, "twin reads since %v: %+v", later, reads)
	assert.True(t, reads.From.Equal(later), "from %v, want %v", reads.From, later)
	assert.Equal(t, PeakRecord{From: reads.From}, since.PerSecond["registry"], "no registry operation since")
	assert.Equal(t, st.PerSecond["registry"], h.Stats().PerSecond["registry"], "the record since start is unchanged")

	code, _, raw = statsSince(t, h, "yesterday")
	assert.Equal(t, http.StatusBadRequest, code, "since=yesterday: %s", raw)
	assert.Contains(t, string(raw), "since must be an RFC 3339 time")
}
