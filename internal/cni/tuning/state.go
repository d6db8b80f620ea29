package tuning

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

// state is what ADD changed and the values to put back on DEL. Its first
// fields and the file name (<containerID>_<ifName>.json in dataDir) are the
// reference plugin's, so either implementation restores the other's
// attachments; the rest are tripod's.
type state struct {
	Mac      string `json:"mac,omitempty"`
	Promisc  *bool  `json:"promisc,omitempty"`
	Mtu      int    `json:"mtu,omitempty"`
	Allmulti *bool  `json:"allmulti,omitempty"`
	TxQLen   *int   `json:"txQLen,omitempty"`

	Network     string `json:"network,omitempty"`
	ContainerID string `json:"containerID,omitempty"`
	IfName      string `json:"ifName,omitempty"`
	// Sysctl maps a path under /proc/sys to its value before ADD.
	Sysctl map[string]string `json:"sysctl,omitempty"`
}

func statePath(dataDir, containerID, ifName string) string {
	return filepath.Join(dataDir, containerID+"_"+ifName+".json")
}

// loadState returns nil, nil when there is no state file.
func loadState(path string) (*state, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, cnierr.New(cnierr.IOFailure, "reading tuning state %s: %v", path, err)
	}
	s := &state{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, cnierr.New(cnierr.IOFailure, "tuning state %s is corrupt: %v", path, err)
	}
	return s, nil
}

// saveState writes the file atomically: a crash leaves the old state or
// the new one, never half of either.
func saveState(path string, s *state) error {
	b, err := json.Marshal(s)
	if err != nil {
		return cnierr.New(cnierr.IOFailure, "encoding tuning state: %v", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return cnierr.New(cnierr.IOFailure, "creating tuning data directory %s: %v", dir, err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return cnierr.New(cnierr.IOFailure, "writing tuning state in %s: %v", dir, err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return cnierr.New(cnierr.IOFailure, "writing tuning state %s: %v", path, err)
	}
	return nil
}

func removeState(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return cnierr.New(cnierr.IOFailure, "removing tuning state %s: %v", path, err)
	}
	return nil
}

// gcStates removes the state files of network's attachments that are not
// in keep. Files without a network (written by the reference plugin)
// cannot be attributed and are left alone.
func gcStates(dataDir, network string, keep map[[2]string]bool) error {
	entries, err := os.ReadDir(dataDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return cnierr.New(cnierr.IOFailure, "listing tuning data directory %s: %v", dataDir, err)
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		p := filepath.Join(dataDir, e.Name())
		s, err := loadState(p)
		if err != nil || s == nil {
			// A corrupt file cannot be attributed either.
			continue
		}
		if s.Network != network || keep[[2]string{s.ContainerID, s.IfName}] {
			continue
		}
		if err := removeState(p); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return cnierr.Wrap(cnierr.IOFailure, errors.Join(errs...), "GC")
	}
	return nil
}
