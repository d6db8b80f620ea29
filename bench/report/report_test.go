package main

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tripod-dev/tripod/bench/internal/benchutil"
)

func sample() []loaded {
	num := benchutil.Num
	cri := benchutil.Result{Bench: "cri", Title: "CRI", Columns: []string{"tripod", "containerd 2", "containerd 1"}, Rows: []benchutil.Row{
		{Metric: "ExecSync p50", Unit: "ms", Values: []benchutil.Value{num(10), num(40), num(20)}, Target: 0.5},
		{Metric: "exec sessions/s", Unit: "/s", Values: []benchutil.Value{num(100), num(50), num(400)}, Target: 2, HigherIsBetter: true},
		{Metric: "idle session | RSS", Unit: "kB", Values: []benchutil.Value{benchutil.NA("n/a (Exec unimplemented)"), num(600), num(500)}},
		{Metric: "per pod", Unit: "kB", Values: []benchutil.Value{num(45), num(18000), num(15000)}, Goal: 1536},
	}}
	csi := benchutil.Result{Bench: "csi", Title: "CSI", Columns: []string{"tripod-csi", "hostpath (recorded)"}, Rows: []benchutil.Row{
		{Metric: "publish p50", Unit: "ms", Values: []benchutil.Value{num(12), benchutil.NA("7.2 ms")}, Goal: 10},
	}}
	return []loaded{
		{section: sections[0], res: cri},
		{section: sections[1], missing: "no results: make bench-cni wrote no cni.json (its output is in out/cni.log)"},
		{section: sections[3], res: csi},
		{section: sections[4], missing: missingText(sections[4], "out")},
	}
}

func TestChartRows(t *testing.T) {
	rows := chartRows(sample())
	// The idle session row has no tripod value, CSI has no measured
	// anchor: three rows with ratios, all from the CRI section.
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3: %+v", len(rows), rows)
	}
	if rows[0].section != "CRI runtime: pods, exec, stats, memory" || rows[1].section != "" {
		t.Errorf("section headings: %q, %q", rows[0].section, rows[1].section)
	}
	if b := rows[0].bars; len(b) != 2 || b[0].cost != 0.25 || b[1].cost != 0.5 || rows[0].target != 0.5 {
		t.Errorf("ExecSync bars: %+v target %v", b, rows[0].target)
	}
	// Per second: drawn inverted (anchor/tripod), the target too; the
	// label says so, the ratio shown stays tripod/anchor.
	r := rows[1]
	if r.bars[0].cost != 0.5 || r.bars[0].ratio != 2 || r.bars[1].cost != 4 || r.target != 0.5 || !strings.Contains(r.label, "inverted") {
		t.Errorf("per-second row: %+v", r)
	}
	notes := unchartedNotes(sample(), rows)
	if len(notes) != 3 || !strings.Contains(notes[0], "CNI") || !strings.Contains(notes[1], "no anchor") || !strings.Contains(notes[2], "not run: no play.json") {
		t.Errorf("notes: %q", notes)
	}
}

func TestBarColor(t *testing.T) {
	for _, c := range []struct {
		cost, target float64
		want         string
	}{{0.3, 0.5, "green"}, {0.7, 0.5, "amber"}, {1.2, 0.5, "red"}, {0.9, 0, "green"}, {1.1, 0, "red"}} {
		got := map[any]string{green: "green", amber: "amber", red: "red"}[barColor(c.cost, c.target)]
		if got != c.want {
			t.Errorf("barColor(%v, %v) = %s, want %s", c.cost, c.target, got, c.want)
		}
	}
}

func TestScale(t *testing.T) {
	if xOf(lo) != plotX || xOf(hi) != plotX+plotW || xOf(1e-9) != plotX || xOf(1e9) != plotX+plotW {
		t.Errorf("ends: %d %d %d %d", xOf(lo), xOf(hi), xOf(1e-9), xOf(1e9))
	}
	// Four decades from 0.001 to 10: parity sits three quarters along.
	if x := xOf(1); x != plotX+plotW*3/4 {
		t.Errorf("xOf(1) = %d, want %d", x, plotX+plotW*3/4)
	}
	if !(xOf(0.1) < xOf(0.2) && xOf(0.2) < xOf(0.5)) {
		t.Error("scale not increasing")
	}
}

func TestChartImage(t *testing.T) {
	rows := chartRows(sample())
	img := chart(rows, []string{"a note"})
	want := topH + bottomH + 18 + sectionH
	for _, r := range rows {
		want += rowHeight(r)
	}
	if b := img.Bounds(); b.Dx() != width || b.Dy() != want {
		t.Fatalf("chart is %v, want %dx%d", b, width, want)
	}
	// ExecSync vs containerd 2 (0.25, target 0.5): a green bar from 0.25
	// to 1 on the first row; the target marker at 0.5.
	y := topH + sectionH + barH/2
	if c := img.RGBAAt(xOf(0.4), y); c != green {
		t.Errorf("bar pixel %v, want green", c)
	}
	if c := img.RGBAAt(xOf(0.2), y); c == green {
		t.Error("the bar reaches past its ratio")
	}
	if c := img.RGBAAt(xOf(0.5), y); c != marker {
		t.Errorf("target pixel %v, want the marker", c)
	}
	// The second anchor (0.5, target 0.5): green too, one bar lower.
	if c := img.RGBAAt(xOf(0.7), y+barH+barGap); c != green {
		t.Errorf("second bar pixel %v, want green", c)
	}
	empty := chart(nil, nil)
	if empty.Bounds().Dy() != topH+bottomH+40 {
		t.Errorf("empty chart height %d", empty.Bounds().Dy())
	}
}

func TestMarkdown(t *testing.T) {
	md := markdown(sample(), "test host", "report.png")
	for _, want := range []string{
		"![tripod / anchor ratios](report.png)",
		"| cri | ExecSync p50 | 10.0 ms | containerd 2 40.0 ms | 0.25 | ≤ 0.50 | met |",
		"| cri | exec sessions/s ↑ | 100 /s | containerd 2 50.0 /s | 2.00 | ≥ 2.00 | met |",
		"| cri | per pod | 45.0 kB | | | ≤ 1536 kB | met |",
		"| csi | publish p50 | 12.0 ms | | | ≤ 10.0 ms | **missed** |",
		"| tripod/containerd 2 | tripod/containerd 1 |",
		"| **0.25** ✓ | 0.50 |",
		`idle session \| RSS`, "n/a (Exec unimplemented)",
		"no results: make bench-cni wrote no cni.json",
		"| `tripod play` of the example web pod → first successful HTTP response | not measured (not run: no play.json and no play.log in out) |",
		"| 7.2 ms |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	// Recorded figures get no ratio column.
	if strings.Contains(md, "tripod/hostpath") {
		t.Errorf("a ratio column for figures not measured in the run:\n%s", md)
	}
}

func TestRun(t *testing.T) {
	in := t.TempDir()
	t.Setenv(benchutil.OutEnv, in)
	if err := sample()[0].res.Save(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(in, "images.json"), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(in, "csi.log"), []byte("bench-csi: needs root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	md, pngPath := filepath.Join(out, "report.md"), filepath.Join(out, "chart.png")
	if err := run(in, md, pngPath, "v1-test"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"source v1-test", "](chart.png)", "ExecSync p50", "unreadable results:",
		"not run: no cni.json and no cni.log", "no results: make bench-csi wrote no csi.json (its output is in " + filepath.Join(in, "csi.log"),
		"| `tripod play` of the example web pod → first successful HTTP response | not measured (not run"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Errorf("chart: %v", err)
	}
}
