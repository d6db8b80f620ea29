// Package kubelet holds tripod's end-to-end tests in which real Kubernetes
// components drive it: a kubelet on tripodd's CRI socket (standalone, with
// static pods; and registered with a kube-apiserver), tripod's CNI plugins
// on a private bridge, and tripod-csi registered with that kubelet and
// provisioned by the standard external-provisioner.
//
// The Kubernetes binaries are built from the Go module proxy by
// e2e/k8sbuild/build.sh (make k8s-tools) into .tools/k8s/<version>; etcd is
// Debian's etcd-server. The tests drive the components only through their
// command lines, sockets and HTTP APIs (and kubectl), so tripod's module
// never depends on k8s.io/kubernetes.
//
// What a kubelet needs on a machine like the project's VM (cgroup v1
// hybrid, no systemd), each set in the tests' configurations:
//   - failCgroupV1: false (kubelet 1.35+ refuses cgroup v1 otherwise);
//     cgroupDriver: cgroupfs, as tripodd's RuntimeConfig answers;
//   - makeIPTablesUtilChains: false, or kubelet leaves KUBE-* chains;
//   - a cgroupRoot that exists in every hierarchy (kubelet checks), unique
//     per test; kubelet builds its kubepods tree under it;
//   - static manifests written to a hidden file and renamed into place;
//   - no pause image: kubelet 1.37 has no sandbox image setting
//     (--pod-infra-container-image is gone) and pulls only what pods run;
//   - the API server: --endpoint-reconciler-type=none (its address is
//     loopback), a node named localhost reached with
//     --kubelet-preferred-address-types=Hostname, and the ServiceAccount
//     admission plugin off (no token controller runs);
//   - tripod's StorageClasses bind WaitForFirstConsumer, so a scheduler
//     runs, and the CSIDriver tracks capacity, so the provisioner publishes
//     CSIStorageCapacity (with no owner: it is not in a pod).
//
// Each component logs to a file in the test's directory; a failing test
// prints their tails, and TRIPOD_E2E_LOGS=<dir> keeps them all in
// <dir>/<test name>/.
//
// A kubelet also acts on paths outside its --root-dir: it sets six kernel
// tunables (vm.overcommit_memory, kernel.panic, ...), creates its device
// plugin socket in /var/lib/kubelet/device-plugins (and clears that
// directory at start), writes pod logs under /var/log/pods with links in
// /var/log/containers, and its log garbage collection removes pod log
// directories of pods it does not know. The tests put the tunables back
// and remove exactly what their kubelet made, and do not run on a machine
// where another kubelet runs.
package kubelet
