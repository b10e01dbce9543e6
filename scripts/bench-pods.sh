#!/usr/bin/env bash
# bench-pods.sh - Pod creation through a real kube-apiserver, with and without webhooks
# (BENCHMARKS.md "Pod creation through the API server"; benches/pods.rs says what it does).
#
#   scripts/bench-pods.sh [--pods N] [--rounds R] [--concurrency C] [--http1] [--peer PATH] [--smoke]
#
# Installs (cached) and starts etcd + kube-apiserver on loopback (scripts/control-plane.sh),
# helm if needed (scripts/install-tools.sh, cached), and runs benches/pods.rs with the
# release binary: scenarios none / noop / filtered / inject (/ peer with --peer PATH or
# PSI_BENCH_PEER) in turns, medians of the rounds. --smoke: one round of 20 creates per
# scenario, fails on errors only (scripts/test.sh). The control plane is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/control-plane.sh install
cp_dir=$(mktemp -d /tmp/psi-bench-pods.XXXXXX)
cleanup() { scripts/control-plane.sh stop "$cp_dir" || true; rm -rf "$cp_dir"; }
trap cleanup EXIT
scripts/control-plane.sh start "$cp_dir"
# shellcheck disable=SC1091
source "$cp_dir/env"
PSI_HELM=$(scripts/install-tools.sh helm)
export PSI_HELM
echo "bench-pods: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
cargo bench --locked --bench pods -- "$@"
