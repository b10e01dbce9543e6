#!/usr/bin/env bash
# control-plane.sh - a real etcd + kube-apiserver on 127.0.0.1 for end-to-end tests
# (the envtest idea; see TESTING.md in the shared docs).
#
#   scripts/control-plane.sh install [apiserver|kubelet|all|cluster]   (default: apiserver)
#       Idempotent. Installs etcd (Debian's etcd-server) and builds kube-apiserver and/or
#       kubelet (all: both; cluster: also kube-controller-manager, kube-scheduler and
#       kube-proxy, for scripts/cluster.sh) at the pinned KUBE_VERSION from the Go module proxy,
#       every binary in the same scratch module (fallback: Debian's kubernetes 1.20.2 source
#       package). Binaries, Go module and build caches live under
#       ${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector/ (stable paths: bin/kube-apiserver,
#       bin/kubelet, bin/kube-controller-manager, ...); a rerun with the cache in place takes
#       seconds.
#   scripts/control-plane.sh start DIR
#       Starts etcd and kube-apiserver on free loopback ports, state/logs/pids in DIR (created
#       if needed; every start begins with an empty cluster), waits for /readyz, and writes
#       DIR/kubeconfig (admin) and DIR/env, a file of shell exports:
#         KUBECONFIG, PSI_TEST_KUBECONFIG   DIR/kubeconfig
#         PSI_TEST_APISERVER                https://127.0.0.1:PORT
#         PSI_TEST_ADMIN_TOKEN              bearer token, group system:masters
#         PSI_TEST_KUBE_VERSION             the server's gitVersion, e.g. v1.37.2
#         PSI_TEST_CA_FILE                  PEM that verifies the API server's certificate
#         PSI_TEST_ETCD_URL, PSI_TEST_DIR
#       Logs: DIR/etcd.log, DIR/kube-apiserver.log; pids: DIR/etcd.pid, DIR/kube-apiserver.pid.
#       There is no controller-manager: create the "default" ServiceAccount in every namespace
#       that needs one; TokenRequest (kubectl create token) works.
#   scripts/control-plane.sh stop DIR
#       Stops both (TERM, bounded wait, KILL). Safe to repeat and after a failed start.
#   scripts/control-plane.sh restart-apiserver DIR
#       Fault tests: (re)start only kube-apiserver, stopping it first if it runs (etcd and
#       its data stay), on the same port with the same flags, certificates, tokens and
#       etcd, and wait for /readyz; DIR/env and DIR/kubeconfig stay valid.
#   scripts/control-plane.sh env
#       Prints exports for the cached binaries: PSI_KUBE_APISERVER, PSI_KUBELET, PSI_ETCD
#       (and PSI_KUBE_CONTROLLER_MANAGER, PSI_KUBE_SCHEDULER, PSI_KUBE_PROXY when built).
#
# Knobs: PSI_KUBE_VERSION (build another version), PSI_KUBE_SOURCE=auto|module|debian,
#   PSI_KUBE_APISERVER / PSI_ETCD (binaries used by start), PSI_START_TIMEOUT (seconds, 60).
# Progress and errors go to stderr, prefixed "control-plane:".
set -euo pipefail

# The newest k8s.io/kubernetes release the Go module proxy served when this was written; it
# builds with Go 1.26 (its go.mod needs go >= 1.26.0).
KUBE_VERSION=${PSI_KUBE_VERSION:-1.37.2}
KUBE_SOURCE=${PSI_KUBE_SOURCE:-auto}
DEBIAN_KUBE_VERSION=1.20.2
DEBIAN_KUBE_PKG_VERSION=1.20.5+really1.20.2-1.1+deb12u1
START_TIMEOUT=${PSI_START_TIMEOUT:-60}

LIB_NAME=control-plane
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
BIN_DIR=$CACHE_DIR/bin
PORT_LOCK=${TMPDIR:-/tmp}/pullsecret-injector-control-plane.lock


