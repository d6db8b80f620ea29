// Package metrics is a small Prometheus text-format registry: counters and
// gauges with labels, enough for tripodd without the client library's
// weight. Families are registered by the services that own them.
package metrics

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Registry holds metric families. The zero value is not usable; use New.
type Registry struct {
	mu       sync.Mutex
	families map[string]*family
}

// New returns an empty registry.
func New() *Registry { return &Registry{families: map[string]*family{}} }

type family struct {
	name, help, kind string
	labels           []string
	mu               sync.Mutex
	values           map[string]*value // key: joined label values
}

type value struct {
	labels []string
	v      float64
}

// Vec is a family of one metric kind with fixed label names.
type Vec struct{ f *family }

// Counter registers a counter family (reused if already registered).
func (r *Registry) Counter(name, help string, labels ...string) Vec {
	return Vec{r.family(name, help, "counter", labels)}
}

// Gauge registers a gauge family (reused if already registered).
func (r *Registry) Gauge(name, help string, labels ...string) Vec {
	return Vec{r.family(name, help, "gauge", labels)}
}

func (r *Registry) family(name, help, kind string, labels []string) *family {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f, ok := r.families[name]; ok {
		return f
	}
	f := &family{name: name, help: help, kind: kind, labels: labels, values: map[string]*value{}}
	r.families[name] = f
	return f
}

func (v Vec) get(lv []string) *value {
	if len(lv) != len(v.f.labels) {
		panic(fmt.Sprintf("metric %s: %d label values for %d labels", v.f.name, len(lv), len(v.f.labels)))
	}
	k := strings.Join(lv, "\xff")
	x, ok := v.f.values[k]
	if !ok {
		x = &value{labels: append([]string{}, lv...)}
		v.f.values[k] = x
	}
	return x
}

// Add adds d to the series with these label values.
func (v Vec) Add(d float64, lv ...string) {
	v.f.mu.Lock()
	v.get(lv).v += d
	v.f.mu.Unlock()
}

// Inc adds 1.
func (v Vec) Inc(lv ...string) { v.Add(1, lv...) }

// Set sets a gauge.
func (v Vec) Set(x float64, lv ...string) {
	v.f.mu.Lock()
	v.get(lv).v = x
	v.f.mu.Unlock()
}

// Delete drops a series (a finished pull's progress, say).
func (v Vec) Delete(lv ...string) {
	v.f.mu.Lock()
	delete(v.f.values, strings.Join(lv, "\xff"))
	v.f.mu.Unlock()
}

// Value returns a series' current value (0 if absent).
func (v Vec) Value(lv ...string) float64 {
	v.f.mu.Lock()
	defer v.f.mu.Unlock()
	if x, ok := v.f.values[strings.Join(lv, "\xff")]; ok {
		return x.v
	}
	return 0
}

// WriteText writes every family in the Prometheus text exposition format.
func (r *Registry) WriteText(w io.Writer) error {
	r.mu.Lock()
	names := make([]string, 0, len(r.families))
	for n := range r.families {
		names = append(names, n)
	}
	fams := r.families
	r.mu.Unlock()
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		f := fams[n]
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.name, escapeHelp(f.help), f.name, f.kind)
		f.mu.Lock()
		keys := make([]string, 0, len(f.values))
		for k := range f.values {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			x := f.values[k]
			b.WriteString(f.name)
			if len(f.labels) > 0 {
				b.WriteByte('{')
				for i, l := range f.labels {
					if i > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, "%s=\"%s\"", l, escapeLabel(x.labels[i]))
				}
				b.WriteByte('}')
			}
			b.WriteByte(' ')
			b.WriteString(formatFloat(x.v))
			b.WriteByte('\n')
		}
		f.mu.Unlock()
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Handler serves the registry at /metrics.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		r.WriteText(w)
	})
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`).Replace(s)
}
