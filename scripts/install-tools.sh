#!/usr/bin/env bash
# install-tools.sh - tools the chart checks need, built from the Go module proxy and cached.
#
#   scripts/install-tools.sh helm      Installs helm (HELM_VERSION below) unless cached; prints
#                                      the binary's path on stdout. Idempotent; seconds when cached.
#   scripts/install-tools.sh buildkit  Installs BuildKit's buildkitd and buildctl
#                                      (BUILDKIT_VERSION below) unless cached; prints the folder
#                                      holding both on stdout. Used by scripts/image.sh.
#   scripts/install-tools.sh promtool  Installs Prometheus' promtool (PROMETHEUS_VERSION below)
#                                      the same way; checks and unit-tests the chart's alerts.
#   scripts/install-tools.sh trim-go   Empties the Go build and module caches (below) once the
#                                      tools are built: ~10 GB after a cold install. The test
#                                      command runs it after its install steps.
#
# None is packaged by Debian and release downloads are not reachable here, so all are built
# from the Go module proxy (needs Go >= the version their go.mod names).
# Binaries, Go module and build caches live under ${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector/
# (bin/helm-vX/helm, bin/buildkit-vX/{buildkitd,buildctl}, bin/promtool-vX/promtool, go/mod,
# go/build: the module and build caches are shared with scripts/control-plane.sh). Knobs:
# PSI_HELM_VERSION, PSI_BUILDKIT_VERSION, PSI_PROMETHEUS_VERSION. Progress and errors go to stderr.
set -euo pipefail

# Newest helm v3 release on the module proxy (checked: v3.22.0, needs go >= 1.26.0).
HELM_VERSION=${PSI_HELM_VERSION:-3.22.0}
# Newest BuildKit release on the module proxy (checked: v0.34.2; needs go >= 1.26.8).
BUILDKIT_VERSION=${PSI_BUILDKIT_VERSION:-0.34.2}
# Newest Prometheus release on the module proxy (checked: 3.16.0, published as module version
# v0.316.0; its go.mod has no replace or exclude directives and needs go >= 1.26.7).
PROMETHEUS_VERSION=${PSI_PROMETHEUS_VERSION:-3.16.0}
LIB_NAME=install-tools
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# go_install LABEL DEST LOG LDFLAGS PKG@VERSION: `go install` into DEST with the shared caches
# (go_env), logged with a heartbeat (run_logged).
go_install() {
    local label=$1 dest=$2 log=$3 ldflags=$4 go
    shift 4
    go=$(find_go) || die "no Go toolchain (go on PATH or /usr/local/go/bin/go): $label is built with go install"
    mkdir -p "$dest" "$LOG_DIR"
    say "building $label with go install ($("$go" version | cut -d' ' -f3); cold: a few minutes, log $log)"
    go_env
    GOBIN=$dest run_logged "building $label" "$log" "$go" install -ldflags "$ldflags" "$@" ||
        die "go install $* failed (log: $log)"
}

install_helm() {
    local v=$HELM_VERSION dest bin log out minor lockfd
    dest=$CACHE_DIR/bin/helm-v$v
    bin=$dest/helm
    if [[ -x $bin ]] && out=$("$bin" version --template '{{.Version}}' 2>/dev/null) && [[ $out == "v$v" ]]; then
        say "helm v$v cached: $bin"
        echo "$bin"
        return 0
    fi
    mkdir -p "$dest" "$LOG_DIR"
    log=$LOG_DIR/build-helm-v$v.log
    # One install at a time (tests may run in parallel).
    exec {lockfd}>>"$CACHE_DIR/helm-install.lock"
    flock -w 1800 "$lockfd" || die "timed out waiting for $CACHE_DIR/helm-install.lock"
    if [[ -x $bin ]] && out=$("$bin" version --template '{{.Version}}' 2>/dev/null) && [[ $out == "v$v" ]]; then
        echo "$bin"
        return 0
    fi
    # Same ldflags as helm's Makefile: version, and the Kubernetes version that `helm template`
    # and `helm lint` assume (the client-go minor helm v3.22 is built with: 1.37).
    minor=37
    go_install "helm v$v" "$dest" "$log" "-s -w \
            -X helm.sh/helm/v3/internal/version.version=v$v \
            -X helm.sh/helm/v3/internal/version.metadata= \
            -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
            -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
            -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
            -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
            -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
        "helm.sh/helm/v3/cmd/helm@v$v"
    out=$("$bin" version --template '{{.Version}}' 2>&1) || die "$bin does not run: $out"
    [[ $out == "v$v" ]] || die "$bin reports version '$out', expected v$v"
    echo "$bin"
}

