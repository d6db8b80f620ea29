// Package api is the protocol between the dhcp plugin and its daemon: one
// JSON request and one JSON response per connection on a unix socket. Both
// carry Version; a daemon answers a request of another version with an
// error instead of guessing, so a plugin and a daemon from different
// builds fail clearly rather than subtly.
package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tripod-dev/tripod/internal/cni/dhcp/dhcp4"
)

// Version of this protocol. Bump it on any incompatible change.
const Version = 1

// DefaultSocket is where the daemon listens unless told otherwise (the
// reference plugin's path).
const DefaultSocket = "/run/cni/dhcp.sock"

// Op is what a request asks the daemon to do.
type Op string

// Operations, one per CNI verb that needs the daemon.
const (
	OpAdd    Op = "add"    // acquire a lease and keep it
	OpDel    Op = "del"    // release a lease; success when there is none
	OpCheck  Op = "check"  // report the lease held
	OpGC     Op = "gc"     // release the leases of a network not in Valid
	OpStatus Op = "status" // answer when ready
)

// Attachment identifies a lease: one interface of one container on one
// network.
type Attachment struct {
	ContainerID string `json:"containerID"`
	Network     string `json:"network"`
	IfName      string `json:"ifName"`
}

func (a Attachment) String() string {
	return fmt.Sprintf("container %s interface %s on network %s", a.ContainerID, a.IfName, a.Network)
}

// Request is what the plugin sends.
type Request struct {
	Version int `json:"version"`
	Op      Op  `json:"op"`
	Attachment
	// Netns is the absolute path of the container's network namespace
	// (add).
	Netns  string  `json:"netns,omitempty"`
	Params *Params `json:"params,omitempty"`
	// Valid are the attachments of Network to keep (gc); Network of each
	// is ignored.
	Valid []Attachment `json:"valid,omitempty"`
}

// Params are how to talk to the DHCP server for one lease (add). They are
// kept with the lease and reused for every renewal.
type Params struct {
	ClientID  []byte         `json:"clientID,omitempty"`
	Request   []byte         `json:"request,omitempty"` // option 55
	Provide   []dhcp4.Option `json:"provide,omitempty"`
	Broadcast bool           `json:"broadcast,omitempty"`
	// Timeout bounds acquiring the lease; zero means the daemon's default.
	Timeout time.Duration `json:"timeout,omitempty"`
}

// Response is what the daemon answers.
type Response struct {
	Version int          `json:"version"`
	Error   *types.Error `json:"error,omitempty"`
	Lease   *Lease       `json:"lease,omitempty"`
}

// Lease is what a plugin needs to build its result.
type Lease struct {
	Address   netip.Prefix  `json:"address"`
	Routers   []netip.Addr  `json:"routers,omitempty"`
	Classless []dhcp4.Route `json:"classless,omitempty"` // option 121
	Static    []dhcp4.Route `json:"static,omitempty"`    // option 33
	DNS       []netip.Addr  `json:"dns,omitempty"`
	Domain    string        `json:"domain,omitempty"`
	Search    []string      `json:"search,omitempty"`
	// Expires is the lease's end; zero for an infinite lease.
	Expires time.Time `json:"expires,omitzero"`
}

// Call sends req to the daemon at socket and returns its response. A
// response of another protocol version is an error. The connection is
// closed when ctx ends, which tells the daemon to abandon the request.
func Call(ctx context.Context, socket string, req *Request) (*Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, &DialError{Socket: socket, Err: err}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	req.Version = Version
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, callErr(ctx, fmt.Errorf("sending request: %w", err))
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return nil, callErr(ctx, fmt.Errorf("reading response: %w", err))
	}
	if resp.Version != Version {
		return nil, fmt.Errorf("the daemon speaks protocol version %d, this plugin %d: run the daemon from the same tripod-cni build", resp.Version, Version)
	}
	return &resp, nil
}

func callErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// DialError means nothing answered on the socket.
type DialError struct {
	Socket string
	Err    error
}

func (e *DialError) Error() string { return fmt.Sprintf("connecting to %s: %v", e.Socket, e.Err) }
func (e *DialError) Unwrap() error { return e.Err }
