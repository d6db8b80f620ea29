// tripod-monitor holds the stdio and exit statuses of tripodd's containers,
// so they outlive tripodd. tripodd starts it; it is not run by hand.
//
//	tripod-monitor SOCKET
//	tripod-monitor pause      init of a pod's shared PID namespace
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/tripod-dev/tripod/internal/monitor"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "pause" {
		debug.SetGCPercent(20)
		monitor.Pause()
		return
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: tripod-monitor SOCKET")
		os.Exit(2)
	}
	// One small process for every container on the node: keep the heap
	// tight rather than fast.
	debug.SetGCPercent(50)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// fd 3, when given, is told when the socket is ready.
	ready := os.NewFile(3, "ready")
	if err := monitor.Serve(ctx, os.Args[1], ready); err != nil {
		fmt.Fprintln(os.Stderr, "tripod-monitor:", err)
		os.Exit(1)
	}
}
