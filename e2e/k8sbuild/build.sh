#!/usr/bin/env bash
# Builds the Kubernetes binaries the e2e tests drive (kubelet, kube-apiserver,
# kube-controller-manager, kubectl) from the Go module proxy, at the version
# this directory's go.mod pins, into OUT (default
# <repo>/.tools/k8s/<version>). A build is skipped when OUT already holds
# binaries built from this exact go.mod and go.sum (stamp file), so a warm
# run costs a second.
#
# Also builds the CSI external-provisioner (pinned below) into the same
# directory. Its go.mod has replace lines (for the same staging modules), so
# `go install pkg@version` refuses it: it is built as the main module, inside
# its downloaded source, the way the Makefile builds critest.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
GO="${GO:-go}"

EXTERNAL_PROVISIONER="${EXTERNAL_PROVISIONER:-github.com/kubernetes-csi/external-provisioner/v6@v6.4.0}"

version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2 }' "$here/go.mod")"
[ -n "$version" ] || { echo "build.sh: $here/go.mod requires no k8s.io/kubernetes version" >&2; exit 1; }
out="${1:-$repo/.tools/k8s/$version}"
mkdir -p "$out"

stamp="$( { cat "$here/go.mod" "$here/go.sum"; echo "$EXTERNAL_PROVISIONER"; } | sha256sum | cut -c1-16)"
bins=(kubelet kube-apiserver kube-controller-manager kube-scheduler kubectl csi-provisioner)
fresh=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || fresh=0; done
if [ "$fresh" = 1 ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "k8s tools $version up to date in $out"
	exit 0
fi
rm -f "$out/.stamp"

# The version the binaries report (kubelet registers it on its Node; the
# API server checks skew against it), as upstream's hack/lib/version.sh sets
# it.
minor="${version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

start=$SECONDS
echo "building kubelet, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $version into $out"
(cd "$here" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$out/" tool)
echo "building $EXTERNAL_PROVISIONER"
src="$("$GO" mod download -json "$EXTERNAL_PROVISIONER" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$src" ] || { echo "build.sh: go mod download $EXTERNAL_PROVISIONER gave no directory" >&2; exit 1; }
(cd "$src" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w -X main.version=${EXTERNAL_PROVISIONER##*@}" \
	-o "$out/csi-provisioner" ./cmd/csi-provisioner)
echo "$stamp" > "$out/.stamp"
echo "k8s tools $version built in $((SECONDS - start)) s"
