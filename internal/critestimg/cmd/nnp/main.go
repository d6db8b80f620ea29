// Command nnp is the nonewprivs image's entrypoint for critest's look-alike
// registry.k8s.io/e2e-test-images/nonewprivs: installed setuid root, it
// prints the effective uid it runs with, which is 0 only when the kernel
// honoured the setuid bit (no_new_privs unset).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Effective uid: %d\n", os.Geteuid())
}