# ---------------------------------------------------------------------------------------------
# install

install_etcd() {
    if ! command -v etcd >/dev/null 2>&1; then
        apt_install apt etcd-server
    fi
    need etcd "Debian package etcd-server"
    # The package enables a service on the default ports; tests start their own etcd.
    if command -v service >/dev/null 2>&1 && service etcd status >/dev/null 2>&1; then
        say "stopping the packaged etcd service (tests run their own etcd)"
        service etcd stop >/dev/null 2>&1 || say "WARNING: could not stop the packaged etcd service"
    fi
    say "etcd: $(etcd --version 2>/dev/null | head -n 1) ($(command -v etcd))"
}

# build_module NAME: build k8s.io/kubernetes/cmd/NAME at KUBE_VERSION into kube-vX/NAME.
build_module() {
    local name=$1 v=$KUBE_VERSION go minor src ldflags pkg s
    local dest=$CACHE_DIR/kube-v$v log=$LOG_DIR/build-kube-v$v-$name.log
    go=$(find_go) || { say "no Go toolchain found (go on PATH or /usr/local/go/bin/go)"; return 1; }
    go_env
    minor=${v#*.}
    minor=${minor%%.*}
    src=$CACHE_DIR/src/kube-v$v
    mkdir -p "$src" "$dest"
    say "building $name v$v from the Go module proxy with $("$go" version | cut -d' ' -f3)"

    kube_scratch_module "$go" "$v" "$src" psi.local/kube-build || return 1

    pkg=k8s.io/kubernetes/cmd/$name
    say "  resolving and downloading modules for $name (cold: a few minutes)"
    cd "$src"
    run_logged "downloading modules for $name" "$log.deps" \
        "$go" list -mod=mod -deps -f '{{.ImportPath}}' "$pkg" || return 1
    say "  compiling $name (cold: 5-15 minutes on 2 cores; warm: seconds)"
    ldflags="-s -w"
    for s in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $s.gitVersion=v$v -X $s.gitMajor=1 -X $s.gitMinor=$minor"
        ldflags+=" -X $s.gitTreeState=clean -X $s.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    done
    RUN_TOTAL=$(grep -vc '^go: ' "$log.deps" || true)
    run_logged "compiling $name" "$log" \
        "$go" build -mod=mod -v -ldflags "$ldflags" -o "$dest/.$name.tmp" "$pkg" || { RUN_TOTAL=; return 1; }
    RUN_TOTAL=
    check_binary "$dest/.$name.tmp" "v$v" >/dev/null || return 1
    mv -f "$dest/.$name.tmp" "$dest/$name"
    printf 'v%s\nsource: k8s.io/kubernetes@v%s from the Go module proxy, %s\n' \
        "$v" "$v" "$("$go" version | cut -d' ' -f3)" >"$dest/VERSION"
}

# check_binary FILE [EXPECTED_VERSION]: FILE runs and reports the expected version.
check_binary() {
    local out
    out=$("$1" --version 2>&1) || { say "$1 --version failed: $out"; return 1; }
    if [[ -n ${2:-} && $out != *" $2" ]]; then
        say "$1 --version says '$out', expected $2"
        return 1
    fi
    echo "$out"
}

ensure_deb_src() {
    if apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then return 0; fi
    say "adding a deb-src entry for bookworm (/etc/apt/sources.list.d/pullsecret-injector-src.sources)"
    cat >/etc/apt/sources.list.d/pullsecret-injector-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -q >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get update failed (log: $LOG_DIR/apt.log)"
}

# build_debian NAME: way 2, kubernetes 1.20.2 from Debian's source package (full tree with
# vendor/), built with Debian's Go 1.19; reflect2 swapped for 1.0.2 (1.0.1 crashes on Go >= 1.18).
build_debian() {
    local name=$1 v=$DEBIAN_KUBE_VERSION work tree top home vfile
    local dest=$CACHE_DIR/kube-v$v-debian log=$LOG_DIR/build-kube-v$v-debian-$name.log
    [[ $(id -u) == 0 ]] || die "the Debian fallback needs root (apt-get)"
    say "building $name v$v from Debian's kubernetes source package (fallback)"
    apt_install apt golang-1.19-go rsync make golang-github-modern-go-reflect2-dev
    work=$CACHE_DIR/src/debian-kubernetes-$v
    mkdir -p "$work" "$dest"
    tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
    if [[ -z $tree || ! -f $tree/.psi-prepared ]]; then
        ensure_deb_src
        say "  downloading the source package (~34 MB)"
        (cd "$work" && { apt-get source -q --download-only "kubernetes=$DEBIAN_KUBE_PKG_VERSION" ||
            apt-get source -q --download-only kubernetes; } >>"$LOG_DIR/apt.log" 2>&1) ||
            die "apt-get source kubernetes failed (log: $LOG_DIR/apt.log)"
        local tarball
        tarball=$(find "$work" -maxdepth 1 -name 'kubernetes_*.orig.tar.gz' | head -n 1)
        [[ -n $tarball ]] || die "no kubernetes_*.orig.tar.gz in $work"
        top=$(tar tzf "$tarball" | head -n 1 | cut -d/ -f1)
        rm -rf "${work:?}/$top"
        tar xzf "$tarball" -C "$work"
        tree=$work/$top
        rsync -a --delete --exclude='*_test.go' /usr/share/gocode/src/github.com/modern-go/reflect2/ \
            "$tree/vendor/github.com/modern-go/reflect2/"
        mkdir -p "$tree/.go/src/k8s.io"
        ln -sfn ../../.. "$tree/.go/src/k8s.io/kubernetes"
        touch "$tree/.psi-prepared"
    fi
    vfile=$tree/.psi-version
    printf "KUBE_GIT_VERSION='v%s'\nKUBE_GIT_MAJOR='1'\nKUBE_GIT_MINOR='%s'\nKUBE_GIT_TREE_STATE='clean'\n" \
        "$v" "$(echo "$v" | cut -d. -f2)" >"$vfile"
    home=$(mktemp -d)
    cd "$tree"
    run_logged "compiling $name (Debian source, Go 1.19)" "$log" \
        env -u GOFLAGS -u GOTOOLCHAIN -u GOMODCACHE PATH="/usr/lib/go-1.19/bin:$PATH" \
        GOPATH="$tree/.go" HOME="$home" GOCACHE="$CACHE_DIR/go/build-go1.19" CGO_ENABLED=0 \
        KUBE_GIT_VERSION_FILE="$vfile" make WHAT="cmd/$name" || { rm -rf "$home"; return 1; }
    rm -rf "$home"
    check_binary "$tree/_output/local/bin/linux/amd64/$name" "v$v" >/dev/null || return 1
    cp -f "$tree/_output/local/bin/linux/amd64/$name" "$dest/.$name.tmp"
    mv -f "$dest/.$name.tmp" "$dest/$name"
    printf 'v%s\nsource: Debian source package kubernetes %s, Go 1.19\n' "$v" "$DEBIAN_KUBE_PKG_VERSION" >"$dest/VERSION"
}

# install_kube NAME: make BIN_DIR/NAME point at a working NAME, building it if not cached.
install_kube() {
    local name=$1 mod=$CACHE_DIR/kube-v$KUBE_VERSION deb=$CACHE_DIR/kube-v$DEBIAN_KUBE_VERSION-debian dir=
    if [[ $KUBE_SOURCE != debian ]]; then
        if [[ -x $mod/$name ]] && check_binary "$mod/$name" "v$KUBE_VERSION" >/dev/null; then
            say "$name v$KUBE_VERSION: cached in $mod"
            dir=$mod
        elif [[ -f $mod/.failed-$name && $KUBE_SOURCE == auto && -x $deb/$name ]]; then
            say "$name v$KUBE_VERSION failed to build before ($(cat "$mod/.failed-$name"));" \
                "using the cached Debian build (remove $mod/.failed-$name to retry)"
        elif build_module "$name"; then
            rm -f "$mod/.failed-$name"
            dir=$mod
        else
            mkdir -p "$mod"
            echo "see $LOG_DIR/build-kube-v$KUBE_VERSION-$name.log*" >"$mod/.failed-$name"
            [[ $KUBE_SOURCE == auto ]] || die "building $name v$KUBE_VERSION from the module proxy failed"
            say "building $name v$KUBE_VERSION from the module proxy FAILED; falling back to Debian's $DEBIAN_KUBE_VERSION"
        fi
    fi
    if [[ -z $dir ]]; then
        if [[ -x $deb/$name ]] && check_binary "$deb/$name" "v$DEBIAN_KUBE_VERSION" >/dev/null; then
            say "$name v$DEBIAN_KUBE_VERSION (Debian): cached in $deb"
        else
            build_debian "$name" || die "building $name from Debian's source package failed too"
        fi
        dir=$deb
    fi
    mkdir -p "$BIN_DIR"
    ln -sfn "../$(basename "$dir")/$name" "$BIN_DIR/$name"
    say "$name: $("$BIN_DIR/$name" --version 2>&1) -> $BIN_DIR/$name"
}

cmd_install() {
    local what=${1:-apiserver} t0
    case $what in apiserver | kubelet | all | cluster) ;; *) die "install: unknown target '$what' (apiserver|kubelet|all|cluster)" ;; esac
    case $KUBE_SOURCE in auto | module | debian) ;; *) die "PSI_KUBE_SOURCE must be auto, module or debian" ;; esac
    t0=$(date +%s)
    mkdir -p "$CACHE_DIR" "$LOG_DIR"
    exec {INSTALL_LOCKFD}>>"$CACHE_DIR/install.lock"
    flock -n "$INSTALL_LOCKFD" || {
        say "another install holds $CACHE_DIR/install.lock; waiting (up to 60 min)"
        flock -w 3600 "$INSTALL_LOCKFD" || die "timed out waiting for the other install"
    }
    say "cache: $CACHE_DIR"
    if [[ $what != kubelet ]]; then
        install_etcd
        install_kube kube-apiserver
    fi
    if [[ $what != apiserver ]]; then install_kube kubelet; fi
    if [[ $what == cluster ]]; then
        install_kube kube-controller-manager
        install_kube kube-scheduler
        install_kube kube-proxy
    fi
    local b
    for b in kubelet kube-controller-manager kube-scheduler kube-proxy; do
        if [[ -e $BIN_DIR/kube-apiserver && -e $BIN_DIR/$b &&
            $(readlink "$BIN_DIR/kube-apiserver") != "$(dirname "$(readlink "$BIN_DIR/$b")")/kube-apiserver" ]]; then
            say "WARNING: kube-apiserver and $b come from different builds:" \
                "$(readlink "$BIN_DIR/kube-apiserver"), $(readlink "$BIN_DIR/$b")"
        fi
    done
    say "install done in $(($(date +%s) - t0))s"
}

