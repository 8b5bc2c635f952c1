package hub

import (
	"context"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dmflow/dmflow/internal/hubquota"
)

func TestOptionsQuotas(t *testing.T) {
	o := Options{StateDir: "x", Tier: "S3", Units: 2, Quotas: map[hubquota.Op]float64{hubquota.Methods: 10, hubquota.Queries: 1, hubquota.Telemetry: math.Inf(1)}}
	if err := o.fill(); err != nil {
		t.Fatal(err)
	}
	q, err := o.quotas()
	if err != nil {
		t.Fatal(err)
	}
	want := map[hubquota.Op]hubquota.Quota{
		hubquota.Methods:     {Rate: 10, Burst: 10}, // a second's worth
		hubquota.Queries:     {Rate: 1, Burst: 60},  // a minute's worth
		hubquota.Registry:    {Rate: 10000.0 / 60, Burst: 10000},
		hubquota.TwinReads:   {Rate: 1000, Burst: 1000},
		hubquota.Telemetry:   {Rate: math.Inf(1)},
		hubquota.Connections: {Rate: 12000, Burst: 12000},
	}
	for op, w := range want {
		if got := q[op]; math.Abs(got.Rate-w.Rate) > 1e-9 && !(got.Unlimited() && w.Unlimited()) || got.Burst != w.Burst {
			t.Errorf("%s: quota %+v, want %+v", op, got, w)
		}
	}
	o.Unlimited = true
	if q, _ := o.quotas(); !q[hubquota.Methods].Unlimited() || !q[hubquota.Registry].Unlimited() {
		t.Errorf("Unlimited quotas = %+v", q)
	}
	for _, bad := range []map[hubquota.Op]float64{{"jobs": 1}, {hubquota.Methods: 0}, {hubquota.Methods: math.NaN()}} {
		o := Options{StateDir: "x", Quotas: bad}
		if err := o.fill(); err != nil {
			t.Fatal(err)
		}
		if _, err := o.quotas(); err == nil {
			t.Errorf("quotas accepted %v", bad)
		}
	}
}

func TestThrottleShapesThenRefuses(t *testing.T) {
	// 10/s with a burst of 10, fifteen at once: ten pass at once, the
	// next two wait their 100 ms turns (under 250 ms), three are refused.
	th := newThrottle(map[hubquota.Op]hubquota.Quota{hubquota.TwinReads: {Rate: 10, Burst: 10}, hubquota.Methods: {Rate: math.Inf(1)}}, 250*time.Millisecond)
	ctx := context.Background()
	start := time.Now()
	var mu sync.Mutex
	var passed, refused int
	var wg sync.WaitGroup
	for i := 0; i < 15; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := th.wait(ctx, hubquota.TwinReads, 1)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				passed++
			case ErrorCode(err) == ErrThrottling:
				refused++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if passed != 12 || refused != 3 {
		t.Errorf("passed %d, refused %d; want 12 and 3", passed, refused)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("the shaped requests did not wait (%v)", d)
	}
	if got := th.counts(); got["twinReads"] != 3 {
		t.Errorf("counts = %v", got)
	}
	if err := th.wait(ctx, hubquota.Methods, 1000); err != nil {
		t.Errorf("unlimited operation: %v", err)
	}
	// A wait ends with its context and gives its tokens back.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	th2 := newThrottle(map[hubquota.Op]hubquota.Quota{hubquota.Queries: {Rate: 1, Burst: 1}}, time.Second)
	_ = th2.wait(ctx, hubquota.Queries, 1)
	if err := th2.wait(cctx, hubquota.Queries, 1); err != context.DeadlineExceeded {
		t.Errorf("wait after ctx end = %v", err)
	}
}

func TestMethodsThrottled(t *testing.T) {
	h := startHub(t, "", func(o *Options) {
		o.Unlimited = false
		o.Quotas = map[hubquota.Op]float64{hubquota.Methods: 3}
		o.MaxQueueDelay = 100 * time.Millisecond
	})
	svc := serviceClient(t, h, "")
	registerDevice(t, h, svc, "r")
	ctx := context.Background()
	// Three 1-chunk calls fit the bucket (the device is offline: 404).
	for i := 0; i < 3; i++ {
		_, err := svc.CallDeviceMethod(ctx, "r", &iotservice.MethodCall{MethodName: "x"})
		if code, _ := requestError(t, err); code != http.StatusNotFound {
			t.Fatalf("call %d = %d, want 404 (offline, within the quota)", i, code)
		}
	}
	// The next needs a token in 333 ms, beyond the 100 ms queue.
	start := time.Now()
	_, err := svc.CallDeviceMethod(ctx, "r", &iotservice.MethodCall{MethodName: "x"})
	code, body := requestError(t, err)
	if code != http.StatusTooManyRequests || body.ErrorCode != 429001 || !strings.HasPrefix(body.Message, "ErrorCode:ThrottlingException;") {
		t.Errorf("call over the quota = %d %+v, want 429 429001 ThrottlingException", code, body)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %v; it should come at once", d)
	}
	// After 350 ms one token is back: a call waits at most ~100 ms and passes.
	// The pause is the behaviour under test, not a proof: the bucket refills
	// with time (3 tokens a second), and nothing but time refills it.
	time.Sleep(350 * time.Millisecond)
	_, err = svc.CallDeviceMethod(ctx, "r", &iotservice.MethodCall{MethodName: "x"})
	if code, _ := requestError(t, err); code != http.StatusNotFound {
		t.Errorf("call after refill = %d, want 404", code)
	}
	// A 9 KB payload costs 3 chunks: refused while fewer are saved.
	_, err = svc.CallDeviceMethod(ctx, "r", &iotservice.MethodCall{MethodName: "x", Payload: map[string]any{"p": strings.Repeat("x", 9*1024)}})
	if code, _ := requestError(t, err); code != http.StatusTooManyRequests {
		t.Errorf("9 KB call = %d, want 429", code)
	}
	if got := h.Stats().Throttled; got["methods"] != 2 {
		t.Errorf("Stats().Throttled = %v, want methods: 2", got)
	}
}

