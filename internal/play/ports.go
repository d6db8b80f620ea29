package play

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// checkPorts refuses host ports that another played pod maps, that two new
// pods both ask for, or that a process of this host listens on (a port
// mapping would silently take its traffic). Pods started outside play are
// refused by the CNI portmap plugin at RunPodSandbox instead.
func (n *Node) checkPorts(ctx context.Context, news []*Pod) error {
	st, err := n.st.Load(ctx)
	if err != nil {
		return err
	}
	type use struct {
		pm    *runtimeapi.PortMapping
		owner string
	}
	var used []use
	for k, r := range st.Pods {
		if r.Phase == PhaseSucceeded || r.Phase == PhaseFailed {
			continue
		}
		p, err := decodeRecord(r)
		if err != nil {
			continue
		}
		for _, hp := range hostPorts(p) {
			used = append(used, use{hp.pm, "pod " + k})
		}
	}
	for _, p := range news {
		for _, hp := range hostPorts(p) {
			for _, u := range used {
				if overlaps(u.pm, hp.pm) {
					return fmt.Errorf("pod %s: %s: %d/%s is already mapped by %s", p.Key(), hp.field, hp.pm.HostPort, hp.pm.Protocol, u.owner)
				}
			}
			if err := portFree(hp.pm); err != nil {
				return fmt.Errorf("pod %s: %s: %w", p.Key(), hp.field, err)
			}
			used = append(used, use{hp.pm, "pod " + p.Key() + " (" + hp.field + ")"})
		}
	}
	return nil
}

func overlaps(a, b *runtimeapi.PortMapping) bool {
	if a.HostPort != b.HostPort || a.Protocol != b.Protocol {
		return false
	}
	any := func(ip string) bool { return ip == "" || ip == "0.0.0.0" || ip == "::" }
	return any(a.HostIp) || any(b.HostIp) || a.HostIp == b.HostIp
}

// portFree tries to bind the host port as a listener would.
func portFree(pm *runtimeapi.PortMapping) error {
	addr := net.JoinHostPort(pm.HostIp, strconv.Itoa(int(pm.HostPort)))
	var err error
	switch pm.Protocol {
	case runtimeapi.Protocol_TCP:
		var l net.Listener
		if l, err = net.Listen("tcp", addr); err == nil {
			l.Close()
		}
	case runtimeapi.Protocol_UDP:
		var c net.PacketConn
		if c, err = net.ListenPacket("udp", addr); err == nil {
			c.Close()
		}
	default:
		return nil // SCTP: left to the portmap plugin
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EADDRINUSE):
		who := ""
		if pid, cmd := portHolder(pm); pid > 0 {
			who = fmt.Sprintf(" by pid %d (%s)", pid, cmd)
		}
		return fmt.Errorf("%d/%s is already in use on this host%s", pm.HostPort, pm.Protocol, who)
	case errors.Is(err, unix.EADDRNOTAVAIL):
		return fmt.Errorf("hostIP %s is not an address of this host", pm.HostIp)
	}
	return fmt.Errorf("%d/%s: %w", pm.HostPort, pm.Protocol, err)
}

// portHolder finds the process holding a host port, best effort: the
// socket's inode from /proc/net, then the process with a descriptor on it.
func portHolder(pm *runtimeapi.PortMapping) (int, string) {
	proto := "tcp"
	if pm.Protocol == runtimeapi.Protocol_UDP {
		proto = "udp"
	}
	var inode string
	for _, f := range []string{proto, proto + "6"} {
		if inode = socketInode("/proc/net/"+f, int(pm.HostPort), proto == "tcp"); inode != "" {
			break
		}
	}
	if inode == "" {
		return 0, ""
	}
	want := "socket:[" + inode + "]"
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			if l, _ := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name())); l == want {
				cmd, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
				return pid, strings.TrimSpace(string(cmd))
			}
		}
	}
	return 0, ""
}

// socketInode reads a /proc/net table for a socket bound to port (in
// LISTEN state for TCP).
func socketInode(table string, port int, tcp bool) string {
	f, err := os.Open(table)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	suffix := fmt.Sprintf(":%04X", port)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || !strings.HasSuffix(fs[1], suffix) || (tcp && fs[3] != "0A") {
			continue
		}
		return fs[9]
	}
	return ""
}
