#!/usr/bin/env bash
# node.sh - a real node on 127.0.0.1 for the end-to-end tests: a private registry, containerd
# and kubelet, so that Pods really pull their images and reach Running (TESTING.md, "A real node").
#
#   scripts/node.sh install
#       Idempotent, as root. Debian packages: containerd, runc, docker-registry, skopeo,
#       busybox-static, apache2-utils (htpasswd), iproute2; kubelet at the control plane's
#       version (scripts/control-plane.sh install kubelet, cached); the test images (built from
#       busybox-static by scripts/oci-image.py, cached under
#       ${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector/images/). Seconds when cached.
#   scripts/node.sh start DIR [KUBECONFIG]
#       After `scripts/control-plane.sh start DIR`: uses DIR/kubeconfig (or KUBECONFIG) and
#       keeps everything in DIR/node (fresh on every start). Starts, on loopback only:
#         - docker-registry (distribution 2.8) on https://127.0.0.1:PORT, TLS from a test CA,
#           htpasswd auth; the image crp/app:1 is pushed to it;
#         - containerd (own root/state/socket) whose CRI resolves cr.yandex and
#           registry.yandexcloud.net to that registry ONLY (hosts.toml, no upstream);
#         - kubelet, node name "local", with the control plane's admin kubeconfig (the API
#           server authorizes with RBAC only: no Node authorizer to give a node identity its
#           Secrets). No CNI: the node stays NotReady, which does not stop hostNetwork Pods.
#       Test Pods set nodeName: local, hostNetwork: true, automountServiceAccountToken: false.
#       Waits until the node is registered, then writes DIR/node.env (shell exports):
#         PSI_TEST_NODE=1, PSI_TEST_NODE_DIR, PSI_TEST_NODE_NAME (local),
#         PSI_TEST_REGISTRY (127.0.0.1:PORT), PSI_TEST_REGISTRY_CERT_DIR (holds only ca.crt:
#         skopeo --cert-dir), PSI_TEST_REGISTRY_CA (the CA file),
#         PSI_TEST_REGISTRY_HTPASSWD (the registry's htpasswd), PSI_TEST_IMAGE_PATH (crp/app:1).
#       The registry re-reads its htpasswd whenever the file's mtime changes, so tests change
#       the accepted credentials by writing a new file and renaming it over the old one
#       (no restart). At start it holds only a random push user: anonymous pulls are refused.
#       Logs and pids: DIR/node/{docker-registry,containerd,kubelet}.{log,pid}.
#   scripts/node.sh stop DIR
#       Stops kubelet, removes every container and sandbox, stops containerd and the
#       registry (by pid: TERM, bounded wait, KILL), kills leftover shims of THIS containerd
#       and their containers, unmounts everything under DIR/node and removes the containers'
#       cgroups. Safe to repeat, after a failed start and after a crash.
#
# Knobs: PSI_START_TIMEOUT (seconds, 60), PSI_KUBELET (kubelet binary to use).
# Progress and errors go to stderr, prefixed "node:".
set -euo pipefail

START_TIMEOUT=${PSI_START_TIMEOUT:-60}
LIB_NAME=node
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
PACKAGES=(containerd runc docker-registry skopeo busybox-static apache2-utils iproute2 curl python3 openssl)
NODE_NAME=local


# ---------------------------------------------------------------------------------------------
# install

cmd_install() {
    local t0=$SECONDS lockfd
    mkdir -p "$CACHE_DIR" "$LOG_DIR"
    exec {lockfd}>>"$CACHE_DIR/node-install.lock"
    flock -w 3600 "$lockfd" || die "timed out waiting for $CACHE_DIR/node-install.lock"
    apt_install apt-node "${PACKAGES[@]}"
    if [[ -z ${PSI_KUBELET:-} ]]; then
        # Its own lock (install.lock): do not hold ours across it longer than needed.
        "$SCRIPTS/control-plane.sh" install kubelet
    fi
    ensure_images
    say "containerd: $(containerd --version 2>/dev/null | cut -d' ' -f3); runc: $(runc --version 2>/dev/null | head -n 1 | cut -d' ' -f3);" \
        "registry: $(docker-registry --version 2>/dev/null | cut -d' ' -f3); kubelet: $("$(kubelet_bin)" --version 2>&1)"
    say "install done in $((SECONDS - t0))s"
}

kubelet_bin() {
    echo "${PSI_KUBELET:-$CACHE_DIR/bin/kubelet}"
}

