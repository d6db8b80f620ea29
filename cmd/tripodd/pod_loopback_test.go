package main_test

import (
	"testing"
)

// TestPodLoopback: a pod's network namespace has its loopback up, so a
// server on 127.0.0.1 in the pod is reachable from the pod (critest's
// capability specs ping 127.0.0.1; kubelet probes and sidecars rely on it).
func TestPodLoopback(t *testing.T) {
	e := newPodEnv(t)
	pod := e.runPod("lo")
	c := e.create(pod, "main", "sh", "-c",
		"mkdir -p /w && echo loopback-ok > /w/i && httpd -p 127.0.0.1:8080 -h /w && wget -q -O - http://127.0.0.1:8080/i")
	e.start(c)
	if st := e.waitExited(c); st.ExitCode != 0 {
		t.Fatalf("wget from 127.0.0.1 in the pod: exit %d (%s)", st.ExitCode, st.Message)
	}
}
