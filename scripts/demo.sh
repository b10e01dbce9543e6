#!/usr/bin/env bash
# demo.sh - the README's "Run it": pullsecret-injector end to end on this machine.
#
#   scripts/demo.sh            run the demo, then clean up
#   scripts/demo.sh --keep     leave everything running and print how to use it and stop it
#
# What it does, saying so as it goes:
#   1. installs and starts a local etcd + kube-apiserver on loopback (scripts/control-plane.sh;
#      the first run builds kube-apiserver from the Go module proxy: several minutes, cached);
#   2. builds pullsecret-injector and helm (cached), renders the Helm chart in webhook.url mode
#      and applies what a cluster install would create: ServiceAccount, RBAC, the
#      MutatingWebhookConfiguration (by URL, with the caBundle of a CA made by certs/generate.sh)
#      and the ConfigMap;
#   3. runs the binary on 127.0.0.1 with the chart's config (paths pointed at local files) and
#      the chart's ServiceAccount token, so it has exactly the chart's RBAC;
#   4. starts a node on loopback (scripts/node.sh: Debian's docker-registry with TLS and
#      htpasswd, containerd, kubelet; cr.yandex and registry.yandexcloud.net resolve to that
#      local registry only), and makes the registry accept the example credentials;
#   5. labels a namespace, creates a Pod from cr.yandex/crp/app:1 with no credentials in its
#      manifest, waits until it is Running, and prints `kubectl get pods`, the Pod's
#      imagePullSecrets and the managed Secret's metadata (values redacted).
# Static example credentials are used (username iam, password "example-token"); nothing
# outside this machine is contacted. Exits non-zero if the Pod does not get its Secret or
# does not reach Running.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

keep=0
[[ ${1:-} == --keep ]] && keep=1

say() { printf '\n\033[1mdemo: %s\033[0m\n' "$*"; }
die() { printf 'demo: ERROR: %s\n' "$*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

command -v cargo >/dev/null || die "cargo not found: install Rust (stable) with rustup"
command -v kubectl >/dev/null || die "kubectl not found"
command -v python3 >/dev/null || die "python3 not found"
if ! command -v curl >/dev/null; then
  say "installing curl"
  apt-get update -qq && apt-get install -y -qq curl >/dev/null
fi
if ! command -v openssl >/dev/null; then
  say "installing openssl"
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

work=$(mktemp -d /tmp/psi-demo.XXXXXX)
injector_pid=
cleanup() {
  if [[ $keep == 1 ]]; then return; fi
  [[ -n $injector_pid ]] && kill -TERM "$injector_pid" 2>/dev/null && wait "$injector_pid" 2>/dev/null || true
  scripts/node.sh stop "$work/cp" >/dev/null 2>&1 || true
  scripts/control-plane.sh stop "$work/cp" >/dev/null 2>&1 || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

say "1/7 local control plane: etcd + kube-apiserver (first run builds kube-apiserver: several minutes)"
scripts/control-plane.sh install
scripts/control-plane.sh start "$work/cp"
# shellcheck disable=SC1091
source "$work/cp/env"
echo "kube-apiserver $PSI_TEST_KUBE_VERSION at $PSI_TEST_APISERVER"

say "2/7 building pullsecret-injector (release) and helm (cached after the first run)"
cargo build --release --locked --bin pullsecret-injector
bin=$repo/target/release/pullsecret-injector
helm=$(scripts/install-tools.sh helm)

say "3/7 serving certificate for 127.0.0.1 (certs/generate.sh) and example credentials"
ns=pullsecret-injector
certs/generate.sh "$work/tls" --namespace "$ns" >/dev/null
mkdir -p "$work/creds"
printf 'example-token\n' >"$work/creds/password"
port=$(free_port)
admin_port=$(free_port)

say "4/7 rendering the Helm chart in webhook.url mode and applying ServiceAccount, RBAC, webhook, ConfigMap"
cat >"$work/values.yaml" <<EOF
webhook:
  url: https://127.0.0.1:$port/mutate
certificates:
  mode: existingSecret
  existingSecret:
    name: demo-tls
    caBundle: $(base64 -w0 <"$work/tls/ca.crt")
credentials:
  existingSecret: demo-credentials
registries:
  - name: yandex
    hosts: ["cr.yandex", "registry.yandexcloud.net"]
    secretName: yc-registry-secret
    # No probe: containerd maps these names to the local registry, the injector must not
    # look them up.
    probeHosts: []
    credentials:
      basic: { username: iam, passwordFile: /creds/password }
EOF
kubectl create namespace "$ns" >/dev/null
"$helm" template demo charts/pullsecret-injector -n "$ns" -f "$work/values.yaml" \
  --show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml --show-only templates/rbac-pods.yaml \
  --show-only templates/webhook.yaml --show-only templates/configmap.yaml >"$work/rendered.yaml"
kubectl apply -f "$work/rendered.yaml"
# The chart's config, with the container paths pointed at local files and loopback ports.
kubectl -n "$ns" get configmap -l app.kubernetes.io/instance=demo -o jsonpath='{.items[0].data.config\.yaml}' |
  sed -e "s#0.0.0.0:8443#127.0.0.1:$port#" -e "s#0.0.0.0:8080#127.0.0.1:$admin_port#" \
      -e "s#/tls/#$work/tls/#g" -e "s#/creds/#$work/creds/#g" >"$work/config.yaml"
echo "--- config (from the chart's ConfigMap) ---"; cat "$work/config.yaml"
sa=$(kubectl -n "$ns" get serviceaccount -l app.kubernetes.io/instance=demo -o jsonpath='{.items[0].metadata.name}')
token=$(kubectl -n "$ns" create token "$sa" --duration 2h)
cat >"$work/sa.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$PSI_TEST_APISERVER", certificate-authority: "$PSI_TEST_CA_FILE"}}]
users: [{name: sa, user: {token: "$token"}}]
contexts: [{name: sa, context: {cluster: local, user: sa, namespace: $ns}}]
current-context: sa
EOF

