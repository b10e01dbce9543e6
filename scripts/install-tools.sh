#!/usr/bin/env bash
# install-tools.sh - tools the chart checks need, built from the Go module proxy and cached.
#
#   scripts/install-tools.sh helm      Installs helm (HELM_VERSION below) unless cached; prints
#                                      the binary's path on stdout. Idempotent; seconds when cached.
#   scripts/install-tools.sh promtool  Installs Prometheus' promtool (PROMETHEUS_VERSION below)
#                                      the same way; checks and unit-tests the chart's alerts.
#
# helm is not packaged by Debian and release downloads are not reachable here, so it is built
# with `go install helm.sh/helm/v3/cmd/helm@vX` (needs Go >= the version helm's go.mod names).
# Binary, Go module and build caches live under ${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector/
# (bin/helm-vX/helm, go/mod, go/build: the module and build caches are shared with
# scripts/control-plane.sh). Knob: PSI_HELM_VERSION. Progress and errors go to stderr.
set -euo pipefail

# Newest helm v3 release on the module proxy (checked: v3.22.0, needs go >= 1.26.0).
HELM_VERSION=${PSI_HELM_VERSION:-3.22.0}
# Newest Prometheus release on the module proxy (checked: 3.16.0, published as module version
# v0.316.0; its go.mod has no replace or exclude directives and needs go >= 1.26.7).
PROMETHEUS_VERSION=${PSI_PROMETHEUS_VERSION:-3.16.0}
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector
LOG_DIR=$CACHE_DIR/logs
# shellcheck source=scripts/lib/kube-module.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/kube-module.sh"

say() { printf 'install-tools: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

install_helm() {
    local v=$HELM_VERSION dest bin go log t0 out minor
    dest=$CACHE_DIR/bin/helm-v$v
    bin=$dest/helm
    if [[ -x $bin ]] && out=$("$bin" version --template '{{.Version}}' 2>/dev/null) && [[ $out == "v$v" ]]; then
        say "helm v$v cached: $bin"
        echo "$bin"
        return 0
    fi
    go=$(find_go) || die "no Go toolchain (go on PATH or /usr/local/go/bin/go): helm is built with go install"
    mkdir -p "$dest" "$LOG_DIR"
    log=$LOG_DIR/build-helm-v$v.log
    # One install at a time (tests may run in parallel).
    exec {lockfd}>>"$CACHE_DIR/helm-install.lock"
    flock -w 1800 "$lockfd" || die "timed out waiting for $CACHE_DIR/helm-install.lock"
    if [[ -x $bin ]] && out=$("$bin" version --template '{{.Version}}' 2>/dev/null) && [[ $out == "v$v" ]]; then
        echo "$bin"
        return 0
    fi
    say "building helm v$v with go install ($("$go" version | cut -d' ' -f3); cold: a few minutes, log $log)"
    t0=$(date +%s)
    # Same ldflags as helm's Makefile: version, and the Kubernetes version that `helm template`
    # and `helm lint` assume (the client-go minor helm v3.22 is built with: 1.37).
    minor=37
    (
        # Heartbeat so that a cold build never looks hung.
        while sleep 30; do say "  ... still building helm: $(($(date +%s) - t0))s"; done
    ) &
    local hb=$!
    if ! env GOBIN="$dest" GOMODCACHE="$CACHE_DIR/go/mod" GOCACHE="$CACHE_DIR/go/build" \
        GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false" \
        "$go" install -ldflags "-s -w \
            -X helm.sh/helm/v3/internal/version.version=v$v \
            -X helm.sh/helm/v3/internal/version.metadata= \
            -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
            -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
            -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
            -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
            -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
        "helm.sh/helm/v3/cmd/helm@v$v" >"$log" 2>&1; then
        kill "$hb" 2>/dev/null || true
        wait "$hb" 2>/dev/null || true
        tail -n 25 "$log" | sed 's/^/    /' >&2
        die "go install helm.sh/helm/v3/cmd/helm@v$v failed (log: $log)"
    fi
    kill "$hb" 2>/dev/null || true
    wait "$hb" 2>/dev/null || true
    out=$("$bin" version --template '{{.Version}}' 2>&1) || die "$bin does not run: $out"
    [[ $out == "v$v" ]] || die "$bin reports version '$out', expected v$v"
    say "helm v$v built in $(($(date +%s) - t0))s: $bin"
    echo "$bin"
}

# promtool at PROMETHEUS_VERSION: `go install` of github.com/prometheus/prometheus/cmd/promtool at
# the release's module version (Prometheus 3.X.Y is published as v0.3XX.Y), with the version
# ldflags of Prometheus' own build. Only `check rules` and `test rules` are used: no network.
install_promtool() {
    local v=$PROMETHEUS_VERSION dest bin go log t0 out modv major minor patch lockfd hb
    IFS=. read -r major minor patch <<<"$v"
    [[ $major == 3 && -n $minor && -n $patch ]] || die "PSI_PROMETHEUS_VERSION=$v: expected a 3.X.Y release"
    modv=v0.$((300 + minor)).$patch
    dest=$CACHE_DIR/bin/promtool-v$v
    bin=$dest/promtool
    cached() { [[ -x $bin ]] && out=$("$bin" --version 2>/dev/null) && [[ $out == *"version $v "* ]]; }
    if cached; then
        say "promtool v$v cached: $bin"
        echo "$bin"
        return 0
    fi
    go=$(find_go) || die "no Go toolchain (go on PATH or /usr/local/go/bin/go): promtool is built with go install"
    mkdir -p "$dest" "$LOG_DIR"
    log=$LOG_DIR/build-promtool-v$v.log
    exec {lockfd}>>"$CACHE_DIR/promtool-install.lock"
    flock -w 1800 "$lockfd" || die "timed out waiting for $CACHE_DIR/promtool-install.lock"
    if cached; then
        echo "$bin"
        return 0
    fi
    say "building promtool v$v (module $modv) with go install ($("$go" version | cut -d' ' -f3); cold: a few minutes, log $log)"
    t0=$(date +%s)
    (while sleep 30; do say "  ... still building promtool: $(($(date +%s) - t0))s"; done) &
    hb=$!
    if ! env GOBIN="$dest" GOMODCACHE="$CACHE_DIR/go/mod" GOCACHE="$CACHE_DIR/go/build" \
        GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false" \
        "$go" install -ldflags "-s -w \
            -X github.com/prometheus/common/version.Version=$v \
            -X github.com/prometheus/common/version.Revision=module-proxy-$modv \
            -X github.com/prometheus/common/version.Branch=release" \
        "github.com/prometheus/prometheus/cmd/promtool@$modv" >"$log" 2>&1; then
        kill "$hb" 2>/dev/null || true
        wait "$hb" 2>/dev/null || true
        tail -n 25 "$log" | sed 's/^/    /' >&2
        die "go install github.com/prometheus/prometheus/cmd/promtool@$modv failed (log: $log)"
    fi
    kill "$hb" 2>/dev/null || true
    wait "$hb" 2>/dev/null || true
    cached || die "$bin reports '$("$bin" --version 2>&1 | head -n 1)', expected version $v"
    say "promtool v$v built in $(($(date +%s) - t0))s: $bin"
    echo "$bin"
}

case ${1:-} in
helm) install_helm ;;
promtool) install_promtool ;;
*)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
