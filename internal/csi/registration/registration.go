// Package registration serves kubelet's plugin registration API
// (pluginregistration.Registration, v1) so a node needs no
// node-driver-registrar sidecar: kubelet finds <dir>/<driver>-reg.sock,
// asks GetInfo for the driver's CSI socket, and reports the outcome.
//
// The messages are built at run time from their published .proto
// definition (dynamicpb) instead of importing k8s.io/kubelet, which would
// pull k8s.io/apimachinery and its dependencies into the driver.
package registration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// ServiceName is the gRPC service kubelet calls.
const ServiceName = "pluginregistration.Registration"

// Messages holds the API's message types.
type Messages struct {
	InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse protoreflect.MessageType
}

// NewMessages builds the message types of pluginregistration v1's api.proto.
func NewMessages() (*Messages, error) {
	str := func(name string, n int32, repeated bool) *descriptorpb.FieldDescriptorProto {
		label := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL
		if repeated {
			label = descriptorpb.FieldDescriptorProto_LABEL_REPEATED
		}
		return &descriptorpb.FieldDescriptorProto{Name: proto.String(name), JsonName: proto.String(name), Number: proto.Int32(n),
			Label: label.Enum(), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()}
	}
	boolean := func(name string, n int32) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{Name: proto.String(name), JsonName: proto.String(name), Number: proto.Int32(n),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: descriptorpb.FieldDescriptorProto_TYPE_BOOL.Enum()}
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("tripod/pluginregistration/api.proto"),
		Package: proto.String("pluginregistration"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("PluginInfo"), Field: []*descriptorpb.FieldDescriptorProto{
				str("type", 1, false), str("name", 2, false), str("endpoint", 3, false), str("supported_versions", 4, true)}},
			{Name: proto.String("RegistrationStatus"), Field: []*descriptorpb.FieldDescriptorProto{
				boolean("plugin_registered", 1), str("error", 2, false)}},
			{Name: proto.String("RegistrationStatusResponse")},
			{Name: proto.String("InfoRequest")},
		},
	}
	fd, err := protodesc.NewFile(fdp, nil)
	if err != nil {
		return nil, fmt.Errorf("build registration descriptors: %w", err)
	}
	m := fd.Messages()
	return &Messages{
		PluginInfo:                 dynamicpb.NewMessageType(m.ByName("PluginInfo")),
		RegistrationStatus:         dynamicpb.NewMessageType(m.ByName("RegistrationStatus")),
		RegistrationStatusResponse: dynamicpb.NewMessageType(m.ByName("RegistrationStatusResponse")),
		InfoRequest:                dynamicpb.NewMessageType(m.ByName("InfoRequest")),
	}, nil
}

// Server answers kubelet for one CSI driver.
type Server struct {
	Name     string // driver name
	Endpoint string // absolute path of the driver's CSI socket
	Log      *slog.Logger
	msgs     *Messages
}

// SocketPath is where kubelet looks for the driver's registration socket.
func SocketPath(dir, name string) string { return filepath.Join(dir, name+"-reg.sock") }

// Serve serves registration on <dir>/<name>-reg.sock until ctx ends, then
// removes the socket (kubelet then deregisters the driver).
func (s *Server) Serve(ctx context.Context, dir string) error {
	msgs, err := NewMessages()
	if err != nil {
		return err
	}
	s.msgs = msgs
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	path := SocketPath(dir, s.Name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create registration dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale registration socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.Remove(path)
	srv := grpc.NewServer()
	srv.RegisterService(s.desc(), s)
	stop := context.AfterFunc(ctx, srv.Stop)
	defer stop()
	s.Log.Info("registration socket ready", "socket", path)
	if err := srv.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve registration: %w", err)
	}
	return ctx.Err()
}

type registrationServer interface{ getInfo() }

func (s *Server) getInfo() {}

func (s *Server) desc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*registrationServer)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "GetInfo", Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := s.msgs.InfoRequest.New().Interface()
				if err := dec(in); err != nil {
					return nil, err
				}
				out := s.msgs.PluginInfo.New()
				fields := out.Descriptor().Fields()
				out.Set(fields.ByName("type"), protoreflect.ValueOfString("CSIPlugin"))
				out.Set(fields.ByName("name"), protoreflect.ValueOfString(s.Name))
				out.Set(fields.ByName("endpoint"), protoreflect.ValueOfString(s.Endpoint))
				versions := out.Mutable(fields.ByName("supported_versions")).List()
				versions.Append(protoreflect.ValueOfString("1.0.0"))
				return out.Interface(), nil
			}},
			{MethodName: "NotifyRegistrationStatus", Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := s.msgs.RegistrationStatus.New()
				if err := dec(in.Interface()); err != nil {
					return nil, err
				}
				fields := in.Descriptor().Fields()
				if in.Get(fields.ByName("plugin_registered")).Bool() {
					s.Log.Info("registered with kubelet")
				} else {
					s.Log.Error("kubelet refused registration", "error", in.Get(fields.ByName("error")).String())
				}
				return s.msgs.RegistrationStatusResponse.New().Interface(), nil
			}},
		},
		Metadata: "pluginregistration/api.proto",
	}
}
