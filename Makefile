# SPDX-License-Identifier: Apache-2.0
# Entry points for people and CI. `make test` is exactly what CI runs.
SHELL := /bin/bash
CARGO ?= cargo
# Debian packages the tests, demo and benchmarks need.
DEBS := iproute2 nftables iputils-ping iperf3 tcpdump netcat-openbsd procps python3 \
	containernetworking-plugins graphviz
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: deps build build-tests build-release lint deps-guard test unit e2e k8s-tools manifests cluster conformance fuzz-build fuzz-smoke demo bench clean-netns

# From PyPI: kubernetes-validate checks the manifests against the API schemas.
PIPS := kubernetes-validate==1.37.0 prometheus-client==0.21.1

deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v kubernetes-validate >/dev/null && python3 -c "import prometheus_client" 2>/dev/null || python3 -m pip install -q --root-user-action=ignore $(PIPS)

build:
	$(CARGO) build --workspace --bins

build-release:
	$(CARGO) build --release --workspace --bins

lint:
	python3 .ci/import-circles
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

# STYLE §1: the CNI plugin starts once per pod and must stay small. Fails if
# its normal dependency tree holds any banned crate.
CNI_BANNED := kube k8s-openapi hickory nftables crypto_box clap axum hyper reqwest
deps-guard:
	@tree="$$($(CARGO) tree -p weave-cni -e normal --prefix none --no-dedupe)" || exit 1; \
	bad=""; for c in $(CNI_BANNED); do \
	  if grep -Eq "^$$c(-[a-z0-9_-]+)? v" <<<"$$tree"; then bad="$$bad $$c"; fi; \
	done; \
	if [ -n "$$bad" ]; then echo "weave-cni depends on banned crates:$$bad"; exit 1; fi; \
	if $(CARGO) tree -p weave-cni -e normal,features --prefix none | grep -q 'tokio feature "rt-multi-thread"'; then \
	  echo "weave-cni enables tokio's multi-thread runtime"; exit 1; fi; \
	echo "weave-cni dependency tree: no banned crate"

# Every binary and every test of the workspace in one cargo invocation: one
# invocation gives each dependency one feature set (dev-dependencies
# included), so the unit and e2e stages below reuse these artifacts instead of
# compiling the dependency tree again for a different package selection.
build-tests:
	$(CARGO) build --workspace --bins --tests

# Unit, wire, simulation and API tests: no root needed.
unit: build-tests
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace -E 'not package(weave-e2e)' --no-fail-fast
else
	$(CARGO) test --workspace --exclude weave-e2e --no-fail-fast
endif

# The upstream Kubernetes components of the real cluster (e2e/k8s/build.sh):
# built once per pinned version set into $(K8S_CACHE) (about 20 minutes on a
# fresh 2-core machine), reused at once afterwards. Prints the tools directory.
K8S_CACHE ?= /var/cache/weave-cluster
K8S_TOOLS = WEAVE_K8S_CACHE=$(K8S_CACHE) bash e2e/k8s/build.sh
# nerdctl for kube_nerdctl_3, keyed apart from the Kubernetes set (e2e/nerdctl/build.sh).
NERDCTL_TOOLS = WEAVE_K8S_CACHE=$(K8S_CACHE) bash e2e/nerdctl/build.sh

k8s-tools:
	@$(NERDCTL_TOOLS) >/dev/null
	@$(K8S_TOOLS)

# Rewrites manifests/weave-daemonset.yaml from the chart (e2e test chart_0 fails when they differ).
manifests:
	@tools=$$($(K8S_TOOLS)) && $$tools/bin/helm template weave charts/weave --namespace kube-system > manifests/weave-daemonset.yaml

# Test bed self-tests and multi-host end-to-end tests, the real cluster's
# among them: need root, run the real binaries (built by build-tests) in
# network namespaces.
e2e: deps build-tests
	@tools=$$($(K8S_TOOLS)) && nerdctl=$$($(NERDCTL_TOOLS)) && \
	export WEAVE_K8S_TOOLS=$$tools WEAVE_NERDCTL=$$nerdctl/bin/nerdctl E2E_BIN_DIR=$(CURDIR)/target/debug && \
	if [ "$(NEXTEST)" = yes ]; then \
	  $(CARGO) nextest run --workspace -E 'package(weave-e2e)' --no-fail-fast; \
	else \
	  $(CARGO) test -p weave-e2e --no-fail-fast; \
	fi

