// Command report turns the benchmarks' results (the NAME.json files that
// `make bench` has them write) into bench/report.md, a page of tables with
// tripod/anchor ratios and targets, and a chart of those ratios (PNG).
//
//	go run ./bench/report -in bench/out -md bench/report.md -png bench/report.png
package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/tripod-dev/tripod/bench/internal/benchutil"
)

func main() {
	in := flag.String("in", "bench/out", "directory of the benchmarks' NAME.json results")
	md := flag.String("md", "bench/report.md", "the report to write")
	png := flag.String("png", "bench/report.png", "the chart to write (linked from the report by its base name)")
	commit := flag.String("commit", "", "the source version measured (git describe)")
	flag.Parse()
	if err := run(*in, *md, *png, *commit); err != nil {
		fmt.Fprintln(os.Stderr, "bench-report:", err)
		os.Exit(1)
	}
}

// section is one benchmark of the report, in the order shown.
type section struct {
	bench   string // the results file is bench+".json"
	title   string
	command string
}

var sections = []section{
	{"cri", "CRI runtime: pods, exec, stats, memory", "make bench-cri"},
	{"cni", "CNI plugins", "make bench-cni"},
	{"images", "Image pull and unpack", "make bench-images"},
	{"csi", "CSI driver", "make bench-csi"},
	{"play", "tripod play: the example web pod to its first HTTP response", "make bench-play"},
}

// loaded is a section with its results, or why there are none.
type loaded struct {
	section
	res     benchutil.Result
	missing string
}

func run(in, mdPath, pngPath, commit string) error {
	var ls []loaded
	for _, s := range sections {
		l := loaded{section: s}
		r, err := benchutil.Load(filepath.Join(in, s.bench+".json"))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			l.missing = missingText(s, in)
		case err != nil:
			l.missing = "unreadable results: " + err.Error()
		default:
			l.res = r
		}
		ls = append(ls, l)
	}
	rows := chartRows(ls)
	img := chart(rows, unchartedNotes(ls, rows))
	if err := writePNG(pngPath, img); err != nil {
		return err
	}
	page := markdown(ls, hostFacts(commit), filepath.Base(pngPath))
	if err := os.WriteFile(mdPath, []byte(page), 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s and %s\n", mdPath, pngPath)
	return nil
}

func missingText(s section, in string) string {
	log := filepath.Join(in, s.bench+".log")
	if _, err := os.Stat(log); err != nil {
		return fmt.Sprintf("not run: no %s.json and no %s.log in %s", s.bench, s.bench, in)
	}
	return fmt.Sprintf("no results: %s wrote no %s.json (its output is in %s)", s.command, s.bench, log)
}

// hostFacts describes the machine the numbers come from.
func hostFacts(commit string) string {
	var f []string
	if commit != "" {
		f = append(f, "source "+commit)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		f = append(f, "Linux "+strings.TrimSpace(string(b)))
	}
	f = append(f, fmt.Sprintf("%d CPUs", runtime.NumCPU()))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				var kb int64
				fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
				f = append(f, fmt.Sprintf("%.1f GiB memory", float64(kb)/(1<<20)))
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if v := strings.Fields(string(b)); len(v) >= 3 {
			f = append(f, "load average "+strings.Join(v[:3], " ")+" when the report was written")
		}
	}
	return strings.Join(f, ", ")
}

