// Package steps holds the small control-flow helpers of plugins whose ADD
// builds things one after another and whose DEL takes them apart.
package steps

import "sync"

// Undo is the work of a failing ADD to take back, newest first.
type Undo []func()

// Push records f to run on Run.
func (u *Undo) Push(f func()) { *u = append(*u, f) }

// Run takes everything back, in reverse order.
func (u Undo) Run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// Parallel runs fns concurrently and returns their errors in order.
func Parallel(fns ...func() error) []error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, f := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f()
		}()
	}
	wg.Wait()
	return errs
}

// First returns the first non-nil error.
func First(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
