#!/usr/bin/env bash
# bench-sync.sh - sync scale benchmark against a real local kube-apiserver (BENCHMARKS.md).
#
#   scripts/bench-sync.sh [--namespaces 100,1000] [--write-rates 20,200]
#
# Installs (cached) and starts etcd + kube-apiserver on loopback (scripts/control-plane.sh),
# builds helm if needed (scripts/install-tools.sh, cached), then runs benches/sync.rs with the
# release binary: per scenario, N labelled namespaces at once -> time until every one holds
# its Secret; a token roll -> time until every namespace holds the new token; 20 namespaces
# created one by one -> label-to-Secret latency; IAM calls, Secret writes, injector RSS.
# The control plane is stopped on exit. About 7 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

bench_on_control_plane bench-sync sync "$@"
