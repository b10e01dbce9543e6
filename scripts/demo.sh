#!/usr/bin/env bash
# demo.sh - the README's "Run it": pullsecret-injector installed with helm into a real
# one-node Kubernetes cluster on this machine, and a Pod from cr.yandex running with the Secret
# it injected.
#
#   scripts/demo.sh            run the demo, then remove everything
#   scripts/demo.sh --keep     leave the cluster running and print how to use and stop it
#
# What it does, saying so as it goes:
#   1. installs what it needs (cached after the first run): Kubernetes v1.37.2 built from the
#      Go module proxy (scripts/cluster.sh install), BuildKit and the local base images
#      (scripts/image.sh install), helm;
#   2. builds the image from ./Dockerfile with BuildKit (scripts/image.sh build; set
#      PSI_IMAGE_ARCHIVE to an archive it built to skip this);
#   3. starts a whole cluster inside a network namespace with no route out (scripts/cluster.sh
#      up: API server, controller-manager, scheduler, containerd, kubelet, kube-proxy, CNI
#      bridge, and a private registry with TLS and htpasswd that cr.yandex resolves to);
#   4. pushes the image to that registry, and installs the chart the README's way: a pull
#      Secret for the injector's own image, the credentials Secret, `helm install`,
#      `kubectl rollout status`;
#   5. labels a namespace, creates a Deployment from cr.yandex/crp/app:1 with no credentials in
#      its manifest, waits until its Pod is Running, and prints `kubectl get pods -o wide`, the
#      Pod's imagePullSecrets, the managed Secret's metadata (values redacted) and the metrics.
# Static example credentials are used (username iam, password "example-token"); nothing
# outside this machine is contacted but the package registries (first run). Exits non-zero if
# the Pod does not get its Secret or does not reach Running. Run it as root, under the
# machine's kubelet lock when other clusters may run: flock /tmp/psi-kubelet.lock scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
[[ ${1:-} == --keep ]] && keep=1

say() { printf '\n\033[1mdemo: %s\033[0m\n' "$*"; }
die() {
    printf 'demo: ERROR: %s\n' "$*" >&2
    exit 1
}
[[ $(id -u) == 0 ]] || die "run as root (network namespaces, containerd, kubelet, buildkitd)"
command -v cargo >/dev/null || die "cargo not found: install Rust (stable) with rustup"
command -v kubectl >/dev/null || die "kubectl not found"

