// Package cgroup2test holds the tests of tripodd on a unified cgroup v2
// hierarchy, which this project's development hosts (cgroup v1 hybrid)
// lack. TestInVM boots one QEMU VM (internal/vmtest) with a distribution
// kernel, mounts cgroup2 at /sys/fs/cgroup with its controllers enabled,
// and runs this package's own TestGuest* tests inside it against the
// static tripodd, tripod-monitor, tripod-cni and runc binaries.
//
// Only the cgroupfs driver is tested: the VM has no systemd, which the
// systemd driver talks to over D-Bus.
package cgroup2test