// markdown renders the report.
func markdown(ls []loaded, host, pngName string) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# tripod benchmarks\n\n")
	w("Written by `make bench` on %s (%s). Every benchmark runs tripod and its anchors in the same run on the same machine; ", time.Now().UTC().Format("2006-01-02 15:04 MST"), host)
	w("it is one run, and on a shared machine the ratios move between runs, by a tenth or more under load (each section gives the load average at its end).\n\n")
	w("**Ratios are tripod / anchor: below 1 tripod is faster or smaller.** Rows marked ↑ count something per second, where above 1 is better. ")
	w("A ratio target (≤ 0.5) is for tripod/first anchor; a goal (≤ 1536 kB) is for tripod's own value.\n\n")
	w("![tripod / anchor ratios](%s)\n\n", pngName)

	// Every target in one table first: what meets it and what does not.
	var tb strings.Builder
	verdict := func(met, ok bool) string {
		switch {
		case !ok:
			return "not measured"
		case met:
			return "met"
		}
		return "**missed**"
	}
	for _, l := range ls {
		for _, r := range l.res.Rows {
			tripod := "-"
			if len(r.Values) > 0 {
				tripod = esc(r.Values[0].Format(r.Unit))
			}
			if r.Target != 0 && len(l.res.Columns) >= 2 {
				x, ok := r.Ratio(1)
				ratio := "-"
				if ok {
					ratio = benchutil.FormatRatio(x)
				}
				anchor := esc(l.res.Columns[1])
				if len(r.Values) > 1 {
					anchor += " " + esc(r.Values[1].Format(r.Unit))
				}
				fmt.Fprintf(&tb, "| %s | %s | %s | %s | %s | %s | %s |\n", l.bench, esc(r.Metric)+arrow(r), tripod, anchor, ratio, r.TargetText(), verdict(r.Met(x), ok))
			}
			if r.Goal != 0 {
				met, ok := r.GoalMet()
				fmt.Fprintf(&tb, "| %s | %s | %s | | | %s | %s |\n", l.bench, esc(r.Metric)+arrow(r), tripod, r.GoalText(), verdict(met, ok))
			}
		}
	}
	if tb.Len() > 0 {
		w("## Targets\n\n| bench | metric | tripod | anchor | tripod/anchor | target | |\n|---|---|---:|---:|---:|---|---|\n%s\n", tb.String())
	}

	for _, l := range ls {
		w("## %s (`%s`)\n\n", l.title, l.command)
		if l.missing != "" {
			if l.bench == "play" {
				w("| metric | tripod |\n|---|---|\n| `tripod play` of the example web pod → first successful HTTP response | not measured (%s) |\n\n", l.missing)
			} else {
				w("%s\n\n", l.missing)
			}
			continue
		}
		r := l.res
		if r.Title != "" {
			w("%s. Measured %s", r.Title, r.Time.UTC().Format("2006-01-02 15:04 MST"))
			if r.Load != "" {
				w(", load average %s at the end", r.Load)
			}
			w(".\n\n")
		}
		// A ratio column for each anchor measured in this run (a column
		// of recorded figures has none).
		var anchors []int
		for j := 1; j < len(r.Columns); j++ {
			for _, row := range r.Rows {
				if _, ok := row.Ratio(j); ok {
					anchors = append(anchors, j)
					break
				}
			}
		}
		w("| metric |")
		for _, c := range r.Columns {
			w(" %s |", esc(c))
		}
		for _, j := range anchors {
			w(" tripod/%s |", esc(r.Columns[j]))
		}
		w(" target |\n|---|")
		for range len(r.Columns) + len(anchors) {
			w("---:|")
		}
		w("---|\n")
		for _, row := range r.Rows {
			w("| %s |", esc(row.Metric)+arrow(row))
			for j := range r.Columns {
				v := benchutil.Value{}
				if j < len(row.Values) {
					v = row.Values[j]
				}
				w(" %s |", esc(v.Format(row.Unit)))
			}
			for _, j := range anchors {
				if x, ok := row.Ratio(j); ok {
					s := benchutil.FormatRatio(x)
					if j == 1 && row.Target != 0 {
						if row.Met(x) {
							s = "**" + s + "** ✓"
						} else {
							s += " ✗"
						}
					}
					w(" %s |", s)
				} else {
					w(" - |")
				}
			}
			w(" %s |\n", esc(row.Goals()))
		}
		w("\n")
		for _, n := range r.Notes {
			w("- %s\n", esc(n))
		}
		if len(r.Notes) > 0 {
			w("\n")
		}
	}
	return b.String()
}

func arrow(r benchutil.Row) string {
	if r.HigherIsBetter {
		return " ↑"
	}
	return ""
}

// esc keeps a cell's text from ending the table cell.
func esc(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
