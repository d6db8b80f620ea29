package events

import (
	"errors"
	"testing"
)

func drain[T any](s *Sub[T]) []T {
	var out []T
	for v := range s.C() {
		out = append(out, v)
	}
	return out
}

func TestEverySubscriberGetsEveryEventInOrder(t *testing.T) {
	b := New[int](8)
	s1, s2 := b.Subscribe(), b.Subscribe()
	for i := range 5 {
		b.Publish(i)
	}
	s1.Close()
	s2.Close()
	for _, s := range []*Sub[int]{s1, s2} {
		got := drain(s)
		if len(got) != 5 {
			t.Fatalf("got %v", got)
		}
		for i, v := range got {
			if v != i {
				t.Fatalf("out of order: %v", got)
			}
		}
		if s.Err() != nil {
			t.Fatalf("closed subscription has error %v", s.Err())
		}
	}
}

func TestFullSubscriberIsDroppedNotWaitedFor(t *testing.T) {
	b := New[int](3)
	slow, fast := b.Subscribe(), b.Subscribe()
	defer fast.Close()
	var fastGot []int
	for i := range 10 {
		b.Publish(i) // would deadlock here if a full buffer blocked
		fastGot = append(fastGot, <-fast.C())
	}
	if len(fastGot) != 10 {
		t.Fatalf("fast subscriber got %v", fastGot)
	}
	got := drain(slow)
	if len(got) != 3 || got[0] != 0 || got[2] != 2 {
		t.Fatalf("slow subscriber should keep what it buffered, got %v", got)
	}
	if !errors.Is(slow.Err(), ErrOverflow) {
		t.Fatalf("slow subscriber error %v, want ErrOverflow", slow.Err())
	}
	if !b.Active() {
		t.Fatal("the fast subscriber is still there")
	}
	slow.Close() // after an overflow: no double close
	fast.Close()
	fast.Close()
	if b.Active() {
		t.Fatal("no subscriber left, bus still active")
	}
}
