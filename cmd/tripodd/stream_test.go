package main_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/tripod-dev/tripod/internal/daemonctl"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
	"github.com/tripod-dev/tripod/internal/monitor"
)

// createCfg creates a container with stdin / stdin_once / tty set.
func (e *podEnv) createCfg(podID, name string, stdin, once, tty bool, cmd ...string) string {
	e.t.Helper()
	resp, err := e.rt.CreateContainer(testCtx(e.t), &runtimeapi.CreateContainerRequest{PodSandboxId: podID,
		SandboxConfig: e.podConfig(name),
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name}, Image: &runtimeapi.ImageSpec{Image: e.image},
			Command: cmd, LogPath: name + ".log", Stdin: stdin, StdinOnce: once, Tty: tty}})
	if err != nil {
		e.t.Fatalf("CreateContainer %s: %v", name, err)
	}
	return resp.ContainerId
}

func spdyExecutor(t *testing.T, raw string) remotecommand.Executor {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := remotecommand.NewSPDYExecutor(&rest.Config{}, "POST", u)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

// sizeQueue feeds terminal sizes to client-go's executor.
type sizeQueue chan *remotecommand.TerminalSize

func (q sizeQueue) Next() *remotecommand.TerminalSize { return <-q }

// typeUntil writes line to w until out shows want (synchronisation on
// the terminal's answer, which may come before a resize is applied).
func typeUntil(t *testing.T, w io.Writer, out *syncBuffer, line, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("never saw %q after typing %q; output:\n%q", want, line, out.String())
		}
		wrote := make(chan error, 1)
		go func() { _, err := io.WriteString(w, line); wrote <- err }()
		select {
		case err := <-wrote:
			if err != nil {
				t.Fatalf("typing: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("typing %q: the session takes no input; output:\n%q", line, out.String())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func exitCode(err error) int {
	var ce utilexec.CodeExitError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

// procs lists the host's processes: pid → (ppid, command line).
type proc struct {
	ppid int
	cmd  string
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// procs lists the host's processes; t may be nil (diagnostics).
func procs(t *testing.T) map[int]proc {
	ents, err := os.ReadDir("/proc")
	if err != nil && t != nil {
		t.Fatal(err)
	}
	out := map[int]proc{}
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cl, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		out[pid] = proc{ppid: ppid, cmd: strings.TrimSpace(strings.ReplaceAll(string(cl), "\x00", " "))}
	}
	return out
}

// waitNoProc waits until no process's command line is cmd.
func waitNoProc(t *testing.T, cmd string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var left []int
		for pid, p := range procs(t) {
			if p.cmd == cmd {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %q still running: %v", cmd, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fdTargets says what pid's descriptors refer to.
func fdTargets(pid int) string {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	count := map[string]int{}
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if l == "anon_inode:[pidfd]" {
			info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
			if m := regexp.MustCompile(`(?m)^Pid:\s*(-?\d+)`).FindSubmatch(info); m != nil {
				l += " of " + string(m[1]) + " " + procs(nil)[atoi(string(m[1]))].cmd
			}
		}
		if i := strings.IndexByte(l, '['); i > 0 && !strings.HasPrefix(l, "anon_inode:[pidfd]") {
			l = l[:i]
		}
		count[l]++
	}
	return fmt.Sprint(count)
}

func fdCount(t *testing.T, pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("fds of %d: %v", pid, err)
	}
	return len(ents)
}

// settles waits until f() ≤ limit: what sessions held is released
// asynchronously after the client sees the end. more, if not nil, says
// what is left.
func settles(t *testing.T, what string, limit int, f func() int, more ...func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		v := f()
		if v <= limit {
			return
		}
		if time.Now().After(deadline) {
			var detail string
			for _, m := range more {
				detail += m()
			}
			t.Fatalf("%s: %d, want at most %d %s", what, v, limit, detail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func goroutines(t *testing.T, metricsAddr string) int {
	t.Helper()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^go_goroutines (\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no go_goroutines in metrics:\n%s", b)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

func monitorPid(t *testing.T, e *podEnv) int {
	t.Helper()
	pid, err := daemonctl.ReadPIDFile(filepath.Join(e.n.state, "runtime", monitor.PIDFile))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// portForwardRaw opens one port-forward stream pair by hand (the
// protocol kubectl speaks) and returns what the pod answered to payload
// and what came on the error stream.
func portForwardRaw(t *testing.T, raw string, port int, payload string) (reply, errMsg string) {
	t.Helper()
	u, _ := url.Parse(raw)
	tr, up, err := spdy.RoundTripperFor(&rest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := spdy.NewDialer(up, &http.Client{Transport: tr}, "POST", u).Dial(portforward.PortForwardProtocolV1Name)
	if err != nil {
		t.Fatalf("port-forward dial: %v", err)
	}
	defer conn.Close()
	h := http.Header{}
	h.Set("streamType", "error")
	h.Set("port", strconv.Itoa(port))
	h.Set("requestID", "0")
	errStream, err := conn.CreateStream(h)
	if err != nil {
		t.Fatal(err)
	}
	errStream.Close()
	h.Set("streamType", "data")
	data, err := conn.CreateStream(h)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan string, 1)
	go func() { b, _ := io.ReadAll(errStream); errc <- string(b) }()
	io.WriteString(data, payload)
	data.Close() // half-close: the pod reads EOF and answers
	b, _ := io.ReadAll(data)
	return string(b), <-errc
}

// wsExec runs an exec session over WebSocket (v4.channel.k8s.io: one
// channel byte, then the data) and returns stdout, stderr and the status.
func wsExec(t *testing.T, raw string) (stdout, stderr, st string) {
	t.Helper()
	u := strings.Replace(raw, "http://", "ws://", 1)
	cfg, err := websocket.NewConfig(u, "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Protocol = []string{"v4.channel.k8s.io"}
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	defer ws.Close()
	var o, e, s bytes.Buffer
	for {
		var msg []byte
		if err := websocket.Message.Receive(ws, &msg); err != nil {
			break
		}
		if len(msg) == 0 {
			continue
		}
		switch msg[0] {
		case 1:
			o.Write(msg[1:])
		case 2:
			e.Write(msg[1:])
		case 3:
			s.Write(msg[1:])
		}
	}
	return o.String(), e.String(), s.String()
}

// TestStreaming: exec (SPDY and WebSocket, TTY and not, stdin, exit codes,
// resize), attach (output, stdin, stdin_once, TTY, after a tripodd
// restart), port-forward, error codes, single-use and expiring URLs, and
// that many sessions leave no process, descriptor or goroutine behind.
func TestStreaming(t *testing.T) {
	runtimePrereqs(t)
	e := newPodEnvWith(t, cnitest.BinDir(t), func(e *podEnv, _ *imagetest.Registry) {
		f, _ := os.OpenFile(filepath.Join(e.n.state, "none.toml"), os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("[metrics]\naddress = \"127.0.0.1:0\"\n")
		f.Close()
	})
	ctx := testCtx(t)
	// As kubelet's CRI client: replies up to 16 MiB.
	conn, err := grpc.NewClient("unix://"+e.n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	big := runtimeapi.NewRuntimeServiceClient(conn)
	pod := e.runPod("stream")
	work := e.create(pod, "work", "sleep", "100000")
	e.start(work)
	// Taken now, used after more than the token lifetime (one minute).
	early, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: work, Cmd: []string{"true"}, Stdout: true})
	if err != nil {
		t.Fatal(err)
	}
	issued := time.Now()

	t.Run("ExecSync", func(t *testing.T) {
		r, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: work, Cmd: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
		if err != nil || string(r.Stdout) != "out\n" || string(r.Stderr) != "err\n" || r.ExitCode != 3 {
			t.Fatalf("ExecSync: %v %q %q %d", err, r.GetStdout(), r.GetStderr(), r.GetExitCode())
		}
		// Past the cap the output is cut, not the call failed: the reply
		// still fits kubelet's 16 MiB.
		r, err = big.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: work, Cmd: []string{"sh", "-c", "head -c 20000000 /dev/zero; head -c 1000 /dev/zero >&2"}})
		if err != nil {
			t.Fatalf("ExecSync of 20 MB: %v", err)
		}
		if n := len(r.Stdout) + len(r.Stderr); n != 16<<20-64<<10 {
			t.Fatalf("ExecSync kept %d bytes", n)
		}
		_, err = e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: work, Cmd: []string{"sleep", "4321"}, Timeout: 1})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("ExecSync past its timeout: %v, want DeadlineExceeded", err)
		}
		waitNoProc(t, "sleep 4321")
		_, err = e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: work, Cmd: []string{"/no/such/binary"}})
		if err == nil || !strings.Contains(err.Error(), "no/such/binary") {
			t.Fatalf("ExecSync of a missing binary: %v", err)
		}
	})

	t.Run("ExecNoTTY", func(t *testing.T) {
		r, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: work, Cmd: []string{"sh", "-c", "cat; echo err >&2; exit 3"}, Stdin: true, Stdout: true, Stderr: true})
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		err = spdyExecutor(t, r.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader("hello\nworld\n"), Stdout: &out, Stderr: &errOut})
		if exitCode(err) != 3 || out.String() != "hello\nworld\n" || errOut.String() != "err\n" {
			t.Fatalf("exec: %v (code %d) stdout %q stderr %q", err, exitCode(err), out.String(), errOut.String())
		}
		// Killed by a signal: 128+9.
		r, _ = e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: work, Cmd: []string{"sh", "-c", "kill -9 $$"}, Stdout: true})
		err = spdyExecutor(t, r.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard})
		if exitCode(err) != 137 {
			t.Fatalf("exec killed by SIGKILL: %v", err)
		}
	})

	t.Run("ExecTTY", func(t *testing.T) {
		r, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: work, Cmd: []string{"sh"}, Stdin: true, Stdout: true, Tty: true})
		if err != nil {
			t.Fatal(err)
		}
		in, inW := io.Pipe()
		out := &syncBuffer{}
		q := make(sizeQueue, 1)
		q <- &remotecommand.TerminalSize{Width: 101, Height: 37}
		done := make(chan error, 1)
		go func() {
			done <- spdyExecutor(t, r.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: in, Stdout: out, Tty: true, TerminalSizeQueue: q})
		}()
		typeUntil(t, inW, out, "stty size; tty\n", "37 101")
		if !strings.Contains(out.String(), "/dev/pts/") {
			t.Fatalf("no terminal: %q", out.String())
		}
		q <- &remotecommand.TerminalSize{Width: 80, Height: 24}
		typeUntil(t, inW, out, "stty size\n", "24 80")
		io.WriteString(inW, "exit 7\n")
		if err := <-done; exitCode(err) != 7 {
			t.Fatalf("tty exec: %v; output %q", err, out.String())
		}
		close(q)
		inW.Close()
	})

	t.Run("ExecWebSocket", func(t *testing.T) {
		r, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: work, Cmd: []string{"sh", "-c", "echo ws-out; echo ws-err >&2; exit 5"}, Stdout: true, Stderr: true})
		if err != nil {
			t.Fatal(err)
		}
		o, errOut, st := wsExec(t, r.Url)
		if o != "ws-out\n" || errOut != "ws-err\n" || !strings.Contains(st, `"reason":"NonZeroExitCode"`) || !strings.Contains(st, `"message":"5"`) {
			t.Fatalf("websocket exec: stdout %q stderr %q status %s", o, errOut, st)
		}
	})

	t.Run("DisconnectKills", func(t *testing.T) {
		r, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: work, Cmd: []string{"sh", "-c", "echo up; exec sleep 12345"}, Stdout: true})
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		out := &syncBuffer{}
		done := make(chan error, 1)
		go func() {
			done <- spdyExecutor(t, r.Url).StreamWithContext(cctx, remotecommand.StreamOptions{Stdout: out})
		}()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(out.String(), "up") {
			if time.Now().After(deadline) {
				t.Fatal("exec did not start")
			}
			time.Sleep(20 * time.Millisecond)
		}
		found := false
		for _, p := range procs(t) {
			found = found || p.cmd == "sleep 12345"
		}
		if !found {
			t.Fatal("the exec'd sleep is not running")
		}
		cancel()
		<-done
		waitNoProc(t, "sleep 12345")
	})

	t.Run("Attach", func(t *testing.T) {
		sh := e.createCfg(pod, "shell", true, true, false, "sh")
		e.start(sh)
		r, err := e.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: sh, Stdin: true, Stdout: true, Stderr: true})
		if err != nil {
			t.Fatal(err)
		}
		in, inW := io.Pipe()
		out, errOut := &syncBuffer{}, &syncBuffer{}
		done := make(chan error, 1)
		go func() {
			done <- spdyExecutor(t, r.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: in, Stdout: out, Stderr: errOut})
		}()
		typeUntil(t, inW, out, "echo attached-$((6*7)); echo oops >&2\n", "attached-42")
		// stdin_once: the client's stdin ends, so does the shell.
		inW.Close()
		if err := <-done; err != nil {
			t.Fatalf("attach: %v", err)
		}
		if !strings.Contains(errOut.String(), "oops") {
			t.Fatalf("attach stderr: %q", errOut.String())
		}
		if st := e.waitExited(sh); st.ExitCode != 0 {
			t.Fatalf("shell exit: %v", st)
		}
		log := waitFor(t, filepath.Join(e.logDir, "stream", "shell.log"), "stderr F oops")
		if !strings.Contains(log, "stdout F attached-42") {
			t.Fatalf("log: %s", log)
		}
		if _, err := e.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: sh, Stdout: true}); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("attach to an exited container: %v", err)
		}
	})

	t.Run("AttachTTY", func(t *testing.T) {
		tty := e.createCfg(pod, "tty", true, false, true, "sh")
		e.start(tty)
		attach := func(line, want string, size *remotecommand.TerminalSize) {
			t.Helper()
			r, err := e.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: tty, Stdin: true, Stdout: true, Tty: true})
			if err != nil {
				t.Fatal(err)
			}
			in, inW := io.Pipe()
			out := &syncBuffer{}
			q := make(sizeQueue, 1)
			q <- size
			done := make(chan error, 1)
			go func() {
				done <- spdyExecutor(t, r.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: in, Stdout: out, Tty: true, TerminalSizeQueue: q})
			}()
			typeUntil(t, inW, out, line, want)
			// Detach: the client's stdin ends; the container goes on.
			inW.Close()
			if err := <-done; err != nil {
				t.Fatalf("tty attach: %v", err)
			}
			close(q)
		}
		attach("stty size\n", "25 90", &remotecommand.TerminalSize{Width: 90, Height: 25})
		if st := e.status(tty); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("tty container after detach: %v", st.State)
		}
		waitFor(t, filepath.Join(e.logDir, "stream", "tty.log"), "stdout F 25 90")
		// The monitor holds the terminal, not tripodd: after a kill -9
		// and a restart the container is attachable as before.
		e.d.kill()
		e.boot()
		attach("echo again-$((1+1))\n", "again-2", &remotecommand.TerminalSize{Width: 70, Height: 20})
	})

	t.Run("PortForward", func(t *testing.T) {
		web := e.create(pod, "web", "sh", "-c", "mkdir -p /tmp/www && echo pf-ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www")
		e.start(web)
		// An echo server that answers after its client half-closes.
		echo := e.create(pod, "echo", "sh", "-c", "while true; do nc -l -p 9090 -e sh -c 'cat | tr a-z A-Z'; done")
		e.start(echo)
		r, err := e.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: pod, Port: []int32{8080}})
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(r.Url)
		tr, up, err := spdy.RoundTripperFor(&rest.Config{})
		if err != nil {
			t.Fatal(err)
		}
		local := freePort(t)
		stop, ready := make(chan struct{}), make(chan struct{})
		var pfOut, pfErr bytes.Buffer
		pf, err := portforward.NewOnAddresses(spdy.NewDialer(up, &http.Client{Transport: tr}, "POST", u), []string{"127.0.0.1"},
			[]string{fmt.Sprintf("%d:8080", local)}, stop, ready, &pfOut, &pfErr)
		if err != nil {
			t.Fatal(err)
		}
		fwd := make(chan error, 1)
		go func() { fwd <- pf.ForwardPorts() }()
		select {
		case <-ready:
		case err := <-fwd:
			t.Fatalf("port-forward: %v", err)
		}
		defer func() {
			if t.Failed() {
				t.Logf("port-forward output: %s %s", pfOut.String(), pfErr.String())
			}
		}()
		var body []byte
		deadline := time.Now().Add(30 * time.Second)
		for { // until httpd listens
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", local))
			if err == nil {
				body, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET through port-forward: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		close(stop)
		<-fwd
		if string(body) != "pf-ok\n" {
			t.Fatalf("through port-forward: %q", body)
		}
		r, _ = e.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: pod})
		var reply, msg string
		for deadline := time.Now().Add(30 * time.Second); ; {
			if reply, msg = portForwardRaw(t, r.Url, 9090, "half closed\n"); reply != "" || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
			r, _ = e.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: pod})
		}
		if reply != "HALF CLOSED\n" || msg != "" {
			t.Fatalf("echo through port-forward: %q, error stream %q", reply, msg)
		}
		r, _ = e.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: pod})
		reply, msg = portForwardRaw(t, r.Url, 8081, "GET / HTTP/1.0\r\n\r\n")
		if reply != "" || !strings.Contains(msg, "connection refused") {
			t.Fatalf("closed port: reply %q, error stream %q", reply, msg)
		}
	})

	t.Run("Errors", func(t *testing.T) {
		stopped := e.create(pod, "stopped", "sleep", "100000")
		e.start(stopped)
		if _, err := e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: stopped}); err != nil {
			t.Fatal(err)
		}
		created := e.create(pod, "created", "true")
		for _, id := range []string{stopped, created} {
			_, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: id, Cmd: []string{"true"}, Stdout: true})
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("Exec in a container not running: %v", err)
			}
			if _, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"true"}}); status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("ExecSync in a container not running: %v", err)
			}
			if _, err := e.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: id, Stdout: true}); status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("Attach to a container not running: %v", err)
			}
		}
		unknown := strings.Repeat("ab", 32)
		if _, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: unknown, Cmd: []string{"true"}, Stdout: true}); status.Code(err) != codes.NotFound {
			t.Fatalf("Exec in an unknown container: %v", err)
		}
		if _, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: unknown, Cmd: []string{"true"}}); status.Code(err) != codes.NotFound {
			t.Fatalf("ExecSync in an unknown container: %v", err)
		}
		if _, err := e.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: unknown, Stdout: true}); status.Code(err) != codes.NotFound {
			t.Fatalf("Attach to an unknown container: %v", err)
		}
		if _, err := e.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: unknown}); status.Code(err) != codes.NotFound {
			t.Fatalf("PortForward to an unknown pod: %v", err)
		}
		if _, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: work, Cmd: []string{"true"}}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("Exec with no stream: %v", err)
		}
		// A session whose container stops before it is used fails on
		// the stream, without hanging.
		r, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: work, Cmd: []string{"true"}, Stdout: true})
		if err != nil {
			t.Fatal(err)
		}
		victim := e.create(pod, "victim", "sleep", "100000")
		e.start(victim)
		rv, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: victim, Cmd: []string{"true"}, Stdout: true})
		if err != nil {
			t.Fatal(err)
		}
		e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: victim})
		err = spdyExecutor(t, rv.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard})
		if err == nil || !strings.Contains(err.Error(), "not running") {
			t.Fatalf("exec in a container stopped meanwhile: %v", err)
		}
		// Single use: the second connection on a URL is refused.
		if err := spdyExecutor(t, r.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard}); err != nil {
			t.Fatalf("first use: %v", err)
		}
		if err := spdyExecutor(t, r.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard}); err == nil {
			t.Fatal("a streaming URL worked twice")
		}
	})

	t.Run("ManySessions", func(t *testing.T) {
		maddr := regexp.MustCompile(`metrics=(127\.0\.0\.1:\d+)`).FindStringSubmatch(e.d.log.String())
		if maddr == nil {
			t.Fatalf("no metrics address in the log:\n%s", e.d.log.String())
		}
		mon := monitorPid(t, e)
		daemonPid := e.d.cmd.Process.Pid
		// One warm-up round, so the baselines include what the first
		// session sets up once (HTTP server, pools).
		if _, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: work, Cmd: []string{"true"}}); err != nil {
			t.Fatal(err)
		}
		baseG, baseMonFds, baseFds := goroutines(t, maddr[1]), fdCount(t, mon), fdCount(t, daemonPid)
		const n = 50
		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		for i := range n {
			wg.Add(2)
			go func() {
				defer wg.Done()
				want := fmt.Sprintf("sync-%d", i)
				r, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: work, Cmd: []string{"echo", want}})
				if err != nil || string(r.Stdout) != want+"\n" {
					errs <- fmt.Errorf("ExecSync %d: %v %q", i, err, r.GetStdout())
				}
			}()
			go func() {
				defer wg.Done()
				r, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: work, Cmd: []string{"cat"}, Stdin: true, Stdout: true, Tty: i%2 == 0})
				if err != nil {
					errs <- err
					return
				}
				want := fmt.Sprintf("stream-%d", i)
				var out bytes.Buffer
				opts := remotecommand.StreamOptions{Stdin: strings.NewReader(want + "\n"), Stdout: &out, Tty: i%2 == 0}
				if i%2 == 0 {
					// A terminal's cat ends with ^D, not a closed stdin.
					opts.Stdin = io.MultiReader(strings.NewReader(want+"\n"), strings.NewReader("\x04"))
				}
				ex, err := remotecommand.NewSPDYExecutor(&rest.Config{}, "POST", mustURL(r.Url))
				if err == nil {
					err = ex.StreamWithContext(ctx, opts)
				}
				if err != nil || !strings.Contains(out.String(), want) {
					errs <- fmt.Errorf("exec %d: %v %q", i, err, out.String())
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		// Nothing stays: no runtime or exec'd process under the monitor
		// (only the containers' inits), no child of tripodd but the
		// monitor, no descriptor or goroutine more than before.
		inits := map[int]bool{}
		lc, err := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range lc.Containers {
			if c.State == runtimeapi.ContainerState_CONTAINER_RUNNING || c.State == runtimeapi.ContainerState_CONTAINER_CREATED {
				inits[containerPid(t, statusInfo(t, e, c.Id))] = true
			}
		}
		var extra []string
		settles(t, "processes left under the monitor and tripodd", 0, func() int {
			extra = nil
			for pid, p := range procs(t) {
				if (p.ppid == mon && !inits[pid]) || (p.ppid == daemonPid && pid != mon) ||
					(strings.Contains(p.cmd, "runc") && strings.Contains(p.cmd, " exec ")) {
					extra = append(extra, fmt.Sprintf("%d (parent %d): %s", pid, p.ppid, p.cmd))
				}
			}
			return len(extra)
		}, func() string { return fmt.Sprint(extra) })
		settles(t, "monitor descriptors", baseMonFds, func() int { return fdCount(t, mon) }, func() string { return fdTargets(mon) })
		settles(t, "tripodd descriptors", baseFds, func() int { return fdCount(t, daemonPid) })
		settles(t, "tripodd goroutines", baseG+2, func() int { return goroutines(t, maddr[1]) })
	})

	t.Run("ExpiredURL", func(t *testing.T) {
		if wait := time.Minute + 2*time.Second - time.Since(issued); wait > 0 {
			time.Sleep(wait)
		}
		err := spdyExecutor(t, early.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard})
		if err == nil {
			t.Fatal("a streaming URL worked after it expired")
		}
	})
}

