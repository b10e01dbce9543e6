#!/usr/bin/env bash
# cluster.sh - a whole one-node Kubernetes cluster inside a network namespace of its own:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd + runc, kubelet,
# kube-proxy (nftables), Pod networking with the CNI bridge + host-local plugins, and a private
# registry. Every Kubernetes binary is v$KUBE_VERSION from one cached Go build
# (scripts/control-plane.sh install cluster). See tests/TESTING.md.
#
#   scripts/cluster.sh install
#       Idempotent, as root: the Kubernetes binaries; Debian's containerd, runc,
#       containernetworking-plugins, nftables, docker-registry, skopeo, busybox-static,
#       apache2-utils, iproute2; the busybox test images. Seconds when cached.
#   scripts/cluster.sh up DIR
#       Creates the network namespace (named in DIR/netns), starts everything in it, waits
#       until the node is Ready, the `default` ServiceAccount exists and the `kubernetes`
#       Service answers through kube-proxy, and writes DIR/env (shell exports, meant for
#       commands run INSIDE the namespace):
#         KUBECONFIG, PSI_TEST_KUBECONFIG   DIR/kubeconfig (admin, https://10.244.0.1:6443)
#         PSI_TEST_APISERVER, PSI_TEST_CA_FILE, PSI_TEST_ADMIN_TOKEN, PSI_TEST_KUBE_VERSION
#         PSI_CLUSTER=1, PSI_CLUSTER_DIR, PSI_CLUSTER_NETNS (/run/netns/NAME),
#         PSI_CLUSTER_NODE_IP (10.244.0.1: the bridge; Pods reach it),
#         PSI_CLUSTER_PUSH_CREDS (user:password that may push to the registry)
#         PSI_TEST_NODE=1, PSI_TEST_NODE_DIR, PSI_TEST_NODE_NAME, PSI_TEST_REGISTRY
#         (10.244.0.1:5000), PSI_TEST_REGISTRY_CERT_DIR (skopeo --cert-dir),
#         PSI_TEST_REGISTRY_CA, PSI_TEST_REGISTRY_HTPASSWD, PSI_TEST_IMAGE_PATH (crp/app:1):
#         the same names as scripts/node.sh's node.env (tests/node/mod.rs reads them)
#       containerd resolves cr.yandex and registry.yandexcloud.net to that registry only. It
#       re-reads its htpasswd when the file's mtime changes (tests rename a new file over it).
#   scripts/cluster.sh exec DIR CMD [ARG...]
#       Runs CMD inside the namespace with DIR/env exported (kubectl, helm, cargo test ...).
#   scripts/cluster.sh push DIR SOURCE REPO:TAG
#       Copies an image (any skopeo source, e.g. oci-archive:/path/image.tar) into the
#       cluster's registry as REPO:TAG (pulled by the node as cr.yandex/REPO:TAG).
#   scripts/cluster.sh down DIR
#       Stops everything (by pid), removes every container and Pod network namespace,
#       unmounts what is left under DIR, and deletes the network namespace. Safe to repeat,
#       after a failed up and after a crash.
#
# Network confinement (hard rule): the namespace holds only `lo`, the bridge cni0 (the node's
# address 10.244.0.1/24) and the Pods' veths. It has no default route, no route to any host
# interface, no NAT and IP forwarding off, so nothing in it can send a packet off this
# machine whatever goes wrong (a missing kube-proxy rule, a stray lookup). `up` checks this
# before starting anything and again when everything runs, and fails loudly otherwise. The
# host reaches the cluster only by running commands inside it (exec). Service CIDR
# 10.96.0.0/16 (routed to cni0 so that connect() to a ClusterIP finds a route before
# kube-proxy's DNAT), Pod CIDR 10.244.0.0/24, no DNS anywhere (kubelet resolvConf "").
#
# Knobs: PSI_START_TIMEOUT (seconds per wait, 90).
# Progress and errors go to stderr, prefixed "cluster:".
set -euo pipefail
LIB_NAME=cluster
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

START_TIMEOUT=${PSI_START_TIMEOUT:-90}
PACKAGES=(containerd runc containernetworking-plugins nftables docker-registry skopeo busybox-static
    apache2-utils iproute2 util-linux curl python3 openssl etcd-server)
