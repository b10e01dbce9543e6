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
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector
LOG_DIR=$CACHE_DIR/logs
IMAGE_DIR=$CACHE_DIR/images
SCRIPTS=$(cd "$(dirname "$0")" && pwd -P)
REPO=$(dirname "$SCRIPTS")
PACKAGES=(containerd runc docker-registry skopeo busybox-static apache2-utils iproute2 curl python3 openssl)
NODE_NAME=local
# The image every test Pod runs (as cr.yandex/crp/app:1 or registry.yandexcloud.net/crp/app:1).
IMAGE_PATH=crp/app:1
PAUSE_REF=local/pause:3.2
# PID 1 of both images: a shell that exits on SIGTERM (a bare sleep as PID 1 would ignore it
# and every Pod deletion would wait out its grace period).
ENTRYPOINT=(/bin/busybox sh -c 'trap "exit 0" TERM INT; /bin/busybox sleep 2147483647 & wait')

say() { printf 'node: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed${2:+ ($2)}: run scripts/node.sh install"; }

START_DIR=
START_DONE=0
on_exit() {
    local rc=$?
    if [[ -n $START_DIR && $START_DONE != 1 ]]; then
        say "start failed; stopping what was started (logs stay in $START_DIR/node)"
        stop_all "$START_DIR" || true
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# install

apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [[ ${#missing[@]} == 0 ]] && return 0
    [[ $(id -u) == 0 ]] || die "need root to apt-get install ${missing[*]} (or install them yourself)"
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} yourself"
    say "apt-get install ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$LOG_DIR/apt-node.log" 2>&1; then
        say "apt-get install failed; running apt-get update once and retrying"
        apt-get update -q >>"$LOG_DIR/apt-node.log" 2>&1 || { tail -n 20 "$LOG_DIR/apt-node.log" >&2; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$LOG_DIR/apt-node.log" 2>&1 ||
            { tail -n 20 "$LOG_DIR/apt-node.log" >&2; die "apt-get install ${missing[*]} failed (log: $LOG_DIR/apt-node.log)"; }
    fi
    # On a machine with an init system the packages start their own services; the registry's
    # listens on :5000 on every interface. Tests run their own instances: stop that one.
    if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v service >/dev/null 2>&1 &&
        service docker-registry status >/dev/null 2>&1; then
        say "stopping the packaged docker-registry service (tests run their own registry)"
        service docker-registry stop >/dev/null 2>&1 || say "WARNING: could not stop the packaged docker-registry service"
    fi
}

# image_key: a digest of everything an image build depends on (a new busybox or a changed
# builder gives a new cache entry).
image_key() {
    { sha256sum </usr/bin/busybox; sha256sum <"$SCRIPTS/oci-image.py"; printf '%s\0' "${ENTRYPOINT[@]}"; } |
        sha256sum | cut -c1-16
}

# ensure_images: OCI layouts of the app and pause images, and the pause image as a
# docker-archive for `ctr images import`, under IMAGE_DIR/KEY/.
ensure_images() {
    local key dir tmp
    key=$(image_key)
    dir=$IMAGE_DIR/$key
    if [[ -f $dir/.done ]]; then
        say "images: cached in $dir"
        IMAGES=$dir
        return 0
    fi
    need skopeo
    say "building the test images from busybox-static into $dir"
    mkdir -p "$IMAGE_DIR"
    tmp=$(mktemp -d "$IMAGE_DIR/.build.XXXXXX")
    python3 "$SCRIPTS/oci-image.py" "$tmp/app" 1 /usr/bin/busybox "${ENTRYPOINT[@]}" >/dev/null ||
        die "building the app image failed"
    python3 "$SCRIPTS/oci-image.py" "$tmp/pause" 3.2 /usr/bin/busybox "${ENTRYPOINT[@]}" >/dev/null ||
        die "building the pause image failed"
    skopeo copy -q "oci:$tmp/pause:3.2" "docker-archive:$tmp/pause.tar:$PAUSE_REF" >"$tmp/skopeo.log" 2>&1 ||
        { cat "$tmp/skopeo.log" >&2; die "skopeo copy of the pause image to a docker-archive failed"; }
    touch "$tmp/.done"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    IMAGES=$dir
}

cmd_install() {
    local t0=$SECONDS lockfd
    mkdir -p "$CACHE_DIR" "$LOG_DIR"
    exec {lockfd}>>"$CACHE_DIR/node-install.lock"
    flock -w 3600 "$lockfd" || die "timed out waiting for $CACHE_DIR/node-install.lock"
    apt_install "${PACKAGES[@]}"
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

# is_running PIDFILE NAME: the pid in PIDFILE is alive and runs NAME (argv[0]'s basename), so
# a recycled pid is never signalled.
is_running() {
    local pid arg
    [[ -f $1 ]] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
    arg=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1)
    [[ ${arg##*/} == "$2" ]]
}

stop_one() {
    local dir=$1 name=$2 pidfile pid i
    pidfile=$dir/$name.pid
    [[ -f $pidfile ]] || return 0
    if is_running "$pidfile" "$name"; then
        pid=$(cat "$pidfile")
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            is_running "$pidfile" "$name" || break
            sleep 0.1
        done
        if is_running "$pidfile" "$name"; then
            say "$name (pid $pid) did not exit within 15 s of SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                is_running "$pidfile" "$name" || break
                sleep 0.1
            done
            is_running "$pidfile" "$name" && die "$name (pid $pid) survived SIGKILL"
        fi
    fi
    rm -f "$pidfile"
}

# descendants PID: every process below PID (children first), from /proc.
descendants() {
    local child
    while read -r child; do
        descendants "$child"
        echo "$child"
    done < <(awk -v p="$1" '$4 == p { print $1 }' /proc/[0-9]*/stat 2>/dev/null)
}

# our_shims SOCK: pids of containerd-shim-runc-v2 processes serving the containerd at SOCK
# (their command line names that socket), so other containerds' shims are never touched.
our_shims() {
    local f pid args
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        args=$({ tr '\0' '\n' <"$f"; } 2>/dev/null) || continue
        if [[ ${args%%$'\n'*} == *containerd-shim* ]] && grep -qxF -- "$1" <<<"$args"; then
            echo "$pid"
        fi
    done
}

stop_all() {
    local dir=$1 n=$1/node sock ids id shims pid mounts left m cg i
    [[ -d $n ]] || return 0
    sock=$n/containerd/containerd.sock
    stop_one "$n" kubelet
    # Remove every container (CRI sandboxes included) while containerd still runs: this kills
    # their processes, and containerd unmounts their root filesystems.
    ids=()
    if is_running "$n/containerd.pid" containerd; then
        mapfile -t ids < <(ctr -a "$sock" -n k8s.io containers ls -q 2>/dev/null || true)
        if ((${#ids[@]} > 0)); then
            say "removing ${#ids[@]} containers and sandboxes"
            for id in "${ids[@]}"; do
                ctr -a "$sock" -n k8s.io tasks delete --force "$id" >/dev/null 2>&1 || true
            done
            for id in "${ids[@]}"; do
                ctr -a "$sock" -n k8s.io containers delete "$id" >/dev/null 2>&1 || true
            done
        fi
    fi
    stop_one "$n" containerd
    stop_one "$n" docker-registry
    # A crash leaves shims (and their containers) behind: kill those of this containerd only.
    mapfile -t shims < <(our_shims "$sock")
    for pid in "${shims[@]}"; do
        [[ -n $pid ]] || continue
        say "killing leftover shim $pid and its processes"
        for i in $(descendants "$pid") "$pid"; do kill -KILL "$i" 2>/dev/null || true; done
    done
    # Unmount whatever is left below DIR/node (sandbox shm, rootfs, kubelet's own bind mount),
    # deepest first.
    for ((i = 0; i < 3; i++)); do
        mapfile -t mounts < <(findmnt -rn -o TARGET 2>/dev/null | awk -v p="$n/" 'index($0, p) == 1' | sort -r)
        ((${#mounts[@]} > 0)) || break
        for m in "${mounts[@]}"; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "WARNING: could not unmount $m"
        done
    done
    left=$(findmnt -rn -o TARGET 2>/dev/null | awk -v p="$n/" 'index($0, p) == 1' || true)
    [[ -z $left ]] || say "WARNING: still mounted under $n: $left"
    # The containers' cgroups (cgroupfs driver: <controller>/k8s.io/<id>); empty once their
    # processes are gone.
    if [[ -d $n/containerd/state/io.containerd.runtime.v2.task/k8s.io ]]; then
        mapfile -t -O "${#ids[@]}" ids < <(ls "$n/containerd/state/io.containerd.runtime.v2.task/k8s.io" 2>/dev/null)
    fi
    for id in "${ids[@]}"; do
        [[ $id =~ ^[0-9a-f]{64}$ ]] || continue
        for cg in /sys/fs/cgroup/*/k8s.io/"$id" /sys/fs/cgroup/k8s.io/"$id"; do
            if [[ -d $cg ]]; then rmdir "$cg" 2>/dev/null || true; fi
        done
    done
    rm -f "$dir/node.env"
}

cmd_stop() {
    [[ -n ${1:-} ]] || die "usage: scripts/node.sh stop DIR"
    local dir=$1
    [[ -d $dir ]] || { say "$dir does not exist; nothing to stop"; return 0; }
    dir=$(cd "$dir" && pwd -P)
    stop_all "$dir"
    say "stopped ($dir/node)"
}

# free_ports N: N distinct free TCP ports on 127.0.0.1.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# launch NAME DIR CMD...: start CMD detached (own session), output to DIR/NAME.log.
launch() {
    local name=$1 dir=$2
    shift 2
    setsid "$@" </dev/null >>"$dir/$name.log" 2>&1 &
    echo $! >"$dir/$name.pid"
}

# wait_until WHAT NAME DIR TIMEOUT CMD...: until CMD succeeds; fails with NAME's log tail if
# NAME exits or TIMEOUT passes.
wait_until() {
    local what=$1 name=$2 dir=$3 deadline=$((SECONDS + $4))
    shift 4
    until "$@" >/dev/null 2>&1; do
        if ! is_running "$dir/$name.pid" "$name"; then
            say "$name exited while waiting for $what; last lines of $dir/$name.log:"
            tail -n 30 "$dir/$name.log" | sed 's/^/    /' >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            say "timed out after $4 s waiting for $what; last lines of $dir/$name.log:"
            tail -n 30 "$dir/$name.log" | sed 's/^/    /' >&2
            return 1
        fi
        sleep 0.2
    done
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

write_registry_config() { # DIR PORT
    local r=$1/registry
    cat >"$r/config.yml" <<EOF
version: 0.1
log:
  level: info
  fields: {service: registry}
storage:
  filesystem: {rootdirectory: $r/data}
  delete: {enabled: true}
  maintenance: {uploadpurging: {enabled: false}}
http:
  addr: 127.0.0.1:$2
  secret: $(openssl rand -hex 16)
  tls:
    certificate: $1/certs/tls.crt
    key: $1/certs/tls.key
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: pullsecret-injector-test
    path: $r/htpasswd
EOF
}

write_containerd_config() { # DIR PORT
    local n=$1 c=$1/containerd h
    mkdir -p "$c/certs.d" "$n/cni/net.d"
    # Both Yandex registry hosts go to the local registry and nowhere else: `server` and the
    # only [host] are 127.0.0.1, so a pull never falls back to the real host name.
    for h in cr.yandex registry.yandexcloud.net; do
        mkdir -p "$c/certs.d/$h"
        cat >"$c/certs.d/$h/hosts.toml" <<EOF
server = "https://127.0.0.1:$2"

[host."https://127.0.0.1:$2"]
  capabilities = ["pull", "resolve"]
  ca = "$n/registry-ca/ca.crt"
EOF
    done
    cat >"$c/config.toml" <<EOF
# written by scripts/node.sh
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  # Without CAP_SYS_RESOURCE (sandboxes, some CI machines) runc fails every sandbox with
  # "can't get final child's PID from pipe: EOF" unless the OOM score is only ever raised.
  restrict_oom_score_adj = true
  # Test Pods ask for no AppArmor profile; on a host with AppArmor enabled containerd would
  # otherwise load its default profile with apparmor_parser.
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$c/runc"
  # No CNI network: test Pods use hostNetwork (the node stays NotReady, which does not stop them).
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$n/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$c/certs.d"
EOF
}

write_kubelet_config() { # DIR PORT HEALTHZ_PORT
    local k=$1/kubelet
    cat >"$k/config.yaml" <<EOF
# written by scripts/node.sh
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $2
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $3
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$1/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
# kubelet >= 1.35 refuses cgroup v1 hosts unless told otherwise; harmless on cgroup v2.
failCgroupV1: false
failSwapOn: false
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
makeIPTablesUtilChains: false
registryPullQPS: 0
podLogsDir: $k/pod-logs
volumePluginDir: $k/volume-plugins
EOF
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
        write_registry_config "$n" "$rp"
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
    write_containerd_config "$n" "$rp"
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
        write_kubelet_config "$n" "$kp" "$hp"
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
