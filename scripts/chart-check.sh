#!/usr/bin/env bash
# chart-check.sh - checks of the Helm chart charts/pullsecret-injector against a real kube-apiserver.
#
#   scripts/chart-check.sh        (KUBECONFIG must point at a test API server, e.g. after
#                                  scripts/control-plane.sh start DIR && source DIR/env)
#
# 1. helm (built from the Go module proxy by scripts/install-tools.sh, cached).
# 2. helm lint --strict with the default values and every ci/*.yaml; values the chart must
#    refuse (schema, missing credentials) are refused with the expected message.
# 3. helm template for every case: the Yandex defaults (--set-file key.json), ci/yandex, basic,
#    certManager, existingSecret and url values. For each rendering:
#    - every built-in object goes through the API server's own validation with
#      kubectl apply --dry-run=server (nothing is created; the MutatingWebhookConfiguration in
#      Service mode is only ever dry-run), into a scratch namespace labelled
#      pod-security.kubernetes.io/enforce=restricted; any PodSecurity warning fails;
#    - the Deployment's pod template, as a Pod, is server-dry-run in that namespace: Pod
#      Security admission ("restricted") must admit it (and a deliberately weakened one must
#      be refused, which proves the check bites);
#    - kinds whose CRDs the test API server lacks (cert-manager Certificate/Issuer, Prometheus
#      Operator ServiceMonitor/PrometheusRule) are checked structurally: required fields, and
#      that they reference each other, the Service and the mounted Secret consistently;
#    - semantic checks: RBAC rules exactly as designed, webhook fields, the config file's
#      namespaceSelector selects the same namespaces as the webhook's, the generated
#      certificate chains to the caBundle and names the Service, and the rendered config is
#      accepted by the real binary (`pullsecret-injector explain`), which injects every
#      registry's Secret into a Pod using that registry's images.
# 4. A real install and upgrade in url mode (webhook URL on a closed loopback port, an opt-in
#    label no namespace has; never a Service-backed webhook): the self-signed CA and key are
#    kept across `helm upgrade`, the config checksum rolls the Deployment, and the chart's RBAC,
#    as the ServiceAccount (impersonated), allows exactly what the sync task needs.
#
# Knobs: PSI_BIN (the pullsecret-injector binary; default: cargo build --locked, debug).
# Everything it creates on the API server is removed at exit. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'chart-check: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    say "FAILED"
    exit 1
}
step() { say "== $*"; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed${2:+ ($2)}"; }

CHART=charts/pullsecret-injector
RELEASE=pullsecret-injector        # fullname = pullsecret-injector
PASSED=0
pass() {
    PASSED=$((PASSED + 1))
    say "  ok: $*"
}
T0=$SECONDS

need kubectl
need openssl
[[ -n ${KUBECONFIG:-} ]] || die "KUBECONFIG is not set: start a test API server first (scripts/control-plane.sh start DIR; source DIR/env)"

# A Python with PyYAML (Debian: python3-yaml).
PY=
for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml' 2>/dev/null; then
        PY=$p
        break
    fi
done
if [[ -z $PY ]]; then
    [[ $(id -u) == 0 ]] || die "python3 with PyYAML is needed (apt-get install python3-yaml)"
    say "installing python3-yaml"
    { apt-get install -y -q python3-yaml || { apt-get update -q && apt-get install -y -q python3-yaml; }; } >/dev/null 2>&1 ||
        die "apt-get install python3-yaml failed"
    PY=/usr/bin/python3
fi

step "helm"
HELM=$(scripts/install-tools.sh helm) || die "could not install helm (see above)"
work=$(mktemp -d "${TMPDIR:-/tmp}/psi-chart-check.XXXXXX")
export HELM_CACHE_HOME=$work/helm/cache HELM_CONFIG_HOME=$work/helm/config HELM_DATA_HOME=$work/helm/data
say "$("$HELM" version --short) ($HELM)"

server=$(kubectl version -o json 2>"$work/version.err" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') ||
    die "the API server at KUBECONFIG=$KUBECONFIG does not answer: $(cat "$work/version.err")"
say "API server $server"

# Namespaces this run creates; deleted at exit (without a controller-manager they stay
# Terminating, which is harmless on a test API server).
NAMESPACES=()
INSTALLED=
cleanup() {
    local rc=$?
    if [[ -n $INSTALLED ]]; then
        "$HELM" uninstall "$RELEASE" -n "$INSTALLED" --wait=false >/dev/null 2>&1 || say "WARNING: helm uninstall in $INSTALLED failed"
    fi
    for n in "${NAMESPACES[@]}"; do
        kubectl delete namespace "$n" --wait=false >/dev/null 2>&1 || true
    done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

suffix=$(openssl rand -hex 3)
NS=psi-chart-$suffix             # release namespace of the dry runs
kubectl create namespace "$NS" >/dev/null
NAMESPACES+=("$NS")
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest pod-security.kubernetes.io/warn=restricted \
    pod-security.kubernetes.io/warn-version=latest >/dev/null
# Pod admission needs the ServiceAccount to exist (the only object created for real here).
kubectl -n "$NS" create serviceaccount "$RELEASE" --save-config >/dev/null
say "scratch namespace $NS (pod-security.kubernetes.io/enforce=restricted)"

# Test inputs made now, never committed: a fake key file, and a CA + serving pair.
printf '{"id": "chart-check", "service_account_id": "chart-check", "private_key": "not a key"}\n' >"$work/key.json"
certs/generate.sh "$work/tls" --service "$RELEASE" --namespace "$NS" >"$work/cabundle" ||
    die "certs/generate.sh failed"

# ----------------------------------------------------------------------------------------
step "binary (validates the rendered config files)"
if [[ -n ${PSI_BIN:-} ]]; then
    BIN=$PSI_BIN
else
    need cargo "Rust toolchain"
    cargo build --locked --quiet --bin pullsecret-injector || die "cargo build --bin pullsecret-injector failed"
    BIN=target/debug/pullsecret-injector
fi
[[ -x $BIN ]] || die "$BIN is not an executable"
say "$("$BIN" version)"

cat >"$work/check.py" <<'PYEOF'
"""Structural and semantic checks of one `helm template` rendering (see chart-check.sh)."""
import base64, json, re, subprocess, sys
import yaml

CRD_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")
ERRORS = []


def check(cond, what):
    if not cond:
        ERRORS.append(what)
    return cond


def main():
    render, out, ns, release, mode, url, ca_file, case = sys.argv[1:9]
    docs = [d for d in yaml.safe_load_all(open(render)) if d]
    by_kind = {}
    for d in docs:
        for k in ("apiVersion", "kind", "metadata"):
            check(k in d, f"an object has no {k}: {d}")
        by_kind.setdefault(d["kind"], []).append(d)
        name = d["metadata"].get("name", "")
        check(re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name or "") and len(name) <= 253,
              f"{d['kind']} has a bad name {name!r}")
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"):
            check(d["metadata"].get("namespace"), f"{d['kind']}/{name} has no metadata.namespace")

    def one(kind):
        objs = by_kind.get(kind, [])
        check(len(objs) == 1, f"expected one {kind}, found {len(objs)}")
        return objs[0] if objs else {}

    fullname = release if "pullsecret-injector" in release else f"{release}-pullsecret-injector"
    dep, svc, cm, mwc = one("Deployment"), one("Service"), one("ConfigMap"), one("MutatingWebhookConfiguration")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c = spec["containers"][0]

    # --- Deployment -------------------------------------------------------------------
    check(c["args"][:4] == ["run", "--config", "/etc/pullsecret-injector/config.yaml", "--log-format"],
          f"container args {c['args']}")
    check("checksum/config" in pod["metadata"].get("annotations", {}), "no checksum/config annotation")
    env = {e["name"]: e for e in c.get("env", [])}
    check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name", "POD_NAME")
    check(env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace", "POD_NAMESPACE")
    check(spec.get("automountServiceAccountToken") is True, "automountServiceAccountToken must be true")
    check(spec.get("terminationGracePeriodSeconds") == 30, "terminationGracePeriodSeconds")
    sc, psc = c["securityContext"], spec["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("runAsNonRoot") is True,
          f"container securityContext {sc}")
    check(psc.get("runAsUser") == 65532 and psc.get("runAsGroup") == 65532
          and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"pod securityContext {psc}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"https": 8443, "metrics": 8080}, f"container ports {ports}")
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, "liveness probe")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, "readiness probe")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    check(mounts.get("/etc/pullsecret-injector") == "config" and vols["config"]["configMap"]["name"] == cm["metadata"]["name"],
          "config volume")
    tls_secret = vols.get(mounts.get("/tls", ""), {}).get("secret", {}).get("secretName")
    check(tls_secret, "no Secret mounted at /tls")
    sel = dep["spec"]["selector"]["matchLabels"]
    check(all(pod["metadata"]["labels"].get(k) == v for k, v in sel.items()), "pod labels do not match the selector")
    tsc = spec.get("topologySpreadConstraints", [])
    if case != "basic":
        check(dep["spec"]["replicas"] == 2, "replicas")
        check(tsc and tsc[0]["topologyKey"] == "kubernetes.io/hostname" and tsc[0]["whenUnsatisfiable"] == "ScheduleAnyway",
              f"topologySpreadConstraints {tsc}")
        pdb = one("PodDisruptionBudget")
        check(pdb.get("spec", {}).get("minAvailable") == 1 and pdb["spec"]["selector"]["matchLabels"] == sel, "PodDisruptionBudget")

    # --- Service ------------------------------------------------------------------------
    sports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    check(sports == {"https": (443, "https"), "metrics": (8080, "metrics")}, f"Service ports {sports}")
    check(svc["spec"]["selector"] == sel, "Service selector")

    # --- RBAC ---------------------------------------------------------------------------
    # rbac.yaml's ClusterRole, and rbac-pods.yaml's (podReport) when the sync task runs.
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    crs = {r["metadata"]["name"]: r for r in by_kind.get("ClusterRole", [])}
    report = "--no-sync" not in c["args"] and cfg.get("podReport", {}).get("enabled") is True
    want_crs = {fullname} | ({f"{fullname}-pods"} if report else set())
    check(set(crs) == want_crs, f"ClusterRoles {sorted(crs)}, want {sorted(want_crs)}")
    check(len(by_kind.get("ClusterRoleBinding", [])) == len(want_crs), "one ClusterRoleBinding per ClusterRole")
    if report:
        verbs = ["list", "watch"] + (["delete"] if cfg["podReport"].get("deleteOwnedPods") else [])
        pod_rules = [(r["apiGroups"], r["resources"], sorted(r["verbs"])) for r in crs[f"{fullname}-pods"]["rules"]]
        check(pod_rules == [([""], ["pods"], sorted(verbs))], f"pods ClusterRole rules {pod_rules}")
    cr = crs.get(fullname, {})
    rules = sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in cr.get("rules", []))
    want = sorted([
        (("",), ("namespaces",), ("get", "list", "watch")),
        (("",), ("secrets",), tuple(sorted(["get", "list", "watch", "create", "update", "patch", "delete"]))),
        (("events.k8s.io",), ("events",), ("create", "patch")),
        (("",), ("events",), ("create", "patch")),
    ])
    check(rules == want, f"ClusterRole rules {rules}")
    role = one("Role")
    check([(r["apiGroups"], r["resources"], sorted(r["verbs"])) for r in role.get("rules", [])]
          == [(["coordination.k8s.io"], ["leases"], ["create", "get", "update"])], "Role rules")
    sa = f"{fullname}"
    for b in by_kind.get("ClusterRoleBinding", []) + by_kind.get("RoleBinding", []):
        check(b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}], f"{b['kind']} subjects")
    check(by_kind.get("RoleBinding", [{}])[0].get("metadata", {}).get("namespace") == role.get("metadata", {}).get("namespace"),
          "RoleBinding and Role in different namespaces")

    # --- config file ----------------------------------------------------------------------
    open(f"{out}/config.yaml", "w").write(cm["data"]["config.yaml"])
    check(cfg["webhook"] == {"listen": "0.0.0.0:8443", "tlsCertFile": "/tls/tls.crt", "tlsKeyFile": "/tls/tls.key"}, f"config webhook {cfg['webhook']}")
    check(cfg["admin"] == {"listen": "0.0.0.0:8080"}, "config admin")
    check(cfg["sync"]["leaderElection"]["leaseNamespace"] == role["metadata"]["namespace"],
          "the Role for leases is not in the Lease's namespace")

    # --- webhook --------------------------------------------------------------------------
    wh = mwc["webhooks"]
    check(len(wh) == 1, "one webhook entry")
    w = wh[0]
    check(w["name"] == "pods.pullsecret-injector.io", "webhook name")
    check(w["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}], f"rules {w['rules']}")
    for k, v in {"sideEffects": "None", "timeoutSeconds": 5, "reinvocationPolicy": "IfNeeded",
                 "admissionReviewVersions": ["v1"], "matchPolicy": "Equivalent"}.items():
        check(w.get(k) == v, f"webhook {k} = {w.get(k)!r}, want {v!r}")
    check(w.get("failurePolicy") == ("Fail" if case == "basic" else "Ignore"), "failurePolicy")
    check("objectSelector" not in w, "objectSelector must not be set")
    cc = w["clientConfig"]
    if url:
        check(cc.get("url") == url and "service" not in cc, f"clientConfig {cc}")
    else:
        check(cc.get("service") == {"name": svc["metadata"]["name"], "namespace": ns, "path": "/mutate", "port": 443}
              and "url" not in cc, f"clientConfig {cc}")

    # The config's selector (kubectl syntax) selects exactly the webhook's namespaces.
    sel_str = cfg["namespaceSelector"]
    m = re.fullmatch(r"([^=,!]+)=([^,]*),kubernetes\.io/metadata\.name notin \(([^)]*)\)", sel_str)
    nsel = w["namespaceSelector"]
    if check(m, f"config namespaceSelector {sel_str!r}"):
        check(nsel.get("matchLabels") == {m.group(1): m.group(2)}, f"matchLabels {nsel.get('matchLabels')} vs {sel_str!r}")
        check(nsel.get("matchExpressions") == [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                                "values": m.group(3).split(",")}], f"matchExpressions vs {sel_str!r}")
        check({"kube-system", ns} <= set(m.group(3).split(",")), "kube-system and the release namespace must be excluded")

    # --- certificates ---------------------------------------------------------------------
    ann = mwc["metadata"].get("annotations", {}) or {}
    ca_bundle = cc.get("caBundle")
    if mode == "selfSigned":
        s = [x for x in by_kind.get("Secret", []) if x["metadata"]["name"] == tls_secret]
        if check(len(s) == 1, "the TLS Secret is not rendered") and check(s[0]["type"] == "kubernetes.io/tls", "TLS Secret type"):
            d = s[0]["data"]
            check(d["ca.crt"] == ca_bundle, "caBundle differs from the Secret's ca.crt")
            for k in ("ca.crt", "tls.crt", "tls.key"):
                open(f"{out}/{k}", "wb").write(base64.b64decode(d[k]))
    elif mode == "existingSecret":
        check(tls_secret == "my-webhook-tls", "existing TLS Secret not mounted")
        check(ca_bundle == open(ca_file).read().strip(), "caBundle is not certificates.existingSecret.caBundle")
        check(not [x for x in by_kind.get("Secret", []) if x["metadata"]["name"] == tls_secret], "chart renders the existing TLS Secret")
    elif mode == "certManager":
        check(not ca_bundle, "certManager mode must leave caBundle to cainjector")
        certs = {x["metadata"]["name"]: x for x in by_kind.get("Certificate", [])}
        issuers = {x["metadata"]["name"]: x for x in by_kind.get("Issuer", [])}
        for x in list(certs.values()) + list(issuers.values()):
            check(x["apiVersion"] == "cert-manager.io/v1" and x["metadata"]["namespace"] == ns, f"{x['kind']} {x['metadata']['name']}")
        serving = certs.get(f"{fullname}-tls", {}).get("spec", {})
        check(ann.get("cert-manager.io/inject-ca-from") == f"{ns}/{fullname}-tls", f"inject-ca-from {ann}")
        check(serving.get("secretName") == tls_secret, "serving Certificate's secretName is not the mounted Secret")
        check(f"{svc['metadata']['name']}.{ns}.svc" in serving.get("dnsNames", []), "serving Certificate lacks <svc>.<ns>.svc")
        check("server auth" in serving.get("usages", []), "serving Certificate usages")
        ref = serving.get("issuerRef", {})
        check(ref.get("kind") == "Issuer" and ref.get("name") in issuers, f"issuerRef {ref} names no rendered Issuer")
        ca_issuer = issuers.get(ref.get("name"), {}).get("spec", {})
        ca_cert = [x for x in certs.values() if x["spec"].get("isCA")]
        if check(len(ca_cert) == 1, "one CA Certificate"):
            check(ca_issuer.get("ca", {}).get("secretName") == ca_cert[0]["spec"]["secretName"], "CA Issuer does not use the CA Certificate's Secret")
            self_ref = ca_cert[0]["spec"]["issuerRef"]["name"]
            check(issuers.get(self_ref, {}).get("spec") == {"selfSigned": {}}, "CA Certificate is not issued by a selfSigned Issuer")
        for k in ("duration", "renewBefore"):
            check(re.fullmatch(r"\d+(h|m|s)", str(serving.get(k, ""))), f"Certificate {k}")

    # --- Prometheus Operator --------------------------------------------------------------
    for smon in by_kind.get("ServiceMonitor", []):
        sp = smon["spec"]
        check(all(svc["metadata"]["labels"].get(k) == v for k, v in sp["selector"]["matchLabels"].items()), "ServiceMonitor selects no Service")
        check(sp["namespaceSelector"] == {"matchNames": [ns]}, "ServiceMonitor namespaceSelector")
        check([e["port"] for e in sp["endpoints"]] == ["metrics"] and sp["endpoints"][0]["path"] == "/metrics", "ServiceMonitor endpoints")
    for pr in by_kind.get("PrometheusRule", []):
        rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
        alerts = {r["alert"]: r for r in rules}
        for metric in ("pullsecret_injector_credential_expiry_timestamp_seconds", 'pullsecret_injector_credential_refresh_total{namespace="%s", result="failure"}[15m]' % ns,
                       'pullsecret_injector_admission_requests_total{namespace="%s", outcome="invalid"}[15m]' % ns, "up{"):
            check(any(metric in r["expr"] for r in rules), f"no alert on {metric}")
        for r in rules:
            check(r["expr"].count("(") == r["expr"].count(")") and r["expr"].count("{") == r["expr"].count("}"), f"unbalanced expr in {r['alert']}")
            check(r["labels"].get("severity") in ("warning", "critical"), f"{r['alert']} severity")
            check("for" not in r or re.fullmatch(r"\d+[smh]", r["for"]), f"{r['alert']} for")
            for a in r["annotations"].values():
                check(a.count("{{") == a.count("}}"), f"{r['alert']} annotation templates")
        check("14400" in alerts.get("PullsecretInjectorCredentialExpiringSoon", {}).get("expr", ""), "expiry threshold 4 h")

    # --- outputs: built-in objects, the pod template as a Pod, and a Pod using every registry
    core = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
    crd = [d for d in docs if d["apiVersion"].startswith(CRD_GROUPS)]
    yaml.safe_dump_all(core, open(f"{out}/core.yaml", "w"))
    p = {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "chart-check-pod", "namespace": ns, "labels": pod["metadata"].get("labels", {}),
                      "annotations": pod["metadata"].get("annotations", {})},
         "spec": spec}
    yaml.safe_dump(p, open(f"{out}/pod.yaml", "w"))
    containers, secrets = [], []
    for i, r in enumerate(cfg["registries"]):
        host = r["hosts"][0].replace("*", "x").rstrip("/")
        containers.append({"name": f"c{i}", "image": f"{host}/team/app:1"})
        secrets.append(r["secretName"])
    yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "uses-every-registry"},
                    "spec": {"containers": containers}}, open(f"{out}/explain-pod.yaml", "w"))
    open(f"{out}/expected-secrets", "w").write("\n".join(secrets) + "\n")
    json.dump({"objects": len(docs), "core": len(core), "crd": sorted(f"{d['kind']}/{d['metadata']['name']}" for d in crd),
               "checks_failed": len(ERRORS)}, open(f"{out}/summary.json", "w"))
    if ERRORS:
        for e in ERRORS:
            print(f"  FAIL: {e}", file=sys.stderr)
        sys.exit(1)