func TestServiceOperationsThrottled(t *testing.T) {
	h := startHub(t, "", func(o *Options) {
		o.Unlimited = false
		o.Quotas = map[hubquota.Op]float64{hubquota.TwinReads: 5, hubquota.Registry: 4.0 / 60}
		o.MaxQueueDelay = 50 * time.Millisecond
	})
	svc := serviceClient(t, h, "")
	ctx := context.Background()
	// A bulk request of 10 devices is one registry operation.
	devs := make([]*iotservice.Device, 10)
	for i := range devs {
		devs[i] = &iotservice.Device{DeviceID: "d" + string(rune('a'+i))}
	}
	if _, err := svc.CreateDevices(ctx, devs); err != nil {
		t.Fatalf("bulk create: %v", err)
	}
	for i := 0; i < 3; i++ {
		if _, err := svc.GetDevice(ctx, "da"); err != nil {
			t.Fatalf("GetDevice %d: %v", i, err)
		}
	}
	_, err := svc.GetDevice(ctx, "da")
	if code, body := requestError(t, err); code != http.StatusTooManyRequests || body.ErrorCode != 429001 {
		t.Errorf("fifth registry op = %d %+v, want 429 429001", code, body)
	}

	// A burst of twin reads at twice the quota: the bucket's five pass,
	// the rest are refused; none fails otherwise.
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := svc.GetDeviceTwin(ctx, "db")
			code := http.StatusOK
			if err != nil {
				code, _ = requestError(t, err)
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[http.StatusOK] < 5 || codes[http.StatusOK]+codes[http.StatusTooManyRequests] != 10 || codes[http.StatusTooManyRequests] == 0 {
		t.Errorf("twin read answers = %v, want 5 (or 6 with a refill) 200 and the rest 429", codes)
	}
	st := h.Stats().Throttled
	if st["registry"] != 1 || st["twinReads"] != codes[http.StatusTooManyRequests] {
		t.Errorf("Stats().Throttled = %v", st)
	}
}

func TestDeviceTwinThrottled(t *testing.T) {
	h := startHub(t, "", func(o *Options) {
		o.Unlimited = false
		o.Quotas = map[hubquota.Op]float64{hubquota.TwinReads: 1.0 / 60}
		o.MaxQueueDelay = 10 * time.Millisecond
	})
	svc := serviceClient(t, h, "")
	cs := registerDevice(t, h, svc, "raw")
	c, err := rawDevice(t, h, "raw", "localhost/raw/?api-version=2021-04-12", deviceToken(t, "localhost", deviceKey(cs), time.Now().Add(time.Hour)), nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	topics := make(chan string, 4)
	if tok := c.Subscribe("$iothub/twin/res/#", 1, func(_ paho.Client, m paho.Message) { topics <- m.Topic() }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	for _, want := range []string{"$iothub/twin/res/200/?$rid=1", "$iothub/twin/res/429/?$rid=1"} {
		if tok := c.Publish("$iothub/twin/GET/?$rid=1", 1, false, ""); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		select {
		case got := <-topics:
			if got != want {
				t.Errorf("twin GET answered on %q, want %q", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer to twin GET (want %s)", want)
		}
	}
	if got := h.Stats().Throttled; got["twinReads"] != 1 {
		t.Errorf("Stats().Throttled = %v", got)
	}
}

func TestDeviceConnectionsAndTelemetryThrottled(t *testing.T) {
	h := startHub(t, "", func(o *Options) {
		o.Unlimited = false
		o.Quotas = map[hubquota.Op]float64{hubquota.Connections: 1.0 / 60, hubquota.Telemetry: 2.0 / 60}
		o.MaxQueueDelay = 10 * time.Millisecond
	})
	svc := serviceClient(t, h, "")
	cs := registerDevice(t, h, svc, "a")
	csB := registerDevice(t, h, svc, "b")
	c, err := rawDevice(t, h, "a", "localhost/a/?api-version=2021-04-12", deviceToken(t, "localhost", deviceKey(cs), time.Now().Add(time.Hour)), nil)
	if err != nil {
		t.Fatalf("first connection: %v", err)
	}
	_, err = rawDevice(t, h, "b", "localhost/b/?api-version=2021-04-12", deviceToken(t, "localhost", deviceKey(csB), time.Now().Add(time.Hour)), nil)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "server unavailable") {
		t.Errorf("second connection = %v, want refused with server unavailable", err)
	}
	for i := 0; i < 4; i++ {
		if tok := c.Publish("devices/a/messages/events/", 1, false, "t"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	st := h.Stats()
	// An override keeps the documented window: telemetry's bucket holds a
	// second's worth, here one message.
	if st.TelemetryMessages != 1 || st.Throttled["telemetry"] != 3 || st.Throttled["connections"] != 1 {
		t.Errorf("stats = %+v, want 1 message, 3 dropped, 1 connection refused", st)
	}
}
