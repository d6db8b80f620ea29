package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/tripod-dev/tripod/internal/cni/dhcp/dhcp4"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
)

// retryPause separates failed rounds that did not use up their time (an
// error before any retransmission), so a persistent failure cannot spin.
const retryPause = 5 * time.Second

// maintain keeps a lease bound until ctx ends (DEL, GC or shutdown):
// RENEWING from T1 by unicast, REBINDING from T2 by broadcast, and after
// expiry INIT again, asking for the same address (RFC 2131 4.4.5).
func (m *manager) maintain(ctx context.Context, l *lease) {
	for {
		r, _ := l.snapshot()
		dl := &r.Lease
		if dl.Infinite {
			<-ctx.Done()
			return
		}
		now := time.Now()
		var phase string
		var deadline time.Time
		var run func(context.Context, *dhcp4.Client) (*dhcp4.Lease, error)
		switch {
		case now.Before(dl.RenewAt()):
			if sleepUntil(ctx, dl.RenewAt()) != nil {
				return
			}
			continue
		case now.Before(dl.RebindAt()):
			phase, deadline = "renewing", dl.RebindAt()
			run = func(ctx context.Context, c *dhcp4.Client) (*dhcp4.Lease, error) { return c.Renew(ctx, dl) }
		case now.Before(dl.Expiry()):
			phase, deadline = "rebinding", dl.Expiry()
			run = func(ctx context.Context, c *dhcp4.Client) (*dhcp4.Lease, error) { return c.Rebind(ctx, dl) }
		default:
			phase, deadline = "re-acquiring", now.Add(roundMax)
			run = func(ctx context.Context, c *dhcp4.Client) (*dhcp4.Lease, error) { return c.Acquire(ctx, dl.IP) }
		}
		deadline = minTime(deadline, now.Add(roundMax))
		started := time.Now()
		next, err := m.round(ctx, r, deadline, run)
		if ctx.Err() != nil {
			return
		}
		var nak *dhcp4.NakError
		switch {
		case err == nil:
			if next.IP != dl.IP {
				m.log.Printf("%v: the server moved the lease from %s to %s; the container keeps %s until it is re-added", r.Attachment, dl.IP, next.IP, dl.IP)
			}
			m.update(l, next)
			m.log.Printf("%v: %s: lease %s extended, expires %s", r.Attachment, phase, next.IP, expiryText(next))
		case errors.Is(err, nsutil.ErrGone), errors.Is(err, errNoLink):
			l.mu.Lock()
			l.dead = err.Error()
			l.mu.Unlock()
			m.log.Printf("%v: stopped maintaining %s: %v", r.Attachment, dl.IP, err)
			return
		case errors.As(err, &nak):
			// The address is no longer ours: start over from INIT.
			m.log.Printf("%v: %s %s: %v", r.Attachment, phase, dl.IP, err)
			gone := *dl
			gone.Duration, gone.T1, gone.T2 = 0, 0, 0
			m.update(l, &gone)
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, dhcp4.ErrNoOffer):
			m.log.Printf("%v: %s %s: no answer from a DHCP server by %s", r.Attachment, phase, dl.IP, deadline.Format(time.RFC3339))
		default:
			m.log.Printf("%v: %s %s: %v", r.Attachment, phase, dl.IP, err)
			if time.Since(started) < retryPause {
				if sleepUntil(ctx, minTime(deadline, time.Now().Add(retryPause))) != nil {
					return
				}
			}
		}
	}
}

// round runs one exchange on a freshly opened socket with a deadline.
func (m *manager) round(ctx context.Context, r *record, deadline time.Time, run func(context.Context, *dhcp4.Client) (*dhcp4.Lease, error)) (*dhcp4.Lease, error) {
	s, err := m.open(r.Netns, r.Attachment.IfName, false)
	if err != nil {
		return nil, err
	}
	defer s.close(false)
	rctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	return run(rctx, m.client(s, &r.Params))
}

// update records a new lease state and persists it. A failed save is
// logged: the lease in memory stays right, and the next renewal retries.
func (m *manager) update(l *lease, dl *dhcp4.Lease) {
	l.mu.Lock()
	r := *l.rec
	r.Lease = *dl
	l.rec = &r
	l.mu.Unlock()
	if err := m.store.save(&r); err != nil {
		m.log.Printf("%v: %v", r.Attachment, err)
	}
}

func sleepUntil(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
