package bandwidth

import (
	"math"
	"strings"
	"testing"
)

func TestTbfFor(t *testing.T) {
	// 8 Mbit/s with a 64 KiB burst: 1 MB/s, 65536 µs of burst.
	p := tbfFor(limit{Rate: 8_000_000, Burst: 524_288})
	if p.Rate != 1_000_000 || p.Limit != 25_000+65_536 {
		t.Errorf("8 Mbit/s: %+v", p)
	}
	if want := uint32(65_536 * 15.625); p.Buffer != want && p.Buffer != want-1 {
		t.Errorf("8 Mbit/s: buffer %d ticks, want %d", p.Buffer, want)
	}
	// The burst Kubernetes passes by default (2^31-1 bits) at 1 Mbit/s is
	// over two thousand seconds of traffic: capped, never wrapped.
	p = tbfFor(limit{Rate: 1_000_000, Burst: math.MaxInt32})
	if p.Buffer != maxBufferTicks || p.Limit < 125_000*4 || p.Limit > 125_000*5 {
		t.Errorf("huge burst: %+v, want buffer %d and a limit of about 4.3 s of traffic", p, maxBufferTicks)
	}
	// Rates past 32 bits of bytes per second stay exact.
	if p := tbfFor(limit{Rate: 40_000_000_000, Burst: 8_000_000}); p.Rate != 5_000_000_000 {
		t.Errorf("40 Gbit/s: %+v", p)
	}
}

func TestNames(t *testing.T) {
	a := ifbName("net", "c1", "eth0")
	if len(a) != 15 || a[:3] != "bwp" || a != ifbName("net", "c1", "eth0") {
		t.Errorf("ifb name %q is not a stable 15-character bwp name", a)
	}
	for _, other := range []string{ifbName("net", "c1", "eth1"), ifbName("net", "c2", "eth0"), ifbName("ne", "tc1", "eth0")} {
		if other == a {
			t.Errorf("two attachments share ifb %s", a)
		}
	}
	alias := ifbAlias("net", "c1", "eth0", 42)
	if n, h, ok := parseAlias(alias); !ok || n != netTag("net") || h != 42 {
		t.Errorf("alias %q parses as %q %d %v", alias, n, h, ok)
	}
	long := ifbAlias("net", strings.Repeat("c", 300), "eth0", 7)
	if n, h, ok := parseAlias(long); len(long) > 255 || !ok || n != netTag("net") || h != 7 {
		t.Errorf("an alias too long for the kernel: %q", long)
	}
	if _, _, ok := parseAlias("something else"); ok {
		t.Error("a foreign alias parsed as tripod's")
	}
}
