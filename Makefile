# tripod — build, test, lint and benchmark. `make test` is what CI runs
# (through .ci/run) as root on a fresh machine, so it installs everything
# it needs first.

SHELL := /bin/bash
GO ?= go
TOOLS := $(CURDIR)/.tools/bin
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/tripod-dev/tripod/internal/cni/plugin.BuildVersion=$(VERSION)
export PATH := $(TOOLS):$(PATH)

# Debian packages the tests use: ping and ip (connectivity), dnsmasq (the
# DHCP server the dhcp plugin is tested against), QEMU with Debian's kernel
# and busybox (macvlan/ipvlan/vlan, which this host's kernel lacks).
APT_PACKAGES := iproute2 iputils-ping nftables dnsmasq-base qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils kmod runc
# tripod-csi formats and grows volumes with these (mkfs.ext4/resize2fs,
# mkfs.xfs/xfs_growfs).
APT_PACKAGES += e2fsprogs xfsprogs util-linux
# A current runc is built from source (Debian's 1.1 predates idmapped
# mounts, which user namespaces need); seccomp support needs libseccomp.
APT_PACKAGES += libseccomp-dev pkg-config gcc libc6-dev
# CheckpointContainer dumps and StartContainer restores through CRIU (see
# docs/runtime.md for why it cannot run on kernels >= 6.13 with bookworm's
# 3.17; the QEMU guest test runs it on a 6.1 kernel). CRIU locks a pod's
# network with iptables-restore, and saves tmpfs mounts with GNU tar: the
# guest gets the host's.
APT_PACKAGES += criu iptables tar
# critest's look-alike images copy pgrep (procps) and ipcs (util-linux) from the host.
APT_PACKAGES += procps
# systemd-analyze verifies the systemd units make install writes.
APT_PACKAGES += systemd
# The kubelet e2e (e2e/kubelet) runs Debian's etcd, and Kubernetes
# components built from the Go module proxy through the wrapper module
# e2e/k8sbuild into .tools/k8s/<version> (build.sh skips a build it already
# made from the same go.mod/go.sum).
APT_PACKAGES += etcd-server

# Go tools, pinned.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
CNITOOL := github.com/containernetworking/cni/cnitool@v1.3.1
CRICTL := sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0
CSI_SANITY := github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@v5.6.0
# critest is a test binary: built with `go test -c` inside the module.
CRITOOLS_MOD := sigs.k8s.io/cri-tools@v1.37.0
# runc, static (it also runs inside the QEMU cgroup v2 test) and with
# seccomp: without the tag it silently ignores seccomp profiles.
RUNC := github.com/opencontainers/runc@v1.5.2
REFERENCE_PLUGINS_VERSION := v1.9.1
REFERENCE_PLUGINS := bridge ptp host-local loopback portmap tuning bandwidth firewall
# containerd 2 and its runc shim for bench-cri's second containerd column,
# built as upstream builds them (the shim without cgo); kept off PATH so
# that Debian's containerd 1.6 keeps finding its own shim.
CONTAINERD2_VERSION := v2.4.2
CONTAINERD2_DIR ?= $(TOOLS)/containerd2


# make install: the usual PREFIX and DESTDIR (staging for packages), and
# the binaries of runc and crictl to ship (the pinned ones make go-tools
# builds, unless named).
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/lib/tripod
SYSCONFDIR ?= /etc
CNIBINDIR ?= /opt/cni/bin
UNITDIR ?= $(SYSCONFDIR)/systemd/system
INSTALL_RUNC ?= $(TOOLS)/runc
INSTALL_CRICTL ?= $(TOOLS)/crictl
INSTALL_ENV = DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' BINDIR='$(BINDIR)' LIBEXECDIR='$(LIBEXECDIR)' SYSCONFDIR='$(SYSCONFDIR)' \
	CNIBINDIR='$(CNIBINDIR)' UNITDIR='$(UNITDIR)' BIN='$(BIN)' RUNC='$(INSTALL_RUNC)' CRICTL='$(INSTALL_CRICTL)'

