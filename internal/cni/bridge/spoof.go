package bridge

import (
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/tripod-dev/tripod/internal/cni/nftown"
)

// spoofTableName is the bridge-family table of the macspoofchk rules.
const spoofTableName = "tripod_macspoof"

// SpoofTable is the table of the macspoofchk rules.
func SpoofTable() nftown.Table {
	return nftown.Table{
		Name:   spoofTableName,
		Family: nftables.TableFamilyBridge,
		Chains: []nftown.BaseChain{{
			Name: "prerouting", Type: nftables.ChainTypeFilter,
			Hook: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-300),
		}},
	}
}

// setSpoofCheck drops frames entering the bridge from port whose source
// MAC is not mac.
func setSpoofCheck(att nftown.Attachment, port string, mac net.HardwareAddr) error {
	name := make([]byte, 16) // IFNAMSIZ, NUL-padded as the kernel compares it
	copy(name, port)
	j := nftown.Jump{
		Match: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		},
		Rules: [][]expr.Any{{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(mac)},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}},
	}
	if err := SpoofTable().Set(att, map[string]nftown.Jump{"prerouting": j}); err != nil {
		return fmt.Errorf("macspoofchk rules: %w", err)
	}
	return nil
}

func removeSpoofCheck(att nftown.Attachment) error {
	if err := SpoofTable().Remove(att); err != nil {
		return fmt.Errorf("macspoofchk rules: %w", err)
	}
	return nil
}

func removeSpoofCheckWith(c *nftables.Conn, att nftown.Attachment) error {
	if err := SpoofTable().RemoveWith(c, att); err != nil {
		return fmt.Errorf("macspoofchk rules: %w", err)
	}
	return nil
}

func spoofCheckPresent(att nftown.Attachment) (bool, error) {
	tags, err := SpoofTable().Tags(att.Network)
	if err != nil {
		return false, fmt.Errorf("macspoofchk rules: %w", err)
	}
	for _, t := range tags {
		if t == att.Tag() {
			return true, nil
		}
	}
	return false, nil
}
