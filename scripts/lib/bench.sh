# shellcheck shell=bash
# Sourced by scripts/bench-pods.sh and scripts/bench-sync.sh: the benchmarks that need a real
# kube-apiserver.

# bench_on_control_plane NAME BENCH ARGS...: installs (cached) and starts etcd + kube-apiserver
# on loopback (scripts/control-plane.sh), helm (scripts/install-tools.sh, cached; the benches
# render the chart), then `cargo bench --bench BENCH -- ARGS`. The control plane is stopped on
# exit. Profile: PSI_BENCH_PROFILE if set; else `dev` with --smoke (the smoke fails on errors
# only and reuses `cargo test`'s build; a dev build's timings mean nothing); else `bench`.
bench_on_control_plane() {
    local name=$1 bench=$2 profile=${PSI_BENCH_PROFILE:-} arg
    shift 2
    for arg in "$@"; do
        if [[ $arg == --smoke && -z $profile ]]; then profile=dev; fi
    done
    profile=${profile:-bench}
    scripts/control-plane.sh install
    BENCH_CP_DIR=$(mktemp -d "/tmp/psi-$name.XXXXXX")
    trap 'scripts/control-plane.sh stop "$BENCH_CP_DIR" || true; rm -rf "$BENCH_CP_DIR"' EXIT
    scripts/control-plane.sh start "$BENCH_CP_DIR"
    # shellcheck disable=SC1091
    source "$BENCH_CP_DIR/env"
    PSI_HELM=$(scripts/install-tools.sh helm)
    export PSI_HELM
    echo "$name: kube-apiserver ${PSI_TEST_KUBE_VERSION:-?}, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), profile $profile" >&2
    cargo bench --locked --profile "$profile" --bench "$bench" -- "$@"
}