# buildkitd and buildctl at BUILDKIT_VERSION, static (CGO off), with the version ldflags of
# BuildKit's own Dockerfile. `go install module/cmd/x@v` refuses BuildKit (its go.mod has
# `exclude` directives), so both are built in a scratch module that requires BuildKit at that
# version and repeats its `exclude` block: the same dependency versions as BuildKit's own
# build. buildkitd runs build steps with runc (Debian's package; scripts/image.sh installs it).
install_buildkit() {
    local v=$BUILDKIT_VERSION dest src go json gomod log lockfd ld
    dest=$CACHE_DIR/bin/buildkit-v$v
    if buildkit_cached "$dest" "$v"; then
        say "buildkit v$v cached: $dest"
        echo "$dest"
        return 0
    fi
    mkdir -p "$CACHE_DIR" "$LOG_DIR"
    exec {lockfd}>>"$CACHE_DIR/buildkit-install.lock"
    flock -w 1800 "$lockfd" || die "timed out waiting for $CACHE_DIR/buildkit-install.lock"
    if buildkit_cached "$dest" "$v"; then
        echo "$dest"
        return 0
    fi
    go=$(find_go) || die "no Go toolchain (go on PATH or /usr/local/go/bin/go): buildkit is built from the Go module proxy"
    go_env
    log=$LOG_DIR/build-buildkit-v$v.log
    src=$CACHE_DIR/src/buildkit-v$v
    mkdir -p "$src" "$dest"
    json=$(cd / && "$go" mod download -json "github.com/moby/buildkit@v$v" 2>&1) ||
        die "go mod download github.com/moby/buildkit@v$v failed: $json"
    gomod=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [[ -f $gomod ]] || die "no go.mod for github.com/moby/buildkit@v$v in: $json"
    {
        echo "// generated by scripts/install-tools.sh: builds buildkitd and buildctl"
        echo "module psi.local/buildkit-build"
        echo
        sed -nE 's/^go ([0-9.]+)[[:space:]]*$/go \1/p' "$gomod" | head -n 1
        echo
        echo "require github.com/moby/buildkit v$v"
        echo
        # BuildKit's exclude block(s), verbatim from its go.mod.
        awk '/^exclude[[:space:]]*\(/ { on = 1 } on { print } on && /^\)/ { on = 0 } /^exclude[[:space:]]+[^(]/ { print }' "$gomod"
    } >"$src/go.mod"
    say "building buildkit v$v (buildkitd, buildctl) in scratch module $src ($("$go" version | cut -d' ' -f3); cold: a few minutes)"
    ld="-s -w -X github.com/moby/buildkit/version.Version=v$v -X github.com/moby/buildkit/version.Revision=module-proxy"
    cd "$src"
    run_logged "compiling buildkitd" "$log" "$go" build -mod=mod -ldflags "$ld" \
        -tags "osusergo netgo static_build" -o "$dest/.buildkitd.tmp" github.com/moby/buildkit/cmd/buildkitd ||
        die "building buildkitd v$v failed (log: $log)"
    run_logged "compiling buildctl" "$log.buildctl" "$go" build -mod=mod -ldflags "$ld" \
        -o "$dest/.buildctl.tmp" github.com/moby/buildkit/cmd/buildctl ||
        die "building buildctl v$v failed (log: $log.buildctl)"
    mv -f "$dest/.buildkitd.tmp" "$dest/buildkitd"
    mv -f "$dest/.buildctl.tmp" "$dest/buildctl"
    buildkit_cached "$dest" "$v" || die "the buildkit binaries in $dest do not report v$v: $("$dest/buildkitd" --version 2>&1)"
    echo "$dest"
}

# buildkit_cached DIR VERSION: DIR holds buildkitd and buildctl that report VERSION.
buildkit_cached() {
    local t out
    for t in buildkitd buildctl; do
        out=$("$1/$t" --version 2>/dev/null) && [[ $out == *" v$2 "* || $out == *" v$2" ]] || return 1
    done
}

# promtool at PROMETHEUS_VERSION: `go install` of github.com/prometheus/prometheus/cmd/promtool at
# the release's module version (Prometheus 3.X.Y is published as v0.3XX.Y), with the version
# ldflags of Prometheus' own build. Only `check rules` and `test rules` are used: no network.
install_promtool() {
    local v=$PROMETHEUS_VERSION dest bin out modv major minor patch lockfd
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
    mkdir -p "$CACHE_DIR"
    exec {lockfd}>>"$CACHE_DIR/promtool-install.lock"
    flock -w 1800 "$lockfd" || die "timed out waiting for $CACHE_DIR/promtool-install.lock"
    if cached; then
        echo "$bin"
        return 0
    fi
    go_install "promtool v$v (module $modv)" "$dest" "$LOG_DIR/build-promtool-v$v.log" "-s -w \
        -X github.com/prometheus/common/version.Version=$v \
        -X github.com/prometheus/common/version.Revision=module-proxy-$modv \
        -X github.com/prometheus/common/version.Branch=release" \
        "github.com/prometheus/prometheus/cmd/promtool@$modv"
    cached || die "$bin reports '$("$bin" --version 2>&1 | head -n 1)', expected version $v"
    echo "$bin"
}

# trim_go: empties the Go build and module caches under CACHE_DIR/go (up to ~10 GB after a cold
# install: Kubernetes, BuildKit, Prometheus). Every tool built from them is cached as a binary
# under CACHE_DIR/bin or CACHE_DIR/kube-vX, so only a version change builds again (from the
# module proxy, as on a fresh machine). Skipped, with a message, while a build holds the caches.
trim_go() {
    local dir=$CACHE_DIR/go lockfd go before
    [[ -d $dir ]] || { say "Go caches: none under $dir"; return 0; }
    exec {lockfd}>>"$CACHE_DIR/go-cache.lock"
    if ! flock -x -n "$lockfd"; then
        say "Go caches: a build is using them; not trimmed"
        return 0
    fi
    before=$(du -sh "$dir" 2>/dev/null | cut -f1)
    if go=$(find_go); then
        GOMODCACHE=$dir/mod GOCACHE=$dir/build GOTOOLCHAIN=local GOFLAGS=-modcacherw \
            "$go" clean -cache -modcache >/dev/null 2>&1 || true
    fi
    # What `go clean` leaves (or everything, without a Go toolchain), and the Go 1.19 build cache
    # of control-plane.sh's fallback build from Debian's source package.
    rm -rf --one-file-system "$dir"
    say "Go caches: trimmed $dir (was $before; the built tools stay cached)"
}

case ${1:-} in
helm) install_helm ;;
buildkit) install_buildkit ;;
promtool) install_promtool ;;
trim-go) trim_go ;;
*)
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
