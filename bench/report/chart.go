package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"

	"github.com/tripod-dev/tripod/bench/internal/benchutil"
)

// chartRow is one metric of the chart: a bar per anchor.
type chartRow struct {
	section string // set on a section's first row: its heading
	label   string
	bars    []bar
	// target is the ratio target in chart terms (lower is better), 0 none.
	target float64
}

type bar struct {
	anchor string
	ratio  float64 // tripod/anchor, as in the tables
	// cost is tripod/anchor, inverted for rows where higher is better,
	// so that left of 1 is always better for tripod.
	cost float64
}

// unchartedNotes says which sections have nothing in the chart, and why.
func unchartedNotes(ls []loaded, rows []chartRow) []string {
	charted := map[string]bool{}
	for _, r := range rows {
		if r.section != "" {
			charted[r.section] = true
		}
	}
	var notes []string
	for _, l := range ls {
		switch {
		case charted[l.title]:
		case l.missing != "":
			notes = append(notes, fmt.Sprintf("Not charted: %s: %s.", l.title, l.missing))
		default:
			notes = append(notes, fmt.Sprintf("Not charted: %s: no anchor measured in this run (see the report's table).", l.title))
		}
	}
	return notes
}

// chartRows picks, from every result, the rows with at least one ratio.
func chartRows(ls []loaded) []chartRow {
	var out []chartRow
	for _, l := range ls {
		first := true
		for _, r := range l.res.Rows {
			cr := chartRow{label: r.Metric}
			if r.HigherIsBetter {
				cr.label += " (inverted)"
			}
			for j := 1; j < len(l.res.Columns); j++ {
				x, ok := r.Ratio(j)
				if !ok || x <= 0 {
					continue
				}
				b := bar{anchor: l.res.Columns[j], ratio: x, cost: x}
				if r.HigherIsBetter {
					b.cost = 1 / x
				}
				cr.bars = append(cr.bars, b)
			}
			if len(cr.bars) == 0 {
				continue
			}
			if r.Target > 0 {
				cr.target = r.Target
				if r.HigherIsBetter {
					cr.target = 1 / r.Target
				}
			}
			if first {
				cr.section = l.title
				first = false
			}
			out = append(out, cr)
		}
	}
	return out
}

// The chart's geometry: ratios on a log scale from lo to hi, bars
// growing from 1 (parity) left when tripod is better, right when worse.
const (
	lo, hi   = 0.001, 10.0
	width    = 1640
	labelW   = 540 // row labels, right-aligned
	plotX    = labelW + 20
	plotW    = 660
	valueX   = plotX + plotW + 16
	barH     = 12
	barGap   = 3
	rowGap   = 9
	sectionH = 30
	topH     = 150
	bottomH  = 60
	charW    = 7 // basicfont.Face7x13
)

var (
	white  = color.RGBA{255, 255, 255, 255}
	ink    = color.RGBA{33, 37, 41, 255}
	grey   = color.RGBA{108, 117, 125, 255}
	grid   = color.RGBA{222, 226, 230, 255}
	band   = color.RGBA{241, 243, 245, 255}
	green  = color.RGBA{47, 158, 68, 255}
	amber  = color.RGBA{240, 140, 0, 255}
	red    = color.RGBA{224, 49, 49, 255}
	marker = color.RGBA{0, 0, 0, 255}
)

