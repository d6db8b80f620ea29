package benchutil

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

// OutEnv names the directory the benchmarks write their machine-readable
// results to (NAME.json); unset, they only print their tables.
const OutEnv = "TRIPOD_BENCH_OUT"

// Result is one benchmark's figures, as bench/report reads them: a table
// whose first column is tripod and whose other columns are the anchors it
// was measured against in the same run.
type Result struct {
	Bench   string    `json:"bench"` // "cri", "cni", ...: the file is Bench+".json"
	Title   string    `json:"title"`
	Time    time.Time `json:"time"`
	Columns []string  `json:"columns"` // tripod first, then the anchors
	Rows    []Row     `json:"rows"`
	Notes   []string  `json:"notes,omitempty"`
	// Load is the load average (1, 5, 15 min) when the run ended: the
	// machine may be shared.
	Load string `json:"load,omitempty"`
}

// Row is one metric. Ratios are tripod's value over each anchor's.
type Row struct {
	Metric string  `json:"metric"`
	Unit   string  `json:"unit"`
	Values []Value `json:"values"` // one per column
	// Target is the goal for the tripod/anchor ratio (0: none). It is an
	// upper bound, or a lower bound when HigherIsBetter.
	Target float64 `json:"target,omitempty"`
	// Goal is a bound on tripod's own value, in Unit (0: none): for rows
	// without an anchor, or whose goal is absolute (memory per pod).
	Goal           float64 `json:"goal,omitempty"`
	HigherIsBetter bool    `json:"higher_is_better,omitempty"`
}

// Value is a measured figure, or why there is none.
type Value struct {
	V    *float64 `json:"v,omitempty"`
	Note string   `json:"note,omitempty"`
}

// Num is a measured value.
func Num(v float64) Value { return Value{V: &v} }

// NA is a missing value and its reason.
func NA(why string) Value { return Value{Note: why} }

// Ratio is tripod's value over column j's, if both were measured and the
// anchor's is not zero.
func (r Row) Ratio(j int) (float64, bool) {
	if j <= 0 || j >= len(r.Values) || len(r.Values) == 0 {
		return 0, false
	}
	t, a := r.Values[0].V, r.Values[j].V
	if t == nil || a == nil || *a == 0 {
		return 0, false
	}
	return *t / *a, true
}

// Met says whether a ratio meets the row's target (false without one).
func (r Row) Met(ratio float64) bool {
	if r.Target == 0 {
		return false
	}
	if r.HigherIsBetter {
		return ratio >= r.Target
	}
	return ratio <= r.Target
}

// GoalMet says whether tripod's value meets the goal; ok is false when
// there is no goal or no value.
func (r Row) GoalMet() (met, ok bool) {
	if r.Goal == 0 || len(r.Values) == 0 || r.Values[0].V == nil {
		return false, false
	}
	if r.HigherIsBetter {
		return *r.Values[0].V >= r.Goal, true
	}
	return *r.Values[0].V <= r.Goal, true
}

// GoalText is the goal as text ("≤ 1536 kB"), "" for none.
func (r Row) GoalText() string {
	if r.Goal == 0 {
		return ""
	}
	op := "≤ "
	if r.HigherIsBetter {
		op = "≥ "
	}
	return op + Num(r.Goal).Format(r.Unit)
}

// Goals is the row's ratio target and goal, as text.
func (r Row) Goals() string {
	return strings.TrimSpace(r.TargetText() + " " + r.GoalText())
}

// TargetText is the ratio target as text ("≤ 0.5", "≥ 2"), "" for none.
func (r Row) TargetText() string {
	if r.Target == 0 {
		return ""
	}
	if r.HigherIsBetter {
		return "≥ " + FormatRatio(r.Target)
	}
	return "≤ " + FormatRatio(r.Target)
}

// Format renders a value with its unit.
func (v Value) Format(unit string) string {
	if v.V == nil {
		if v.Note == "" {
			return "-"
		}
		return v.Note
	}
	x := *v.V
	var s string
	switch a := math.Abs(x); {
	case a == 0:
		s = "0"
	case a >= 100:
		s = fmt.Sprintf("%.0f", x)
	case a >= 10:
		s = fmt.Sprintf("%.1f", x)
	default:
		s = fmt.Sprintf("%.2f", x)
	}
	if unit != "" {
		s += " " + unit
	}
	return s
}

// FormatRatio renders a ratio with two significant decimals, more when
// it is small enough that two would read as zero.
func FormatRatio(x float64) string {
	if x != 0 && math.Abs(x) < 0.01 {
		return fmt.Sprintf("%.3f", x)
	}
	return fmt.Sprintf("%.2f", x)
}

// WriteTable prints r as an aligned table: the values, tripod/anchor for
// each anchor, and the targets.
func (r Result) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	h := []string{"metric"}
	h = append(h, r.Columns...)
	for _, c := range r.anchors() {
		h = append(h, r.Columns[0]+"/"+c)
	}
	h = append(h, "target")
	fmt.Fprintln(tw, strings.Join(h, "\t"))
	for _, row := range r.Rows {
		cells := []string{row.Metric}
		for j := range r.Columns {
			v := Value{}
			if j < len(row.Values) {
				v = row.Values[j]
			}
			cells = append(cells, v.Format(row.Unit))
		}
		for j := range r.anchors() {
			if x, ok := row.Ratio(j + 1); ok {
				cells = append(cells, FormatRatio(x))
			} else {
				cells = append(cells, "-")
			}
		}
		cells = append(cells, row.Goals())
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, n)
	}
	return nil
}

func (r Result) anchors() []string {
	if len(r.Columns) < 2 {
		return nil
	}
	return r.Columns[1:]
}

// Save writes r to $TRIPOD_BENCH_OUT/<bench>.json when that is set.
func (r Result) Save() error {
	dir := os.Getenv(OutEnv)
	if dir == "" {
		return nil
	}
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil && r.Load == "" {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			r.Load = strings.Join(f[:3], " ")
		}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, r.Bench+".json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench results: %w", err)
	}
	fmt.Printf("results written to %s\n", path)
	return nil
}

// Load reads a result that Save wrote.
func Load(path string) (Result, error) {
	var r Result
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", path, err)
	}
	if r.Bench == "" {
		r.Bench = strings.TrimSuffix(filepath.Base(path), ".json")
	}
	return r, nil
}

// Millis is d in milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
