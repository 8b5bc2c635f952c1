package hubquota

import (
	"math"
	"strconv"
	"testing"
)

func TestDocumented(t *testing.T) {
	tests := []struct {
		tier  string
		units int
		op    Op
		rate  float64 // per second
		burst int
	}{
		{"S1", 1, Methods, 40, 40},
		{"S1", 3, Methods, 120, 120},
		{"S2", 2, Methods, 240, 240},
		{"S3", 1, Methods, 6000, 6000},
		{"S1", 1, TwinReads, 100, 100},
		{"S1", 5, TwinReads, 100, 100}, // not per unit on S1
		{"S2", 5, TwinReads, 100, 100}, // max(100, 10/unit)
		{"S2", 20, TwinReads, 200, 200},
		{"S3", 2, TwinReads, 1000, 1000},
		{"S1", 1, TwinUpdates, 50, 50},
		{"S2", 20, TwinUpdates, 100, 100},
		{"S3", 1, TwinUpdates, 250, 250},
		{"S1", 1, Queries, 20.0 / 60, 20}, // a minute's worth in the bucket
		{"S1", 2, Queries, 40.0 / 60, 40},
		{"S3", 1, Queries, 1000.0 / 60, 1000},
		{"S1", 1, Registry, 100.0 / 60, 100},
		{"S2", 1, Registry, 100.0 / 60, 100},
		{"S3", 2, Registry, 10000.0 / 60, 10000},
		{"S1", 1, Connections, 100, 100},
		{"S1", 9, Connections, 108, 108}, // max(100, 12/unit)
		{"S2", 1, Connections, 120, 120},
		{"S3", 1, Connections, 6000, 6000},
		{"S1", 1, Telemetry, 100, 100},
		{"S1", 10, Telemetry, 120, 120},
		{"F1", 1, TwinReads, 100, 100},
		{"b1", 1, Methods, 40, 40},
		{"B3", 1, Methods, 6000, 6000},
	}
	for _, tc := range tests {
		t.Run(tc.tier+"x"+strconv.Itoa(tc.units)+"/"+string(tc.op), func(t *testing.T) {
			q, err := Documented(tc.tier, tc.units, tc.op)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(q.Rate-tc.rate) > 1e-9 || q.Burst != tc.burst {
				t.Errorf("quota = %+v, want rate %v burst %d", q, tc.rate, tc.burst)
			}
		})
	}
	for _, bad := range []struct {
		tier  string
		units int
		op    Op
	}{{"S4", 1, Methods}, {"S1", 0, Methods}, {"S1", 1, "jobs"}} {
		if _, err := Documented(bad.tier, bad.units, bad.op); err == nil {
			t.Errorf("Documented(%q, %d, %q) accepted", bad.tier, bad.units, bad.op)
		}
	}
}

func TestWithRate(t *testing.T) {
	for _, tc := range []struct {
		op   Op
		rate float64
		want Quota
	}{
		{Methods, 10, Quota{Rate: 10, Burst: 10}},    // a second's worth
		{Queries, 1, Quota{Rate: 1, Burst: 60}},      // a minute's worth
		{TwinReads, 0.5, Quota{Rate: 0.5, Burst: 1}}, // at least one
		{Telemetry, math.Inf(1), Quota{Rate: math.Inf(1)}},
	} {
		q, err := Documented(S3, 2, tc.op)
		if err != nil {
			t.Fatal(err)
		}
		if got := q.WithRate(tc.rate); got != tc.want {
			t.Errorf("%s WithRate(%v) = %+v, want %+v", tc.op, tc.rate, got, tc.want)
		}
	}
}

func TestMethodCost(t *testing.T) {
	for n, want := range map[int]int{0: 1, 4: 1, 4096: 1, 4097: 2, 8192: 2, 9 * 1024: 3, 128 * 1024: 32} {
		if got := MethodCost(n); got != want {
			t.Errorf("MethodCost(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		op   Op
		rate float64
		ok   bool
	}{
		{"methods=500/s", Methods, 500, true},
		{"twinReads=1000", TwinReads, 1000, true},
		{"queries=120/min", Queries, 2, true},
		{" registry = 0.5/s ", Registry, 0.5, true},
		{"telemetry=off", Telemetry, math.Inf(1), true},
		{"methods", "", 0, false},
		{"methods=0/s", "", 0, false},
		{"methods=-1", "", 0, false},
		{"methods=fast", "", 0, false},
		{"methods=5/h", "", 0, false},
		{"jobs=5/s", "", 0, false},
	}
	for _, tc := range tests {
		op, rate, err := Parse(tc.in)
		if (err == nil) != tc.ok || op != tc.op || rate != tc.rate {
			t.Errorf("Parse(%q) = %q, %v, %v", tc.in, op, rate, err)
		}
	}
	q, err := ParseList("methods=500/s,,twinReads=1000/s")
	if err != nil || len(q) != 2 || q[Methods] != 500 || q[TwinReads] != 1000 {
		t.Errorf("ParseList = %v, %v", q, err)
	}
	if got := FormatList(map[Op]float64{TwinReads: 1000, Methods: math.Inf(1)}); got != "methods=off,twinReads=1000/s" {
		t.Errorf("FormatList = %q", got)
	}
}
