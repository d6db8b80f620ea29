package layer_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/tripod-dev/tripod/internal/image/imagetest"
	"github.com/tripod-dev/tripod/internal/image/layer"
)

// BenchmarkApplySmallFiles unpacks a layer shaped like a distribution's
// /usr: thousands of small files a few directories deep.
func BenchmarkApplySmallFiles(b *testing.B) {
	var entries []imagetest.Entry
	for d := range 100 {
		for f := range 50 {
			entries = append(entries, imagetest.Entry{Name: fmt.Sprintf("usr/share/pkg%03d/sub/file%02d", d, f), Body: "small file content"})
		}
	}
	tb := imagetest.Tar(entries...)
	b.ResetTimer()
	for range b.N {
		dir := b.TempDir()
		if _, err := layer.Apply(context.Background(), bytes.NewReader(tb), dir, layer.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
