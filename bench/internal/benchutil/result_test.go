package benchutil

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(OutEnv, dir)
	r := Result{Bench: "x", Title: "t", Columns: []string{"tripod", "a"}, Rows: []Row{
		{Metric: "m", Unit: "ms", Values: []Value{Num(1.5), NA("n/a (unimplemented)")}, Target: 0.5},
		{Metric: "g", Unit: "kB", Values: []Value{Num(0)}, Goal: 1024},
	}}
	if err := r.Save(); err != nil {
		t.Fatal(err)
	}
	got, err := Load(filepath.Join(dir, "x.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Time.IsZero() || got.Load == "" {
		t.Errorf("Save did not stamp time and load average: %+v", got)
	}
	if len(got.Rows) != 2 || got.Rows[0].Values[1].Note != "n/a (unimplemented)" || *got.Rows[0].Values[0].V != 1.5 {
		t.Fatalf("round trip: %+v", got.Rows)
	}
	// A measured zero stays a measured zero, not a missing value.
	if v := got.Rows[1].Values[0].V; v == nil || *v != 0 {
		t.Errorf("zero value lost: %+v", got.Rows[1].Values[0])
	}
}

func TestSaveWithoutOutDir(t *testing.T) {
	t.Setenv(OutEnv, "")
	if err := (Result{Bench: "x"}).Save(); err != nil {
		t.Fatal(err)
	}
}

func TestRatioTargetGoal(t *testing.T) {
	r := Row{Values: []Value{Num(2), Num(8), NA("-"), Num(0)}, Target: 0.5}
	if x, ok := r.Ratio(1); !ok || x != 0.25 {
		t.Errorf("Ratio(1) = %v, %v", x, ok)
	}
	for _, j := range []int{0, 2, 3, 4} { // tripod itself, missing, zero anchor, no column
		if x, ok := r.Ratio(j); ok {
			t.Errorf("Ratio(%d) = %v, want none", j, x)
		}
	}
	if !r.Met(0.5) || r.Met(0.51) || r.TargetText() != "≤ 0.50" {
		t.Errorf("lower-is-better target: Met(0.5)=%v Met(0.51)=%v %q", r.Met(0.5), r.Met(0.51), r.TargetText())
	}
	up := Row{Values: []Value{Num(30)}, Target: 2, Goal: 20, Unit: "/s", HigherIsBetter: true}
	if !up.Met(2) || up.Met(1.9) || up.TargetText() != "≥ 2.00" {
		t.Errorf("higher-is-better target: %v %v %q", up.Met(2), up.Met(1.9), up.TargetText())
	}
	if met, ok := up.GoalMet(); !met || !ok || up.GoalText() != "≥ 20.0 /s" {
		t.Errorf("GoalMet = %v, %v; %q", met, ok, up.GoalText())
	}
	if _, ok := (Row{Values: []Value{NA("x")}, Goal: 1}).GoalMet(); ok {
		t.Error("a goal without a value counts as measured")
	}
	if (Row{}).Met(0) {
		t.Error("a row without a target meets it")
	}
}

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		v    Value
		unit string
		want string
	}{
		{Num(1234.5), "ms", "1234 ms"}, {Num(12.34), "MB", "12.3 MB"}, {Num(0.456), "s", "0.46 s"},
		{Num(0), "kB", "0 kB"}, {NA("n/a (Exec unimplemented)"), "kB", "n/a (Exec unimplemented)"}, {Value{}, "ms", "-"},
	} {
		if got := c.v.Format(c.unit); got != c.want {
			t.Errorf("Format = %q, want %q", got, c.want)
		}
	}
	if got := FormatRatio(0.0042); got != "0.004" {
		t.Errorf("FormatRatio(0.0042) = %q", got)
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	r := Result{Columns: []string{"tripod", "c2", "c1"}, Rows: []Row{
		{Metric: "exec p50", Unit: "ms", Values: []Value{Num(10), Num(40), Num(20)}, Target: 0.5},
	}, Notes: []string{"a note"}}
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"tripod/c2", "tripod/c1", "0.25", "0.50", "≤ 0.50", "a note"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