# A real cluster for people: upstream control plane, NODES nodes with
# containerd, kubelet and kube-proxy, held until Ctrl-C (which removes it all).
# CNI=reference installs the reference bridge network; CNI=none leaves the
# nodes NotReady until a network (weave) is installed.
NODES ?= 3
CNI ?= none
CLUSTER_DIR ?= /tmp/weave-cluster
cluster: deps build
	@tools=$$($(K8S_TOOLS)) && WEAVE_K8S_TOOLS=$$tools \
	  ./target/debug/weave-cluster up --nodes $(NODES) --cni $(CNI) --dir $(CLUSTER_DIR)

# The upstream suites against weave on a fresh 3-node real cluster: the Kubernetes e2e
# NetworkPolicy tests, the sig-network conformance tests and sig-network's
# ClusterNetworkPolicy suite (about an hour on 2 cores, too long for `make test`, which runs
# a subset in e2e/tests/kube_policy_3.rs). Writes e2e/conformance/RESULTS.md; run before each
# release and commit the file. SUITES=netpol,sig-network,cluster-network-policy picks suites.
SUITES ?= netpol,sig-network,cluster-network-policy
conformance: deps build
	@tools=$$($(K8S_TOOLS)) && WEAVE_K8S_TOOLS=$$tools E2E_BIN_DIR=$(CURDIR)/target/debug \
	  ./target/debug/weave-conformance --suites $(SUITES) --out e2e/conformance/RESULTS.md

# The libFuzzer targets, built with sanitizer coverage (what cargo-fuzz adds) so that
# libFuzzer is guided by the code it reaches; --target keeps the flags off build scripts
# and proc macros.
FUZZ_TARGET := $(shell rustc -vV | sed -n 's/^host: //p')
FUZZ_RUSTFLAGS := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing

fuzz-build:
	cd node-agent/fuzz && RUSTFLAGS="$(FUZZ_RUSTFLAGS)" $(CARGO) build --quiet --target $(FUZZ_TARGET)
	cd cni-plugin/fuzz && RUSTFLAGS="$(FUZZ_RUSTFLAGS)" $(CARGO) build --quiet --target $(FUZZ_TARGET)

# Each target runs 5 s; the last line shows the runs and how many inputs the corpus
# grew to (more than one means coverage feedback works).
fuzz-smoke: fuzz-build
	@set -o pipefail; for t in handshake gossip ipam sleeve noise fastdp nflog dns; do \
	  node-agent/fuzz/target/$(FUZZ_TARGET)/debug/$$t -max_total_time=5 2>&1 | grep -E '^#[0-9]+[[:space:]]+DONE|^Done' | tail -2 || exit 1; \
	done
	@set -o pipefail; cni-plugin/fuzz/target/$(FUZZ_TARGET)/debug/cni_config -max_total_time=5 2>&1 | grep -E '^#[0-9]+[[:space:]]+DONE|^Done' | tail -2

test: deps lint deps-guard fuzz-smoke unit e2e

demo: deps build
	./target/debug/weave-demo

bench: deps build-release
	E2E_BIN_DIR=$(CURDIR)/target/release ./target/release/weave-bench

# Removes namespaces and (empty) cluster cgroups left by a killed run (only
# ours: the wv prefix). A cluster started with --dir: weave-cluster down --dir DIR.
clean-netns:
	@for ns in $$(ip netns list | awk '{print $$1}' | grep -E '^wv[0-9a-f]{6}-'); do ip netns del $$ns; done
	@for cg in /sys/fs/cgroup/*/wv[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-node-*; do \
	  [ -d "$$cg" ] && find "$$cg" -depth -type d -exec rmdir {} + ; true; \
	done
