package daemon

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// linkWatch receives the link notifications of one network namespace. It
// is a non-blocking socket in the Go poller, so closing it never leaves a
// thread stuck in a receive.
type linkWatch struct {
	f  *os.File
	rc syscall.RawConn
}

// watchLinks subscribes to link changes in the calling thread's namespace.
func watchLinks() (*linkWatch, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("subscribing to link changes: %w", err)
	}
	f := os.NewFile(uintptr(fd), "netlink-link-watch")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &linkWatch{f: f, rc: rc}, nil
}

func (w *linkWatch) Close() error { return w.f.Close() }

// awaitOperUp returns when a notification shows interface index
// operationally up (RFC 2863 state "up": the kernel has processed the
// carrier change, on both ends of a veth), or with ctx's error.
func (w *linkWatch) awaitOperUp(ctx context.Context, index int) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = w.f.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = w.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 1<<16)
	for {
		var n int
		var rerr error
		err := w.rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, unix.ENOBUFS) {
				continue // notifications overran the buffer; later ones still come
			}
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for i := range msgs {
			if operUp(&msgs[i], index) {
				return nil
			}
		}
	}
}

// operUp reports whether m announces interface index in operational
// state up.
func operUp(m *syscall.NetlinkMessage, index int) bool {
	if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
		return false
	}
	// struct ifinfomsg: family, pad, type (u16), index (s32), flags, change
	if int(int32(binary.NativeEndian.Uint32(m.Data[4:8]))) != index {
		return false
	}
	attrs, err := syscall.ParseNetlinkRouteAttr(m)
	if err != nil {
		return false
	}
	for _, a := range attrs {
		if a.Attr.Type == unix.IFLA_OPERSTATE && len(a.Value) == 1 {
			return a.Value[0] == ifOperUp
		}
	}
	return false
}

// ifOperUp is IF_OPER_UP of linux/if.h (RFC 2863 "up").
const ifOperUp = 6
