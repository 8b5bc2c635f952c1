package benchreport

import (
	"bufio"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"
)

// Machine describes where and when the benchmarks ran, for the report's header.
type Machine struct {
	// Finished is when the report was assembled, right after the last benchmark.
	Finished time.Time
	// Started is when `make bench` began (zero when unknown), and LoadStart and LoadEnd the load
	// averages (1, 5, 15 min) then and at the end: the benchmarks assume a quiet machine, and a
	// load above the CPU count says it was not.
	Started            time.Time
	LoadStart, LoadEnd string
	// CPUs is what nproc says: the CPUs this process may run on.
	CPUs      int
	MemTotal  string // from /proc/meminfo, e.g. "23.4 GiB"
	CPUModel  string
	GoVersion string
	OS        string // the distribution's name and the kernel release
}

// Took is how long `make bench` ran, or 0 when its start is unknown.
func (m Machine) Took() time.Duration {
	if m.Started.IsZero() || m.Finished.Before(m.Started) {
		return 0
	}
	return m.Finished.Sub(m.Started)
}

// ReadMachine reads the machine's description from a Linux root file system (os.DirFS("/")):
// memory from proc/meminfo, the CPU model from proc/cpuinfo, the load from proc/loadavg, the OS
// from etc/os-release and proc/sys/kernel/osrelease. What it cannot read it gives as "unknown".
// cpus and goVersion come from the caller (runtime.NumCPU, runtime.Version); started is the
// content of the file `make bench` writes when it starts (see ParseStarted), or empty.
func ReadMachine(root fs.FS, cpus int, goVersion, started string, now time.Time) Machine {
	m := Machine{Finished: now, CPUs: cpus, GoVersion: goVersion,
		MemTotal: "unknown", CPUModel: "unknown", OS: "unknown", LoadEnd: "unknown"}
	m.Started, m.LoadStart = ParseStarted(started)
	if kb, ok := procField(root, "proc/meminfo", "MemTotal"); ok {
		if v, err := strconv.ParseFloat(strings.TrimSuffix(kb, " kB"), 64); err == nil {
			m.MemTotal = fmt.Sprintf("%.1f GiB", v/(1<<20))
		}
	}
	if model, ok := procField(root, "proc/cpuinfo", "model name"); ok {
		m.CPUModel = model
	}
	if b, err := fs.ReadFile(root, "proc/loadavg"); err == nil {
		m.LoadEnd = loadAvg(string(b))
	}
	var osName []string
	if b, err := fs.ReadFile(root, "etc/os-release"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				osName = append(osName, strings.Trim(v, `"'`))
			}
		}
	}
	if b, err := fs.ReadFile(root, "proc/sys/kernel/osrelease"); err == nil {
		osName = append(osName, "Linux "+strings.TrimSpace(string(b)))
	}
	if len(osName) > 0 {
		m.OS = strings.Join(osName, ", ")
	}
	return m
}

// ParseStarted reads what `make bench` records when it starts: an RFC 3339 time, then the three
// load averages of /proc/loadavg. Missing or unreadable parts stay zero and empty.
func ParseStarted(s string) (time.Time, string) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return time.Time{}, ""
	}
	at, err := time.Parse(time.RFC3339, f[0])
	if err != nil {
		return time.Time{}, ""
	}
	return at, loadAvg(strings.Join(f[1:], " "))
}

// loadAvg formats the first three fields of /proc/loadavg as "0.62 / 0.92 / 1.28".
func loadAvg(s string) string {
	f := strings.Fields(s)
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " / ")
}

// procField finds "key : value" in a /proc file and returns the first value.
func procField(root fs.FS, name, key string) (string, bool) {
	f, err := root.Open(name)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}
