package play

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PodStatus is a played pod as tripod ps shows it: the record, the CRI's
// view of its sandbox and containers, and the supervisor's notes.
type PodStatus struct {
	Namespace  string            `json:"namespace"`
	Name       string            `json:"name"`
	UID        string            `json:"uid"`
	Phase      string            `json:"phase"`
	Message    string            `json:"message,omitempty"`
	Sandbox    string            `json:"sandbox,omitempty"`
	IP         string            `json:"ip,omitempty"`
	Ports      []string          `json:"ports,omitempty"`
	Created    time.Time         `json:"created"`
	Supervisor int               `json:"supervisor,omitempty"` // PID, 0 when unsupervised
	Source     string            `json:"source,omitempty"`
	Containers []ContainerStatus `json:"containers"`
}

// ContainerStatus is the newest instance of one container of a pod.
type ContainerStatus struct {
	Name     string    `json:"name"`
	Init     bool      `json:"init,omitempty"`
	ID       string    `json:"id,omitempty"`
	State    string    `json:"state"` // Waiting, Running, Exited
	Ready    bool      `json:"ready"`
	Restarts uint32    `json:"restarts"`
	ExitCode int32     `json:"exitCode,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Message  string    `json:"message,omitempty"`
	Started  time.Time `json:"started,omitzero"`
}

// ClaimStatus is one claim's volume.
type ClaimStatus struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	VolumeID  string   `json:"volumeID"`
	Size      int64    `json:"size"`
	Staged    bool     `json:"staged"`
	Users     []string `json:"users,omitempty"`
}

// Status lists the played pods (sorted) and claims.
func (n *Node) Status(ctx context.Context) ([]PodStatus, []ClaimStatus, error) {
	st, err := n.st.Load(ctx)
	if err != nil {
		return nil, nil, err
	}
	var pods []PodStatus
	for _, r := range st.Pods {
		ps := PodStatus{Namespace: r.Namespace, Name: r.Name, UID: r.UID, Phase: r.Phase, Message: r.Message, Sandbox: r.Sandbox,
			Created: r.Created, Supervisor: n.st.holder(r.UID), Source: r.Source}
		if r.Deleting {
			ps.Phase = "Deleting"
		} else if r.Starting && ps.Supervisor == 0 {
			ps.Phase, ps.Message = "Interrupted", "its start was interrupted: tripod play or tripod delete finishes it"
		}
		p, err := decodeRecord(r)
		if err != nil {
			return nil, nil, err
		}
		for _, hp := range hostPorts(p) {
			ip := hp.pm.HostIp
			if ip != "" {
				ip += ":"
			}
			ps.Ports = append(ps.Ports, fmt.Sprintf("%s%d->%d/%s", ip, hp.pm.HostPort, hp.pm.ContainerPort, hp.pm.Protocol))
		}
		byName := map[string][]*runtimeapi.Container{}
		if r.Sandbox != "" {
			cctx, cancel := withTimeout(ctx)
			sb, err := n.rt.PodSandboxStatus(cctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: r.Sandbox})
			if err == nil {
				ps.IP = sb.Status.GetNetwork().GetIp()
			}
			cl, err := n.rt.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: r.Sandbox}})
			cancel()
			if err == nil {
				for _, c := range cl.Containers {
					byName[c.Metadata.GetName()] = append(byName[c.Metadata.GetName()], c)
				}
			}
		}
		for _, ref := range allContainers(p) {
			cs := ContainerStatus{Name: ref.c.Name, Init: ref.init, State: "Waiting"}
			note := r.Containers[ref.c.Name]
			if note != nil {
				cs.Ready, cs.Reason, cs.Message = note.Ready, note.Waiting, note.Message
			}
			list := byName[ref.c.Name]
			sort.Slice(list, func(i, j int) bool { return list[i].Metadata.GetAttempt() > list[j].Metadata.GetAttempt() })
			if len(list) > 0 {
				c := list[0]
				cs.ID, cs.Restarts = c.Id, c.Metadata.GetAttempt()
				cctx, cancel := withTimeout(ctx)
				s, err := n.rt.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.Id})
				cancel()
				if err == nil {
					switch s.Status.State {
					case runtimeapi.ContainerState_CONTAINER_RUNNING:
						cs.State, cs.Started = "Running", time.Unix(0, s.Status.StartedAt)
						cs.Reason, cs.Message = "", ""
					case runtimeapi.ContainerState_CONTAINER_EXITED:
						cs.Ready = false
						cs.ExitCode = s.Status.ExitCode
						if cs.Reason == "" {
							cs.State, cs.Reason = "Exited", s.Status.Reason
						}
					}
				}
			}
			if cs.State != "Running" {
				cs.Ready = false // a note from before a restart
			}
			ps.Containers = append(ps.Containers, cs)
		}
		pods = append(pods, ps)
	}
	sort.Slice(pods, func(i, j int) bool {
		return pods[i].Namespace+"/"+pods[i].Name < pods[j].Namespace+"/"+pods[j].Name
	})
	var claims []ClaimStatus
	for k, c := range st.Claims {
		claims = append(claims, ClaimStatus{Namespace: c.Namespace, Name: c.Name, VolumeID: c.VolumeID, Size: c.Size,
			Staged: c.Staging != "", Users: claimUsers(st, k, "")})
	}
	sort.Slice(claims, func(i, j int) bool {
		return claims[i].Namespace+"/"+claims[i].Name < claims[j].Namespace+"/"+claims[j].Name
	})
	return pods, claims, nil
}

// container finds a container of a played pod: by name, or the pod's only
// app container; previous picks the instance before the newest.
func (n *Node) container(ctx context.Context, key, name string, previous bool) (string, error) {
	st, err := n.st.Load(ctx)
	if err != nil {
		return "", err
	}
	r := st.Pods[key]
	if r == nil {
		return "", fmt.Errorf("pod %s: not played here", key)
	}
	p, err := decodeRecord(r)
	if err != nil {
		return "", err
	}
	if name == "" {
		if len(p.Spec.Containers) != 1 {
			var names []string
			for _, ref := range allContainers(p) {
				names = append(names, ref.c.Name)
			}
			return "", fmt.Errorf("pod %s has several containers: choose one with -c (%s)", key, strings.Join(names, ", "))
		}
		name = p.Spec.Containers[0].Name
	}
	known := false
	for _, ref := range allContainers(p) {
		known = known || ref.c.Name == name
	}
	if !known {
		return "", fmt.Errorf("pod %s has no container %s", key, name)
	}
	if r.Sandbox == "" {
		return "", fmt.Errorf("pod %s has no sandbox yet", key)
	}
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	cl, err := n.rt.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: r.Sandbox,
		LabelSelector: map[string]string{labelContainerName: name}}})
	if err != nil {
		return "", fmt.Errorf("ListContainers: %w", err)
	}
	list := cl.Containers
	sort.Slice(list, func(i, j int) bool { return list[i].Metadata.GetAttempt() > list[j].Metadata.GetAttempt() })
	i := 0
	if previous {
		i = 1
	}
	if len(list) <= i {
		if previous {
			return "", fmt.Errorf("container %s of pod %s has no previous instance", name, key)
		}
		return "", fmt.Errorf("container %s of pod %s has not been created yet", name, key)
	}
	return list[i].Id, nil
}

// Logs writes a container's log, the CRI prefix (time, stream, tag)
// stripped and partial lines joined. With follow it keeps reading until
// the container has exited and its log is drained, or ctx ends.
func (n *Node) Logs(ctx context.Context, key, name string, follow, previous bool, out io.Writer) error {
	id, err := n.container(ctx, key, name, previous)
	if err != nil {
		return err
	}
	cctx, cancel := withTimeout(ctx)
	s, err := n.rt.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	cancel()
	if err != nil {
		return fmt.Errorf("ContainerStatus: %w", err)
	}
	path := s.Status.LogPath
	if path == "" {
		return fmt.Errorf("container %.13s has no log file", id)
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) && follow {
		for err != nil && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			f, err = os.Open(path)
		}
	}
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var partial []byte
	for {
		line, err := r.ReadBytes('\n')
		partial = append(partial, line...)
		if err == nil {
			if err := writeCRILine(out, partial); err != nil {
				return err
			}
			partial = nil
			continue
		}
		if err != io.EOF {
			return err
		}
		if !follow {
			return nil
		}
		// Drained. Once the container has exited, one more pass reads
		// what it wrote last, and the follow ends.
		cctx, cancel := withTimeout(ctx)
		s, serr := n.rt.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		cancel()
		if serr != nil || s.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			follow = false
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// writeCRILine writes one CRI log line's message: "<time> <stream> <P|F>
// <message>"; a P (partial) entry continues on the next line.
func writeCRILine(out io.Writer, line []byte) error {
	line = bytes.TrimSuffix(line, []byte("\n"))
	fs := bytes.SplitN(line, []byte(" "), 4)
	if len(fs) < 3 {
		_, err := out.Write(append(line, '\n'))
		return err
	}
	msg := []byte{}
	if len(fs) == 4 {
		msg = fs[3]
	}
	if string(fs[2]) != "P" {
		msg = append(msg, '\n')
	}
	_, err := out.Write(msg)
	return err
}
