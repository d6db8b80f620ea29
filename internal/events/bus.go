// Package events fans a stream of events out to any number of subscribers
// without ever making the publisher wait: each subscriber has a bounded
// buffer, and one that lets it fill is cut off (its channel closed, its
// Err ErrOverflow) rather than slowing the runtime or silently missing
// events. A consumer that is cut off knows it has lost events and must
// resynchronise (relist) before subscribing again.
package events

import (
	"errors"
	"sync"
)

// ErrOverflow ends a subscription whose buffer filled up.
var ErrOverflow = errors.New("events: subscriber fell behind and was dropped")

// Bus delivers published values to its subscribers, in publication order.
// The zero value is not usable: use New.
type Bus[T any] struct {
	buffer int

	mu   sync.Mutex
	subs map[*Sub[T]]struct{}
}

// New makes a bus whose subscribers each buffer up to buffer values.
func New[T any](buffer int) *Bus[T] {
	if buffer < 1 {
		buffer = 1
	}
	return &Bus[T]{buffer: buffer, subs: map[*Sub[T]]struct{}{}}
}

// Sub is one subscription.
type Sub[T any] struct {
	bus *Bus[T]
	ch  chan T
	err error // set under bus.mu before ch is closed
}

// Subscribe starts a subscription; the caller must Close it.
func (b *Bus[T]) Subscribe() *Sub[T] {
	s := &Sub[T]{bus: b, ch: make(chan T, b.buffer)}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

// Active reports whether anyone is subscribed, so that a publisher can
// skip building events nobody will read.
func (b *Bus[T]) Active() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs) > 0
}

// Publish hands v to every subscriber. It never blocks: a subscriber
// whose buffer is full is dropped.
func (b *Bus[T]) Publish(v T) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		select {
		case s.ch <- v:
		default:
			s.err = ErrOverflow
			delete(b.subs, s)
			close(s.ch)
		}
	}
}

// C delivers the events. It is closed when the subscription ends: by
// Close, or by an overflow (then Err says so) once the buffered events
// have been read.
func (s *Sub[T]) C() <-chan T { return s.ch }

// Err is ErrOverflow once the subscription was dropped for falling
// behind, else nil.
func (s *Sub[T]) Err() error {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	return s.err
}

// Close ends the subscription; it may be called more than once.
func (s *Sub[T]) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	if _, ok := s.bus.subs[s]; ok {
		delete(s.bus.subs, s)
		close(s.ch)
	}
}
