package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dropStartupPages unmaps the pages of this executable's read-only
// segments that start-up and past calls touched (package initialisation
// walks much of the protobuf and gRPC tables; the kernel's fault-around
// maps 64 KiB per fault), so an idle driver's resident memory is small.
// The pages stay in the page cache and fault back in when used.
//
// Only read-only mappings of the executable with no anonymous (copied on
// write) pages are touched: for those MADV_DONTNEED cannot lose data. A
// position-independent build's relocated read-only data has such pages and
// is left alone.
func dropStartupPages() {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return
	}
	defer f.Close()
	type span struct{ start, end uint64 }
	var (
		spans []span
		cur   *span
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			cur = nil // a new mapping's header
			if len(fields) < 6 || fields[5] != exe || (fields[1] != "r-xp" && fields[1] != "r--p") {
				continue
			}
			lo, hi, _ := strings.Cut(fields[0], "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil && end > start {
				spans = append(spans, span{start, end})
				cur = &spans[len(spans)-1]
			}
			continue
		}
		if cur != nil && len(fields) >= 2 && fields[0] == "Anonymous:" && fields[1] != "0" {
			cur.end = cur.start // has copied-on-write pages: keep
		}
	}
	for _, s := range spans {
		if s.end > s.start {
			// Raw syscall: the range is ours but not a Go slice.
			unix.Syscall(unix.SYS_MADVISE, uintptr(s.start), uintptr(s.end-s.start), unix.MADV_DONTNEED)
		}
	}
}
