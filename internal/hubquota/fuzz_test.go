package hubquota

import (
	"math"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that what it accepts is a known
// operation at a positive rate, and that FormatList writes it back in a form
// ParseList reads as the same rate.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{"methods=500/s", "twinReads=1000", "queries=120/min", " registry = 0.5/s ",
		"telemetry=off", "connections=UNLIMITED", "methods", "methods=0/s", "methods=-1", "methods=5/h",
		"jobs=5/s", "methods=NaN", "methods=5e-324/min", "=", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		op, rate, err := Parse(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "quota ") {
				t.Fatalf("Parse(%q) error %q does not name the quota", s, err)
			}
			return
		}
		if _, err := Documented(S1, 1, op); err != nil {
			t.Fatalf("Parse(%q) accepted operation %q: %v", s, op, err)
		}
		if !(rate > 0) {
			t.Fatalf("Parse(%q) accepted rate %v", s, rate)
		}
		list := FormatList(map[Op]float64{op: rate})
		back, err := ParseList(list)
		if err != nil || len(back) != 1 || back[op] != rate && !(math.IsInf(rate, 1) && math.IsInf(back[op], 1)) {
			t.Fatalf("Parse(%q) = %s %v; FormatList wrote %q, which reads back as %v, %v", s, op, rate, list, back, err)
		}
	})
}