cmd_env() {
    local etcd_bin rc=0
    etcd_bin=$(command -v etcd || true)
    if [[ -n $etcd_bin ]]; then
        printf 'export PSI_ETCD=%q\n' "$etcd_bin"
    else
        say "etcd is not installed"
        rc=1
    fi
    if [[ -x $BIN_DIR/kube-apiserver ]]; then
        printf 'export PSI_KUBE_APISERVER=%q\n' "$BIN_DIR/kube-apiserver"
    else
        say "kube-apiserver is not installed"
        rc=1
    fi
    if [[ -x $BIN_DIR/kubelet ]]; then printf 'export PSI_KUBELET=%q\n' "$BIN_DIR/kubelet"; fi
    local b var
    for b in kube-controller-manager kube-scheduler kube-proxy; do
        var=PSI_$(tr 'a-z-' 'A-Z_' <<<"$b")
        if [[ -x $BIN_DIR/$b ]]; then printf 'export %s=%q\n' "$var" "$BIN_DIR/$b"; fi
    done
    ((rc == 0)) || say "run: scripts/control-plane.sh install"
    return "$rc"
}

# ---------------------------------------------------------------------------------------------
# start / stop

stop_all() {
    stop_one "$1" kube-apiserver
    stop_one "$1" etcd
}

