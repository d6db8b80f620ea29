// Package sysctl sets the kernel parameters tripod's plugins need, through
// /proc/sys of the calling thread's network namespace.
package sysctl

import (
	"fmt"
	"os"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

// Forwarding turns on IPv4 and/or IPv6 forwarding.
func Forwarding(v4, v6 bool) error {
	if v4 {
		if err := write("/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
	}
	if v6 {
		return write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
	}
	return nil
}

// IPv6 enables IPv6 on link, with or without duplicate address detection
// for the addresses it gets.
func IPv6(link string, dad bool) error {
	if err := write(fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/disable_ipv6", link), "0"); err != nil {
		return err
	}
	v := "0"
	if dad {
		v = "1"
	}
	return write(fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/accept_dad", link), v)
}

func write(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return cnierr.New(cnierr.IOFailure, "writing %s to %s: %v", value, path, err)
	}
	return nil
}
