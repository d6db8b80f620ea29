package play

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

type teardownOptions struct {
	claims        bool // delete the pod's claims (tripod delete --claims)
	createdClaims bool // delete the claims its start created (a failed start)
}

// teardownPod removes a pod entirely: its containers (each stopped with
// the pod's grace period), sandboxes, volumes (unpublished, claims
// unstaged when no other pod uses them), directories and logs, then its
// record. It is marked deleting first: if this fails or the process dies,
// the record stays and a later delete (or play) finishes the work.
func (n *Node) teardownPod(ctx context.Context, key string, o teardownOptions) error {
	st, err := n.st.Load(ctx)
	if err != nil {
		return err
	}
	r := st.Pods[key]
	if r == nil {
		return nil
	}
	if err := n.st.pod(ctx, key, func(r *PodRecord) { r.Deleting, r.DeletingPID = true, os.Getpid() }); err != nil {
		return err
	}
	var claims []string
	for _, v := range r.Volumes {
		if v.Kind == volClaim && !slices.Contains(claims, v.Claim) {
			claims = append(claims, v.Claim)
		}
	}
	var doomed []string
	if o.claims {
		doomed = claims
	}
	if o.createdClaims {
		for _, c := range r.ClaimsCreated {
			if !slices.Contains(doomed, c) {
				doomed = append(doomed, c)
			}
		}
	}
	grace := int64(30)
	if p, err := decodeRecord(r); err == nil && p.Spec.TerminationGracePeriodSeconds != nil {
		grace = *p.Spec.TerminationGracePeriodSeconds
	}
	if err := n.removeSandboxes(ctx, r, grace); err != nil {
		return err
	}
	if err := n.teardownVolumes(ctx, key); err != nil {
		return err
	}
	if err := removeTree(n.podDir(r.UID)); err != nil {
		return err
	}
	os.RemoveAll(filepath.Join(n.opts.Dir, "logs", fmt.Sprintf("%s_%s_%s", r.Namespace, r.Name, r.UID)))
	if err := n.st.Update(ctx, func(st *State) error {
		delete(st.Pods, key)
		return nil
	}); err != nil {
		return err
	}
	// Last: whoever read the record before it went finds no lock to take.
	os.Remove(n.st.lockFile(r.UID))
	var errs []error
	for _, c := range doomed {
		st, err := n.st.Load(ctx)
		if err != nil {
			return err
		}
		if users := claimUsers(st, c, ""); len(users) > 0 {
			n.event(key, "claim %s kept: still used by %v", c, users)
			continue
		}
		if err := n.deleteClaim(ctx, c); err != nil {
			errs = append(errs, err)
			continue
		}
		n.event(key, "deleted claim %s", c)
	}
	return errors.Join(errs...)
}

// removeSandboxes stops and removes every sandbox of the pod: the
// recorded one and any the CRI lists with the pod's UID (one whose
// RunPodSandbox answered but was never recorded, say).
func (n *Node) removeSandboxes(ctx context.Context, r *PodRecord, grace int64) error {
	cctx, cancel := withTimeout(ctx)
	resp, err := n.rt.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		LabelSelector: map[string]string{labelPodUID: r.UID}}})
	cancel()
	if err != nil {
		return fmt.Errorf("ListPodSandbox: %w", err)
	}
	ids := []string{}
	if r.Sandbox != "" {
		ids = append(ids, r.Sandbox)
	}
	for _, sb := range resp.Items {
		if !slices.Contains(ids, sb.Id) {
			ids = append(ids, sb.Id)
		}
	}
	for _, id := range ids {
		if err := n.stopSandbox(ctx, id, grace); err != nil {
			return err
		}
		cctx, cancel := withTimeout(ctx)
		_, err := n.rt.RemovePodSandbox(cctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
		cancel()
		if err != nil {
			return fmt.Errorf("RemovePodSandbox %.13s: %w", id, err)
		}
	}
	return nil
}

// stopSandbox stops a sandbox's running containers with the grace period
// (in parallel, as kubelet does), then the sandbox.
func (n *Node) stopSandbox(ctx context.Context, id string, grace int64) error {
	cctx, cancel := withTimeout(ctx)
	resp, err := n.rt.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		PodSandboxId: id, State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}})
	cancel()
	if err != nil {
		return fmt.Errorf("ListContainers: %w", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(resp.Containers))
	for i, c := range resp.Containers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, time.Duration(grace)*time.Second+callTimeout)
			defer cancel()
			if _, err := n.rt.StopContainer(sctx, &runtimeapi.StopContainerRequest{ContainerId: c.Id, Timeout: grace}); err != nil {
				errs[i] = fmt.Errorf("StopContainer %s: %w", c.Metadata.GetName(), err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	cctx, cancel = withTimeout(ctx)
	defer cancel()
	if _, err := n.rt.StopPodSandbox(cctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("StopPodSandbox %.13s: %w", id, err)
	}
	return nil
}

// Delete removes pods (namespace/name keys). A supervisor holding a pod
// notices the deleting mark within a second and lets go; Delete waits for
// that, up to a few seconds, so the two do not race. With claims, the
// pods' claims are deleted too (those no other pod uses).
func (n *Node) Delete(ctx context.Context, keys []string, claims bool) error {
	st, err := n.st.Load(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, key := range keys {
		r := st.Pods[key]
		if r == nil {
			errs = append(errs, fmt.Errorf("pod %s: not played here", key))
			continue
		}
		// Marked first: its supervisor lets go on seeing the mark.
		if err := n.st.pod(ctx, key, func(r *PodRecord) { r.Deleting, r.DeletingPID = true, os.Getpid() }); err != nil {
			return err
		}
		lock, err := n.st.lockPod(ctx, r.UID, 10*time.Second)
		var held *HeldError
		switch {
		case errors.Is(err, os.ErrNotExist):
			n.event(key, "deleted")
			continue // removed meanwhile
		case errors.As(err, &held):
			n.event(key, "pid %d still holds the pod; deleting anyway", held.PID)
		case err != nil:
			return err
		}
		err = n.teardownPod(ctx, key, teardownOptions{claims: claims})
		lock.release()
		if err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", key, err))
			continue
		}
		n.event(key, "deleted")
	}
	return errors.Join(errs...)
}

// DeleteClaims deletes claims by key (namespace/claim) that no pod uses.
func (n *Node) DeleteClaims(ctx context.Context, keys []string) error {
	st, err := n.st.Load(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, k := range keys {
		if st.Claims[k] == nil {
			errs = append(errs, fmt.Errorf("claim %s: not known here", k))
			continue
		}
		if err := n.deleteClaim(ctx, k); err != nil {
			errs = append(errs, err)
			continue
		}
		n.event(k, "claim deleted")
	}
	return errors.Join(errs...)
}
