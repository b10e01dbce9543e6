#!/usr/bin/env bash
# The project's test command (README: "Test it"); .ci/run calls exactly this.
#
# Runs, in order: rustfmt check, clippy (-D warnings), cargo-deny; the differential matching
# test against kubelet's own code (tests/kubelet_oracle.rs, oracle built by
# scripts/kubelet-oracle.sh); the image built from ./Dockerfile by BuildKit (scripts/image.sh);
# the demo (a helm install into a whole cluster); the install tests (tests/e2e_install.rs) in a
# whole one-node cluster inside a network namespace with no route out (scripts/cluster.sh); the
# Helm chart checks (scripts/chart-check.sh); then every other test: unit, integration and the
# end-to-end tests against a real etcd + kube-apiserver and a node on loopback. Everything is
# installed/built by the scripts (cached under ${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector),
# started on free ports or in its own network namespace, and stopped on exit. Fails loudly when
# anything is missing. Starts kubelets: run it under the machine's lock
# (flock /tmp/psi-kubelet.lock scripts/test.sh) where others may run one.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step line carries the time and the disk space left where target/ and the caches live
# (a CI run that ran out of disk stopped with "No space left on device" 26 minutes in).
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}
free_gb() { df -P -k "$1" 2>/dev/null | awk 'NR == 2 { printf "%.1f", $4 / 1048576 }'; }
step() {
  printf '\n== %s (%s; free: %s GB here, %s GB for the caches)\n' "$*" "$(date -u +%H:%M:%S)" \
    "$(free_gb .)" "$(mkdir -p "$CACHE_ROOT" && free_gb "$CACHE_ROOT")"
}
need() { command -v "$1" >/dev/null 2>&1 || { echo "scripts/test.sh: $1 not found: $2" >&2; exit 1; }; }

need cargo "install Rust (stable) with rustup"
need kubectl "kubectl is needed by the end-to-end tests"
if ! command -v openssl >/dev/null 2>&1; then
  step "installing openssl"
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

# Disk (measured 2026-12-05): a cold run peaks at ~12 GB (Go's build and module caches, ~10 GB
# while the tools are built, are emptied once they are: scripts/install-tools.sh trim-go) and
# leaves ~7 GB (target/ 2.5 GB, the project cache 3.5 GB, the cargo registry 0.6 GB).
# Non-incremental builds: the incremental cache would add ~1-3 GB that one run never reuses.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
avail=$(free_gb .)
if [[ -n $avail ]] && awk -v a="$avail" 'BEGIN { exit !(a < 14) }'; then
  echo "scripts/test.sh: WARNING: ${avail} GB free here; a cold run uses up to ~12 GB, a warm one ~4 GB besides its caches" >&2
fi

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --locked --all-targets -- -D warnings

step "supply chain: cargo deny (licenses, bans, sources; advisories where the RustSec DB is reachable)"
scripts/deny.sh

step "control plane: install (cached after the first run)"
scripts/control-plane.sh install

step "node: install (registry, containerd, runc, kubelet, test images; cached after the first run)"
scripts/node.sh install

# The webhook's matching against kubelet's own code (tests/kubelet_oracle.rs): the oracle is
# built from the Go module proxy with the same caches, then 100,000+ generated cases run
# (the seed is printed; PSI_ORACLE_SEED=<seed> replays a run).
step "kubelet oracle: build (cached after the first run)"
PSI_KUBELET_ORACLE=$(scripts/kubelet-oracle.sh install)
export PSI_KUBELET_ORACLE
step "matching: differential test against kubelet's credential lookup"
cargo test --locked --test kubelet_oracle -- --ignored --nocapture

step "helm (cached after the first run)"
PSI_HELM=$(scripts/install-tools.sh helm)
export PSI_HELM

step "cluster: install (kube-controller-manager, kube-scheduler, kube-proxy, CNI plugins; cached after the first run)"
scripts/cluster.sh install

step "image builder: install (BuildKit, local base images; cached after the first run)"
scripts/image.sh install

step "promtool (cached after the first run; checks and unit-tests the chart's alerts)"
PSI_PROMTOOL=$(scripts/install-tools.sh promtool)
export PSI_PROMTOOL

step "Go caches: trim (every tool above is cached as a binary)"
scripts/install-tools.sh trim-go

cp_dir=$(mktemp -d /tmp/psi-cp.XXXXXX)
cluster_dir=$(mktemp -d /tmp/psi-cluster.XXXXXX)
cleanup() {
  scripts/cluster.sh down "$cluster_dir" || true
  scripts/node.sh stop "$cp_dir" || true
  scripts/control-plane.sh stop "$cp_dir" || true
  rm -rf --one-file-system "$cp_dir" "$cluster_dir"
}
trap cleanup EXIT

step "image: ./Dockerfile built by BuildKit (scripts/image.sh build)"
PSI_IMAGE_ARCHIVE=$cp_dir/pullsecret-injector.tar
export PSI_IMAGE_ARCHIVE
scripts/image.sh build "$PSI_IMAGE_ARCHIVE" >/dev/null

# The demo and the install tests each bring up a whole cluster and remove it; they run before
# the test node starts because one machine runs one kubelet at a time.
step "demo (README: Run it): helm install into a cluster, a Deployment from cr.yandex runs"
scripts/demo.sh

step "install tests (tests/e2e_install.rs): the chart in a whole cluster in its own network namespace"
cargo test --locked --test e2e_install --no-run
scripts/cluster.sh up "$cluster_dir"
scripts/cluster.sh exec "$cluster_dir" cargo test --locked --offline --test e2e_install -- --include-ignored --test-threads=1
scripts/cluster.sh down "$cluster_dir"

step "control plane: start"
scripts/control-plane.sh start "$cp_dir"
# shellcheck disable=SC1091
source "$cp_dir/env"
echo "kube-apiserver ${PSI_TEST_KUBE_VERSION:-?} at ${PSI_TEST_APISERVER:-?}"

step "node: start (registry, containerd, kubelet on loopback)"
scripts/node.sh start "$cp_dir"
# shellcheck disable=SC1091
source "$cp_dir/node.env"

step "Helm chart: lint, render, server-side validation, install/upgrade"
scripts/chart-check.sh

step "tests (unit, integration, end-to-end)"
# The install tests ran above, inside the cluster's namespace.
cargo test --locked -- --include-ignored --skip differential_matching_against_kubelet --skip in_cluster::

step "benchmark smoke (0.5 s per scenario; fails on errors, never on timings)"
scripts/bench-admission.sh --smoke

step "benchmark smoke: Pod creation through the API server (20 creates per scenario; fails on errors, never on timings)"
scripts/bench-pods.sh --smoke
