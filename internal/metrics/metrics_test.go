package metrics

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// gather closes r (which reports what was counted) and returns its families by name.
func gather(t *testing.T, r *Registry) map[string]*dto.MetricFamily {
	t.Helper()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	mfs, err := r.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func TestHandlerReportsPrometheusNames(t *testing.T) {
	r, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	h := r.Handler().WithTags(map[string]string{"rollout": "fw-2.1.0", "namespace": "ns.acct", "odd": "a b/c"})
	h.Counter("dmflow_test_calls").Inc(3)
	h.Gauge("dmflow_test_devices").Update(7)
	h.Timer("dmflow_test_latency").Record(90 * time.Second)
	fams := gather(t, r)

	c := fams["dmflow_test_calls_total"]
	if c == nil || c.GetType() != dto.MetricType_COUNTER || c.GetMetric()[0].GetCounter().GetValue() != 3 {
		t.Fatalf("counter dmflow_test_calls_total = %v", c)
	}
	// Label values keep - . and : (rollout names, namespaces); other characters become _.
	if l := labels(c.GetMetric()[0]); l["rollout"] != "fw-2.1.0" || l["namespace"] != "ns.acct" || l["odd"] != "a_b_c" {
		t.Errorf("labels %v", l)
	}
	if g := fams["dmflow_test_devices"]; g == nil || g.GetType() != dto.MetricType_GAUGE || g.GetMetric()[0].GetGauge().GetValue() != 7 {
		t.Errorf("gauge dmflow_test_devices = %v", g)
	}
	hist := fams["dmflow_test_latency_seconds"]
	if hist == nil || hist.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("timer as histogram dmflow_test_latency_seconds = %v", hist)
	}
	var bounds []float64
	for _, b := range hist.GetMetric()[0].GetHistogram().GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
		// 90 s lands in a bucket of its own range, not in +Inf.
		if b.GetUpperBound() == 120 && b.GetCumulativeCount() != 1 {
			t.Errorf("bucket le=120 counts %d, want 1", b.GetCumulativeCount())
		}
	}
	if len(bounds) != len(Buckets) || bounds[len(bounds)-1] != 3600 {
		t.Errorf("buckets %v, want %v", bounds, Buckets)
	}
	if fams["go_goroutines"] == nil || fams["process_cpu_seconds_total"] == nil {
		t.Errorf("no Go runtime or process metrics")
	}
}

func TestBucketsAscend(t *testing.T) {
	for i, b := range Buckets {
		if math.IsInf(b, 0) || math.IsNaN(b) || (i > 0 && b <= Buckets[i-1]) {
			t.Fatalf("Buckets %v are not finite and ascending at %d", Buckets, i)
		}
	}
}

// A name reused with other labels cannot be registered: the metric is dropped with a warning,
// the worker goes on.
func TestRegisterConflictIsLoggedNotFatal(t *testing.T) {
	var logs bytes.Buffer
	r, err := New(slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r.Handler().WithTags(map[string]string{"a": "1"}).Counter("dmflow_test_conflict").Inc(1)
	r.Handler().WithTags(map[string]string{"b": "1"}).Counter("dmflow_test_conflict").Inc(1)
	fams := gather(t, r)
	if c := fams["dmflow_test_conflict_total"]; c == nil || len(c.GetMetric()) != 1 {
		t.Errorf("conflict: %v", c)
	}
	if !strings.Contains(logs.String(), "metric dropped") {
		t.Errorf("no warning logged: %q", logs.String())
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestServer(t *testing.T) {
	r, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s, err := Listen("127.0.0.1:0", r, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + s.Addr()
	if s.URL() != base+"/metrics" {
		t.Errorf("URL %s", s.URL())
	}

	if code, body := get(t, base+HealthPath); code != http.StatusServiceUnavailable {
		t.Errorf("healthz before ready: %d %q", code, body)
	}
	s.SetReady(true)
	if code, body := get(t, base+HealthPath); code != http.StatusOK || body != "ok\n" {
		t.Errorf("healthz when ready: %d %q", code, body)
	}
	code, body := get(t, base+MetricsPath)
	if code != http.StatusOK || !strings.Contains(body, "# TYPE go_goroutines gauge") {
		t.Errorf("metrics: %d %.200q", code, body)
	}

	// The address is taken: a second server on it fails at once.
	if _, err := Listen(s.Addr(), r, nil); err == nil {
		t.Error("a second Listen on the same address succeeded")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Error("still listening after Shutdown")
	}
}
