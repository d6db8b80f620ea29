package imagetest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// BusyboxPath is the static busybox (Debian's busybox-static) that
// runnable test images are made of.
const BusyboxPath = "/bin/busybox"

// Busybox returns the entries of a small runnable root filesystem:
// busybox with its applets as links in /bin, /tmp (1777), and an
// /etc/passwd and /etc/group with root and nobody.
func Busybox() ([]Entry, error) {
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("%w (apt-get install busybox-static)", err)
	}
	es := []Entry{{Name: "bin/", Type: '5'}, {Name: "bin/busybox", Body: string(bb), Mode: 0o755},
		{Name: "tmp/", Type: '5', Mode: 0o1777}, {Name: "etc/", Type: '5'},
		{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"},
		{Name: "etc/group", Body: "root:x:0:\nnogroup:x:65534:\n"}}
	list, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	for _, a := range strings.Fields(string(list)) {
		if a != "busybox" {
			es = append(es, Entry{Name: "bin/" + a, Type: '2', Linkname: "busybox"})
		}
	}
	return es, nil
}
