// Package cnierr gives every CNI failure tripod reports a code: the spec's
// codes where the spec has one, a documented tripod code (100 and up) where
// it does not. A plugin should never end with the catch-all 999.
package cnierr

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Codes from the CNI spec.
const (
	IncompatibleVersion = types.ErrIncompatibleCNIVersion      // 1
	UnsupportedField    = types.ErrUnsupportedField            // 2
	UnknownContainer    = types.ErrUnknownContainer            // 3
	InvalidEnv          = types.ErrInvalidEnvironmentVariables // 4
	IOFailure           = types.ErrIOFailure                   // 5
	DecodingFailure     = types.ErrDecodingFailure             // 6
	InvalidConfig       = types.ErrInvalidNetworkConfig        // 7
	TryAgainLater       = types.ErrTryAgainLater               // 11
	NotAvailable        = types.ErrPluginNotAvailable          // 50
	LimitedConnectivity = types.ErrLimitedConnectivity         // 51
)

// tripod's own codes, documented in docs/cni.md.
const (
	// RangeExhausted: the IPAM range has no free address left, even after
	// stale reservations were reclaimed.
	RangeExhausted uint = 100
	// AlreadyAttached: ADD for a (container, interface) that already holds
	// an attachment on this network; DEL it first.
	AlreadyAttached uint = 101
	// KernelUnsupported: the running kernel lacks a feature the config asks
	// for (a link type, a qdisc, an nftables expression).
	KernelUnsupported uint = 102
	// Netlink: the kernel refused a netlink request (links, addresses,
	// routes, nftables).
	Netlink uint = 103
	// DHCPDaemon: the dhcp IPAM plugin cannot reach its daemon, or the
	// daemon could not obtain a lease.
	DHCPDaemon uint = 104
	// Delegate: a delegated plugin (IPAM, flannel's delegate) failed
	// without giving a code of its own.
	Delegate uint = 105
)

// New returns a CNI error with code and a formatted message.
func New(code uint, format string, args ...any) *types.Error {
	return &types.Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Wrap gives err a code unless it already carries one, keeping the message
// of the original error as the details.
func Wrap(code uint, err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	var ce *types.Error
	if errors.As(err, &ce) {
		return &types.Error{Code: ce.Code, Msg: fmt.Sprintf(format, args...) + ": " + ce.Msg, Details: ce.Details}
	}
	return &types.Error{Code: code, Msg: fmt.Sprintf(format, args...) + ": " + err.Error()}
}

// Code returns the CNI code carried by err, or 0 when it has none.
func Code(err error) uint {
	var ce *types.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	return 0
}

// jsonPath turns encoding/json's field path, which names embedded Go
// structs ("PluginConf.name"), into the JSON path a user wrote ("name"),
// by walking v's type and dropping the components that are embedded
// fields without a JSON name of their own.
func jsonPath(v any, field string) string {
	var out []string
	t := reflect.TypeOf(v)
	for _, part := range strings.Split(field, ".") {
		for t != nil && (t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map) {
			t = t.Elem()
		}
		if t != nil && t.Kind() == reflect.Struct {
			if f, ok := t.FieldByName(part); ok && f.Anonymous && f.Tag.Get("json") == "" {
				t = f.Type
				continue
			}
			t = fieldByJSONName(t, part)
		} else {
			t = nil
		}
		if part != "" {
			out = append(out, part)
		}
	}
	if len(out) == 0 {
		return "(top level)"
	}
	return strings.Join(out, ".")
}

// fieldByJSONName finds the type of the field that decodes JSON key name,
// looking through embedded structs; nil when unknown.
func fieldByJSONName(t reflect.Type, name string) reflect.Type {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == name || (tag == "" && strings.EqualFold(f.Name, name)) {
			return f.Type
		}
		if f.Anonymous && tag == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				if r := fieldByJSONName(ft, name); r != nil {
					return r
				}
			}
		}
	}
	return nil
}

// Decode unmarshals a network configuration into v. A syntax error or a
// field of the wrong type is code 6 and names the offending field.
func Decode(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := jsonPath(v, te.Field)
			return New(DecodingFailure, "network config field %q: expected %s, got JSON %s", field, te.Type, te.Value)
		}
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return New(DecodingFailure, "network config is not valid JSON at byte %d: %v", se.Offset, err)
		}
		return New(DecodingFailure, "decoding network config: %v", err)
	}
	return nil
}