func mustURL(raw string) *url.URL {
	u, err := url.Parse(raw)
	if err != nil {
		panic(err)
	}
	return u
}

// TestCrictlStreaming: crictl exec, attach and port-forward against
// tripodd.
func TestCrictlStreaming(t *testing.T) {
	crictl := crictlPath(t)
	e := newPodEnv(t)
	ctx := testCtx(t)
	cfg := filepath.Join(e.n.state, "crictl.yaml")
	os.WriteFile(cfg, []byte("runtime-endpoint: unix://"+e.n.sock+"\nimage-endpoint: unix://"+e.n.sock+"\ntimeout: 60\n"), 0o644)
	run := func(stdin string, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, crictl, append([]string{"--config", cfg}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	pod := e.runPod("crictl")
	work := e.create(pod, "work", "sh", "-c", "mkdir -p /tmp/www && echo crictl-pf > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www")
	e.start(work)
	if out, err := run("from stdin\n", "exec", "-i", work, "sh", "-c", "cat; echo bye"); err != nil || out != "from stdin\nbye\n" {
		t.Fatalf("crictl exec: %v %q", err, out)
	}
	out, err := run("", "exec", work, "sh", "-c", "exit 4")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(out, "4") {
		t.Fatalf("crictl exec exit 4: %v %q", err, out)
	}
	sh := e.createCfg(pod, "shell", true, true, false, "sh")
	e.start(sh)
	if out, err := run("echo via-crictl-attach\n", "attach", "-i", sh); err != nil || !strings.Contains(out, "via-crictl-attach") {
		t.Fatalf("crictl attach: %v %q", err, out)
	}
	e.waitExited(sh)

	local := freePort(t)
	pf := exec.Command(crictl, "--config", cfg, "port-forward", pod, fmt.Sprintf("%d:8080", local))
	pfLog := &syncBuffer{}
	pf.Stdout, pf.Stderr = pfLog, pfLog
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		pf.Process.Signal(syscall.SIGKILL)
		pf.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", local))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "crictl-pf\n" {
				t.Fatalf("crictl port-forward: %q", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("crictl port-forward: %v\n%s", err, pfLog.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestStreamingTLS: with [streaming] certificates the URLs are https and
// the server admits only clients with a certificate from client_ca_file.
func TestStreamingTLS(t *testing.T) {
	runtimePrereqs(t)
	ca := newCA(t)
	srvCert, srvKey := ca.issue(t, 2, true)
	cliCert, cliKey := ca.issue(t, 3, false)
	dir := t.TempDir()
	files := map[string][]byte{"ca.pem": ca.pem, "srv.pem": srvCert, "srv.key": srvKey}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e := newPodEnvWith(t, cnitest.BinDir(t), func(e *podEnv, _ *imagetest.Registry) {
		f, _ := os.OpenFile(filepath.Join(e.n.state, "none.toml"), os.O_APPEND|os.O_WRONLY, 0)
		fmt.Fprintf(f, "[streaming]\naddress = \"127.0.0.1:0\"\ncert_file = %q\nkey_file = %q\nclient_ca_file = %q\n",
			filepath.Join(dir, "srv.pem"), filepath.Join(dir, "srv.key"), filepath.Join(dir, "ca.pem"))
		f.Close()
	})
	ctx := testCtx(t)
	pod := e.runPod("tls")
	work := e.create(pod, "work", "sleep", "100000")
	e.start(work)
	execURL := func() *url.URL {
		r, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: work, Cmd: []string{"echo", "over-tls"}, Stdout: true})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(r.Url, "https://127.0.0.1:") {
			t.Fatalf("streaming URL %q is not https", r.Url)
		}
		return mustURL(r.Url)
	}
	withCert := &rest.Config{TLSClientConfig: rest.TLSClientConfig{CAData: ca.pem, CertData: cliCert, KeyData: cliKey}}
	ex, err := remotecommand.NewSPDYExecutor(withCert, "POST", execURL())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out}); err != nil || out.String() != "over-tls\n" {
		t.Fatalf("exec over TLS: %v %q", err, out.String())
	}
	noCert := &rest.Config{TLSClientConfig: rest.TLSClientConfig{CAData: ca.pem}}
	ex, err = remotecommand.NewSPDYExecutor(noCert, "POST", execURL())
	if err != nil {
		t.Fatal(err)
	}
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard}); err == nil {
		t.Fatal("a client without a certificate was admitted")
	}
}
