// Package errdefs names the kinds of failure the core reports, so the gRPC
// layer can map them to status codes without the core knowing about gRPC.
package errdefs

import "errors"

// Kinds. Wrap one with fmt.Errorf("...: %w", errdefs.ErrNotFound) or with
// Wrap, and test with errors.Is.
var (
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrUnavailable        = errors.New("unavailable")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrDataLoss           = errors.New("data corrupt")
	ErrFailedPrecondition = errors.New("failed precondition")
)

// kindError attaches a kind to an error without changing its message.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string { return e.err.Error() }

func (e *kindError) Unwrap() []error { return []error{e.err, e.kind} }

// Wrap marks err as being of kind, keeping err's message and chain. A nil
// err stays nil; an err that already has a kind keeps its own.
func Wrap(kind, err error) error {
	if err == nil || Kind(err) != nil {
		return err
	}
	return &kindError{kind: kind, err: err}
}

// Kind returns the first kind err carries, or nil.
func Kind(err error) error {
	for _, k := range [...]error{ErrInvalidArgument, ErrNotFound, ErrAlreadyExists, ErrPermissionDenied,
		ErrUnavailable, ErrResourceExhausted, ErrDataLoss, ErrFailedPrecondition} {
		if errors.Is(err, k) {
			return k
		}
	}
	return nil
}
