package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// critestParams sizes `critest -benchmark`: sequential samples, as the
// rest of this benchmark's sequential figures.
const critestParams = `podsNumber: 20
podsNumberParallel: 1
containersNumber: 20
containersNumberParallel: 1
imagesNumber: 10
imagesNumberParallel: 1
`

// critestOps are the operations critest's benchmarks time, in the order
// of its result files.
var critestOps = []struct{ file, op string }{
	{"pod_benchmark_data.json", "CreatePod"}, {"pod_benchmark_data.json", "StatusPod"},
	{"pod_benchmark_data.json", "StopPod"}, {"pod_benchmark_data.json", "RemovePod"},
	{"container_benchmark_data.json", "CreateContainer"}, {"container_benchmark_data.json", "StartContainer"},
	{"container_benchmark_data.json", "StatusContainer"}, {"container_benchmark_data.json", "StopContainer"},
	{"container_benchmark_data.json", "RemoveContainer"},
	{"image_lifecycle_benchmark_data.json", "PullImage"}, {"image_lifecycle_benchmark_data.json", "StatusImage"},
	{"image_lifecycle_benchmark_data.json", "RemoveImage"},
	{"image_listing_benchmark_data.json", "ListImages"},
}

// podContainerOp is the one timed run of critest's "start a container
// from scratch" benchmark (pod + container start, stop, remove), found in
// its JSON report.
const podContainerOp = "create PodSandbox and container"

// runCritest runs the pinned critest's benchmarks against the runtime on
// sock and returns the samples of each operation.
func runCritest(ctx context.Context, critest, sock, dir string) (map[string][]time.Duration, error) {
	params := filepath.Join(dir, "critest-params.yaml")
	if err := os.WriteFile(params, []byte(critestParams), 0o644); err != nil {
		return nil, err
	}
	out := filepath.Join(dir, "critest-out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	report := filepath.Join(dir, "critest-report.json")
	ep := "unix://" + sock
	cmd := exec.CommandContext(ctx, critest, "-benchmark", "-runtime-endpoint", ep, "-image-endpoint", ep,
		"-benchmarking-params-file", params, "-benchmarking-output-dir", out, "-ginkgo.no-color", "-ginkgo.json-report", report)
	// critest runs from its own directory's copy of the config otherwise.
	cmd.Dir = dir
	output, err := cmd.CombinedOutput()
	os.WriteFile(filepath.Join(dir, "critest.log"), output, 0o644)
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(output)), "\n")
		return nil, fmt.Errorf("critest -benchmark: %v\n%s", err, strings.Join(lines[max(0, len(lines)-30):], "\n"))
	}
	res := map[string][]time.Duration{}
	files := map[string]bool{}
	for _, o := range critestOps {
		files[o.file] = true
	}
	for f := range files {
		var set struct {
			OperationsNames []string `json:"operationsNames"`
			Datapoints      []struct {
				OperationsDurationsNs []int64 `json:"operationsDurationsNs"`
			} `json:"datapoints"`
		}
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			return nil, fmt.Errorf("critest wrote no %s: %w", f, err)
		}
		if err := json.Unmarshal(b, &set); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		for _, d := range set.Datapoints {
			for i, ns := range d.OperationsDurationsNs {
				if i < len(set.OperationsNames) {
					res[set.OperationsNames[i]] = append(res[set.OperationsNames[i]], time.Duration(ns))
				}
			}
		}
	}
	if d, ok := podContainerSample(report); ok {
		res[podContainerOp] = []time.Duration{d}
	}
	return res, nil
}

// podContainerSample digs the gmeasure measurement out of ginkgo's JSON
// report.
func podContainerSample(report string) (time.Duration, bool) {
	b, err := os.ReadFile(report)
	if err != nil {
		return 0, false
	}
	var suites []struct {
		SpecReports []struct {
			ReportEntries []struct {
				Value struct{ AsJSON string }
			}
		}
	}
	if json.Unmarshal(b, &suites) != nil {
		return 0, false
	}
	for _, s := range suites {
		for _, sr := range s.SpecReports {
			for _, re := range sr.ReportEntries {
				var exp struct {
					Measurements []struct {
						Name      string
						Durations []time.Duration
					}
				}
				if json.Unmarshal([]byte(re.Value.AsJSON), &exp) != nil {
					continue
				}
				for _, m := range exp.Measurements {
					if m.Name == podContainerOp && len(m.Durations) > 0 {
						return m.Durations[0], true
					}
				}
			}
		}
	}
	return 0, false
}