cmd_stop() {
    [[ -n ${1:-} ]] || die "usage: scripts/control-plane.sh stop DIR"
    local dir=$1
    [[ -d $dir ]] || { say "$dir does not exist; nothing to stop"; return 0; }
    stop_all "$dir"
    say "stopped ($dir)"
}

# owns_port PID PORT: PID holds the listening socket 127.0.0.1:PORT (so a health check on PORT
# reaches our server, not one of another run).
owns_port() {
    local inode
    inode=$(awk -v a="0100007F:$(printf '%04X' "$2")" '$2 == a && $4 == "0A" { print $10; exit }' /proc/net/tcp)
    [[ -n $inode ]] && find "/proc/$1/fd" -lname "socket:\[$inode\]" 2>/dev/null | grep -q .
}

# wait_for_port NAME DIR PORT TIMEOUT: until NAME (pid in DIR/NAME.pid) listens on PORT.
# Returns 2 if NAME died of a port conflict, 1 on other failures.
wait_for_port() {
    local name=$1 dir=$2 port=$3 deadline=$((SECONDS + $4)) pid
    pid=$(cat "$dir/$name.pid")
    until owns_port "$pid" "$port"; do
        if ! is_running "$dir/$name.pid" "$name"; then
            if grep -q 'address already in use' "$dir/$name.log"; then return 2; fi
            say "$name exited during startup; last lines of $dir/$name.log:"
            tail -n 25 "$dir/$name.log" | sed 's/^/    /' >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            say "$name is not listening on 127.0.0.1:$port after $4 s; last lines of $dir/$name.log:"
            tail -n 25 "$dir/$name.log" | sed 's/^/    /' >&2
            return 1
        fi
        sleep 0.2
    done
}

