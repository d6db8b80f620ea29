//go:build cgo

package main

// The C stage (stage.c) runs from a constructor and never returns to Go
// when called as a stage; libseccomp turns profiles into BPF once per
// container (tripod-exec seccomp), never on an exec.

// #cgo LDFLAGS: -lseccomp
import "C"
