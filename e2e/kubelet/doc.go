// Package kubelet holds tripod's end-to-end tests in which real Kubernetes
// components drive it: a kubelet (standalone, with static pods, and
// registered with a kube-apiserver) on tripodd's CRI socket, tripod's CNI
// plugins, and tripod-csi registered with that kubelet and provisioned by
// the standard external-provisioner.
//
// The Kubernetes binaries are built from the Go module proxy by
// e2e/k8sbuild/build.sh (make k8s-tools) into .tools/k8s/<version>; etcd is
// Debian's etcd-server. The tests talk to the components only through their
// command lines, sockets and HTTP APIs, so tripod's module does not depend
// on k8s.io/kubernetes. See docs/kubelet-e2e.md.
package kubelet
