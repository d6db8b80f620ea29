package pod

import (
	"context"
	"slices"
	"time"

	"github.com/tripod-dev/tripod/internal/events"
)

// EventKind is a lifecycle transition, as the CRI's ContainerEventType.
type EventKind int

// Transitions of containers and pod sandboxes. A pod reports Created and
// Started when RunPod finishes, Stopped when it stops being ready (StopPod,
// RemovePod, or a reboot found by Recover) and Deleted when removed.
const (
	ContainerCreated EventKind = iota
	ContainerStarted
	ContainerStopped
	ContainerDeleted
)

// Event is one transition of a container, or of a pod sandbox (then
// ContainerID is the pod's ID), with the pod and all its containers as
// they were right after it: what kubelet's evented PLEG puts in its cache
// instead of asking for the statuses.
type Event struct {
	Kind        EventKind
	ContainerID string
	PodID       string
	Time        int64 // unix nanoseconds
	Pod         Pod
	Containers  []Container
}

// eventState is the manager's part for events.
type eventState struct {
	bus *events.Bus[Event]
	// Transitions found by Recover (exits while tripodd was down, pods
	// whose namespaces a reboot took) are replayed, with the present
	// statuses, to every subscriber until the container or pod is
	// removed: a kubelet reconnecting after the restart learns of them
	// without waiting for its next relist.
	recovering bool
	replay     map[string]replayed
	seq        int
	// bg lives as long as the manager: the exit watchers run on it.
	bg     context.Context
	stopBG context.CancelFunc
}

type replayed struct {
	kind EventKind
	seq  int
}

func newEventState(buffer int) eventState {
	if buffer <= 0 {
		buffer = 1024
	}
	bg, stop := context.WithCancel(context.Background())
	return eventState{bus: events.New[Event](buffer), replay: map[string]replayed{}, bg: bg, stopBG: stop}
}

// publishLocked reports a transition of id (a container of pod podID, or
// the pod itself). m.mu is held: events leave in the order of the state
// changes, and Publish never blocks.
func (m *Manager) publishLocked(kind EventKind, id, podID string) {
	switch {
	case kind == ContainerDeleted:
		delete(m.ev.replay, id)
	case m.ev.recovering:
		m.ev.seq++
		m.ev.replay[id] = replayed{kind: kind, seq: m.ev.seq}
	}
	if !m.ev.bus.Active() {
		return
	}
	m.ev.bus.Publish(m.eventLocked(kind, id, podID, time.Now().UnixNano()))
}

// eventLocked builds an event with the present pod and container records.
func (m *Manager) eventLocked(kind EventKind, id, podID string, at int64) Event {
	e := Event{Kind: kind, ContainerID: id, PodID: podID, Time: at}
	if p := m.pods[podID]; p != nil {
		e.Pod = *p
	}
	for _, c := range m.containers {
		if c.PodID == podID && c.State != Creating {
			e.Containers = append(e.Containers, *c)
		}
	}
	slices.SortFunc(e.Containers, func(a, b Container) int { return int(a.CreatedAt - b.CreatedAt) })
	return e
}

// Subscribe starts a subscription to pod and container events. replay
// comes first: the transitions the last start-up recovery found, for the
// containers and pods still there, with their present statuses. Nothing
// published after the subscription is missing from it, and nothing in
// replay is repeated by it.
func (m *Manager) Subscribe() (replay []Event, sub *events.Sub[Event]) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sub = m.ev.bus.Subscribe()
	ids := make([]string, 0, len(m.ev.replay))
	for id := range m.ev.replay {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b string) int { return m.ev.replay[a].seq - m.ev.replay[b].seq })
	now := time.Now().UnixNano()
	for _, id := range ids {
		podID := id
		if c := m.containers[id]; c != nil {
			podID = c.PodID
		} else if m.pods[id] == nil {
			continue
		}
		replay = append(replay, m.eventLocked(m.ev.replay[id].kind, id, podID, now))
	}
	return replay, sub
}

// watchExit records c's exit (and so reports it) as soon as the monitor
// sees it, rather than at the next status query. One goroutine and one
// monitor connection per running container; when the monitor is gone it
// retries with a back-off until the exit is known.
func (m *Manager) watchExit(c *Container) {
	go func() {
		ctx := m.ev.bg
		backoff := 500 * time.Millisecond
		for {
			if err := m.wait(ctx, c); err == nil || ctx.Err() != nil {
				return
			}
			m.mu.Lock()
			st := c.State
			m.mu.Unlock()
			if st != Running {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	}()
}
