package csi_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
)

func TestMain(m *testing.M) {
	cleanup, err := csitest.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	cleanup()
	os.Exit(code)
}