# ---------------------------------------------------------------------------------------------
# processes

stop_all() {
    node_cleanup "$1/node"
    rm -f "$1/node.env"
}

cmd_stop() {
    [[ -n ${1:-} ]] || die "usage: scripts/node.sh stop DIR"
    local dir=$1
    [[ -d $dir ]] || { say "$dir does not exist; nothing to stop"; return 0; }
    dir=$(cd "$dir" && pwd -P)
    stop_all "$dir"
    say "stopped ($dir/node)"
}

registry_answers() { # PORT CA EXPECTED_STATUS
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$2" "https://127.0.0.1:$1/v2/") == "$3" ]]
}

node_registered() { # KUBECONFIG
    local v
    v=$(kubectl --kubeconfig "$1" get node "$NODE_NAME" -o 'jsonpath={.status.nodeInfo.containerRuntimeVersion}' 2>/dev/null) &&
        [[ $v == containerd://* ]]
}

# node_ip: the first global IPv4 address of this machine. kubelet must be given one: without
# --node-ip it resolves its node name through DNS every status update, i.e. it would send
# queries to the resolver in /etc/resolv.conf, and it refuses loopback addresses. The address
# is only reported in the Node's status; nothing connects to it.
node_ip() {
    ip -4 -o addr show scope global 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }'
}

cmd_start() {
    [[ -n ${1:-} ]] || die "usage: scripts/node.sh start DIR [KUBECONFIG]"
    local dir=$1 kubeconfig=${2:-} n t0=$SECONDS rp kp hp attempt nip kubelet pw out
    need containerd
    need ctr "Debian package containerd"
    need runc
    need docker-registry
    need skopeo
    need htpasswd "Debian package apache2-utils"
    need busybox "Debian package busybox-static"
    need kubectl
    need curl
    need python3
    need openssl
    need findmnt
    need ip "Debian package iproute2"
    [[ $(id -u) == 0 ]] || die "kubelet and containerd need root"
    kubelet=$(kubelet_bin)
    [[ -x $kubelet ]] || die "kubelet not found at $kubelet: run scripts/node.sh install"
    [[ -d $dir ]] || die "$dir does not exist: start the control plane first (scripts/control-plane.sh start $dir)"
    dir=$(cd "$dir" && pwd -P)
    if [[ -z $kubeconfig ]]; then
        [[ -f $dir/env && -f $dir/kubeconfig ]] ||
            die "no $dir/env or $dir/kubeconfig: start the control plane first (scripts/control-plane.sh start $dir) or pass a KUBECONFIG"
        kubeconfig=$dir/kubeconfig
    fi
    [[ -f $kubeconfig ]] || die "kubeconfig $kubeconfig does not exist"
    kubectl --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1 ||
        die "the API server of $kubeconfig is not ready"
    n=$dir/node
    for p in kubelet containerd docker-registry; do
        is_running "$n/$p.pid" "$p" && die "a node is already running in $n (scripts/node.sh stop $dir)"
    done
    START_DIR=$dir
    stop_all "$dir" # leftovers of a crashed run in the same DIR
    rm -rf --one-file-system "$n"
    mkdir -p "$n/registry/data" "$n/registry-ca" "$n/kubelet/root" "$n/kubelet/certs"
    ensure_images

    # Registry: TLS from a fresh test CA, htpasswd with a random push user only.
    "$REPO/certs/generate.sh" "$n/certs" >/dev/null || die "certs/generate.sh failed"
    cp "$n/certs/ca.crt" "$n/registry-ca/ca.crt"
    pw=$(openssl rand -hex 16)
    htpasswd -Bbn push "$pw" >"$n/registry/htpasswd" 2>/dev/null || die "htpasswd failed"
    for attempt in 1 2 3; do
        read -r rp <<<"$(free_ports 1)"
        write_registry_config "$n" "127.0.0.1:$rp"
        say "starting docker-registry on https://127.0.0.1:$rp"
        : >"$n/docker-registry.log"
        launch docker-registry "$n" docker-registry serve "$n/registry/config.yml"
        if wait_until "the registry on 127.0.0.1:$rp" docker-registry "$n" 20 registry_answers "$rp" "$n/registry-ca/ca.crt" 401; then
            break
        fi
        stop_one "$n" docker-registry
        if ! grep -q 'address already in use' "$n/docker-registry.log" || ((attempt == 3)); then die "the registry did not start"; fi
        say "port conflict; retrying"
    done
    out=$(skopeo copy -q --dest-cert-dir "$n/registry-ca" --dest-creds "push:$pw" \
        "oci:$IMAGES/app:1" "docker://127.0.0.1:$rp/$IMAGE_PATH" 2>&1) || die "pushing the app image failed: $out"
    # Anonymous pulls must be refused, or no test could tell an injected Secret from none.
    out=$(skopeo inspect --raw --cert-dir "$n/registry-ca" --no-creds "docker://127.0.0.1:$rp/$IMAGE_PATH" 2>&1) &&
        die "the registry serves $IMAGE_PATH without credentials"
    say "pushed $IMAGE_PATH to 127.0.0.1:$rp"

    # containerd with its own root, state and sockets; the pause image imported.
    write_containerd_config "$n" "127.0.0.1:$rp"
    say "starting containerd ($n/containerd/containerd.sock)"
    : >"$n/containerd.log"
    launch containerd "$n" containerd --config "$n/containerd/config.toml"
    wait_until "containerd's socket" containerd "$n" "$START_TIMEOUT" \
        ctr -a "$n/containerd/containerd.sock" version || die "containerd did not start"
    out=$(ctr -a "$n/containerd/containerd.sock" -n k8s.io images import "$IMAGES/pause.tar" 2>&1) ||
        die "importing the pause image failed: $out"

    # kubelet: node "local", config file (most flags are deprecated), the local API server.
    nip=$(node_ip)
    [[ -n $nip ]] || die "no global IPv4 address for --node-ip (kubelet would look its name up in DNS)"
    for attempt in 1 2 3; do
        read -r kp hp <<<"$(free_ports 2)"
        write_kubelet_config "$n" 127.0.0.1 "$kp" "$hp"
        say "starting kubelet $("$kubelet" --version 2>&1 | cut -d' ' -f2) as node $NODE_NAME (127.0.0.1:$kp, healthz :$hp)"
        : >"$n/kubelet.log"
        launch kubelet "$n" "$kubelet" --config "$n/kubelet/config.yaml" --kubeconfig "$kubeconfig" \
            --hostname-override="$NODE_NAME" --node-ip="$nip" \
            --root-dir "$n/kubelet/root" --cert-dir "$n/kubelet/certs" --v=2
        if wait_until "kubelet's healthz" kubelet "$n" "$START_TIMEOUT" \
            curl -sf --max-time 2 "http://127.0.0.1:$hp/healthz"; then
            break
        fi
        stop_one "$n" kubelet
        if ! grep -q 'address already in use' "$n/kubelet.log" || ((attempt == 3)); then die "kubelet did not start"; fi
        say "port conflict; retrying"
    done
    wait_until "node $NODE_NAME to register" kubelet "$n" "$START_TIMEOUT" node_registered "$kubeconfig" ||
        die "node $NODE_NAME did not register"

    (
        umask 022
        {
            echo "# written by scripts/node.sh start; stop with: scripts/node.sh stop $dir"
            printf 'export PSI_TEST_NODE=1\n'
            printf 'export PSI_TEST_NODE_DIR=%q\n' "$n"
            printf 'export PSI_TEST_NODE_NAME=%q\n' "$NODE_NAME"
            printf 'export PSI_TEST_REGISTRY=%q\n' "127.0.0.1:$rp"
            printf 'export PSI_TEST_REGISTRY_CERT_DIR=%q\n' "$n/registry-ca"
            printf 'export PSI_TEST_REGISTRY_CA=%q\n' "$n/registry-ca/ca.crt"
            printf 'export PSI_TEST_REGISTRY_HTPASSWD=%q\n' "$n/registry/htpasswd"
            printf 'export PSI_TEST_IMAGE_PATH=%q\n' "$IMAGE_PATH"
        } >"$dir/node.env"
    )
    START_DONE=1
    say "ready in $((SECONDS - t0))s: node $NODE_NAME ($(kubectl --kubeconfig "$kubeconfig" get node "$NODE_NAME" \
        -o 'jsonpath={.status.nodeInfo.kubeletVersion}, {.status.nodeInfo.containerRuntimeVersion}')), registry 127.0.0.1:$rp"
    say "  source $dir/node.env   # PSI_TEST_NODE*, PSI_TEST_REGISTRY*; stop: scripts/node.sh stop $dir"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

case ${1:-} in
install) shift && cmd_install "$@" ;;
start) shift && cmd_start "$@" ;;
stop) shift && cmd_stop "$@" ;;
-h | --help | help) usage ;;
*) usage ;;
esac
