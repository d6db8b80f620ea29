package dhcp4

import (
	"bytes"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42}
	long := bytes.Repeat([]byte("x"), 300) // split in two per RFC 3396
	in := &Message{Op: opRequest, XID: 0xdeadbeef, Secs: 7, Broadcast: true, CIAddr: netip.MustParseAddr("10.0.0.9"), CHAddr: mac}
	b := Encode(in, []Option{{OptMessageType, []byte{byte(Request)}}, {OptHostName, []byte("web-1")}, {OptUserClass, long}})
	if len(b) < minMsgLen {
		t.Fatalf("encoded message is %d bytes, below the BOOTP minimum %d", len(b), minMsgLen)
	}
	out, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if out.XID != in.XID || out.Secs != 7 || !out.Broadcast || out.CIAddr != in.CIAddr || !bytes.Equal(out.CHAddr, mac) || out.Op != opRequest {
		t.Errorf("header mismatch: %+v", out)
	}
	if out.Type() != Request || out.Options.String(OptHostName) != "web-1" || !bytes.Equal(out.Options[OptUserClass], long) {
		t.Errorf("options mismatch: %v", out.Options)
	}
	if _, err := Decode(b[:200]); err == nil {
		t.Error("a truncated message decoded without error")
	}
}

func TestDecodeOverload(t *testing.T) {
	b := Encode(&Message{Op: opReply, CHAddr: net.HardwareAddr{1, 2, 3, 4, 5, 6}}, []Option{{OptOverload, []byte{1}}})
	// The file field carries the host name.
	copy(b[fileStart:], []byte{OptHostName, 3, 'a', 'b', 'c', OptEnd})
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Options.String(OptHostName); got != "abc" {
		t.Errorf("overloaded host name = %q, want abc", got)
	}
}

func TestRoutesAndSearch(t *testing.T) {
	o := Options{
		// 0/0 via 10.0.0.1, 192.168.77.0/24 via 10.0.0.254, 10.128/9 via 10.0.0.2
		OptClasslessRoutes: {0, 10, 0, 0, 1, 24, 192, 168, 77, 10, 0, 0, 254, 9, 10, 128, 10, 0, 0, 2},
		OptStaticRoutes:    {172, 16, 5, 0, 10, 0, 0, 3, 0, 0, 0, 0, 10, 0, 0, 4},
		// example.test, then svc.example.test via a pointer to offset 0
		OptDomainSearch: append([]byte("\x07example\x04test\x00\x03svc"), 0xc0, 0),
		OptSubnetMask:   {255, 255, 254, 0},
	}
	cl, err := o.ClasslessRoutes()
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{
		{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParseAddr("10.0.0.1")},
		{netip.MustParsePrefix("192.168.77.0/24"), netip.MustParseAddr("10.0.0.254")},
		{netip.MustParsePrefix("10.128.0.0/9"), netip.MustParseAddr("10.0.0.2")},
	}
	if !reflect.DeepEqual(cl, want) {
		t.Errorf("option 121 = %v, want %v", cl, want)
	}
	if _, err := (Options{OptClasslessRoutes: {24, 192, 168}}).ClasslessRoutes(); err == nil {
		t.Error("truncated option 121 decoded without error")
	}
	st := o.StaticRoutes()
	if len(st) != 1 || st[0].Dst != netip.MustParsePrefix("172.16.0.0/16") || st[0].GW != netip.MustParseAddr("10.0.0.3") {
		t.Errorf("option 33 = %v, want 172.16.0.0/16 via 10.0.0.3 (the 0.0.0.0 entry dropped)", st)
	}
	search, err := o.DomainSearch()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(search, []string{"example.test", "svc.example.test"}) {
		t.Errorf("option 119 = %v", search)
	}
	if _, err := (Options{OptDomainSearch: {0xc0, 0}}).DomainSearch(); err == nil {
		t.Error("a self-referencing compression pointer decoded without error")
	}
	if n, ok := o.PrefixLen(); !ok || n != 23 {
		t.Errorf("prefix length = %d %v, want 23", n, ok)
	}
	if _, ok := (Options{OptSubnetMask: {255, 0, 255, 0}}).PrefixLen(); ok {
		t.Error("a non-contiguous mask was accepted")
	}
}

func TestLeaseTimes(t *testing.T) {
	ack := func(opts Options) *Message {
		opts[OptSubnetMask] = []byte{255, 255, 255, 0}
		return &Message{YIAddr: netip.MustParseAddr("10.0.0.5"), Options: opts}
	}
	secs := func(s uint32) []byte { return []byte{byte(s >> 24), byte(s >> 16), byte(s >> 8), byte(s)} }
	now := time.Now()
	sid := netip.MustParseAddr("10.0.0.1")
	for _, tc := range []struct {
		name        string
		opts        Options
		t1, t2, dur time.Duration
		inf         bool
	}{
		{"defaults", Options{OptLeaseTime: secs(800)}, 400 * time.Second, 700 * time.Second, 800 * time.Second, false},
		{"explicit", Options{OptLeaseTime: secs(120), OptRenewalTime: secs(5), OptRebindingTime: secs(100)}, 5 * time.Second, 100 * time.Second, 120 * time.Second, false},
		{"T1 beyond T2 ignored", Options{OptLeaseTime: secs(100), OptRenewalTime: secs(90), OptRebindingTime: secs(80)}, 50 * time.Second, 80 * time.Second, 100 * time.Second, false},
		{"infinite", Options{OptLeaseTime: secs(0xffffffff)}, 0, 0, 0, true},
		{"missing", Options{}, DefaultLease / 2, DefaultLease * 7 / 8, DefaultLease, false},
	} {
		l, err := leaseFrom(ack(tc.opts), nil, now, sid)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if l.T1 != tc.t1 || l.T2 != tc.t2 || l.Duration != tc.dur || l.Infinite != tc.inf {
			t.Errorf("%s: T1 %v T2 %v lease %v infinite %v; want %v %v %v %v", tc.name, l.T1, l.T2, l.Duration, l.Infinite, tc.t1, tc.t2, tc.dur, tc.inf)
		}
		if l.Prefix() != netip.MustParsePrefix("10.0.0.5/24") || l.ServerID != sid {
			t.Errorf("%s: lease %v from %v", tc.name, l.Prefix(), l.ServerID)
		}
	}
	if _, err := leaseFrom(&Message{YIAddr: netip.MustParseAddr("10.0.0.5"), Options: Options{}}, nil, now, sid); err == nil {
		t.Error("an ACK without a subnet mask gave a lease")
	}
}

func TestParseOptionName(t *testing.T) {
	for in, want := range map[string]byte{"host-name": 12, "classless-static-routes": 121, "60": 60} {
		if got, err := ParseOptionName(in); err != nil || got != want {
			t.Errorf("ParseOptionName(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "255", "256", "no-such-option"} {
		if _, err := ParseOptionName(bad); err == nil {
			t.Errorf("ParseOptionName(%q) succeeded", bad)
		}
	}
}
