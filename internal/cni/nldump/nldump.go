// Package nldump retries netlink dumps that the kernel interrupted. A dump
// (listing links, addresses, routes, qdiscs) that overlaps a change to the
// same table comes back flagged NLM_F_DUMP_INTR and possibly inconsistent;
// on a node where many pods start at once that is routine, so the dump is
// simply taken again.
package nldump

import (
	"errors"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attempts bounds the retries: a table that changes faster than it can be
// listed this many times in a row is reported rather than spun on.
const attempts = 20

// Retry calls list until it returns a result the kernel did not flag as
// interrupted.
func Retry[T any](list func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for i := 0; i < attempts; i++ {
		v, err = list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) && !errors.Is(err, unix.EINTR) {
			return v, err
		}
	}
	return v, err
}
