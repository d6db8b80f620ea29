package server_test

import (
	"io"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tripod-dev/tripod/internal/config"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func metric(text, series string) (float64, bool) {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

// TestPullProgressAndMetrics: a running pull shows in metrics with its
// bytes done and total, and finished pulls are counted by result.
func TestPullProgressAndMetrics(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	img, layers := testImage(runtime.GOARCH, "", "metrics")
	reg.Push(t, "m/app:1", img)
	var total int64
	for _, l := range layers {
		s, _ := l.Size()
		total += s
	}
	release := reg.Stall(layerDigest(t, layers[2]))
	e := start(t, func(c *config.Config) { c.Metrics.Address = "127.0.0.1:0" })
	addr := e.d.MetricsAddr
	ref := reg.Host + "/m/app:1"

	done := make(chan error, 1)
	go func() { _, err := e.pull(ref, nil); done <- err }()
	<-reg.Stalled()
	// Half the big layer is sent and held: progress is visible mid-pull.
	deadline := time.Now().Add(time.Minute)
	for {
		text := scrape(t, addr)
		inProgress, _ := metric(text, "tripod_image_pulls_in_progress")
		size, _ := metric(text, `tripod_image_pull_size_bytes{image="`+ref+`"}`)
		doneBytes, _ := metric(text, `tripod_image_pull_progress_bytes{image="`+ref+`"}`)
		if inProgress == 1 && size == float64(total) && doneBytes > 0 && doneBytes < size {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no progress in metrics:\n%s", text)
		}
		time.Sleep(20 * time.Millisecond)
	}
	pulls := e.d.Images.Pulls()
	if len(pulls) != 1 || pulls[0].Image != ref || pulls[0].TotalLayers != 3 || pulls[0].DoneBytes == 0 {
		t.Fatalf("Pulls(): %+v", pulls)
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.pull(reg.Host+"/m/app:missing", nil)
	text := scrape(t, addr)
	for series, want := range map[string]float64{
		`tripod_image_pulls_total{result="ok"}`:        1,
		`tripod_image_pulls_total{result="not_found"}`: 1,
		`tripod_image_pulls_in_progress`:               0,
		`tripod_images`:                                1,
	} {
		if got, ok := metric(text, series); !ok || got != want {
			t.Fatalf("%s = %v (present %v), want %v\n%s", series, got, ok, want, text)
		}
	}
	if got, _ := metric(text, "tripod_image_pull_bytes_total"); got < float64(total) {
		t.Fatalf("pull bytes %v < %d", got, total)
	}
	if strings.Contains(text, `tripod_image_pull_size_bytes{`) {
		t.Fatalf("finished pull still has progress series:\n%s", text)
	}
}