say "5/7 running pullsecret-injector as ServiceAccount $sa (webhook https://127.0.0.1:$port, admin http://127.0.0.1:$admin_port)"
KUBECONFIG=$work/sa.kubeconfig POD_NAMESPACE=$ns POD_NAME=demo \
  "$bin" run --config "$work/config.yaml" >"$work/injector.log" 2>&1 &
injector_pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  kill -0 "$injector_pid" 2>/dev/null || { cat "$work/injector.log"; die "pullsecret-injector exited"; }
  sleep 0.2
done
curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null || { cat "$work/injector.log"; die "pullsecret-injector not ready after 20 s"; }
echo "ready"

say "6/7 a node on loopback: private registry (TLS, htpasswd), containerd, kubelet (first run installs and builds: minutes)"
scripts/node.sh install
scripts/node.sh start "$work/cp"
# shellcheck disable=SC1091
source "$work/cp/node.env"
# The registry accepts exactly the example credentials (it re-reads htpasswd when it changes).
htpasswd -Bbn iam example-token >"$PSI_TEST_REGISTRY_HTPASSWD.new" 2>/dev/null
touch -d '+2 seconds' "$PSI_TEST_REGISTRY_HTPASSWD.new"
mv "$PSI_TEST_REGISTRY_HTPASSWD.new" "$PSI_TEST_REGISTRY_HTPASSWD"
for _ in $(seq 100); do
  curl -sf --cacert "$PSI_TEST_REGISTRY_CA" -u iam:example-token "https://$PSI_TEST_REGISTRY/v2/" >/dev/null && break
  sleep 0.1
done
curl -sf --cacert "$PSI_TEST_REGISTRY_CA" -u iam:example-token "https://$PSI_TEST_REGISTRY/v2/" >/dev/null ||
  die "the local registry does not accept the example credentials"
echo "registry https://$PSI_TEST_REGISTRY serves $PSI_TEST_IMAGE_PATH as cr.yandex/$PSI_TEST_IMAGE_PATH to node local"

say "7/7 label a namespace, create a Pod from cr.yandex with no credentials in its manifest"
kubectl create namespace demo >/dev/null
kubectl -n demo create serviceaccount default >/dev/null 2>&1 || true   # no controller-manager here
labelled_at=$(date +%s.%N)
kubectl label namespace demo pullsecret-injector.io/inject=enabled
# The API server picks up a new webhook registration within a second or so: retry the create
# (server-side dry run) until the webhook answers, bounded.
pod_yaml=$(cat <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  nodeName: local                 # no scheduler in this local control plane
  hostNetwork: true               # no CNI on the local node
  automountServiceAccountToken: false
  containers:
    - name: app
      image: cr.yandex/crp/app:1
EOF
)
for _ in $(seq 50); do
  out=$(echo "$pod_yaml" | kubectl -n demo create --dry-run=server -o jsonpath='{.spec.imagePullSecrets}' -f - 2>/dev/null || true)
  [[ -n $out ]] && break
  sleep 0.2
done
echo "$pod_yaml" | kubectl -n demo create -f -
echo
echo "\$ kubectl -n demo get pod app -o jsonpath='{.spec.imagePullSecrets}'"
secrets=$(kubectl -n demo get pod app -o jsonpath='{.spec.imagePullSecrets}')
echo "$secrets"
[[ $secrets == *yc-registry-secret* ]] || { cat "$work/injector.log"; die "the Pod did not get yc-registry-secret"; }
for _ in $(seq 100); do
  kubectl -n demo get secret yc-registry-secret >/dev/null 2>&1 && break
  sleep 0.1
done
phase=
for _ in $(seq 600); do
  phase=$(kubectl -n demo get pod app -o jsonpath='{.status.phase}')
  [[ $phase == Running ]] && break
  sleep 0.1
done
running_at=$(date +%s.%N)
echo
echo "\$ kubectl -n demo get pods"
kubectl -n demo get pods
[[ $phase == Running ]] || { kubectl -n demo describe pod app; cat "$work/injector.log"; die "the Pod did not reach Running in 60 s"; }
kubectl -n demo get events --field-selector involvedObject.name=app -o custom-columns=REASON:.reason,MESSAGE:.message | grep -E "Pulled|Pulling" || true
python3 -c "print('namespace labelled -> Pod Running: %.2f s' % ($running_at - $labelled_at))"
echo
echo "\$ kubectl -n demo get secret yc-registry-secret -o json   # values redacted"
kubectl -n demo get secret yc-registry-secret -o json | python3 -c '
import json, sys
s = json.load(sys.stdin)
s["data"] = {k: "<redacted %d bytes>" % len(v) for k, v in s.get("data", {}).items()}
m = s["metadata"]
for k in ("managedFields", "uid", "resourceVersion", "creationTimestamp"):
    m.pop(k, None)
print(json.dumps(s, indent=2))'
echo
echo "\$ curl -s http://127.0.0.1:$admin_port/metrics | grep -E 'admission_requests_total|secret_writes_total|managed_namespaces'"
curl -s "http://127.0.0.1:$admin_port/metrics" | grep -E '^pullsecret_injector_(admission_requests_total|secret_writes_total|managed_namespaces)' || true

if [[ $keep == 1 ]]; then
  say "left running. Try:  source $work/cp/env; kubectl get pods -A"
  echo "stop:  kill $injector_pid; scripts/control-plane.sh stop $work/cp; rm -rf $work"
else
  say "done: cleaning up"
fi
