package play

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ExecOptions are the streams of an exec session.
type ExecOptions struct {
	Stdin          io.Reader // nil: no stdin
	Stdout, Stderr io.Writer // with TTY, Stderr is unused (one stream)
	TTY            bool
	// Sizes feeds the terminal's size (the first at once, then on each
	// change); nil when there is no terminal.
	Sizes remotecommand.TerminalSizeQueue
}

// Exec runs a command in a container as kubelet's exec does: the CRI Exec
// call returns a URL of tripodd's streaming server, which the session then
// speaks SPDY to (client-go's remotecommand, as kubectl and crictl). It
// returns the command's exit status.
func (n *Node) Exec(ctx context.Context, key, name string, cmd []string, o ExecOptions) (int, error) {
	id, err := n.container(ctx, key, name, false)
	if err != nil {
		return 0, err
	}
	cctx, cancel := withTimeout(ctx)
	resp, err := n.rt.Exec(cctx, &runtimeapi.ExecRequest{ContainerId: id, Cmd: cmd, Tty: o.TTY,
		Stdin: o.Stdin != nil, Stdout: true, Stderr: !o.TTY})
	cancel()
	if err != nil {
		if status.Code(err) == codes.FailedPrecondition {
			return 0, fmt.Errorf("container is not running: %s", status.Convert(err).Message())
		}
		return 0, fmt.Errorf("CRI Exec: %w", err)
	}
	u, err := url.Parse(resp.Url)
	if err != nil {
		return 0, fmt.Errorf("streaming URL %q: %w", resp.Url, err)
	}
	if u.Scheme == "https" {
		return 0, fmt.Errorf("tripodd's streaming server is HTTPS (%s): tripod exec speaks to it only over plain HTTP on loopback", u.Host)
	}
	ex, err := remotecommand.NewSPDYExecutor(&rest.Config{}, "POST", u)
	if err != nil {
		return 0, err
	}
	so := remotecommand.StreamOptions{Stdin: o.Stdin, Stdout: o.Stdout, Tty: o.TTY, TerminalSizeQueue: o.Sizes}
	if !o.TTY {
		so.Stderr = o.Stderr
	}
	err = ex.StreamWithContext(ctx, so)
	var code utilexec.CodeExitError
	if errors.As(err, &code) {
		return code.Code, nil
	}
	if err != nil {
		return 0, fmt.Errorf("exec session: %w", err)
	}
	return 0, nil
}