// xOf maps a ratio to its x coordinate, clamped to the plot.
func xOf(r float64) int {
	r = math.Min(math.Max(r, lo), hi)
	return plotX + int(math.Round((math.Log10(r)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*plotW))
}

// barColor: green where the target is met (or, without one, where tripod
// is ahead), amber where tripod is ahead but short of the target, red
// where it is behind.
func barColor(cost, target float64) color.RGBA {
	switch {
	case target > 0 && cost <= target:
		return green
	case target == 0 && cost <= 1:
		return green
	case cost <= 1:
		return amber
	}
	return red
}

func rowHeight(r chartRow) int {
	return len(r.bars)*barH + (len(r.bars)-1)*barGap + rowGap
}

// chart draws rows, then a line per note (what has no ratio to chart);
// with no rows it says so.
func chart(rows []chartRow, notes []string) *image.RGBA {
	h := topH + bottomH + len(notes)*18
	for _, r := range rows {
		if r.section != "" {
			h += sectionH
		}
		h += rowHeight(r)
	}
	if len(rows) == 0 {
		h += 40
	}
	img := image.NewRGBA(image.Rect(0, 0, width, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(white), image.Point{}, draw.Src)

	text(img, 20, 34, "tripod / anchor, measured in the same run (log scale)", ink, 2)
	text(img, 20, 62, "Bars grow from 1.0 (same as the anchor): left = tripod faster or smaller, right = slower or bigger.", ink, 1)
	legend := []struct {
		c color.RGBA
		s string
	}{{green, "meets its target (or, without one, ahead)"}, {amber, "ahead, short of its target"}, {red, "behind the anchor"}}
	x := 20
	for _, l := range legend {
		fill(img, image.Rect(x, 74, x+barH, 74+barH), l.c)
		text(img, x+barH+6, 84, l.s, ink, 1)
		x += barH + 6 + len(l.s)*charW + 24
	}
	fill(img, image.Rect(x, 71, x+2, 71+barH+6), marker)
	text(img, x+8, 84, "target", ink, 1)
	text(img, 20, 104, "Two bars on a row: one per anchor (named on the right). Rows counting per second are drawn inverted (anchor/tripod), so that left is better there too.", grey, 1)

	ticks := []float64{0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10}
	plotTop, plotBottom := topH, h-bottomH-len(notes)*18
	for _, t := range ticks {
		x := xOf(t)
		c := grid
		if t == 1 {
			c = grey
		}
		fill(img, image.Rect(x, plotTop-6, x+1, plotBottom+6), c)
		s := tickLabel(t)
		text(img, x-len(s)*charW/2, plotTop-12, s, grey, 1)
		text(img, x-len(s)*charW/2, plotBottom+22, s, grey, 1)
	}
	text(img, xOf(0.01)-60, plotBottom+44, "<- tripod better", green, 1)
	text(img, xOf(1)+12, plotBottom+44, "tripod worse ->", red, 1)
	for i, n := range notes {
		text(img, 20, plotBottom+bottomH+i*18+4, n, grey, 1)
	}
	if len(rows) == 0 {
		text(img, plotX, plotTop+24, "no results with an anchor to compare against", ink, 1)
	}

	y := plotTop
	for _, r := range rows {
		if r.section != "" {
			fill(img, image.Rect(0, y+4, width, y+sectionH-4), band)
			text(img, 20, y+sectionH/2+4, r.section, ink, 1)
			text(img, 21, y+sectionH/2+4, r.section, ink, 1) // bold
			y += sectionH
		}
		label := r.label
		if n := (labelW - 20) / charW; len([]rune(label)) > n {
			label = string([]rune(label)[:n-3]) + "..."
		}
		text(img, labelW-len([]rune(label))*charW, y+barH-2, label, ink, 1)
		rowH := len(r.bars)*barH + (len(r.bars)-1)*barGap
		for i, b := range r.bars {
			by := y + i*(barH+barGap)
			x0, x1 := xOf(1), xOf(b.cost)
			if x1 < x0 {
				x0, x1 = x1, x0
			}
			fill(img, image.Rect(x0, by, max(x1, x0+2), by+barH), barColor(b.cost, r.target))
			v := fmt.Sprintf("%s  vs %s", benchutil.FormatRatio(b.ratio), b.anchor)
			if b.cost != b.ratio {
				v += " (higher is better)"
			}
			if b.cost < lo {
				v = "<" + v
			} else if b.cost > hi {
				v = ">" + v
			}
			text(img, valueX, by+barH-2, v, ink, 1)
		}
		if r.target > 0 {
			tx := xOf(r.target)
			fill(img, image.Rect(tx-1, y-3, tx+1, y+rowH+3), marker)
		}
		y += rowHeight(r)
	}
	return img
}

// asciiOnly spells out what the bitmap font lacks.
var asciiOnly = strings.NewReplacer("×", "x", "≤", "<=", "≥", ">=", "→", "->", "↑", "^", "µ", "u", "…", "...", "–", "-", "—", "-")

func tickLabel(t float64) string {
	s := strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", t), "0"), ".")
	return s
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

// text draws s with its baseline at y, scaled up by an integer factor
// (nearest neighbour: the bitmap font stays crisp).
func text(img *image.RGBA, x, y int, s string, c color.RGBA, scale int) {
	face := basicfont.Face7x13
	s = asciiOnly.Replace(s)
	if scale <= 1 {
		d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: face, Dot: fixed.P(x, y)}
		d.DrawString(s)
		return
	}
	w := font.MeasureString(face, s).Ceil()
	small := image.NewAlpha(image.Rect(0, 0, w, 13))
	d := font.Drawer{Dst: small, Src: image.Opaque, Face: face, Dot: fixed.P(0, 11)}
	d.DrawString(s)
	top := y - 11*scale
	for sy := range 13 {
		for sx := range w {
			if small.AlphaAt(sx, sy).A < 128 {
				continue
			}
			fill(img, image.Rect(x+sx*scale, top+sy*scale, x+(sx+1)*scale, top+(sy+1)*scale), c)
		}
	}
}

func writePNG(path string, img image.Image) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
