// Package l2test holds the tests of the macvlan, ipvlan and vlan plugins
// that need a kernel with those link types. TestInVM boots one QEMU VM
// (internal/vmtest) with a distribution kernel and runs this package's own
// TestGuest* tests inside it, for all three plugins at once.
package l2test
