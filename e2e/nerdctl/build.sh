#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds nerdctl (containerd's Docker-compatible CLI, a CNI runtime outside Kubernetes) for
# the real-cluster test kube_nerdctl_3, from its published Go module pinned by the go.mod and
# go.sum beside this script.
#
# Kept apart from e2e/k8s/build.sh so that pinning or updating nerdctl does not change the
# key of the Kubernetes set (whose rebuild takes half an hour on a cold cache): its own key
# hashes this directory's files and the Go version. Output:
# WEAVE_K8S_CACHE/tools/nerdctl-KEY/bin/nerdctl, with the same module and build caches and
# the same lock as the Kubernetes set. Prints the directory as its last line on stdout;
# progress goes to stderr.
#
# nerdctl v2.4.2 asks for github.com/moby/moby/v2 v2.0.0-beta.28, which the Go module proxy
# does not serve (403); go.mod replaces it with beta.25, the newest served, whose sysinfo and
# meminfo packages (all nerdctl takes from it) build unchanged.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${WEAVE_K8S_CACHE:-/var/cache/weave-cluster}
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gocache GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

log() { printf '[nerdctl] %s\n' "$*" >&2; }

key=$(
	cd "$here"
	{ go version; cat build.sh go.mod go.sum; } | sha256sum | cut -c1-16
)
out=$cache/tools/nerdctl-$key
mkdir -p "$cache/tools"
exec 9>"$cache/tools/.lock"
flock 9
if [[ -f $out/.complete ]]; then
	log "nerdctl up to date in $out"
	echo "$out"
	exit 0
fi

start=$SECONDS
tmp=$cache/tools/.nerdctl-build-$key
rm -rf "$tmp"
mkdir -p "$tmp/bin"
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/bin/" github.com/containerd/nerdctl/v2/cmd/nerdctl)
(cd "$here" && go list -m -f 'nerdctl {{.Version}}' github.com/containerd/nerdctl/v2) >"$tmp/versions"
touch "$tmp/.complete"
rm -rf "$out"
mv "$tmp" "$out"
log "built in $((SECONDS - start)) s: $(du -sh "$out" | cut -f1) in $out"
echo "$out"
