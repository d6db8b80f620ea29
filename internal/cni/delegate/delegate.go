// Package delegate executes another CNI plugin found in CNI_PATH with the
// caller's CNI_* environment and a different command, as a plugin that
// delegates (IPAM, flannel) must. It replaces libcni's invoke package in
// plugin code because invoke links net/http and OpenTelemetry, which add
// about a millisecond of start-up to every plugin exec.
package delegate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/types/create"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

// Find returns the path of pluginType in the CNI_PATH list cniPath.
func Find(pluginType, cniPath string) (string, error) {
	if pluginType == "" || strings.ContainsAny(pluginType, "/\\") {
		return "", cnierr.New(cnierr.InvalidConfig, "invalid plugin type %q", pluginType)
	}
	dirs := filepath.SplitList(cniPath)
	for _, d := range dirs {
		p := filepath.Join(d, pluginType)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", cnierr.New(cnierr.InvalidConfig, "plugin %q not found in CNI_PATH %v", pluginType, dirs)
}

// Add runs ADD of pluginType with conf on stdin and returns its result.
func Add(ctx context.Context, pluginType string, conf []byte) (types.Result, error) {
	out, err := run(ctx, "ADD", pluginType, conf)
	if err != nil {
		return nil, err
	}
	r, err := create.CreateFromBytes(out)
	if err != nil {
		return nil, cnierr.New(cnierr.DecodingFailure, "result of plugin %q: %v", pluginType, err)
	}
	return r, nil
}

// Run runs a verb without a result (DEL, CHECK, GC, STATUS).
func Run(ctx context.Context, verb, pluginType string, conf []byte) error {
	_, err := run(ctx, verb, pluginType, conf)
	return err
}

func run(ctx context.Context, verb, pluginType string, conf []byte) ([]byte, error) {
	path, err := Find(pluginType, os.Getenv("CNI_PATH"))
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = append(withoutCommand(os.Environ()), "CNI_COMMAND="+verb)
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return nil, cnierr.New(cnierr.IOFailure, "running plugin %q: %v", pluginType, err)
	}
	e := &types.Error{}
	if jerr := json.Unmarshal(stdout.Bytes(), e); jerr == nil && e.Code != 0 {
		return nil, e
	}
	return nil, cnierr.New(cnierr.Delegate, "plugin %q failed (%v) without a CNI error: %s", pluginType, err, firstLine(stdout.String()+stderr.String()))
}

func withoutCommand(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "CNI_COMMAND=") {
			out = append(out, kv)
		}
	}
	return out
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300]
	}
	if s == "" {
		return "(no output)"
	}
	return fmt.Sprintf("%q", s)
}
