package benchreport

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/template"
)

// Results are the fragments and figures found in the benchmarks' output directory; a benchmark
// that did not run has neither.
type Results struct {
	// Fragments are the Markdown fragments by benchmark name.
	Fragments map[string]string
	Firmware  *FirmwareFigures
	Baseline  *BaselineFigures
	Rollout   *RolloutFigures
	// Scale is `make bench-scale`'s, read from the repository (LoadScale).
	Scale *RolloutFigures
}

// Missing lists the benchmarks without a fragment, in Names order.
func (r Results) Missing() []string {
	var m []string
	for _, n := range Names {
		if _, ok := r.Fragments[n]; !ok {
			m = append(m, n)
		}
	}
	return m
}

// Load reads the fragments and figures in dir.
func Load(dir string) (Results, error) {
	r := Results{Fragments: map[string]string{}}
	for _, n := range Names {
		b, err := os.ReadFile(FragmentPath(dir, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return r, err
		}
		r.Fragments[n] = strings.TrimSpace(string(b))
	}
	var fw FirmwareFigures
	var bl BaselineFigures
	var ro RolloutFigures
	for _, f := range []struct {
		name string
		v    any
		set  func()
	}{
		{Firmware, &fw, func() { r.Firmware = &fw }},
		{Baseline, &bl, func() { r.Baseline = &bl }},
		{Rollout, &ro, func() { r.Rollout = &ro }},
	} {
		ok, err := readFigures(FiguresPath(dir, f.name), f.v)
		if err != nil {
			return r, err
		}
		if ok {
			f.set()
		}
	}
	return r, nil
}

// ScaleDir is where `make bench-scale` keeps its fragment and figures: in the repository, since it
// is not part of `make bench` (which starts from an empty result directory) and BENCHMARKS.md keeps
// its latest figures.
const ScaleDir = "bench/scale"

// LoadScale reads `make bench-scale`'s fragment and figures from dir, when it ran.
func (r *Results) LoadScale(dir string) error {
	b, err := os.ReadFile(FragmentPath(dir, Scale))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var sc RolloutFigures
	ok, err := readFigures(FiguresPath(dir, Scale), &sc)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s has no figures beside it (%s): run `make bench-scale` again", FragmentPath(dir, Scale), FiguresPath(dir, Scale))
	}
	r.Fragments[Scale] = strings.TrimSpace(string(b))
	r.Scale = &sc
	return nil
}

//go:embed template.md
var defaultTemplate string

// Render writes BENCHMARKS.md: the template's prose with the machine's header, the targets table
// and each benchmark's fragment filled in. The template (template.md) calls {{header}},
// {{targets}} and {{fragment "name"}}; a missing fragment becomes a line naming the make target
// that writes it.
func Render(w io.Writer, m Machine, r Results) error {
	return render(w, defaultTemplate, m, r)
}

func render(w io.Writer, text string, m Machine, r Results) error {
	t, err := template.New("BENCHMARKS.md").Option("missingkey=error").Funcs(template.FuncMap{
		"header":  func() string { return header(m, r) },
		"targets": func() string { return targetsTable(Targets(r)) },
		"fragment": func(name string) (string, error) {
			if !isName(name) && name != Scale {
				return "", fmt.Errorf("template: no benchmark %q (known: %s, %s)", name, strings.Join(Names, ", "), Scale)
			}
			if f, ok := r.Fragments[name]; ok {
				return f, nil
			}
			if name == Scale {
				return "*Not measured yet: `make bench-scale` measures it (it is not part of `make bench`).*", nil
			}
			return fmt.Sprintf("*Not measured in this run: `make bench-%s` measures it, `make bench` everything.*", name), nil
		},
	}).Parse(text)
	if err != nil {
		return err
	}
	return t.Execute(w, nil)
}

func isName(n string) bool {
	for _, k := range Names {
		if k == n {
			return true
		}
	}
	return false
}

// header is the table describing the run's machine.
func header(m Machine, r Results) string {
	var b strings.Builder
	b.WriteString("| machine | |\n|---|---|\n")
	row := func(k, v string) { fmt.Fprintf(&b, "| %s | %s |\n", k, v) }
	row("date", m.Finished.UTC().Format("2006-01-02 15:04 MST"))
	row("`nproc`", fmt.Sprint(m.CPUs))
	row("memory (MemTotal)", m.MemTotal)
	row("CPU", m.CPUModel)
	row("Go", m.GoVersion)
	row("OS", m.OS)
	if d := m.Took(); d > 0 {
		row("`make bench` took", Secs(d.Seconds()))
	}
	if m.LoadStart != "" {
		row("load average (1 / 5 / 15 min) at the start", m.LoadStart)
	}
	row("load average at the end", m.LoadEnd)
	if missing := r.Missing(); len(missing) > 0 {
		row("not measured in this run", "`make bench-"+strings.Join(missing, "`, `make bench-")+"`")
	}
	return strings.TrimSpace(b.String())
}

func targetsTable(rows []TargetRow) string {
	var b strings.Builder
	b.WriteString("| target (issue 16) | run | measured | |\n|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Target, r.Run, r.Measured, r.Verdict)
	}
	return strings.TrimSpace(b.String())
}