main()
PYEOF

# ----------------------------------------------------------------------------------------
step "helm lint --strict"
lint() {
    local out
    out=$("$HELM" lint "$CHART" --strict --namespace "$NS" "$@" 2>&1) || {
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        die "helm lint $* failed"
    }
    pass "helm lint --strict $*"
}
lint --set-file 'credentials.files.key\.json='"$work/key.json"
for f in "$CHART"/ci/*.yaml; do lint -f "$f"; done

# refuse LABEL 'EXPECTED MESSAGE' HELM-TEMPLATE-ARGS...: the chart must refuse these values.
refuse() {
    local label=$1 msg=$2 out
    shift 2
    if out=$("$HELM" template "$RELEASE" "$CHART" --namespace "$NS" "$@" 2>&1); then
        die "the chart accepted $label"
    fi
    [[ $out == *"$msg"* ]] || { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "$label: refused, but without '$msg'"; }
    pass "refuses $label"
}
refuse "default values without a key" "nothing is mounted at /creds"
refuse "a credentials.files set without the referenced file" 'credentials.files has no "key.json"' \
    --set-file 'credentials.files.other\.json='"$work/key.json"
refuse "an unknown certificates.mode" "/certificates/mode" --set certificates.existingSecret.name=x \
    --set credentials.existingSecret=x --set certificates.mode=bogus
refuse "two credential sources in one registry" "/registries/0/credentials" --set credentials.existingSecret=x \
    --set 'registries[0].name=a' --set 'registries[0].hosts[0]=a.io' --set 'registries[0].secretName=a' \
    --set 'registries[0].credentials.yandexMetadata.endpoint=http://169.254.169.254/x' \
    --set 'registries[0].credentials.yandexAuthorizedKey.file=/creds/key.json'
refuse "existingSecret mode without caBundle" "caBundle" --set credentials.existingSecret=x \
    --set certificates.mode=existingSecret --set certificates.existingSecret.name=t

# ----------------------------------------------------------------------------------------
# check_case NAME MODE URL HELM-TEMPLATE-ARGS...
check_case() {
    local name=$1 mode=$2 url=$3 dir out summary
    dir=$work/case-$name
    shift 3
    step "case $name: helm template $*"
    mkdir -p "$dir"
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" "$@" >"$dir/render.yaml" 2>"$dir/render.err" ||
        { sed 's/^/    /' "$dir/render.err" >&2; die "helm template ($name) failed"; }
    "$PY" "$work/check.py" "$dir/render.yaml" "$dir" "$NS" "$RELEASE" "$mode" "$url" "$work/cabundle" "$name" ||
        die "case $name: structural checks failed (rendered: $dir/render.yaml)"
    summary=$(cat "$dir/summary.json")
    pass "structure and semantics ($summary)"

    # The API server's own validation of every built-in object; nothing is persisted.
    out=$(kubectl apply --dry-run=server -f "$dir/core.yaml" 2>&1) ||
        { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "case $name: kubectl apply --dry-run=server refused the chart"; }
    if grep -qi 'warning' <<<"$out"; then
        printf '%s\n' "$out" | grep -i warning | sed 's/^/    /' >&2
        die "case $name: the API server warned (PodSecurity or deprecated fields)"
    fi
    pass "kubectl apply --dry-run=server: $(grep -c '(server dry run)' <<<"$out") objects valid"

    # Pod Security "restricted" enforced on the pod template itself.
    out=$(kubectl create --dry-run=server -f "$dir/pod.yaml" 2>&1) ||
        { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "case $name: the pod template violates Pod Security \"restricted\""; }
    pass "pod template admitted under pod-security.kubernetes.io/enforce=restricted"

    # The real binary accepts the rendered config and injects every registry's Secret.
    out=$("$BIN" explain --config "$dir/config.yaml" -f "$dir/explain-pod.yaml" 2>&1) ||
        { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "case $name: pullsecret-injector refused the rendered config"; }
    while read -r s; do
        grep -q "\"$s\"" <<<"$out" || { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "case $name: explain did not inject $s"; }
    done <"$dir/expected-secrets"
    pass "pullsecret-injector explain: config valid, injects $(paste -sd, "$dir/expected-secrets")"

    if [[ $mode == selfSigned ]]; then
        openssl verify -CAfile "$dir/ca.crt" "$dir/tls.crt" >/dev/null 2>&1 || die "case $name: tls.crt does not chain to ca.crt"
        openssl x509 -in "$dir/tls.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "DNS:$RELEASE.$NS.svc" ||
            die "case $name: tls.crt lacks DNS:$RELEASE.$NS.svc"
        [[ $(openssl x509 -in "$dir/tls.crt" -noout -modulus) == "$(openssl rsa -in "$dir/tls.key" -noout -modulus 2>/dev/null)" ]] ||
            die "case $name: tls.key does not match tls.crt"
        if [[ -n $url ]]; then
            openssl x509 -in "$dir/tls.crt" -noout -ext subjectAltName | grep -q "IP Address:127.0.0.1" ||
                die "case $name: tls.crt lacks IP:127.0.0.1 (certificates.extraIpAddresses)"
        fi
        pass "generated certificate: chains to the caBundle, names the Service${url:+ and 127.0.0.1}, key matches"
    fi
}

ci=$CHART/ci
check_case yandex-defaults selfSigned "" --set-file 'credentials.files.key\.json='"$work/key.json"
check_case yandex selfSigned "" -f "$ci/yandex-values.yaml"
check_case basic selfSigned "" -f "$ci/basic-values.yaml"
check_case certmanager certManager "" -f "$ci/certmanager-values.yaml"
printf 'certificates:\n  existingSecret:\n    caBundle: %s\n' "$(cat "$work/cabundle")" >"$work/generated-ca-values.yaml"
check_case existing-tls existingSecret "" -f "$ci/existing-tls-values.yaml" -f "$work/generated-ca-values.yaml"
check_case url selfSigned "https://127.0.0.1:8443/mutate" -f "$ci/url-values.yaml"

step "Pod Security check bites"
"$PY" - "$work/case-yandex/pod.yaml" "$work/weak-pod.yaml" <<'EOF'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
p["metadata"]["name"] = "chart-check-weak-pod"
p["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
yaml.safe_dump(p, open(sys.argv[2], "w"))
EOF
if out=$(kubectl create --dry-run=server -f "$work/weak-pod.yaml" 2>&1); then
    die "a pod with allowPrivilegeEscalation=true was admitted: Pod Security is not enforced, the check proves nothing"
fi
grep -q 'violates PodSecurity "restricted' <<<"$out" || die "unexpected refusal: $out"
pass "a weakened pod template is refused by Pod Security admission"

step "checksum/config follows the config"
ck() {
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" -f "$ci/yandex-values.yaml" "$@" --show-only templates/deployment.yaml |
        sed -n 's/^ *checksum\/config: //p'
}
a=$(ck)
b=$(ck)
c=$(ck --set sync.refreshInterval=30m)
[[ -n $a && $a == "$b" ]] || die "checksum/config is not stable across renders ($a vs $b)"
[[ $a != "$c" ]] || die "checksum/config did not change with the config"
pass "checksum/config is stable and changes with the config"

# ----------------------------------------------------------------------------------------
step "install and upgrade (url mode: loopback URL on a closed port, an opt-in label nobody has)"
INS=psi-chart-install-$suffix
kubectl create namespace "$INS" >/dev/null
NAMESPACES+=("$INS")
closed=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
install_args=(--namespace "$INS" -f "$ci/url-values.yaml" --set "webhook.url=https://127.0.0.1:$closed/mutate"
    --set namespaceSelector.key=chart-check.pullsecret-injector.io/never --set namespaceSelector.value=never
    --set webhook.failurePolicy=Ignore)
INSTALLED=$INS
out=$("$HELM" install "$RELEASE" "$CHART" "${install_args[@]}" 2>&1) ||
    { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "helm install failed"; }
url_now=$(kubectl get mutatingwebhookconfiguration "$RELEASE" -o jsonpath='{.webhooks[0].clientConfig.url}')
[[ $url_now == "https://127.0.0.1:$closed/mutate" ]] || die "installed webhook is not in url mode: '$url_now'"
pass "helm install (webhook at https://127.0.0.1:$closed/mutate)"
tls_state() {
    kubectl -n "$INS" get secret "$RELEASE-tls" -o jsonpath='{.data.ca\.crt}{"|"}{.data.tls\.crt}{"|"}{.data.tls\.key}' | sha256sum
    kubectl get mutatingwebhookconfiguration "$RELEASE" -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | sha256sum
}
before=$(tls_state)
ck_before=$(kubectl -n "$INS" get deploy "$RELEASE" -o jsonpath='{.spec.template.metadata.annotations.checksum/config}')
out=$("$HELM" upgrade "$RELEASE" "$CHART" "${install_args[@]}" --set sync.refreshInterval=30m 2>&1) ||
    { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "helm upgrade failed"; }
after=$(tls_state)
ck_after=$(kubectl -n "$INS" get deploy "$RELEASE" -o jsonpath='{.spec.template.metadata.annotations.checksum/config}')
[[ $before == "$after" ]] || die "helm upgrade replaced the self-signed CA/certificate (lookup did not keep them)"
pass "helm upgrade kept the CA, certificate, key and caBundle"
[[ -n $ck_before && $ck_before != "$ck_after" ]] || die "the Deployment's checksum/config did not change on a config change"
pass "helm upgrade with a config change rolls the pods (checksum/config changed)"

# The chart's RBAC as its ServiceAccount: allowed exactly what the sync task needs.
as=system:serviceaccount:$INS:$RELEASE
can() { # EXPECT VERB RESOURCE [NAMESPACE]
    local got where=(--all-namespaces)
    [[ -z ${4:-} ]] || where=(--namespace "$4")
    got=$(kubectl auth can-i "$2" "$3" --as="$as" "${where[@]}" 2>/dev/null || true)
    [[ $got == "$1" ]] || die "RBAC: $as can-i $2 $3${4:+ -n $4}: got '$got', want $1"
}
can yes list namespaces
can yes watch namespaces
can yes create secrets
can yes delete secrets
can yes patch secrets
can yes create events.events.k8s.io
can yes create events
can yes get leases.coordination.k8s.io "$INS"
can yes update leases.coordination.k8s.io "$INS"
can no delete leases.coordination.k8s.io "$INS"
can no get leases.coordination.k8s.io default
can no create pods
can yes watch pods
can yes list pods
can no delete pods
can no get pods
can no update namespaces
can no list configmaps
can no create mutatingwebhookconfigurations.admissionregistration.k8s.io
pass "RBAC as $as: 19 can-i answers as designed"
"$HELM" uninstall "$RELEASE" -n "$INS" >/dev/null 2>&1 || die "helm uninstall failed"
INSTALLED=
kubectl get mutatingwebhookconfiguration "$RELEASE" >/dev/null 2>&1 && die "helm uninstall left the MutatingWebhookConfiguration"
pass "helm uninstall removed everything cluster-scoped"

say "done in $((SECONDS - T0))s"
printf 'chart-check: %d passed, 0 failed\n' "$PASSED"
