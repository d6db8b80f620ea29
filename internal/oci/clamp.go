package oci

// ClampOOMScoreAdj is v raised to tripodd's own oom_score_adj if below it
// (see clampOOM), for specs adjusted after Generate.
func ClampOOMScoreAdj(v int) *int { return clampOOM(int64(v)) }
