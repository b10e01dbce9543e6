#!/usr/bin/env bash
# bench-admission.sh - admission load benchmark (BENCHMARKS.md).
#
#   scripts/bench-admission.sh [--smoke] [loadgen options]
#
# Builds the injector and the load generator (benches/loadgen.rs) and runs it: it starts
# `pullsecret-injector run --no-sync` on 127.0.0.1 with a fresh test certificate, sends
# AdmissionReviews over TLS (5.5 KB, 64 KB, 1 MiB) and prints one table: req/s at
# concurrency 32 and 64 (keep-alive), latency at a fixed rate with keep-alive and with a new
# TLS connection per request, server CPU seconds per 10k requests, peak RSS, errors, and the
# headline figure (5.5 KB, c=32) three times with its median. About 5 minutes.
#
#   --smoke   every scenario for 0.5 s (CI): exits 1 on any failed request, never on timings.
#             Built with the dev profile unless PSI_BENCH_PROFILE is set (reuses `cargo test`'s
#             build); the timings of a dev build mean nothing.
#
# Other options go to the load generator (--duration SECS, --reps N, --client-threads N,
# --fixtures 5k,64k,1m, --only throughput|latency, --rust-log FILTER; --help).
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PSI_BENCH_PROFILE:-}
for arg in "$@"; do
    if [[ $arg == --smoke && -z $profile ]]; then profile=dev; fi
done
profile=${profile:-bench}

command -v openssl >/dev/null || { echo "bench-admission.sh: openssl not found (apt-get install -y openssl)" >&2; exit 1; }
echo "bench-admission: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg), profile $profile" >&2
exec cargo bench --locked --profile "$profile" --bench loadgen -- "$@"
