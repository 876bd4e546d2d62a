#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds the upstream components of the weave-cluster test bed (Kubernetes, etcd,
# containerd, runc, crictl, helm, the reference CNI plugins, the e2e suite, a static
# pause binary, sig-network's ClusterNetworkPolicy conformance suite and its reference
# policy controller kube-network-policies) from their published Go modules, pinned by the
# go.mod/go.sum files beside this script.
#
# Output: WEAVE_K8S_CACHE/tools/KEY/{bin,cni}/ where KEY hashes every input (the
# module files, this script, the Go version), so a change of any pin builds a new
# set and an unchanged set is reused at once. The Go module and build caches live
# in WEAVE_K8S_CACHE too and are kept between runs. Prints the tools directory on
# stdout as its last line; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${WEAVE_K8S_CACHE:-/var/cache/weave-cluster}
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gocache GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

k8s_version=v1.37.2
pause_version=3.10.2

log() { printf '[k8s-tools] %s\n' "$*" >&2; }

key=$(
	cd "$here"
	{ go version; cat build.sh */go.mod */go.sum */*.go; } | sha256sum | cut -c1-16
)
out=$cache/tools/$key
mkdir -p "$cache/tools"
# One build at a time per machine (tests may ask for the tools concurrently); the
# second caller finds the set complete once the lock is its.
exec 9>"$cache/tools/.lock"
flock 9
if [[ -f $out/.complete ]]; then
	log "tools up to date in $out"
	echo "$out"
	exit 0
fi

# Debian packages: cgo and libseccomp for runc, static libc for pause, busybox
# for the shell in the agnhost image.
debs=(gcc libc6-dev libseccomp-dev pkg-config busybox-static)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

start=$SECONDS
tmp=$cache/tools/.build-$key
rm -rf "$cache"/tools/.build-*
mkdir -p "$tmp/bin" "$tmp/cni"

# `go list -m` does not print tools; read the tool block of go.mod instead.
tools_of() {
	sed -n '/^tool (/,/^)/{/^tool (/d;/^)/d;s/^[[:space:]]*//;p}' "$here/$1/go.mod"
	sed -n 's/^tool \([^(].*\)$/\1/p' "$here/$1/go.mod"
}

go_build() {
	local module=$1 dest=$2
	shift 2
	local t0=$SECONDS
	local pkgs
	pkgs=$(tools_of "$module")
	# shellcheck disable=SC2086 # one word per package
	(cd "$here/$module" && go build -trimpath "$@" -o "$dest/" $pkgs)
	log "$module: $((SECONDS - t0)) s"
}

