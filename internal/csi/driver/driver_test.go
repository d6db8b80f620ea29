package driver

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestValidName(t *testing.T) {
	for name, ok := range map[string]bool{
		"csi.tripod.dev": true, "a": true, "a_b-c.d": true, strings.Repeat("a", 63): true,
		"": false, strings.Repeat("a", 64): false, "-a": false, "a-": false, "a.": false, "a/b": false, "a b": false, "ä": false,
	} {
		if err := ValidName(name); (err == nil) != ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

// One key is held by one caller at a time (a second waits, and gives up
// with Aborted when its context ends); other keys are free meanwhile.
func TestKeyLocks(t *testing.T) {
	var k keyLocks
	unlockA, err := k.lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := k.lock(ctx, "a"); status.Code(err) != codes.Aborted {
		t.Errorf("second lock of a held key: %v, want Aborted", err)
	}
	unlockB, err := k.lock(context.Background(), "b")
	if err != nil {
		t.Fatalf("lock of another key while a is held: %v", err)
	}
	unlockB()
	got := make(chan struct{})
	go func() {
		u, err := k.lock(context.Background(), "a")
		if err == nil {
			u()
		}
		close(got)
	}()
	unlockA()
	<-got
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) != 0 {
		t.Errorf("lock table not emptied: %d entries", len(k.m))
	}
}

func TestLockAllOrdersKeys(t *testing.T) {
	var k keyLocks
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 2)
	// Opposite orders would deadlock without sorting.
	for _, keys := range [][]string{{"x", "y"}, {"y", "x"}} {
		go func() {
			for range 1000 {
				u, err := k.lockAll(ctx, keys)
				if err != nil {
					done <- err
					return
				}
				u()
			}
			done <- nil
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestSizeFor(t *testing.T) {
	for _, tc := range []struct {
		req, lim, min, want int64
		code                codes.Code
	}{
		{0, 0, block, defaultSize, codes.OK},
		{1, 0, block, block, codes.OK},
		{5000, 0, block, 2 * block, codes.OK},
		{0, 10 * mib, block, 10 * mib, codes.OK},
		{mib, 0, 8 * mib, 8 * mib, codes.OK},
		{mib, 4 * mib, 8 * mib, 0, codes.OutOfRange},
		{5000, 6000, block, 0, codes.OutOfRange},
		{10, 5, block, 0, codes.InvalidArgument},
		{-1, 0, block, 0, codes.InvalidArgument},
	} {
		got, err := sizeFor(&csi.CapacityRange{RequiredBytes: tc.req, LimitBytes: tc.lim}, tc.min)
		if status.Code(err) != tc.code || got != tc.want {
			t.Errorf("sizeFor(%d, %d, min %d) = %d, %v; want %d, %v", tc.req, tc.lim, tc.min, got, err, tc.want, tc.code)
		}
	}
}

func TestParseQuantity(t *testing.T) {
	for in, want := range map[string]int64{"1Gi": gib, "512Mi": 512 * mib, "100M": 100e6, "4096": 4096, "2Ki": 2048} {
		if got, err := parseQuantity(in); err != nil || got != want {
			t.Errorf("parseQuantity(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1Gi", "1.5Gi", "Gi", "1Qi", "99999999999Ti"} {
		if _, err := parseQuantity(in); err == nil {
			t.Errorf("parseQuantity(%q) succeeded", in)
		}
	}
}

func TestMountFlags(t *testing.T) {
	if err := checkMountFlags([]string{"noatime", "discard,nodelalloc", "commit=30"}); err != nil {
		t.Errorf("ordinary flags refused: %v", err)
	}
	for _, f := range []string{"journal_path=/dev/sda", "logdev=x", "a b", "x=/etc", "..", ""} {
		if err := checkMountFlags([]string{f}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("flag %q: %v, want InvalidArgument", f, err)
		}
	}
}
