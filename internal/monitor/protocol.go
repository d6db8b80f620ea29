// Package monitor is tripod's node-level container monitor: one small
// process, separate from tripodd, that starts containers through the OCI
// runtime, holds their stdio (writing CRI-format logs) and reaps them as a
// child subreaper, recording exit statuses on disk. tripodd can be killed
// and restarted at any time: containers keep running and logging, and the
// exits that happen meanwhile are waiting in their exit files.
//
// tripodd talks to it over a unix socket, one JSON request and one JSON
// reply per connection; a wait request is answered when the container ends.
package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// Socket and PIDFile are the monitor's files in tripodd's state directory.
const (
	Socket  = "monitor.sock"
	PIDFile = "monitor.pid"
)

// ExitFile is the name of the exit record in a container's bundle.
const ExitFile = "exit.json"

// Request is one call to the monitor.
type Request struct {
	Op string `json:"op"` // create, adopt, wait, state, kill, reopen, forget, ping, exec, attach
	ID string `json:"id,omitempty"`
	// Signal is kill's signal number.
	Signal int `json:"signal,omitempty"`
	// For create and adopt.
	Bundle      string   `json:"bundle,omitempty"`
	Runtime     string   `json:"runtime,omitempty"`
	RuntimeArgs []string `json:"runtimeArgs,omitempty"` // global flags before the command (--root, --systemd-cgroup)
	LogPath     string   `json:"logPath,omitempty"`
	// OOMFile is the cgroup file whose oom_kill counter tells an OOM kill
	// (memory.oom_control on v1, memory.events on v2); optional.
	OOMFile string `json:"oomFile,omitempty"`
	// TTY (create, exec) gives the process a pseudo-terminal; Stdin
	// (create, exec, attach) a stdin pipe; StdinOnce (create) closes the
	// container's stdin when the first attach that used it ends.
	// Restore (create) makes the container by the runtime's restore
	// --detach from a checkpoint, these being the restore's own flags
	// (CRIU images, work directory...), in place of create: the restored
	// init is adopted as a created one. Not with TTY.
	Restore   []string `json:"restore,omitempty"`
	TTY       bool     `json:"tty,omitempty"`
	Stdin     bool     `json:"stdin,omitempty"`
	StdinOnce bool     `json:"stdinOnce,omitempty"`
	// For exec: the command and extra environment.
	Args []string `json:"args,omitempty"`
	Env  []string `json:"env,omitempty"`
	// Direct (exec) starts the process through the exec stage rather than
	// the OCI runtime, unless the stage cannot do it exactly.
	Direct bool `json:"direct,omitempty"`
	// For attach: the output streams wanted.
	Stdout bool `json:"stdout,omitempty"`
	Stderr bool `json:"stderr,omitempty"`
}

// Exit is how a container ended.
type Exit struct {
	Pid        int   `json:"pid"`
	Code       int32 `json:"code"`
	Signal     int   `json:"signal,omitempty"`
	FinishedAt int64 `json:"finishedAt"` // unix nanoseconds
	OOMKilled  bool  `json:"oomKilled,omitempty"`
	// Unknown is set when the init ended while no monitor held it and
	// its status could not be read: Code is then 255.
	Unknown bool `json:"unknown,omitempty"`
}

// Reply answers a Request.
type Reply struct {
	Error   string `json:"error,omitempty"`
	Pid     int    `json:"pid,omitempty"`
	Known   bool   `json:"known,omitempty"`
	Running bool   `json:"running,omitempty"`
	Exit    *Exit  `json:"exit,omitempty"`
	// Via (exec) is how the process was started: "direct", or the
	// runtime and why not directly.
	Via string `json:"via,omitempty"`
}

// Client calls a monitor.
type Client struct {
	Path string
}

// Call sends req and waits for the reply (or ctx).
func (c Client) Call(ctx context.Context, req Request) (Reply, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return Reply{}, fmt.Errorf("monitor: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return Reply{}, fmt.Errorf("monitor %s: %w", req.Op, err)
	}
	var rep Reply
	if err := json.NewDecoder(conn).Decode(&rep); err != nil {
		if ctx.Err() != nil {
			return Reply{}, ctx.Err()
		}
		return Reply{}, fmt.Errorf("monitor %s: %w", req.Op, err)
	}
	if rep.Error != "" {
		return rep, errors.New(rep.Error)
	}
	return rep, nil
}

// ReadExit reads a container's exit record from its bundle; ok is false
// when the container has not exited (or the monitor never saw it end).
func ReadExit(bundle string) (Exit, bool) {
	b, err := os.ReadFile(filepath.Join(bundle, ExitFile))
	if err != nil {
		return Exit{}, false
	}
	var e Exit
	if json.Unmarshal(b, &e) != nil {
		return Exit{}, false
	}
	return e, true
}

func writeExit(bundle string, e Exit) error {
	b, _ := json.Marshal(e)
	tmp := filepath.Join(bundle, ExitFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(bundle, ExitFile))
}
