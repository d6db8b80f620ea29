// Package plugin adapts tripod's CNI plugins to the CNI exec protocol:
// environment and stdin in, a result or a coded error on stdout.
package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

// Funcs are a plugin's verbs. A nil verb is answered as the spec says for
// verbs with no meaning to the plugin: success with nothing done.
type Funcs struct {
	Add    func(ctx context.Context, args *skel.CmdArgs) (types.Result, error)
	Del    func(ctx context.Context, args *skel.CmdArgs) error
	Check  func(ctx context.Context, args *skel.CmdArgs) error
	GC     func(ctx context.Context, args *skel.CmdArgs) error
	Status func(ctx context.Context, args *skel.CmdArgs) error
}

// Plugin is one CNI plugin: its standard type name and its verbs.
type Plugin struct {
	Name  string
	Funcs Funcs
}

// Versions are the CNI spec versions every tripod plugin speaks.
var Versions = version.PluginSupports("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// BuildVersion is set at link time.
var BuildVersion = "dev"

// Main runs p under the CNI exec protocol and returns the exit status.
func Main(p Plugin) int {
	// No signal handling: a runtime that gives up on a plugin kills it,
	// and a signal-watching thread costs start-up time on every exec.
	return run(context.Background(), p, os.Stdout)
}

// run keeps stdout explicit for the result; skel itself writes VERSION
// answers to os.Stdout.
func run(ctx context.Context, p Plugin, stdout io.Writer) int {
	var result types.Result
	var cniVersion string
	wrap := func(f func(context.Context, *skel.CmdArgs) error) func(*skel.CmdArgs) error {
		if f == nil {
			return func(*skel.CmdArgs) error { return nil }
		}
		return func(a *skel.CmdArgs) error { return f(ctx, a) }
	}
	funcs := skel.CNIFuncs{
		Add: func(a *skel.CmdArgs) error {
			if p.Funcs.Add == nil {
				return cnierr.New(cnierr.UnsupportedField, "plugin %s does not implement ADD", p.Name)
			}
			v, err := ConfVersion(a.StdinData)
			if err != nil {
				return err
			}
			cniVersion = v
			r, err := p.Funcs.Add(ctx, a)
			if err != nil {
				return err
			}
			result = r
			return nil
		},
		Del:    wrap(p.Funcs.Del),
		Check:  wrap(p.Funcs.Check),
		GC:     wrap(p.Funcs.GC),
		Status: wrap(p.Funcs.Status),
	}
	about := fmt.Sprintf("tripod CNI plugin %s %s", p.Name, BuildVersion)
	if os.Getenv("CNI_COMMAND") == "" && !isTerminal(os.Stdin) {
		// skel prints its banner and succeeds; a runtime that forgot the
		// variable deserves the spec's code 4 instead.
		_ = json.NewEncoder(stdout).Encode(cnierr.New(cnierr.InvalidEnv, "required environment variable CNI_COMMAND is not set (%s)", about))
		return 1
	}
	if e := skel.PluginMainFuncsWithError(funcs, Versions, about); e != nil {
		if e.Code == types.ErrInternal {
			// skel answers 999 for errors without a code; a plugin error
			// that reached here uncoded is an I/O or kernel failure.
			e.Code = cnierr.IOFailure
		}
		_ = json.NewEncoder(stdout).Encode(e)
		return 1
	}
	if result != nil {
		if err := printResult(stdout, result, cniVersion); err != nil {
			_ = json.NewEncoder(stdout).Encode(cnierr.New(cnierr.IOFailure, "writing result: %v", err))
			return 1
		}
	}
	return 0
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func printResult(w io.Writer, r types.Result, v string) error {
	conv, err := r.GetAsVersion(v)
	if err != nil {
		return err
	}
	return conv.PrintTo(w)
}

// ConfVersion returns the cniVersion of a config, defaulting as the spec
// does to 0.1.0 when absent.
func ConfVersion(stdin []byte) (string, error) {
	var c struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := cnierr.Decode(stdin, &c); err != nil {
		return "", err
	}
	if c.CNIVersion == "" {
		return "0.1.0", nil
	}
	return c.CNIVersion, nil
}

// Args parses CNI_ARGS (K=V;K=V) into a map. Unknown keys are kept: the
// caller decides which it honours.
func Args(cniArgs string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(cniArgs, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			m[k] = v
		}
	}
	return m
}

// PrevResult parses the previous plugin's result in c, which chained
// plugins get; it is nil when c has none.
func PrevResult(c *types.PluginConf) (*current.Result, error) {
	if c.RawPrevResult == nil {
		return nil, nil
	}
	if err := version.ParsePrevResult(c); err != nil {
		return nil, cnierr.New(cnierr.DecodingFailure, "prevResult: %v", err)
	}
	r, err := current.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, cnierr.New(cnierr.DecodingFailure, "prevResult: %v", err)
	}
	return r, nil
}

// RequirePrevResult is PrevResult for a plugin called name that works
// only chained: a config without a previous result is invalid.
func RequirePrevResult(name string, c *types.PluginConf) (*current.Result, error) {
	if c.RawPrevResult == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "%s is a chained plugin: the config has no prevResult", name)
	}
	return PrevResult(c)
}