NODE_NAME=psi-node
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
API_PORT=6443
REGISTRY_PORT=5000
BIN_DIR=$CACHE_DIR/bin


cmd_install() {
    local t0=$SECONDS lockfd
    mkdir -p "$CACHE_DIR" "$LOG_DIR"
    exec {lockfd}>>"$CACHE_DIR/node-install.lock"
    flock -w 3600 "$lockfd" || die "timed out waiting for $CACHE_DIR/node-install.lock"
    apt_install apt-cluster "${PACKAGES[@]}"
    "$SCRIPTS/control-plane.sh" install cluster
    ensure_images
    say "install done in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------------------
# the network namespace

netns_name() { cat "$1/netns" 2>/dev/null; }

# in_ns DIR CMD...: CMD in the cluster's network namespace (nsenter: the mount namespace stays
# the host's, so that kubelet's volume mounts are seen by containerd and runc).
in_ns() {
    local ns
    ns=$(netns_name "$1") || die "no network namespace recorded in $1/netns"
    shift
    nsenter --net="/run/netns/$ns" -- "$@"
}

# check_confined DIR: the namespace has no default route, no route leaving through anything
# but lo and cni0 (or the Pods' veths, which end in Pods on the bridge), no interface but those,
# and forwarding off. Fails loudly otherwise.
check_confined() {
    local dir=$1 ns routes links bad
    ns=$(netns_name "$dir")
    routes=$(ip -n "$ns" -4 route show table all 2>&1) || die "cannot read the routes of netns $ns: $routes"
    if ip -n "$ns" route show default | grep -q . || ip -n "$ns" -6 route show default | grep -q .; then
        die "CONFINEMENT: netns $ns has a default route; refusing to run a cluster in it:\n$(ip -n "$ns" route show default)"
    fi
    bad=$(printf '%s\n' "$routes" | grep -vE ' dev (lo|cni0)( |$)' | grep -vE '^(broadcast|local|multicast) ' || true)
    [[ -z $bad ]] || die "CONFINEMENT: netns $ns has routes through other interfaces: $bad"
    links=$(ip -n "$ns" -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }')
    bad=$(printf '%s\n' "$links" | grep -vxE 'lo|cni0|veth[0-9a-f]+' || true)
    [[ -z $bad ]] || die "CONFINEMENT: netns $ns has interfaces other than lo, cni0 and Pod veths: $bad"
    bad=$(in_ns "$dir" cat /proc/sys/net/ipv4/ip_forward)
    [[ $bad == 0 ]] || die "CONFINEMENT: IP forwarding is on in netns $ns"
    # The proof a test can see: a packet to an address outside has no route at all.
    if in_ns "$dir" ip route get 192.0.2.1 >/dev/null 2>&1 || in_ns "$dir" ip route get 1.1.1.1 >/dev/null 2>&1; then
        die "CONFINEMENT: netns $ns has a route to an address outside it"
    fi
}

make_netns() { # DIR
    local dir=$1 ns
    ns=psi-$(printf '%s' "$dir" | sha256sum | cut -c1-8)
    if [[ -e /run/netns/$ns ]]; then
        say "removing a leftover network namespace $ns"
        ip netns delete "$ns" || die "cannot delete the leftover netns $ns"
    fi
    ip netns add "$ns" || die "ip netns add $ns failed (root and network namespaces needed)"
    echo "$ns" >"$dir/netns"
    ip -n "$ns" link set lo up
    # The bridge carries the node's address before CNI runs: kubelet's --node-ip, the API
    # server's advertised address, and the Pods' next hop to Services are all 10.244.0.1.
    ip -n "$ns" link add cni0 type bridge
    ip -n "$ns" addr add "$NODE_IP/24" dev cni0
    ip -n "$ns" link set cni0 up
    ip -n "$ns" route add "$SERVICE_CIDR" dev cni0
    in_ns "$dir" sh -c 'echo 0 >/proc/sys/net/ipv4/ip_forward'
    check_confined "$dir"
    say "network namespace $ns: lo, cni0 $NODE_IP/24, route $SERVICE_CIDR dev cni0; no default route, forwarding off"
}

# ---------------------------------------------------------------------------------------------
# certificates and configs

make_pki() { # DIR
    local p=$1/pki
    mkdir -p "$p"
    (
        umask 077
        cd "$p"
        openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 2 -keyout ca.key -out ca.crt \
            -subj "/CN=psi-cluster-ca" -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -new -nodes -newkey rsa:2048 -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
        printf 'subjectAltName=IP:%s,IP:%s,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
            "$NODE_IP" "$API_SERVICE_IP" >apiserver.ext
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
            -extfile apiserver.ext -out apiserver.crt 2>/dev/null
        # The API server's client certificate towards kubelet (logs, exec, port-forward).
        openssl req -new -nodes -newkey rsa:2048 -keyout kubelet-client.key -out kubelet-client.csr \
            -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' >client.ext
        openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
            -extfile client.ext -out kubelet-client.crt 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        echo "$(openssl rand -hex 32),admin,admin,system:masters" >tokens.csv
    ) || die "generating the cluster's certificates and keys with openssl failed"
}

write_kubeconfig() { # DIR TOKEN
    (
        umask 077
        cat >"$1/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: psi-cluster
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority: $1/pki/ca.crt
users:
- name: admin
  user:
    token: $2
contexts:
- name: psi-cluster
  context:
    cluster: psi-cluster
    user: admin
current-context: psi-cluster
EOF
    )
}

write_cni_config() { # DIR
    mkdir -p "$1/cni/net.d" "$1/cni/ipam"
    # bridge + host-local only: no ipMasq (no NAT), no portmap (no iptables), isGateway false
    # (the bridge already has the node's address; isGateway would also switch IP forwarding
    # on, which nothing here needs). The Pods' only routes: their /24 on the bridge and the
    # Service CIDR through the node (10.244.0.1); no default route.
    cat >"$1/cni/net.d/10-psi.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "psi",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$1/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    }
  ]
}
EOF
}