.PHONY: all build deps apt-deps go-tools k8s-tools bench-deps lint test test-go bench bench-report bench-cni bench-images bench-csi bench-play bench-cri up install uninstall install-cni clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/tripod-cni ./cmd/tripod-cni
	@mkdir -p $(BIN)/cni
	@for p in $$($(BIN)/tripod-cni list); do ln -sfn ../tripod-cni $(BIN)/cni/$$p; done
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X github.com/tripod-dev/tripod/internal/daemon.Version=$(VERSION)' -o $(BIN)/tripodd ./cmd/tripodd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/tripod ./cmd/tripod
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $(BIN)/tripod-csi ./cmd/tripod-csi
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/tripod-monitor ./cmd/tripod-monitor
	@# The monitor's exec stage is C (a cgo constructor) with libseccomp,
	@# linked static like the rest.
	CGO_ENABLED=1 $(GO) build -trimpath -ldflags '-s -w -extldflags -static' -o $(BIN)/tripod-exec ./cmd/tripod-exec

deps: apt-deps go-tools k8s-tools

k8s-tools:
	GO=$(GO) e2e/k8sbuild/build.sh

apt-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

go-tools: $(TOOLS)/staticcheck $(TOOLS)/cnitool $(TOOLS)/crictl $(TOOLS)/csi-sanity $(TOOLS)/critest $(TOOLS)/runc

$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install $(STATICCHECK)

$(TOOLS)/cnitool:
	GOBIN=$(TOOLS) $(GO) install $(CNITOOL)

$(TOOLS)/crictl:
	GOBIN=$(TOOLS) $(GO) install $(CRICTL)
$(TOOLS)/csi-sanity:
	GOBIN=$(TOOLS) $(GO) install $(CSI_SANITY)

$(TOOLS)/runc:
	GOBIN=$(TOOLS) CGO_ENABLED=1 $(GO) install -tags 'seccomp urfave_cli_no_docs netgo osusergo' -ldflags '-extldflags -static' $(RUNC)

$(TOOLS)/critest:
	@mkdir -p $(TOOLS)
	cd "$$($(GO) mod download -json $(CRITOOLS_MOD) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p')" && \
		$(GO) test -c -o $(TOOLS)/critest ./cmd/critest

# The reference plugins (and the iptables they drive), for benchmarks side
# by side with tripod's.
bench-deps: $(TOOLS)/reference/bridge $(CONTAINERD2_DIR)/containerd
	@command -v iptables >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables >/dev/null

$(CONTAINERD2_DIR)/containerd:
	GOBIN=$(CONTAINERD2_DIR) CGO_ENABLED=0 $(GO) install github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD2_VERSION)
	GOBIN=$(CONTAINERD2_DIR) $(GO) install -tags no_btrfs github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD2_VERSION)

$(TOOLS)/reference/bridge:
	@mkdir -p $(TOOLS)/reference
	GOBIN=$(TOOLS)/reference CGO_ENABLED=0 $(GO) install $(foreach p,$(REFERENCE_PLUGINS),github.com/containernetworking/plugins/plugins/$(if $(filter host-local,$(p)),ipam,$(if $(filter portmap tuning bandwidth firewall,$(p)),meta,main))/$(p)@$(REFERENCE_PLUGINS_VERSION))

lint:
	@out=$$(gofmt -l cmd internal e2e bench deploy); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...
	@# Every pod start execs the plugins: keep net/http (and its ~1 ms of
	@# start-up) out of the CNI binary.
	@if $(GO) list -deps ./cmd/tripod-cni | grep -qx 'net/http'; then echo "cmd/tripod-cni must not depend on net/http (use internal/cni/delegate, not libcni's invoke)"; exit 1; fi

test: deps build lint test-go

test-go:
	TRIPOD_CNI_BIN=$(BIN)/cni TRIPOD_CSI_BIN=$(BIN)/tripod-csi $(GO) test -count=1 -timeout 60m ./...

# Every benchmark, one after the other, then bench/report.md and its chart
# bench/report.png, made from the results each writes (bench/out/NAME.json;
# its output is in bench/out/NAME.log). A benchmark that fails leaves its
# section of the report empty, and make bench fails at the end.
BENCH_OUT ?= $(CURDIR)/bench/out
BENCHES ?= cni images csi play cri