t0=$SECONDS
work=$(mktemp -d /tmp/psi-demo.XXXXXX)
cleanup() {
    local rc=$?
    if [[ $keep == 1 && $rc == 0 ]]; then return; fi
    if ((rc != 0)) && [[ -f $work/cluster/env ]]; then
        echo "--- kubectl get pods -A -o wide; injector logs ---" >&2
        in_cluster kubectl get pods -A -o wide >&2 || true
        in_cluster kubectl -n pullsecret-injector logs -l app.kubernetes.io/name=pullsecret-injector --tail=20 >&2 || true
    fi
    scripts/cluster.sh down "$work/cluster" >/dev/null 2>&1 || true
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
# in_cluster CMD...: CMD inside the cluster's network namespace (KUBECONFIG set).
in_cluster() { scripts/cluster.sh exec "$work/cluster" "$@"; }
# show CMD...: print a command the way a user types it, then run it in the cluster.
show() {
    printf '\n$ %s\n' "$*"
    in_cluster "$@"
}

say "1/6 installing Kubernetes v1.37.2, BuildKit and helm (first run: builds from the Go module proxy, 20-30 minutes; cached afterwards)"
scripts/cluster.sh install
scripts/image.sh install
PSI_HELM=$(scripts/install-tools.sh helm)
export PSI_HELM
helm() { in_cluster "$PSI_HELM" "$@"; }

say "2/6 building the image from ./Dockerfile with BuildKit (scripts/image.sh; first run: the Rust build, several minutes)"
image=${PSI_IMAGE_ARCHIVE:-}
if [[ -z $image ]]; then
    image=$work/pullsecret-injector.tar
    scripts/image.sh build "$image" cr.yandex/crp/pullsecret-injector:demo >/dev/null
else
    echo "using $image (PSI_IMAGE_ARCHIVE)"
fi
scripts/image.sh inspect "$image" | python3 -c '
import json, sys
i = json.load(sys.stdin)
c = i["config"]["config"]
print("image %s: user %s, entrypoint %s, %d files" % (i["manifestDigest"][:19], c["User"], c["Entrypoint"], len(i["files"])))'

say "3/6 a one-node cluster in its own network namespace (no route out; scripts/cluster.sh up)"
scripts/cluster.sh up "$work/cluster"
# shellcheck disable=SC1091
source "$work/cluster/env"
show kubectl get nodes -o wide

say "4/6 the image into the cluster's private registry, and the README's install"
scripts/cluster.sh push "$work/cluster" "oci-archive:$image" crp/pullsecret-injector:demo
# The registry accepts: the push user, a deploy user for the injector's own image, and the
# example credentials the injector hands to the namespaces.
deploy_pw=$(openssl rand -hex 16)
{
    htpasswd -Bbn "${PSI_CLUSTER_PUSH_CREDS%%:*}" "${PSI_CLUSTER_PUSH_CREDS#*:}"
    htpasswd -Bbn deploy "$deploy_pw"
    htpasswd -Bbn iam example-token
} 2>/dev/null | grep . >"$PSI_TEST_REGISTRY_HTPASSWD.new"
touch -d '+2 seconds' "$PSI_TEST_REGISTRY_HTPASSWD.new"
mv "$PSI_TEST_REGISTRY_HTPASSWD.new" "$PSI_TEST_REGISTRY_HTPASSWD"
for _ in $(seq 100); do
    in_cluster curl -sf --cacert "$PSI_TEST_REGISTRY_CA" -u iam:example-token "https://$PSI_TEST_REGISTRY/v2/" >/dev/null && break
    sleep 0.1
done
printf 'example-token' >"$work/password"
cat >"$work/values.yaml" <<'EOF'
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
show kubectl create namespace pullsecret-injector
show kubectl -n pullsecret-injector create secret docker-registry injector-pull \
    --docker-server=cr.yandex --docker-username=deploy "--docker-password=$deploy_pw"
show kubectl -n pullsecret-injector create secret generic registry-credentials "--from-file=password=$work/password"
printf '\n$ helm install pullsecret-injector charts/pullsecret-injector -n pullsecret-injector -f values.yaml \\\n    --set credentials.existingSecret=registry-credentials --set image.repository=cr.yandex/crp/pullsecret-injector \\\n    --set image.tag=demo --set "imagePullSecrets[0].name=injector-pull"\n'
helm install pullsecret-injector charts/pullsecret-injector -n pullsecret-injector -f "$work/values.yaml" \
    --set credentials.existingSecret=registry-credentials --set image.repository=cr.yandex/crp/pullsecret-injector \
    --set image.tag=demo --set 'imagePullSecrets[0].name=injector-pull' | sed -n '1,6p'
show kubectl -n pullsecret-injector rollout status deploy/pullsecret-injector --timeout=180s
show kubectl -n pullsecret-injector get pods -o wide

say "5/6 label a namespace, deploy from cr.yandex with no credentials in the manifest"
show kubectl create namespace demo
labelled_at=$(date +%s.%N)
show kubectl label namespace demo pullsecret-injector.io/inject=enabled
for _ in $(seq 100); do
    in_cluster kubectl -n demo get secret yc-registry-secret >/dev/null 2>&1 && break
    sleep 0.1
done
secret_at=$(date +%s.%N)
show kubectl -n demo create deployment app --image=cr.yandex/crp/app:1
show kubectl -n demo rollout status deploy/app --timeout=120s
running_at=$(date +%s.%N)
pod=$(in_cluster kubectl -n demo get pods -l app=app -o jsonpath='{.items[0].metadata.name}')
printf "\n\$ kubectl -n demo get pod %s -o jsonpath='{.spec.imagePullSecrets}'\n" "$pod"
secrets=$(in_cluster kubectl -n demo get pod "$pod" -o jsonpath='{.spec.imagePullSecrets}')
echo "$secrets"
[[ $secrets == *yc-registry-secret* ]] || die "the Pod did not get yc-registry-secret"
show kubectl -n demo get pods -o wide
phase=$(in_cluster kubectl -n demo get pod "$pod" -o jsonpath='{.status.phase}')
[[ $phase == Running ]] || die "the Pod is $phase, not Running"
in_cluster kubectl -n demo get events --field-selector "involvedObject.name=$pod" \
    -o custom-columns=REASON:.reason,MESSAGE:.message | grep -E "Pulled" || true
python3 -c "import sys; l, s, r = map(float, sys.argv[1:]); print('namespace labelled -> Secret: %.2f s; -> Deployment Running: %.2f s' % (s - l, r - l))" \
    "$labelled_at" "$secret_at" "$running_at"

say "6/6 the managed Secret (values redacted) and the injector's metrics"
echo "\$ kubectl -n demo get secret yc-registry-secret -o json   # values redacted"
in_cluster kubectl -n demo get secret yc-registry-secret -o json | python3 -c '
import json, sys
s = json.load(sys.stdin)
s["data"] = {k: "<redacted %d bytes>" % len(v) for k, v in s.get("data", {}).items()}
m = s["metadata"]
for k in ("managedFields", "uid", "resourceVersion", "creationTimestamp"):
    m.pop(k, None)
print(json.dumps(s, indent=2))'
for p in $(in_cluster kubectl -n pullsecret-injector get pods -l app.kubernetes.io/name=pullsecret-injector -o jsonpath='{.items[*].metadata.name}'); do
    echo "--- $p /metrics (through the API server) ---"
    in_cluster kubectl get --raw "/api/v1/namespaces/pullsecret-injector/pods/$p:8080/proxy/metrics" |
        grep -E '^pullsecret_injector_(admission_requests_total|secret_writes_total|managed_namespaces)' || true
done

if [[ $keep == 1 ]]; then
    say "left running ($((SECONDS - t0)) s). Try:"
    echo "  scripts/cluster.sh exec $work/cluster kubectl get pods -A -o wide"
    echo "stop:  scripts/cluster.sh down $work/cluster && rm -rf $work"
else
    say "done in $((SECONDS - t0)) s: removing the cluster"
fi
