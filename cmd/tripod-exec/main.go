// tripod-exec starts a process in a running container for tripod-monitor,
// without the OCI runtime: it joins the container init's cgroups and
// namespaces, applies the container's process settings and execs the
// command. All of it is C run from a constructor, before the Go runtime
// starts its threads (setns into a mount or user namespace needs a
// single-threaded process). It is not run by hand:
//
//	tripod-exec stage      spec on fd 3, status on fd 4 (tripod-monitor)
//	tripod-exec seccomp    OCI seccomp profile (compact form) on stdin, BPF on stdout
//
// main only runs when the C stage is missing (a build without cgo): the
// monitor reads exit status 3 as "use the OCI runtime instead".
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "tripod-exec: built without cgo, or run by hand: it is tripod-monitor's exec stage")
	os.Exit(3)
}
