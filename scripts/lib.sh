# lib.sh - shell helpers shared by scripts/control-plane.sh, node.sh, cluster.sh and image.sh.
# Sourced, never run. The sourcing script sets LIB_NAME (the prefix of its messages) first.
#
# Generic: say/die/need, apt_install, find_go/go_env (from lib/kube-module.sh), run_logged,
# the failed-start cleanup, processes started detached with a pid file (launch, is_running,
# stop_one, wait_until), free_ports.
# Node parts (a registry, containerd and kubelet; scripts/node.sh on loopback and
# scripts/cluster.sh in a network namespace): ensure_images, write_registry_config,
# write_containerd_config, write_kubelet_config, node_cleanup.
# shellcheck shell=bash
# shellcheck disable=SC2034 # REPO, IMAGE_PATH, IMAGES, ...: used by the scripts that source this

CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector
LOG_DIR=$CACHE_DIR/logs
IMAGE_DIR=$CACHE_DIR/images
SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(dirname "$SCRIPTS")

say() { printf '%s: %s\n' "${LIB_NAME:-psi}" "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed${2:+ ($2)}"; }

# apt_install LOGNAME PKG...: install the missing Debian packages (as root), with one
# `apt-get update` and a retry when the first attempt fails; output in LOG_DIR/LOGNAME.log.
apt_install() {
    local log=$LOG_DIR/$1.log missing=() p
    shift
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [[ ${#missing[@]} == 0 ]] && return 0
    [[ $(id -u) == 0 ]] || die "need root to apt-get install ${missing[*]} (or install them yourself)"
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} yourself"
    mkdir -p "$LOG_DIR"
    say "apt-get install ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$log" 2>&1; then
        say "apt-get install failed; running apt-get update once and retrying"
        apt-get update -q >>"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$log" 2>&1 ||
            { tail -n 20 "$log" >&2; die "apt-get install ${missing[*]} failed (log: $log)"; }
    fi
    # On a machine with an init system some packages start their own services (the registry
    # on :5000 on every interface, etcd on its default ports). The scripts run their own
    # instances: stop those.
    for p in docker-registry etcd; do
        if [[ " ${missing[*]} " == *" $p "* || ($p == etcd && " ${missing[*]} " == *" etcd-server "*) ]] &&
            command -v service >/dev/null 2>&1 && service "$p" status >/dev/null 2>&1; then
            say "stopping the packaged $p service (the scripts run their own)"
            service "$p" stop >/dev/null 2>&1 || say "WARNING: could not stop the packaged $p service"
        fi
    done
}

# find_go and go_env: the Go toolchain and its settings, shared with kubelet-oracle.sh.
# shellcheck source=scripts/lib/kube-module.sh
source "$SCRIPTS/lib/kube-module.sh"

HEARTBEAT_PID=
INSTALL_LOCKFD=
RUN_TOTAL=
# run_logged LABEL LOG CMD...: run CMD with its output in LOG, print a heartbeat every 30 s
# (with RUN_TOTAL, the number of packages to compile, when set), and print the log's tail if
# it fails. The heartbeat never holds INSTALL_LOCKFD (an install lock) open.
run_logged() {
    local label=$1 log=$2 t0 rc=0
    shift 2
    t0=$(date +%s)
    (
        # Do not keep the install lock alive in a leftover sleep.
        if [[ -n $INSTALL_LOCKFD ]]; then exec {INSTALL_LOCKFD}>&-; fi
        n=0
        while sleep 1; do
            n=$((n + 1))
            if ((n % 30 == 0)); then
                say "  ... still $label: ${n}s, $(wc -l <"$log") lines in $log${RUN_TOTAL:+ (of $RUN_TOTAL packages; cached ones are not listed)}"
            fi
        done
    ) &
    HEARTBEAT_PID=$!
    "$@" >"$log" 2>&1 || rc=$?
    kill "$HEARTBEAT_PID" 2>/dev/null || true
    wait "$HEARTBEAT_PID" 2>/dev/null || true
    HEARTBEAT_PID=
    if [[ $rc != 0 ]]; then
        say "$label failed (exit $rc) after $(($(date +%s) - t0))s; last lines of $log:"
        tail -n 25 "$log" | sed 's/^/    /' >&2
        return "$rc"
    fi
    say "  done $label in $(($(date +%s) - t0))s"
}

# A failed start cleans up after itself: a script that starts processes sets START_DIR to
# where they live and START_DONE=1 once all is up, and defines stop_all DIR; on any other exit
# (an error, SIGINT, SIGTERM) stop_all START_DIR runs. The heartbeat of run_logged is stopped.
START_DIR=
START_DONE=0
on_exit() {
    local rc=$?
    if [[ -n $HEARTBEAT_PID ]]; then kill "$HEARTBEAT_PID" 2>/dev/null || true; fi
    if [[ -n $START_DIR && $START_DONE != 1 ]]; then
        say "start failed; stopping what was started (logs stay in $START_DIR)"
        stop_all "$START_DIR" || true
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# processes

# is_running PIDFILE NAME: the pid in PIDFILE is a live (not zombie) process running NAME
# (argv[0]'s basename, or argv[1]'s for a wrapper), so a recycled pid is never signalled.
is_running() {
    local pid arg
    [[ -f $1 ]] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
    while IFS= read -r arg; do
        [[ ${arg##*/} == "$2" ]] && return 0
    done < <(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 2)
    return 1
}

# stop_one DIR NAME: stop the process of DIR/NAME.pid (TERM, 15 s, KILL), remove the pid file.
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

# launch NAME DIR CMD...: start CMD detached (own session), output appended to DIR/NAME.log,
# pid in DIR/NAME.pid. LAUNCH_CLOSE_FD (optional) is a descriptor the process must not inherit.
launch() {
    local name=$1 dir=$2
    shift 2
    if [[ -n ${LAUNCH_CLOSE_FD:-} ]]; then
        setsid "$@" </dev/null >>"$dir/$name.log" 2>&1 {LAUNCH_CLOSE_FD}>&- &
    else
        setsid "$@" </dev/null >>"$dir/$name.log" 2>&1 &
    fi
    echo $! >"$dir/$name.pid"
}

# wait_until WHAT NAME DIR TIMEOUT CMD...: until CMD succeeds; fails with NAME's log tail if
# NAME (DIR/NAME.pid) exits or TIMEOUT seconds pass.
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

# free_ports N: N distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
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

# ---------------------------------------------------------------------------------------------
# node parts: a private registry, containerd and kubelet

# The image every test Pod runs (as cr.yandex/crp/app:1 or registry.yandexcloud.net/crp/app:1).
IMAGE_PATH=crp/app:1
PAUSE_REF=local/pause:3.2
# PID 1 of both images: a shell that exits on SIGTERM (a bare sleep as PID 1 would ignore it
# and every Pod deletion would wait out its grace period).
ENTRYPOINT=(/bin/busybox sh -c 'trap "exit 0" TERM INT; /bin/busybox sleep 2147483647 & wait')

# image_key: a digest of everything an image build depends on (a new busybox or a changed
# builder gives a new cache entry).
image_key() {
    { sha256sum </usr/bin/busybox; sha256sum <"$SCRIPTS/oci-image.py"; printf '%s\0' "${ENTRYPOINT[@]}"; } |
        sha256sum | cut -c1-16
}

# ensure_images: OCI layouts of the app and pause images, and the pause image as a
# docker-archive for `ctr images import`, under IMAGE_DIR/KEY/; sets IMAGES to that folder.
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

# write_registry_config DIR LISTEN: DIR/registry/config.yml for docker-registry on LISTEN
# (host:port) with TLS from DIR/certs and htpasswd auth from DIR/registry/htpasswd.
write_registry_config() {
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
  addr: $2
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

# write_containerd_config DIR REGISTRY [CNI_CONF_DIR]: DIR/containerd/config.toml. REGISTRY
# (host:port) is the only place cr.yandex and registry.yandexcloud.net resolve to (hosts.toml,
# no upstream), with the CA DIR/registry-ca/ca.crt. With CNI_CONF_DIR, Pods get CNI networking
# (Debian's plugins in /usr/lib/cni) and their network namespaces are pinned under the state
# dir; without, Pods use hostNetwork.
write_containerd_config() {
    local n=$1 c=$1/containerd h cni=${3:-} netns_under_state=false
    mkdir -p "$c/certs.d"
    if [[ -z $cni ]]; then
        cni=$n/cni/net.d
        mkdir -p "$cni"
    else
        netns_under_state=true
    fi
    # The Yandex registry hosts go to the local registry and nowhere else: `server` and the
    # only [host] are REGISTRY, so a pull never falls back to the real host name.
    for h in cr.yandex registry.yandexcloud.net; do
        mkdir -p "$c/certs.d/$h"
        cat >"$c/certs.d/$h/hosts.toml" <<EOF
server = "https://$2"

[host."https://$2"]
  capabilities = ["pull", "resolve"]
  ca = "$n/registry-ca/ca.crt"
EOF
    done
    cat >"$c/config.toml" <<EOF
# written by scripts/${LIB_NAME:-psi}.sh
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
  # Pod network namespaces under the state dir, so that node_cleanup finds every one.
  netns_mounts_under_state_dir = $netns_under_state
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
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$c/certs.d"
EOF
}

# write_kubelet_config DIR ADDRESS PORT HEALTHZ_PORT [CLIENT_CA] [EXTRA_YAML]:
# DIR/kubelet/config.yaml (kubelet serving on ADDRESS:PORT, healthz on 127.0.0.1:HEALTHZ_PORT;
# with CLIENT_CA, client certificates it signed authenticate: the API server's, for logs).
write_kubelet_config() {
    local k=$1/kubelet
    cat >"$k/config.yaml" <<EOF
# written by scripts/${LIB_NAME:-psi}.sh
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $2
port: $3
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $4
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "${5:-}"}
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
${6:-}
EOF
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

# node_cleanup DIR: stop kubelet (DIR/kubelet.pid), remove every container and sandbox, stop
# containerd and the registry, kill leftover shims of THIS containerd and their processes,
# unmount everything below DIR and remove the containers' cgroups. Safe to repeat.
node_cleanup() {
    local n=$1 sock ids id shims pid mounts left m cg i
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
    # Unmount whatever is left below DIR (sandbox shm, rootfs, Pod network namespaces,
    # kubelet's own bind mounts), deepest first.
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
}