write_kube_proxy_config() { # DIR
    cat >"$1/kube-proxy.yaml" <<EOF
# written by scripts/cluster.sh
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: $1/kubeconfig
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$NODE_IP/32"]
# No CAP_SYS_RESOURCE here; and the conntrack table size and timeouts are global to the
# machine: never change them (0 = leave as is).
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
EOF
}

# ---------------------------------------------------------------------------------------------
# up / down

kbin() {
    local b=$BIN_DIR/$1
    [[ -x $b ]] || die "$1 not found at $b: run scripts/cluster.sh install"
    echo "$b"
}

api_ready() { [[ $(in_ns "$1" curl -s --max-time 2 --cacert "$1/pki/ca.crt" -H "Authorization: Bearer $2" "https://$NODE_IP:$API_PORT/readyz") == ok ]]; }
kc() { in_ns "$CLUSTER_DIR" kubectl --kubeconfig "$CLUSTER_DIR/kubeconfig" "$@"; }
node_ready() { [[ $(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]; }
default_sa() { kc -n default get serviceaccount default >/dev/null 2>&1; }
api_service_routed() { in_ns "$CLUSTER_DIR" curl -s -o /dev/null --max-time 2 --cacert "$CLUSTER_DIR/pki/ca.crt" "https://$API_SERVICE_IP:443/readyz"; }
registry_answers() { [[ $(in_ns "$CLUSTER_DIR" curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$CLUSTER_DIR/node/registry-ca/ca.crt" "https://$NODE_IP:$REGISTRY_PORT/v2/") == 401 ]]; }
etcd_healthy() { [[ $(in_ns "$CLUSTER_DIR" curl -s --max-time 2 http://127.0.0.1:2379/health) == *'"health":"true"'* ]]; }

# start NAME CMD...: launch CMD inside the namespace (log and pid in DIR).
start() {
    local name=$1
    shift
    : >"$CLUSTER_DIR/$name.log"
    launch "$name" "$CLUSTER_DIR" nsenter --net="/run/netns/$(netns_name "$CLUSTER_DIR")" -- "$@"
}

cmd_up() {
    [[ -n ${1:-} ]] || die "usage: scripts/cluster.sh up DIR"
    local dir=$1 t0=$SECONDS token n pw out version p
    [[ $(id -u) == 0 ]] || die "a cluster in a network namespace needs root"
    for p in nsenter ip nft containerd ctr runc docker-registry skopeo htpasswd kubectl curl openssl etcd findmnt; do
        need "$p" "run scripts/cluster.sh install"
    done
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] ||
        die "the CNI plugins bridge and host-local are not in /usr/lib/cni: run scripts/cluster.sh install"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    CLUSTER_DIR=$dir
    for p in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy node/kubelet node/containerd; do
        is_running "$dir/$p.pid" "${p##*/}" && die "a cluster is already running in $dir (scripts/cluster.sh down $dir)"
    done
    START_DIR=$dir
    stop_all "$dir" # leftovers of a crashed run in the same DIR
    rm -rf --one-file-system "${dir:?}"/{etcd,pki,node,cni,env,kubeconfig}
    ensure_images
    make_netns "$dir"
    make_pki "$dir"
    token=$(cut -d, -f1 "$dir/pki/tokens.csv")
    write_kubeconfig "$dir" "$token"

    say "starting etcd (127.0.0.1:2379 in the namespace)"
    start etcd "$(command -v etcd)" --name psi --data-dir "$dir/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster psi=http://127.0.0.1:2380 --initial-cluster-state new
    wait_until "etcd" etcd "$dir" "$START_TIMEOUT" etcd_healthy || die "etcd did not start"

    say "starting kube-apiserver $("$(kbin kube-apiserver)" --version | cut -d' ' -f2) ($NODE_IP:$API_PORT)"
    start kube-apiserver "$(kbin kube-apiserver)" \
        --etcd-servers=http://127.0.0.1:2379 \
        --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
        --tls-cert-file="$dir/pki/apiserver.crt" --tls-private-key-file="$dir/pki/apiserver.key" \
        --client-ca-file="$dir/pki/ca.crt" \
        --kubelet-client-certificate="$dir/pki/kubelet-client.crt" --kubelet-client-key="$dir/pki/kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP \
        --token-auth-file="$dir/pki/tokens.csv" --authorization-mode=RBAC \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$dir/pki/sa.pub" --service-account-signing-key-file="$dir/pki/sa.key" \
        --service-cluster-ip-range="$SERVICE_CIDR"
    wait_until "kube-apiserver /readyz" kube-apiserver "$dir" "$START_TIMEOUT" api_ready "$dir" "$token" ||
        die "kube-apiserver did not become ready"
    version=$(kc version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') ||
        die "cannot read the API server's version"

    say "starting kube-controller-manager and kube-scheduler"
    start kube-controller-manager "$(kbin kube-controller-manager)" \
        --kubeconfig="$dir/kubeconfig" --authentication-kubeconfig="$dir/kubeconfig" \
        --authorization-kubeconfig="$dir/kubeconfig" \
        --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
        --service-account-private-key-file="$dir/pki/sa.key" --root-ca-file="$dir/pki/ca.crt" \
        --service-cluster-ip-range="$SERVICE_CIDR" --use-service-account-credentials=false
    start kube-scheduler "$(kbin kube-scheduler)" \
        --kubeconfig="$dir/kubeconfig" --authentication-kubeconfig="$dir/kubeconfig" \
        --authorization-kubeconfig="$dir/kubeconfig" \
        --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false

    # The node: registry (TLS, htpasswd), containerd with CNI, kubelet, kube-proxy.
    n=$dir/node
    mkdir -p "$n/registry/data" "$n/registry-ca" "$n/kubelet/root" "$n/kubelet/certs"
    "$REPO/certs/generate.sh" "$n/certs" --ip 127.0.0.1 --ip "$NODE_IP" >/dev/null || die "certs/generate.sh failed"
    cp "$n/certs/ca.crt" "$n/registry-ca/ca.crt"
    pw=$(openssl rand -hex 16)
    htpasswd -Bbn push "$pw" >"$n/registry/htpasswd" 2>/dev/null || die "htpasswd failed"
    write_registry_config "$n" "0.0.0.0:$REGISTRY_PORT"
    say "starting docker-registry (https://$NODE_IP:$REGISTRY_PORT)"
    : >"$n/docker-registry.log"
    launch docker-registry "$n" nsenter --net="/run/netns/$(netns_name "$dir")" -- docker-registry serve "$n/registry/config.yml"
    wait_until "the registry" docker-registry "$n" "$START_TIMEOUT" registry_answers || die "the registry did not start"
    out=$(in_ns "$dir" skopeo copy -q --dest-cert-dir "$n/registry-ca" --dest-creds "push:$pw" \
        "oci:$IMAGES/app:1" "docker://$NODE_IP:$REGISTRY_PORT/$IMAGE_PATH" 2>&1) || die "pushing the app image failed: $out"
    out=$(in_ns "$dir" skopeo inspect --raw --cert-dir "$n/registry-ca" --no-creds "docker://$NODE_IP:$REGISTRY_PORT/$IMAGE_PATH" 2>&1) &&
        die "the registry serves $IMAGE_PATH without credentials"

    write_cni_config "$dir"
    write_containerd_config "$n" "$NODE_IP:$REGISTRY_PORT" "$dir/cni/net.d"
    say "starting containerd ($n/containerd/containerd.sock)"
    : >"$n/containerd.log"
    launch containerd "$n" nsenter --net="/run/netns/$(netns_name "$dir")" -- containerd --config "$n/containerd/config.toml"
    wait_until "containerd's socket" containerd "$n" "$START_TIMEOUT" ctr -a "$n/containerd/containerd.sock" version ||
        die "containerd did not start"
    out=$(ctr -a "$n/containerd/containerd.sock" -n k8s.io images import "$IMAGES/pause.tar" 2>&1) ||
        die "importing the pause image failed: $out"

    # No DNS anywhere: Pods get an empty resolv.conf.
    write_kubelet_config "$n" "$NODE_IP" 10250 10248 "$dir/pki/ca.crt" 'resolvConf: ""'

    say "starting kubelet as node $NODE_NAME ($NODE_IP)"
    : >"$n/kubelet.log"
    launch kubelet "$n" nsenter --net="/run/netns/$(netns_name "$dir")" -- "$(kbin kubelet)" \
        --config "$n/kubelet/config.yaml" --kubeconfig "$dir/kubeconfig" \
        --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
        --root-dir "$n/kubelet/root" --cert-dir "$n/kubelet/certs" --v=2

    write_kube_proxy_config "$dir"
    say "starting kube-proxy (nftables)"
    start kube-proxy "$(kbin kube-proxy)" --config "$dir/kube-proxy.yaml"

    wait_until "node $NODE_NAME Ready" kubelet "$n" "$START_TIMEOUT" node_ready || die "node $NODE_NAME did not become Ready"
    wait_until "the default ServiceAccount (controller-manager)" kube-controller-manager "$dir" "$START_TIMEOUT" default_sa ||
        die "the controller-manager did not create the default ServiceAccount"
    wait_until "the kubernetes Service through kube-proxy ($API_SERVICE_IP:443)" kube-proxy "$dir" "$START_TIMEOUT" api_service_routed ||
        die "the kubernetes Service is not routed"
    for p in kube-scheduler kube-controller-manager; do
        is_running "$dir/$p.pid" "$p" || { tail -n 20 "$dir/$p.log" >&2; die "$p exited"; }
    done
    check_confined "$dir"

    (
        umask 022
        {
            echo "# written by scripts/cluster.sh up; for commands INSIDE the namespace (scripts/cluster.sh exec $dir CMD)"
            printf 'export KUBECONFIG=%q\n' "$dir/kubeconfig"
            printf 'export PSI_TEST_KUBECONFIG=%q\n' "$dir/kubeconfig"
            printf 'export PSI_TEST_APISERVER=%q\n' "https://$NODE_IP:$API_PORT"
            printf 'export PSI_TEST_CA_FILE=%q\n' "$dir/pki/ca.crt"
            printf 'export PSI_TEST_ADMIN_TOKEN=%q\n' "$token"
            printf 'export PSI_TEST_KUBE_VERSION=%q\n' "$version"
            printf 'export PSI_CLUSTER=1\n'
            printf 'export PSI_CLUSTER_DIR=%q\n' "$dir"
            printf 'export PSI_CLUSTER_NETNS=%q\n' "/run/netns/$(netns_name "$dir")"
            printf 'export PSI_CLUSTER_NODE_IP=%q\n' "$NODE_IP"
            printf 'export PSI_CLUSTER_PUSH_CREDS=%q\n' "push:$pw"
            printf 'export PSI_TEST_NODE=1\n'
            printf 'export PSI_TEST_NODE_DIR=%q\n' "$n"
            printf 'export PSI_TEST_NODE_NAME=%q\n' "$NODE_NAME"
            printf 'export PSI_TEST_REGISTRY=%q\n' "$NODE_IP:$REGISTRY_PORT"
            printf 'export PSI_TEST_REGISTRY_CERT_DIR=%q\n' "$n/registry-ca"
            printf 'export PSI_TEST_REGISTRY_CA=%q\n' "$n/registry-ca/ca.crt"
            printf 'export PSI_TEST_REGISTRY_HTPASSWD=%q\n' "$n/registry/htpasswd"
            printf 'export PSI_TEST_IMAGE_PATH=%q\n' "$IMAGE_PATH"
        } >"$dir/env"
        chmod 600 "$dir/env"
    )
    START_DONE=1
    say "ready in $((SECONDS - t0))s: Kubernetes $version, node $NODE_NAME $NODE_IP, netns $(netns_name "$dir")"
    say "  scripts/cluster.sh exec $dir kubectl get pods -A    # down: scripts/cluster.sh down $dir"
}

stop_all() { # DIR
    local dir=$1 ns pid
    CLUSTER_DIR=$dir
    stop_one "$dir" kube-proxy
    node_cleanup "$dir/node"
    stop_one "$dir" kube-scheduler
    stop_one "$dir" kube-controller-manager
    stop_one "$dir" kube-apiserver
    stop_one "$dir" etcd
    ns=$(netns_name "$dir" || true)
    if [[ -n $ns && -e /run/netns/$ns ]]; then
        # Anything still in the namespace was started by this harness (nothing else can be in
        # it): by pid, TERM then KILL.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            say "stopping leftover process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)) in $ns"
            kill -TERM "$pid" 2>/dev/null || true
        done
        for _ in $(seq 50); do
            [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && break
            sleep 0.1
        done
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns delete "$ns" || say "WARNING: could not delete netns $ns"
    fi
    rm -f "$dir/env" "$dir/netns"
}

cmd_down() {
    [[ -n ${1:-} ]] || die "usage: scripts/cluster.sh down DIR"
    local dir=$1
    [[ -d $dir ]] || { say "$dir does not exist; nothing to stop"; return 0; }
    dir=$(cd "$dir" && pwd -P)
    stop_all "$dir"
    say "stopped ($dir)"
}

cmd_exec() {
    [[ -n ${1:-} && -n ${2:-} ]] || die "usage: scripts/cluster.sh exec DIR CMD [ARG...]"
    local dir=$1
    shift
    [[ -f $dir/env ]] || die "no $dir/env: the cluster is not up (scripts/cluster.sh up $dir)"
    # shellcheck disable=SC1091
    source "$dir/env"
    exec nsenter --net="$PSI_CLUSTER_NETNS" -- "$@"
}

cmd_push() {
    [[ -n ${1:-} && -n ${2:-} && -n ${3:-} ]] || die "usage: scripts/cluster.sh push DIR SOURCE REPO:TAG"
    local dir=$1 src=$2 dest=$3 out
    [[ -f $dir/env ]] || die "no $dir/env: the cluster is not up (scripts/cluster.sh up $dir)"
    # shellcheck disable=SC1091
    source "$dir/env"
    out=$(nsenter --net="$PSI_CLUSTER_NETNS" -- skopeo copy -q --dest-cert-dir "$PSI_TEST_REGISTRY_CERT_DIR" \
        --dest-creds "$PSI_CLUSTER_PUSH_CREDS" "$src" "docker://$PSI_TEST_REGISTRY/$dest" 2>&1) ||
        die "pushing $src to the cluster registry as $dest failed: $out"
    say "pushed $src as $PSI_TEST_REGISTRY/$dest (cr.yandex/$dest on the node)"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

case ${1:-} in
install) shift && cmd_install "$@" ;;
up) shift && cmd_up "$@" ;;
down) shift && cmd_down "$@" ;;
exec) shift && cmd_exec "$@" ;;
push) shift && cmd_push "$@" ;;
-h | --help | help) usage ;;
*) usage ;;
esac
