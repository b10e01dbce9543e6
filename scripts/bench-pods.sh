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
# scenario, fails on errors only (scripts/test.sh), with a dev build (PSI_BENCH_PROFILE
# overrides; scripts/lib/bench.sh). The control plane is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

bench_on_control_plane bench-pods pods "$@"
