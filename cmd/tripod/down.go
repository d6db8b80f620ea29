package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/daemonctl"
)

// down stops what `tripod up` started. Containers survive tripodd by
// design (tripod-monitor holds them), so a plain down leaves pods running
// for the next up to adopt, as restarting containerd or CRI-O does; --pods
// stops and removes every pod through the CRI first. The monitor is
// stopped too once no container is left for it to hold.
func (c *cli) down(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	var sf stackFlags
	sf.register(fs, false)
	pods := fs.Bool("pods", false, "stop and remove every pod (through the CRI) before stopping the daemons")
	grace := fs.Duration("timeout", 30*time.Second, "how long each daemon gets to exit after SIGTERM before SIGKILL")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("down: unexpected arguments %q", fs.Args())
	}
	if os.Geteuid() != 0 {
		return errors.New("tripod down needs root")
	}
	s, err := sf.load()
	if err != nil {
		return err
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	cri, criD := s.find("tripodd")
	csiP, csiD := s.find("tripod-csi")
	if cri == nil && csiP == nil {
		os.Remove(s.pidFile("tripodd"))
		os.Remove(s.pidFile("tripod-csi"))
		fmt.Println("tripod is not running.")
		return s.stopIdleMonitor(ctx, *grace)
	}
	left := -1
	if cri != nil && *pods {
		if err := deletePlayed(ctx, s); err != nil {
			return err
		}
	}
	if cri != nil {
		defer cri.Close()
		n, err := podsOnDown(ctx, criD.endpoint, *pods)
		if err != nil {
			return err
		}
		left = n
	} else if *pods {
		return errors.New("tripodd is not running, so its pods cannot be stopped through the CRI: run tripod up first")
	}
	if csiP != nil {
		defer csiP.Close()
	}
	var errs []error
	for _, p := range []struct {
		name string
		d    daemon
		proc *daemonctl.Proc
	}{{"tripodd", criD, cri}, {"tripod-csi", csiD, csiP}} {
		if p.proc == nil {
			os.Remove(s.pidFile(p.name))
			fmt.Printf("%s was not running.\n", p.name)
			continue
		}
		start := time.Now()
		killed, err := p.proc.Stop(ctx, *grace)
		if err != nil {
			errs = append(errs, fmt.Errorf("stopping %s (pid %d): %w", p.name, p.proc.PID, err))
			continue
		}
		os.Remove(s.pidFile(p.name))
		for _, sock := range p.d.sockets {
			// A daemon that had to be killed leaves its sockets.
			if !daemonctl.Answering(sock) {
				os.Remove(sock)
			}
		}
		how := "stopped"
		if killed {
			how = fmt.Sprintf("did not exit within %s of SIGTERM: killed", *grace)
		}
		fmt.Printf("%s (pid %d) %s in %.1fs.\n", p.name, p.proc.PID, how, time.Since(start).Seconds())
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	switch {
	case left > 0:
		fmt.Printf("%d pod(s) keep running: the next tripod up adopts them (tripod down --pods stops and removes them).\n", left)
		return nil
	case left == 0 && *pods:
		fmt.Println("no pods left.")
	}
	return s.stopIdleMonitor(ctx, *grace)
}

// podsOnDown counts tripodd's pods, or with remove stops and removes them
// all first, and returns how many are left.
func podsOnDown(ctx context.Context, endpoint string, remove bool) (int, error) {
	conn, err := grpcClient(endpoint)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	list, err := rt.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return 0, fmt.Errorf("listing pods through the CRI: %w", err)
	}
	if !remove {
		return len(list.Items), nil
	}
	for _, p := range list.Items {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := rt.StopPodSandbox(pctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id})
		if err == nil {
			_, err = rt.RemovePodSandbox(pctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id})
		}
		cancel()
		if err != nil {
			return 0, fmt.Errorf("removing pod %s (%s/%s): %w; tripodd and tripod-csi are left running", p.Id, p.GetMetadata().GetNamespace(), p.GetMetadata().GetName(), err)
		}
		fmt.Printf("removed pod %s/%s (%.13s)\n", p.GetMetadata().GetNamespace(), p.GetMetadata().GetName(), p.Id)
	}
	return 0, nil
}

// stopIdleMonitor stops tripodd's tripod-monitor when no container is left
// in tripodd's state: with tripodd stopped nothing can start one, and the
// next tripodd starts a monitor again on first need.
func (s *stack) stopIdleMonitor(ctx context.Context, grace time.Duration) error {
	if !s.noContainers() {
		return nil
	}
	p, err := daemonctl.Find(s.monitorPIDFile(), "tripod-monitor", s.monitorSocket())
	if err != nil {
		return nil
	}
	defer p.Close()
	if _, err := p.Stop(ctx, grace); err != nil {
		return fmt.Errorf("stopping tripod-monitor (pid %d): %w", p.PID, err)
	}
	os.Remove(s.monitorPIDFile())
	if !daemonctl.Answering(s.monitorSocket()) {
		os.Remove(s.monitorSocket())
	}
	fmt.Printf("tripod-monitor (pid %d) stopped: it held no containers.\n", p.PID)
	return nil
}