# Version stamps as kubernetes' hack/lib/version.sh sets them; without them every
# binary reports v0.0.0-master and version skew checks fail.
minor=${k8s_version#v1.}
minor=${minor%%.*}
build_date=$(date -u -d "@$(stat -c %Y "$here/kubernetes/go.sum")" +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

export CGO_ENABLED=0
go_build kubernetes "$tmp/bin" -ldflags "$ldflags"
t0=$SECONDS
(cd "$here/kubernetes" && go test -c -trimpath -ldflags "$ldflags" -o "$tmp/bin/e2e.test" k8s.io/kubernetes/test/e2e)
log "e2e.test: $((SECONDS - t0)) s"
go_build etcd "$tmp/bin" -ldflags "-s -w"
go_build containerd "$tmp/bin" -ldflags "-s -w"
go_build cri-tools "$tmp/bin" -ldflags "-s -w"
go_build helm "$tmp/bin" -ldflags "-s -w"
go_build cni "$tmp/cni" -ldflags "-s -w"
mv "$tmp/cni/cnitool" "$tmp/bin/cnitool"
CGO_ENABLED=1 go_build runc "$tmp/bin" -tags seccomp -ldflags "-s -w"

# sig-network's ClusterNetworkPolicy conformance suite: our harness in network-policy-api/
# (the suite's own conformance_test.go, which cannot be built from the module cache).
t0=$SECONDS
(cd "$here/network-policy-api" && go test -c -trimpath -ldflags "-s -w" -o "$tmp/bin/npa-conformance.test" .)
log "network-policy-api conformance: $((SECONDS - t0)) s"

# sig-network's reference policy controller, the anchor of BENCHMARKS.md. It sends new
# connections to user space with nftables' queue expression, which needs nft_queue
# (CONFIG_NFT_QUEUE); kernels without it (these machines) have the x_tables NFQUEUE target,
# which nftables runs through nft_compat. A copy of the module gets that one expression
# replaced (xtNFQueue below) and is built as it is otherwise, with its own go.mod and go.sum.
t0=$SECONDS
knp_dir=$(cd "$here/kube-network-policies" && go list -m -f '{{.Dir}}' sigs.k8s.io/kube-network-policies)
knp_version=$(cd "$here/kube-network-policies" && go list -m -f '{{.Version}}' sigs.k8s.io/kube-network-policies)
cp -r "$knp_dir" "$tmp/knp-src"
chmod -R u+w "$tmp/knp-src"
controller=$tmp/knp-src/pkg/networkpolicy/controller.go
perl -0pi -e 's/queue := &expr\.Queue\{Num: uint16\(c\.config\.QueueID\)\}\n\tif c\.config\.FailOpen \{\n\t\tqueue\.Flag = expr\.QueueFlagBypass\n\t\}/queue := xtNFQueue(uint16(c.config.QueueID), c.config.FailOpen)/g; s|\t"github.com/google/nftables/binaryutil"\n|\t"github.com/google/nftables/binaryutil"\n\t"github.com/google/nftables/xt"\n|' "$controller"
cat >>"$controller" <<'EOF'

// xtNFQueue is the x_tables NFQUEUE target (revision 3) run by nft_compat, for kernels
// without nft_queue: struct xt_NFQ_info_v3 {queuenum, queues_total, flags}, padded to 8.
func xtNFQueue(num uint16, bypass bool) *expr.Target {
	var flags uint16
	if bypass {
		flags = 1 // NFQ_FLAG_BYPASS
	}
	info := append(binaryutil.NativeEndian.PutUint16(num), binaryutil.NativeEndian.PutUint16(1)...)
	info = append(info, binaryutil.NativeEndian.PutUint16(flags)...)
	unknown := xt.Unknown(append(info, 0, 0))
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &unknown}
}
EOF
if [[ $(grep -c 'xtNFQueue(' "$controller") != 3 ]]; then
	log "kube-network-policies $knp_version: the queue expression moved; update the patch in build.sh"
	exit 1
fi
(cd "$tmp/knp-src" && go build -trimpath -ldflags "-s -w" -o "$tmp/bin/kube-network-policies" ./cmd)
rm -rf "$tmp/knp-src"
log "kube-network-policies: $((SECONDS - t0)) s"

# pause: upstream's pause.c, static, as build/pause/Makefile compiles it.
k8s_src=$(cd "$here/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
gcc -Os -Wall -Werror -static -DVERSION="v$pause_version-weave" -o "$tmp/bin/pause" "$k8s_src/build/pause/linux/pause.c"

cat >"$tmp/versions" <<EOF
kubernetes $k8s_version
pause $pause_version
agnhost $(cat "$k8s_src/test/images/agnhost/VERSION")
network-policy-api $(cd "$here/network-policy-api" && go list -m -f '{{.Version}}' sigs.k8s.io/network-policy-api)
kube-network-policies $knp_version
EOF
echo "$((SECONDS - start))" >"$tmp/build-seconds"
touch "$tmp/.complete"
rm -rf "$out"
mv "$tmp" "$out"
log "built in $((SECONDS - start)) s: $(du -sh "$out" | cut -f1) in $out"
echo "$out"
