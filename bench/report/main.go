// Command report writes BENCHMARKS.md from what `make bench` measured: the fragments and figures
// the benchmarks wrote into a directory (default .bin), under a header describing this machine.
// `make bench` runs it after the benchmarks; `make bench-report` runs it alone.
//
//	report [--dir .bin] [--scale bench/scale] [--out BENCHMARKS.md] [--started .bin/bench-started]
//
// --scale names the directory `make bench-scale` keeps its results in (in the repository: it is
// not part of `make bench`).
//
// --started names the file `make bench` writes when it starts (its time and load average), for
// the header; without it the header gives no duration.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/dmflow/dmflow/internal/benchreport"
)

func main() {
	dir := flag.String("dir", ".bin", "directory holding the benchmarks' bench-*.md and bench-*.json")
	scale := flag.String("scale", benchreport.ScaleDir, "directory holding `make bench-scale`'s bench-scale.md and bench-scale.json")
	out := flag.String("out", "BENCHMARKS.md", "file to write")
	started := flag.String("started", "", "file with the start time and load average `make bench` recorded")
	flag.Parse()
	if err := run(*dir, *scale, *out, *started); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(dir, scaleDir, out, startedFile string) error {
	res, err := benchreport.Load(dir)
	if err != nil {
		return err
	}
	if err := res.LoadScale(scaleDir); err != nil {
		return err
	}
	if len(res.Fragments) == 0 {
		return fmt.Errorf("no benchmark results in %s: run `make bench` (or one of its bench-* targets) first", dir)
	}
	var started []byte
	if startedFile != "" {
		started, err = os.ReadFile(startedFile)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	m := benchreport.ReadMachine(os.DirFS("/"), runtime.NumCPU(), runtime.Version(), string(started), time.Now())
	var b bytes.Buffer
	if err := benchreport.Render(&b, m, res); err != nil {
		return err
	}
	if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
		return err
	}
	if missing := res.Missing(); len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "report: %s written without %s (not run)\n", out, strings.Join(missing, ", "))
	} else {
		fmt.Fprintf(os.Stderr, "report: %s written\n", out)
	}
	return nil
}