bench: deps build bench-deps
	@rm -rf $(BENCH_OUT) && mkdir -p $(BENCH_OUT)
	@st=0; for b in $(BENCHES); do \
		echo "== bench-$$b (output also in $(BENCH_OUT)/$$b.log)"; \
		TRIPOD_BENCH_OUT=$(BENCH_OUT) $(MAKE) --no-print-directory bench-$$b 2>&1 | tee $(BENCH_OUT)/$$b.log; \
		[ $${PIPESTATUS[0]} -eq 0 ] || { echo "bench-$$b failed: its section of the report stays empty"; st=1; }; \
	done; \
	$(MAKE) --no-print-directory bench-report || st=1; \
	exit $$st

# The report alone, from the results already in $(BENCH_OUT).
bench-report:
	$(GO) run ./bench/report -in $(BENCH_OUT) -md bench/report.md -png bench/report.png -commit $(VERSION)

bench-cni: deps build bench-deps
	TRIPOD_CNI_BIN=$(BIN)/cni TRIPOD_REFERENCE_BIN=$(TOOLS)/reference $(GO) run ./bench/cni

# Image pull + unpack, tripodd vs containerd 2.4 and Debian's containerd 1.6
# (their CRI plugin), the same image from the same local registry. Needs root.
bench-images: deps build bench-deps
	@command -v containerd >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd >/dev/null; }
	TRIPODD=$(BIN)/tripodd TRIPOD_CONTAINERD2_DIR=$(CONTAINERD2_DIR) $(GO) run ./bench/images

# tripod-csi latencies (p50/p99 per call) and RSS, against the built binary.
bench-csi: deps build
	TRIPOD_CSI_BIN=$(BIN)/tripod-csi $(GO) run ./bench/csi

# `tripod play -d examples/web.yaml` to the first HTTP 200 on its hostPort,
# cold and warm, on a stack `tripod up` starts in a network namespace of its
# own. Needs root.
bench-play: deps build
	TRIPOD_BIN=$(BIN)/tripod $(GO) run ./bench/play

# Pod start, stop, memory per pod, stats over 50 pods, ExecSync latency and
# throughput, an idle exec session's memory and critest -benchmark, tripodd vs
# containerd 2.4 and Debian's containerd 1.6 (their CRI plugin with the
# reference CNI plugins), all on the runc first on PATH. Needs root. It runs in
# a network namespace of its own: what the daemons' CNI plugins leave in the
# host's (tripod's nftables tables, the reference portmap's iptables chains,
# bridges) goes with it.
bench-cri: deps build bench-deps
	@command -v containerd >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd >/dev/null; }
	$(GO) build -o $(BIN)/bench-cri ./bench/cri
	TRIPODD=$(BIN)/tripodd TRIPOD_CNI_BIN=$(BIN)/cni TRIPOD_REFERENCE_BIN=$(TOOLS)/reference TRIPOD_CONTAINERD2_DIR=$(CONTAINERD2_DIR) \
		unshare --net sh -c 'ip link set lo up && exec $(BIN)/bench-cri'

# The main job: dependencies, build, install (make install), then `tripod
# up`: tripodd and tripod-csi run as daemons (logs in /var/log/tripod), the
# CNI plugins and a default bridge network are in place, and crictl
# reaches tripodd. `tripod down` stops them.
up: deps install
	$(BINDIR)/tripod up

# Programs into $(BINDIR) (tripodd, tripod, tripod-csi, tripod-monitor,
# tripod-exec, tripod-cni, crictl), runc into $(LIBEXECDIR), the CNI plugins into
# $(CNIBINDIR), tripod.toml into $(SYSCONFDIR)/tripod, systemd units into
# $(UNITDIR) (not enabled). uninstall removes exactly what install put, from
# the manifest in $(LIBEXECDIR).
install: build $(INSTALL_RUNC) $(INSTALL_CRICTL)
	$(INSTALL_ENV) deploy/node/install.sh install

uninstall:
	$(INSTALL_ENV) deploy/node/install.sh uninstall

# The CNI plugins alone, into $(CNIBINDIR) (no network config).
install-cni: build
	$(BIN)/tripod cni install --from $(BIN) --bin-dir $(CNIBINDIR) --no-config

clean:
	rm -rf $(BIN)