# launch_apiserver DIR LOCKFD BINARY ETCD_PORT PORT: start kube-apiserver (the one set of flags).
launch_apiserver() {
    local dir=$1 fd=$2 bin=$3 ep=$4 ap=$5
    say "starting kube-apiserver on 127.0.0.1:$ap"
    LAUNCH_CLOSE_FD=$fd launch kube-apiserver "$dir" "$bin" \
        --etcd-servers="http://127.0.0.1:$ep" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$ap" \
        --cert-dir="$dir/certs" \
        --token-auth-file="$dir/tokens.csv" --authorization-mode=RBAC \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$dir/sa.pub" \
        --service-account-signing-key-file="$dir/sa.key" \
        --service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none
}

# env_value DIR NAME: NAME's value in DIR/env (written by start).
env_value() {
    [[ -f $1/env ]] || die "$1/env not found: start the control plane first"
    (
        # shellcheck disable=SC1091
        source "$1/env" && printf '%s' "${!2:-}"
    )
}

cmd_restart_apiserver() {
    [[ -n ${1:-} && -d $1 ]] || die "usage: scripts/control-plane.sh restart-apiserver DIR"
    local dir url etcd_url ep ap token apiserver deadline out rc=0 t0=$SECONDS
    dir=$(cd "$1" && pwd -P)
    url=$(env_value "$dir" PSI_TEST_APISERVER)
    etcd_url=$(env_value "$dir" PSI_TEST_ETCD_URL)
    ap=${url##*:}
    ep=${etcd_url##*:}
    [[ $ap =~ ^[0-9]+$ && $ep =~ ^[0-9]+$ ]] || die "no ports in $dir/env"
    is_running "$dir/etcd.pid" etcd || die "etcd is not running in $dir"
    apiserver=${PSI_KUBE_APISERVER:-$BIN_DIR/kube-apiserver}
    token=$(cut -d, -f1 "$dir/tokens.csv")
    stop_one "$dir" kube-apiserver
    launch_apiserver "$dir" "" "$apiserver" "$ep" "$ap"
    wait_for_port kube-apiserver "$dir" "$ap" "$START_TIMEOUT" || rc=$?
    ((rc == 0)) || die "kube-apiserver did not listen on 127.0.0.1:$ap again (log: $dir/kube-apiserver.log)"
    deadline=$((SECONDS + START_TIMEOUT))
    until out=$(curl -sS --max-time 5 --cacert "$dir/certs/apiserver.crt" -H "Authorization: Bearer $token" "$url/readyz" 2>&1) && [[ $out == ok ]]; do
        is_running "$dir/kube-apiserver.pid" kube-apiserver || die "kube-apiserver exited before it became ready (log: $dir/kube-apiserver.log)"
        ((SECONDS < deadline)) || die "kube-apiserver not ready after $START_TIMEOUT s; last /readyz: $out"
        sleep 0.2
    done
    say "kube-apiserver ready again at $url in $((SECONDS - t0))s"
}

cmd_start() {
    [[ -n ${1:-} ]] || die "usage: scripts/control-plane.sh start DIR"
    local dir=$1 etcd_bin apiserver token ep pp ap
    local attempt rc lockfd='' t0=$SECONDS deadline out version url
    need python3
    need openssl
    need curl
    etcd_bin=${PSI_ETCD:-$(command -v etcd || true)}
    [[ -n $etcd_bin && -x $etcd_bin ]] || die "etcd not found: run scripts/control-plane.sh install"
    apiserver=${PSI_KUBE_APISERVER:-$BIN_DIR/kube-apiserver}
    [[ -x $apiserver ]] || die "kube-apiserver not found at $apiserver: run scripts/control-plane.sh install"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    if is_running "$dir/etcd.pid" etcd || is_running "$dir/kube-apiserver.pid" kube-apiserver; then
        die "a control plane is already running in $dir (scripts/control-plane.sh stop $dir)"
    fi
    START_DIR=$dir

    # Fresh state every time.
    rm -rf "${dir:?}/etcd" "$dir/certs"
    rm -f "$dir"/{etcd,kube-apiserver}.pid "$dir"/{kubeconfig,env,tokens.csv,sa.key,sa.pub}
    : >"$dir/etcd.log"
    : >"$dir/kube-apiserver.log"
    (
        umask 077
        token=$(openssl rand -hex 32)
        echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
        openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
        openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
    ) || die "generating the token file and service-account keys with openssl failed"
    token=$(cut -d, -f1 "$dir/tokens.csv")

    for attempt in 1 2 3; do
        # Serialise port picking with other runs of this script until our servers hold their
        # ports; a collision with anything else shows up as "address already in use": retry.
        lockfd=
        if (umask 000 && : >>"$PORT_LOCK") 2>/dev/null && exec {lockfd}>>"$PORT_LOCK"; then
            flock -w 120 "$lockfd" || die "timed out waiting for $PORT_LOCK"
        else
            say "WARNING: cannot use $PORT_LOCK; relying on bind checks only"
            lockfd=
        fi
        read -r ep pp ap <<<"$(free_ports 3)"
        say "starting etcd on 127.0.0.1:$ep (peer $pp)"
        LAUNCH_CLOSE_FD=$lockfd launch etcd "$dir" "$etcd_bin" --name psi --data-dir "$dir/etcd" \
            --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
            --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
            --initial-cluster "psi=http://127.0.0.1:$pp" --initial-cluster-token "psi-$ep-$$" \
            --initial-cluster-state new
        rc=0
        wait_for_port etcd "$dir" "$ep" 30 || rc=$?
        if ((rc == 0)); then
            deadline=$((SECONDS + 30))
            until [[ $(curl -sS --max-time 2 "http://127.0.0.1:$ep/health" 2>&1) == *'"health":"true"'* ]]; do
                ((SECONDS < deadline)) || die "etcd on 127.0.0.1:$ep not healthy after 30 s (log: $dir/etcd.log)"
                sleep 0.2
            done
            launch_apiserver "$dir" "$lockfd" "$apiserver" "$ep" "$ap"
            wait_for_port kube-apiserver "$dir" "$ap" "$START_TIMEOUT" || rc=$?
        fi
        if [[ -n $lockfd ]]; then exec {lockfd}>&-; fi
        ((rc == 0)) && break
        ((rc == 2 && attempt < 3)) || die "could not start the control plane in $dir"
        say "port conflict (address already in use); retrying with other ports"
        stop_all "$dir"
        rm -rf "${dir:?}/etcd" "$dir/certs"
    done

    url=https://127.0.0.1:$ap
    deadline=$((t0 + START_TIMEOUT))
    until out=$(curl -sS -k --max-time 5 -H "Authorization: Bearer $token" "$url/readyz" 2>&1) && [[ $out == ok ]]; do
        is_running "$dir/kube-apiserver.pid" kube-apiserver || {
            tail -n 25 "$dir/kube-apiserver.log" | sed 's/^/    /' >&2
            die "kube-apiserver exited before it became ready"
        }
        if ((SECONDS >= deadline)); then
            say "last /readyz answer: $out"
            tail -n 25 "$dir/kube-apiserver.log" | sed 's/^/    /' >&2
            die "kube-apiserver not ready after $START_TIMEOUT s (PSI_START_TIMEOUT); log: $dir/kube-apiserver.log"
        fi
        sleep 0.5
    done

    # From here on TLS is verified with the API server's own certificate (+ its CA).
    [[ -s $dir/certs/apiserver.crt ]] || die "kube-apiserver wrote no $dir/certs/apiserver.crt"
    out=$(curl -sS --max-time 5 --cacert "$dir/certs/apiserver.crt" -H "Authorization: Bearer $token" \
        "$url/version" 2>&1) || die "TLS check with $dir/certs/apiserver.crt failed: $out"
    version=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gitVersion"])') ||
        die "unexpected /version answer: $out"

    (
        umask 077
        cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: psi-test
  cluster:
    server: $url
    certificate-authority-data: $(base64 -w0 <"$dir/certs/apiserver.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: psi-test
  context:
    cluster: psi-test
    user: admin
current-context: psi-test
EOF
        {
            echo "# written by scripts/control-plane.sh start; stop with: scripts/control-plane.sh stop $dir"
            printf 'export KUBECONFIG=%q\n' "$dir/kubeconfig"
            printf 'export PSI_TEST_KUBECONFIG=%q\n' "$dir/kubeconfig"
            printf 'export PSI_TEST_APISERVER=%q\n' "$url"
            printf 'export PSI_TEST_ADMIN_TOKEN=%q\n' "$token"
            printf 'export PSI_TEST_KUBE_VERSION=%q\n' "$version"
            printf 'export PSI_TEST_CA_FILE=%q\n' "$dir/certs/apiserver.crt"
            printf 'export PSI_TEST_ETCD_URL=%q\n' "http://127.0.0.1:$ep"
            printf 'export PSI_TEST_DIR=%q\n' "$dir"
        } >"$dir/env"
    )
    START_DONE=1
    say "ready in $((SECONDS - t0))s: kube-apiserver $version at $url (etcd 127.0.0.1:$ep)"
    say "  source $dir/env   # KUBECONFIG, PSI_TEST_*; stop: scripts/control-plane.sh stop $dir"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

case ${1:-} in
install) shift && cmd_install "$@" ;;
start) shift && cmd_start "$@" ;;
stop) shift && cmd_stop "$@" ;;
restart-apiserver) shift && cmd_restart_apiserver "$@" ;;
env) shift && cmd_env ;;
-h | --help | help) usage ;;
*) usage ;;
esac
