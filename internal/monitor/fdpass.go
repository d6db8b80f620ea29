package monitor

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// sendFds writes msg on c with fds attached (SCM_RIGHTS) in one message.
func sendFds(c *net.UnixConn, msg []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := c.WriteMsgUnix(msg, oob, nil)
	return err
}

// recvFds reads one message from c into buf and returns the file
// descriptors that came with it, close-on-exec and non-blocking (so that
// reads on them can be interrupted by Close).
func recvFds(c *net.UnixConn, buf []byte, max int) (int, []*os.File, error) {
	oob := make([]byte, unix.CmsgSpace(4*max))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return n, nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return n, nil, fmt.Errorf("control message: %w", err)
	}
	var files []*os.File
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			unix.SetNonblock(fd, true)
			files = append(files, os.NewFile(uintptr(fd), "passed"))
		}
	}
	return n, files, nil
}

// recvConsole accepts one connection on a console socket and returns the
// pseudo-terminal master the OCI runtime sends over it.
func recvConsole(l *net.UnixListener) (*os.File, error) {
	c, err := l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_, files, err := recvFds(c, make([]byte, 4096), 1)
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	if len(files) != 1 {
		for _, f := range files {
			f.Close()
		}
		return nil, errors.New("console socket: no terminal received")
	}
	return files[0], nil
}

// listenConsole opens a console socket (a unix socket the OCI runtime
// connects to in order to hand over a pty master) beside the monitor's
// own socket, readable by root only.
func (s *Server) listenConsole() (*net.UnixListener, string, error) {
	b := make([]byte, 6)
	rand.Read(b)
	path := s.dir + "/console-" + hex.EncodeToString(b) + ".sock"
	if len(path) > 100 { // a unix socket path must fit sun_path
		path = os.TempDir() + "/tripod-console-" + hex.EncodeToString(b) + ".sock"
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, "", fmt.Errorf("console socket: %w", err)
	}
	os.Chmod(path, 0o600)
	return l, path, nil
}

// setWinsize applies a terminal size to a pty master.
func setWinsize(f *os.File, width, height uint16) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: height, Col: width})
	})
	if err != nil {
		return err
	}
	return ierr
}

// SetWinsize applies a terminal size to a pty master (an exec session's
// Console).
func SetWinsize(f *os.File, width, height uint16) error { return setWinsize(f, width, height) }

// Attach frames: one kind byte, a big-endian uint32 length, the payload.
const (
	frameStdin      byte = 0 // to the monitor: bytes for the container's stdin
	frameStdout     byte = 1 // from the monitor
	frameStderr     byte = 2 // from the monitor
	frameEnd        byte = 3 // from the monitor: the container's output ended
	frameStdinClose byte = 4 // to the monitor: the client's stdin ended
	frameResize     byte = 5 // to the monitor: width, height (uint16 each)
	maxFrame             = 1 << 20
)

func encodeFrame(kind byte, p []byte) []byte {
	b := make([]byte, 5+len(p))
	b[0] = kind
	binary.BigEndian.PutUint32(b[1:], uint32(len(p)))
	copy(b[5:], p)
	return b
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("attach frame of %d bytes", n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return h[0], p, nil
}

// readReply reads the first JSON line of a reply that may carry file
// descriptors; rest is what followed the line in the same read.
func readReply(c *net.UnixConn, max int) (line, rest []byte, files []*os.File, err error) {
	buf := make([]byte, 64<<10)
	n, files, err := recvFds(c, buf, max)
	if err != nil {
		return nil, nil, nil, err
	}
	got := buf[:n]
	for {
		if i := bytes.IndexByte(got, '\n'); i >= 0 {
			return got[:i+1], got[i+1:], files, nil
		}
		if n == 0 {
			closeAll(files)
			return nil, nil, nil, io.ErrUnexpectedEOF
		}
		more := make([]byte, 64<<10)
		n, err = c.Read(more)
		if err != nil && n == 0 {
			closeAll(files)
			return nil, nil, nil, err
		}
		got = append(got, more[:n]...)
	}
}

func closeAll(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}
