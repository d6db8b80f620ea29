package metrics

import (
	"strings"
	"testing"
)

func TestWriteText(t *testing.T) {
	r := New()
	c := r.Counter("x_total", "Things.\nMore.", "kind")
	g := r.Gauge("y", "A gauge.")
	c.Inc("a")
	c.Add(2, `q"u\o`)
	g.Set(1.5)
	if r.Counter("x_total", "ignored", "kind").Value("a") != 1 {
		t.Fatal("re-registration lost the family")
	}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `# HELP x_total Things.\nMore.
# TYPE x_total counter
x_total{kind="a"} 1
x_total{kind="q\"u\\o"} 2
# HELP y A gauge.
# TYPE y gauge
y 1.5
`
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
	c.Delete("a")
	b.Reset()
	r.WriteText(&b)
	if strings.Contains(b.String(), `kind="a"`) {
		t.Fatal("deleted series still written")
	}
}
