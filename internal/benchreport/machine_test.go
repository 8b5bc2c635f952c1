package benchreport

import (
	"testing"
	"testing/fstest"
	"time"
)

func TestReadMachine(t *testing.T) {
	now := time.Date(2026, 11, 23, 19, 30, 0, 0, time.UTC)
	root := fstest.MapFS{
		"proc/meminfo":              {Data: []byte("MemTotal:       24576000 kB\nMemFree:        1000 kB\n")},
		"proc/cpuinfo":              {Data: []byte("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nprocessor\t: 1\n")},
		"proc/loadavg":              {Data: []byte("1.95 1.80 1.20 3/200 12345\n")},
		"etc/os-release":            {Data: []byte("NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")},
		"proc/sys/kernel/osrelease": {Data: []byte("6.1.0-28-amd64\n")},
	}
	m := ReadMachine(root, 2, "go1.26.8", "2026-11-23T17:30:00Z 0.62 0.92 1.28 1/108 14675\n", now)
	want := Machine{Finished: now, Started: now.Add(-2 * time.Hour), LoadStart: "0.62 / 0.92 / 1.28", LoadEnd: "1.95 / 1.80 / 1.20",
		CPUs: 2, MemTotal: "23.4 GiB", CPUModel: "Intel(R) Xeon(R) CPU @ 2.20GHz", GoVersion: "go1.26.8",
		OS: "Debian GNU/Linux 12 (bookworm), Linux 6.1.0-28-amd64"}
	if m != want {
		t.Errorf("ReadMachine =\n%+v, want\n%+v", m, want)
	}
	if m.Took() != 2*time.Hour {
		t.Errorf("Took = %s, want 2h", m.Took())
	}

	bare := ReadMachine(fstest.MapFS{}, 1, "go1.26.8", "", now)
	if bare.MemTotal != "unknown" || bare.CPUModel != "unknown" || bare.OS != "unknown" || bare.LoadEnd != "unknown" || bare.Took() != 0 {
		t.Errorf("ReadMachine without /proc = %+v, want unknowns and no duration", bare)
	}
}

func TestParseStarted(t *testing.T) {
	for _, tc := range []struct {
		in   string
		at   time.Time
		load string
	}{
		{"2026-11-23T17:30:00Z 0.62 0.92 1.28", time.Date(2026, 11, 23, 17, 30, 0, 0, time.UTC), "0.62 / 0.92 / 1.28"},
		{"2026-11-23T17:30:00Z", time.Date(2026, 11, 23, 17, 30, 0, 0, time.UTC), ""},
		{"", time.Time{}, ""},
		{"yesterday 1 2 3", time.Time{}, ""},
	} {
		at, load := ParseStarted(tc.in)
		if !at.Equal(tc.at) || load != tc.load {
			t.Errorf("ParseStarted(%q) = %v, %q; want %v, %q", tc.in, at, load, tc.at, tc.load)
		}
	}
}
