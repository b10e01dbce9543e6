#!/usr/bin/env bash
# kubelet-oracle.sh - builds the oracle of the differential matching test (tests/kubelet_oracle.rs):
# tests/kubelet-oracle/main.go compiled against kubelet's own packages
# (k8s.io/kubernetes/pkg/credentialprovider, pkg/util/parsers) at the version the test
# cluster runs.
#
#   scripts/kubelet-oracle.sh install   Builds the oracle unless cached and prints its path on
#                                       stdout. Idempotent; seconds when cached.
#
# Built the way scripts/control-plane.sh builds kube-apiserver: a scratch module requiring
# k8s.io/kubernetes at the pinned version (KUBE_VERSION of control-plane.sh, or
# PSI_KUBE_VERSION) with a replace for every staging module, and the same Go module and build
# caches under ${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector/ (go/mod, go/build). The
# binary is rebuilt when main.go, this script, the version or the Go toolchain changes; the
# upstream test files its `corpus` reads are copied beside it (bin/kubelet-oracle-vX/upstream),
# since the Go caches are emptied after the install steps. Progress and errors go to stderr,
# prefixed "kubelet-oracle:".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=$ROOT/tests/kubelet-oracle/main.go
PINNED=$(sed -nE 's/^KUBE_VERSION=\$\{PSI_KUBE_VERSION:-([0-9.]+)\}$/\1/p' "$ROOT/scripts/control-plane.sh")
KUBE_VERSION=${PSI_KUBE_VERSION:-$PINNED}
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector
LOG_DIR=$CACHE_DIR/logs
# shellcheck source=scripts/lib/kube-module.sh
source "$ROOT/scripts/lib/kube-module.sh"

say() { printf 'kubelet-oracle: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

# run_go LOG ARGS...: go ARGS with output in LOG; on failure, the log's tail and exit.
run_go() {
    local log=$1
    shift
    if ! "$GO" "$@" >"$log" 2>&1; then
        tail -n 25 "$log" | sed 's/^/    /' >&2
        die "go $* failed (log: $log)"
    fi
}

# The upstream tests whose literals `kubelet-oracle corpus` prints (tests/kubelet-oracle/main.go).
KEYRING_TEST_DIR=pkg/credentialprovider
REFERENCE_TESTS=(reference_test.go normalize_test.go regexp_test.go)

# upstream_copied DIR: DIR holds every upstream test file the corpus reads.
upstream_copied() {
    local f
    [[ -f $1/kubernetes/$KEYRING_TEST_DIR/keyring_test.go ]] || return 1
    for f in "${REFERENCE_TESTS[@]}"; do [[ -f $1/reference/$f ]] || return 1; done
}

install() {
    [[ -n $KUBE_VERSION ]] || die "no KUBE_VERSION found in scripts/control-plane.sh"
    [[ -f $SRC ]] || die "$SRC is missing"
    GO=$(find_go) || die "no Go toolchain (go on PATH or /usr/local/go/bin/go); scripts/control-plane.sh install needs it too"
    go_env
    local v=$KUBE_VERSION dir=$CACHE_DIR/src/kubelet-oracle-v$KUBE_VERSION
    local dest=$CACHE_DIR/bin/kubelet-oracle-v$KUBE_VERSION bin stamp
    bin=$dest/kubelet-oracle
    mkdir -p "$dir" "$dest" "$LOG_DIR"
    exec {lockfd}>>"$CACHE_DIR/kubelet-oracle.lock"
    flock -w 3600 "$lockfd" || die "timed out waiting for $CACHE_DIR/kubelet-oracle.lock"

    stamp="$(cat "$SRC" "$ROOT/scripts/lib/kube-module.sh" "$ROOT/scripts/kubelet-oracle.sh" | sha256sum | cut -d' ' -f1) v$v $("$GO" version)"
    if [[ -x $bin && -f $dest/STAMP && $(cat "$dest/STAMP") == "$stamp" ]] && "$bin" version >/dev/null 2>&1 &&
        upstream_copied "$dest/upstream"; then
        say "cached: $bin ($("$bin" version))"
        echo "$bin"
        return 0
    fi

    local t0 log=$LOG_DIR/build-kubelet-oracle-v$v.log
    t0=$(date +%s)
    say "building the oracle against k8s.io/kubernetes v$v with $("$GO" version | cut -d' ' -f3) (cold: several minutes; log $log)"
    kube_scratch_module "$GO" "$v" "$dir" psi.local/kubelet-oracle || die "cannot write the scratch module"
    # The kube-apiserver build's go.sum holds every checksum the oracle needs; without it go
    # resolves them through the proxy.
    if [[ ! -f $dir/go.sum && -f $CACHE_DIR/src/kube-v$v/go.sum ]]; then
        cp "$CACHE_DIR/src/kube-v$v/go.sum" "$dir/go.sum"
    fi
    cp "$SRC" "$dir/main.go"
    cd "$dir"
    run_go "$log.deps" list -mod=mod -deps -f '{{.ImportPath}}' .
    local kdir rdir rver ldflags
    kdir=$("$GO" list -mod=mod -m -f '{{.Dir}}' k8s.io/kubernetes) || die "go list -m k8s.io/kubernetes failed"
    rdir=$("$GO" list -mod=mod -m -f '{{.Dir}}' github.com/distribution/reference) || die "go list -m github.com/distribution/reference failed"
    rver=$("$GO" list -mod=mod -m -f '{{.Version}}' github.com/distribution/reference)
    # The upstream test files that `kubelet-oracle corpus` reads, copied beside the binary: the
    # Go module cache they come from is emptied once the tools are built (install-tools.sh
    # trim-go), the oracle is not.
    rm -rf "$dest/upstream"
    mkdir -p "$dest/upstream/kubernetes/$KEYRING_TEST_DIR" "$dest/upstream/reference"
    cp "$kdir/$KEYRING_TEST_DIR/keyring_test.go" "$dest/upstream/kubernetes/$KEYRING_TEST_DIR/" ||
        die "no keyring_test.go in $kdir/$KEYRING_TEST_DIR"
    for f in "${REFERENCE_TESTS[@]}"; do
        cp "$rdir/$f" "$dest/upstream/reference/" || die "no $f in $rdir"
    done
    upstream_copied "$dest/upstream" || die "the upstream test files were not copied to $dest/upstream"
    ldflags="-s -w -X main.kubernetesVersion=v$v -X main.kubernetesDir=$dest/upstream/kubernetes"
    ldflags+=" -X main.referenceVersion=$rver -X main.referenceDir=$dest/upstream/reference"
    run_go "$log" build -mod=mod -ldflags "$ldflags" -o "$dest/.kubelet-oracle.tmp" .
    "$dest/.kubelet-oracle.tmp" version >/dev/null || die "the built oracle does not run"
    mv -f "$dest/.kubelet-oracle.tmp" "$bin"
    echo "$stamp" >"$dest/STAMP"
    say "built in $(($(date +%s) - t0))s: $bin ($("$bin" version))"
    echo "$bin"
}

case ${1:-} in
install) install ;;
*)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
