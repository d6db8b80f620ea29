package benchutil

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Pct is the p-th percentile (nearest rank) of ds; 0 for none.
func Pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// MS formats d in milliseconds with two decimals.
func MS(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }
