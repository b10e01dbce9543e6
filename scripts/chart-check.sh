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
#    - semantic checks: RBAC rules exactly as designed, the Lease the chart owns, the
#      NetworkPolicy (ingress to the webhook and admin ports only; render-only: no enforcing
#      CNI here), hostNetwork (node ports), webhook fields, one webhook entry per registry
#      scope whose namespaceSelector selects the same namespaces as the config's selectors
#      (opt-in AND the registry's), the workload identity token mounted exactly when a
#      registry uses it, the generated
#      certificate chains to the caBundle and names the Service, and the rendered config is
#      accepted by the real binary (`pullsecret-injector explain`), which injects every
#      registry's Secret into a Pod using that registry's images, and, for a namespace
#      labelled for one scope, exactly that scope's and the unscoped ones.
# 4. A real install and upgrade in url mode (webhook URL on a closed loopback port, an opt-in
#    label no namespace has; never a Service-backed webhook): the self-signed CA and key are
#    kept across `helm upgrade`, the config checksum rolls the Deployment, and the chart's RBAC,
#    as the ServiceAccount (impersonated), allows exactly what the sync task needs: Secrets by
#    name only (kubectl auth can-i for the configured name, other names and no name), the
#    ValidatingAdmissionPolicy installed because the API server serves it; an upgrade that
#    renames the secretName retires the old name (list/watch/delete only) for that upgrade;
#    an upgrade to sync.enabled=false (selfSigned certificates) leaves no RBAC, no policy and no token mount.
#
# 5. The alerts (scripts/alerts-check.sh): promtool check and unit tests of the PrometheusRule,
#    and the API server alerts fired on the real kube-apiserver's fail-open and rejection series.
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
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                             "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
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
    sync = "--no-sync" not in c["args"]
    token = sync or mode == "injector"
    check(spec.get("automountServiceAccountToken") is token,
          f"automountServiceAccountToken must be {token} (a token only for the sync task and injector-mode certificates)")
    check(spec.get("terminationGracePeriodSeconds") == 30, "terminationGracePeriodSeconds")
    sc, psc = c["securityContext"], spec["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("runAsNonRoot") is True,
          f"container securityContext {sc}")
    check(psc.get("runAsUser") == 65532 and psc.get("runAsGroup") == 65532
          and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"pod securityContext {psc}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    hostnet = case == "hostnet"
    want_ports = {"https": 10260, "metrics": 10261} if hostnet else {"https": 8443, "metrics": 8080}
    check(ports == want_ports, f"container ports {ports}")
    if hostnet:
        check(spec.get("hostNetwork") is True and spec.get("dnsPolicy") == "ClusterFirstWithHostNet",
              f"hostNetwork {spec.get('hostNetwork')}, dnsPolicy {spec.get('dnsPolicy')}")
    else:
        check("hostNetwork" not in spec, "hostNetwork must be off by default")
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, "liveness probe")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, "readiness probe")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    check(mounts.get("/etc/pullsecret-injector") == "config" and vols["config"]["configMap"]["name"] == cm["metadata"]["name"],
          "config volume")
    tls_secret = vols.get(mounts.get("/tls", ""), {}).get("secret", {}).get("secretName")
    if mode == "injector":
        # The injector reads its TLS Secret through the API: nothing is mounted.
        check(not tls_secret and "tls" not in vols, "injector mode mounts no TLS Secret")
        tls_secret = f"{fullname}-webhook-tls"
    else:
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

    # --- RBAC and the admission policy ------------------------------------------------------
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    names = sorted({r["secretName"] for r in cfg["registries"]})
    retired = sorted(cfg["sync"].get("retiredSecretNames", []))
    sa = fullname
    for s in by_kind.get("ServiceAccount", []):
        check(s.get("automountServiceAccountToken") is False, "the ServiceAccount must not automount its token")
    # The injector-mode certificate RBAC is checked on its own below.
    cert_rbac = {d["kind"]: d for d in docs if d["metadata"]["name"] == f"{fullname}-webhook-certificate"}
    for d in cert_rbac.values():
        docs_kind = by_kind[d["kind"]]
        docs_kind.remove(d)
    # rbac-pods.yaml (podReport): its own ClusterRole and binding, when the sync task runs.
    pods_rbac = {d["kind"]: d for d in docs if d["metadata"]["name"] == f"{fullname}-pods"
                 and d["kind"] in ("ClusterRole", "ClusterRoleBinding")}
    for d in pods_rbac.values():
        by_kind[d["kind"]].remove(d)
    report = sync and cfg.get("podReport", {}).get("enabled") is True
    check(set(pods_rbac) == ({"ClusterRole", "ClusterRoleBinding"} if report else set()),
          f"pods RBAC objects {sorted(pods_rbac)} (podReport enabled: {report})")
    if report and len(pods_rbac) == 2:
        verbs = ["list", "watch"] + (["delete"] if cfg["podReport"].get("deleteOwnedPods") else [])
        pod_rules = [(r["apiGroups"], r["resources"], sorted(r["verbs"])) for r in pods_rbac["ClusterRole"]["rules"]]
        check(pod_rules == [([""], ["pods"], sorted(verbs))], f"pods ClusterRole rules {pod_rules}")
        check(pods_rbac["ClusterRoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": fullname, "namespace": ns}],
              "pods ClusterRoleBinding subjects")
    vaps = by_kind.get("ValidatingAdmissionPolicy", [])
    if not sync:
        # Webhook only: no API access at all.
        for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            check(not by_kind.get(kind), f"webhook-only install renders a {kind}")
    else:
        cr = one("ClusterRole")
        rules = sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", ())),
                        tuple(sorted(r["verbs"]))) for r in cr.get("rules", []))
        want = [
            (("",), ("namespaces",), (), ("list", "watch")),
            (("",), ("secrets",), tuple(names), ("delete", "get", "list", "patch", "watch")),
            (("",), ("secrets",), (), ("create",)),
            (("events.k8s.io",), ("events",), (), ("create", "patch")),
        ]
        if retired:
            want.append((("",), ("secrets",), tuple(retired), ("delete", "list", "watch")))
        check(rules == sorted(want), f"ClusterRole rules {rules}, want {sorted(want)}")
        check(not any("update" in r["verbs"] and "secrets" in r["resources"] for r in cr.get("rules", [])),
              "secrets update must not be granted")
        check(not set(retired) & set(names), f"a configured name is also retired: {retired}")
        le = cfg["sync"]["leaderElection"]
        roles = by_kind.get("Role", [])
        if le["enabled"]:
            role = one("Role")
            check(sorted((tuple(r["resources"]), tuple(r.get("resourceNames", ())), tuple(sorted(r["verbs"])))
                         for r in role.get("rules", []))
                  == [(("leases",), (), ("create",)), (("leases",), (le["leaseName"],), ("get", "update"))],
                  f"Role rules {role.get('rules')}")
            check(all(r["apiGroups"] == ["coordination.k8s.io"] for r in role.get("rules", [])), "Role apiGroups")
            check(le["leaseNamespace"] == role["metadata"]["namespace"], "the Role for leases is not in the Lease's namespace")
            check(by_kind.get("RoleBinding", [{}])[0].get("metadata", {}).get("namespace") == role["metadata"]["namespace"],
                  "RoleBinding and Role in different namespaces")
        else:
            check(not roles, "leader election disabled, but a Role for leases is rendered")
        for b in by_kind.get("ClusterRoleBinding", []) + by_kind.get("RoleBinding", []):
            check(b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}], f"{b['kind']} subjects")
    check(bool(vaps) == case.startswith("policy"), f"ValidatingAdmissionPolicy rendered: {bool(vaps)}")
    if vaps:
        vap = one("ValidatingAdmissionPolicy")
        vapb = one("ValidatingAdmissionPolicyBinding")
        vs = vap.get("spec", {})
        check(vs.get("failurePolicy") == "Fail", "policy failurePolicy")
        check(vs["matchConstraints"]["resourceRules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["secrets"],
                                                            "operations": ["CREATE", "UPDATE", "DELETE"]}], "policy match")
        conds = [m["expression"] for m in vs.get("matchConditions", [])]
        check(conds[:1] == [f"request.userInfo.username == 'system:serviceaccount:{ns}:{sa}'"], f"policy matchConditions {conds}")
        if mode == "injector":
            # The injector's own TLS Secret is left to rbac-certificates.yaml.
            check(len(conds) == 2 and f"request.name == '{tls_secret}'" in conds[1] and "kubernetes.io/tls" in conds[1],
                  f"policy matchConditions in injector mode {conds}")
        else:
            check(len(conds) == 1, f"policy matchConditions {conds}")
        exprs = " ".join(v["expression"] for v in vs.get("validations", []))
        check("kubernetes.io/dockerconfigjson" in exprs and f"== '{cfg['sync']['instance']}'" in exprs
              and f"in {names!r}" in exprs and "oldObject" in exprs, f"policy validations {exprs}")
        check(vapb["spec"] == {"policyName": vap["metadata"]["name"], "validationActions": ["Deny"]}, "policy binding")
    if mode == "injector":
        # Its TLS Secret and its own webhook configuration, by name; create in its namespace.
        want_kinds = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
        check(want_kinds <= set(cert_rbac), f"certificate RBAC objects {sorted(cert_rbac)}")
        if want_kinds <= set(cert_rbac):
            check(cert_rbac["Role"]["metadata"]["namespace"] == ns, "certificate Role namespace")
            check([(r["resources"], r.get("resourceNames"), sorted(r["verbs"])) for r in cert_rbac["Role"]["rules"]]
                  == [(["secrets"], [tls_secret], ["get", "patch"]), (["secrets"], None, ["create"])],
                  f"certificate Role rules {cert_rbac['Role']['rules']}")
            check([(r["apiGroups"], r["resources"], r.get("resourceNames"), sorted(r["verbs"])) for r in cert_rbac["ClusterRole"]["rules"]]
                  == [(["admissionregistration.k8s.io"], ["mutatingwebhookconfigurations"], [fullname], ["get", "patch"])],
                  f"certificate ClusterRole rules {cert_rbac['ClusterRole']['rules']}")
            for k in ("RoleBinding", "ClusterRoleBinding"):
                check(cert_rbac[k]["subjects"] == [{"kind": "ServiceAccount", "name": fullname, "namespace": ns}], f"certificate {k} subjects")
    else:
        check(not cert_rbac, f"{mode} mode renders the injector-mode certificate RBAC")

    # --- config file ----------------------------------------------------------------------
    open(f"{out}/config.yaml", "w").write(cm["data"]["config.yaml"])
    if mode == "injector":
        mc = cfg["webhook"].get("managedCertificate", {})
        check(set(cfg["webhook"]) == {"listen", "managedCertificate"} and cfg["webhook"]["listen"] == f"0.0.0.0:{want_ports['https']}", f"config webhook {cfg['webhook']}")
        check(mc.get("secretName") == tls_secret and mc.get("webhookConfiguration") == mwc["metadata"]["name"], f"managedCertificate {mc}")
        check(f"{svc['metadata']['name']}.{ns}.svc" in mc.get("dnsNames", []), "managedCertificate lacks <svc>.<ns>.svc")
        if url:
            check("127.0.0.1" in mc.get("ipAddresses", []), "managedCertificate lacks 127.0.0.1 (certificates.extraIpAddresses)")
    else:
        check(cfg["webhook"] == {"listen": f"0.0.0.0:{want_ports['https']}", "tlsCertFile": "/tls/tls.crt", "tlsKeyFile": "/tls/tls.key"}, f"config webhook {cfg['webhook']}")
    check(cfg["admin"] == {"listen": f"0.0.0.0:{want_ports['metrics']}"}, "config admin")
    # The chart owns the (empty) Lease, so that uninstall removes it.
    electing = cfg["sync"]["leaderElection"]["enabled"] and "--no-sync" not in c["args"]
    lease = one("Lease") if electing else {"metadata": {"name": cfg["sync"]["leaderElection"]["leaseName"], "namespace": cfg["sync"]["leaderElection"]["leaseNamespace"]}}
    check(electing or not by_kind.get("Lease"), "a Lease is rendered without leader election")
    check(lease.get("metadata", {}).get("name") == cfg["sync"]["leaderElection"]["leaseName"]
          and lease["metadata"].get("namespace") == cfg["sync"]["leaderElection"]["leaseNamespace"]
          and "spec" not in lease, f"Lease {lease.get('metadata')} (must be the config's, without a spec)")

    # --- NetworkPolicy (render-only: this project's clusters have no enforcing CNI) --------
    nps = by_kind.get("NetworkPolicy", [])
    if case == "netpol":
        np = one("NetworkPolicy")["spec"]
        check(np["podSelector"] == {"matchLabels": sel} and np["policyTypes"] == ["Ingress"], f"NetworkPolicy selector {np}")
        got = [([p["port"] for p in r["ports"]], r.get("from")) for r in np["ingress"]]
        check(got == [(["https"], None), (["metrics"], [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])],
              f"NetworkPolicy ingress {got}")
    else:
        check(not nps, "a NetworkPolicy is rendered although networkPolicy.enabled is false")

    # --- webhook --------------------------------------------------------------------------
    # One entry for the registries without a namespaceSelector (if any), and one per distinct
    # registry selector, named after its first registry, at /mutate/NAME (src/config.rs
    # Settings::scopes); each entry's namespaceSelector is the config's opt-in selector AND
    # that registry selector, so the API server sends a Pod exactly where the sync task keeps
    # those Secrets.
    def selector(text):
        """kubectl syntax -> (matchLabels, sorted matchExpressions); the subset the chart renders."""
        labels, exprs = {}, []
        for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text):
            part = part.strip().lstrip(",").strip()
            if not part:
                continue
            if m := re.fullmatch(r"(\S+) (in|notin) \(([^)]*)\)", part):
                exprs.append((m.group(1), "In" if m.group(2) == "in" else "NotIn", tuple(m.group(3).split(","))))
            elif m := re.fullmatch(r"([^=!]+)=(.*)", part):
                labels[m.group(1)] = m.group(2)
            elif part.startswith("!"):
                exprs.append((part[1:], "DoesNotExist", ()))
            else:
                exprs.append((part, "Exists", ()))
        return labels, sorted(exprs)

    def structured(sel):
        exprs = [(e["key"], e["operator"], tuple(e.get("values") or ())) for e in sel.get("matchExpressions", [])]
        return sel.get("matchLabels", {}), sorted(exprs)

    top_labels, top_exprs = selector(cfg["namespaceSelector"])
    check(len(top_labels) == 1 and top_exprs and top_exprs[0][:2] == ("kubernetes.io/metadata.name", "NotIn")
          and {"kube-system", ns} <= set(top_exprs[0][2]), f"config namespaceSelector {cfg['namespaceSelector']!r}")
    want, seen = [], {}
    if any(not r.get("namespaceSelector") for r in cfg["registries"]):
        want.append(("pods.pullsecret-injector.io", "", (top_labels, top_exprs)))
    for r in cfg["registries"]:
        s = r.get("namespaceSelector")
        if s and s not in seen:
            seen[s] = r["name"]
            labels, exprs = selector(s)
            want.append((f"{r['name']}.pods.pullsecret-injector.io", f"/{r['name']}", ({**top_labels, **labels}, sorted(top_exprs + exprs))))
    wh = mwc["webhooks"]
    check([w["name"] for w in wh] == [n for n, _, _ in want], f"webhook entries {[w['name'] for w in wh]}, want {[n for n, _, _ in want]}")
    for w, (name, suffix, sel) in zip(wh, want):
        check(w["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}], f"{name} rules {w['rules']}")
        for k, v in {"sideEffects": "None", "timeoutSeconds": 5, "reinvocationPolicy": "IfNeeded",
                     "admissionReviewVersions": ["v1"], "matchPolicy": "Equivalent"}.items():
            check(w.get(k) == v, f"webhook {name} {k} = {w.get(k)!r}, want {v!r}")
        check(w.get("failurePolicy") == ("Fail" if case == "basic" else "Ignore"), f"{name} failurePolicy")
        check("objectSelector" not in w, "objectSelector must not be set")
        cc = w["clientConfig"]
        if url:
            check(cc.get("url") == url + suffix and "service" not in cc, f"{name} clientConfig {cc}")
        else:
            check(cc.get("service") == {"name": svc["metadata"]["name"], "namespace": ns, "path": "/mutate" + suffix, "port": 443}
                  and "url" not in cc, f"{name} clientConfig {cc}")
        # The config's selectors (kubectl syntax) select exactly this entry's namespaces.
        check(structured(w["namespaceSelector"]) == sel, f"{name} namespaceSelector {w['namespaceSelector']} vs the config's {sel}")

    # --- workload identity: the pod's own token, only when a registry uses it -------------------
    uses_wif = any("yandexWorkloadIdentity" in r["credentials"] for r in cfg["registries"])
    wif_mount = mounts.get("/var/run/secrets/yandex-wif")
    if uses_wif:
        src = (vols.get(wif_mount, {}).get("projected", {}).get("sources") or [{}])[0].get("serviceAccountToken", {})
        check(src.get("path") == "token" and src.get("audience") and src.get("expirationSeconds", 0) >= 600,
              f"projected ServiceAccount token {src}")
        for r in cfg["registries"]:
            w = r["credentials"].get("yandexWorkloadIdentity")
            check(w is None or w.get("tokenFile", "/var/run/secrets/yandex-wif/token") == "/var/run/secrets/yandex-wif/token",
                  f"registry {r['name']} reads a token file the chart does not mount")
    else:
        check(wif_mount is None, "a workload identity token is mounted though no registry uses it")

    # --- certificates ---------------------------------------------------------------------
    ann = mwc["metadata"].get("annotations", {}) or {}
    ca_bundle = cc.get("caBundle")
    if mode == "injector":
        # Nothing minted at render time: no caBundle at all (the injector writes it), no Secret.
        check("caBundle" not in cc, "injector mode must render no caBundle")
        check(not by_kind.get("Secret", []) or all(x["metadata"]["name"] != tls_secret for x in by_kind["Secret"]),
              "injector mode renders the TLS Secret")
    elif mode == "selfSigned":
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
        # Their behaviour is unit-tested with promtool (scripts/alerts-check.sh).
        for metric in ("pullsecret_injector_credential_expiry_timestamp_seconds", 'pullsecret_injector_credential_refresh_total{namespace="%s", result="failure"}[15m]' % ns,
                       'pullsecret_injector_admission_requests_total{namespace="%s", outcome="invalid"}[15m]' % ns, "pullsecret_injector_ready{",
                       "apiserver_admission_webhook_fail_open_count{", "apiserver_admission_webhook_rejection_count{"):
            check(any(metric in r["expr"] for r in rules), f"no alert on {metric}")
        for r in rules:
            check(r["expr"].count("(") == r["expr"].count(")") and r["expr"].count("{") == r["expr"].count("}"), f"unbalanced expr in {r['alert']}")
            check(r["labels"].get("severity") in ("warning", "critical"), f"{r['alert']} severity")
            check(r["annotations"].get("runbook_url", "").endswith("#" + r["alert"].lower()), f"{r['alert']} runbook_url")
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
    # Per opt-in namespace labelled for each scope: the Secrets `explain --namespace-labels`
    # must inject (unscoped registries plus that scope's), one line "LABELS<TAB>SECRETS".
    with open(f"{out}/scoped-explains", "w") as f:
        for r in cfg["registries"]:
            if r.get("namespaceSelector"):
                labels, exprs = selector(r["namespaceSelector"])
                labels = {**top_labels, **labels, **{k: v[0] for k, op, v in exprs if op == "In"},
                          **{k: "" for k, op, _ in exprs if op == "Exists"}}
                expect = [x["secretName"] for x in cfg["registries"]
                          if not x.get("namespaceSelector") or x["namespaceSelector"] == r["namespaceSelector"]]
                f.write(",".join(f"{k}={v}" for k, v in labels.items()) + "\t" + ",".join(expect) + "\n")
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
# Endpoints: the schema refuses what the binary refuses (src/config.rs check_endpoint), so that
# a bad value fails `helm upgrade` instead of crash-looping the new Pods.
endpoint() { # KIND URL: the values of one registry with that endpoint
    printf 'credentials: {existingSecret: x}\nregistries:\n  - {name: a, hosts: [a.io], secretName: a, credentials: {%s: {%s endpoint: "%s"}}}\n' \
        "$1" "$([[ $1 == yandexAuthorizedKey ]] && echo 'file: /creds/key.json,')" "$2" >"$work/endpoint.yaml"
    echo "$work/endpoint.yaml"
}
printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: a.io/x:1}]}\n' >"$work/endpoint-pod.yaml"
for bad in "http://iam.api.cloud.yandex.net/iam/v1/tokens" "http://10.0.0.1:8080/t" "https://user:pw@iam.example/t" "ftp://iam.example/t"; do
    refuse "yandexAuthorizedKey.endpoint $bad" "endpoint" -f "$(endpoint yandexAuthorizedKey "$bad")"
    # explain reads and validates the config offline (no network).
    printf 'registries:\n  - {name: a, hosts: [a.io], secretName: a, credentials: {yandexAuthorizedKey: {file: %s, endpoint: "%s"}}}\n' \
        "$work/key.json" "$bad" >"$work/endpoint-config.yaml"
    out=$("$BIN" explain --config "$work/endpoint-config.yaml" -f "$work/endpoint-pod.yaml" 2>&1) &&
        die "the binary accepts the endpoint $bad that the schema refuses"
    [[ $out == *endpoint* ]] || die "the binary refused the config with $bad, but not for its endpoint: $out"
done
refuse "yandexMetadata.endpoint http to a routable address" "endpoint" -f "$(endpoint yandexMetadata "http://10.0.0.1/token")"
for good in "https://iam.api.cloud.yandex.net/iam/v1/tokens" "http://127.0.0.1:8080/iam/v1/tokens" "http://localhost/t" "http://[::1]:9/t"; do
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" -f "$(endpoint yandexAuthorizedKey "$good")" >/dev/null 2>&1 ||
        die "the chart refuses the endpoint $good, which the binary accepts"
done
"$HELM" template "$RELEASE" "$CHART" --namespace "$NS" -f "$(endpoint yandexMetadata "http://169.254.169.254/computeMetadata/v1/x")" >/dev/null 2>&1 ||
    die "the chart refuses the metadata service's link-local http endpoint"
pass "endpoints: the schema refuses plain http to non-loopback addresses, user info and other schemes, as the binary does"
refuse "networkPolicy with hostNetwork" "no effect with hostNetwork" --set credentials.existingSecret=x \
    --set hostNetwork.enabled=true --set networkPolicy.enabled=true
refuse "a retired name that is not a Secret name" "/sync/retiredSecretNames/0" --set credentials.existingSecret=x \
    --set 'sync.retiredSecretNames={Not_A_Name}'
refuse "an unknown rbac.admissionPolicy" "/rbac/admissionPolicy" --set credentials.existingSecret=x \
    --set rbac.admissionPolicy=maybe
refuse "yandexWorkloadIdentity without workloadIdentity.audience" "workloadIdentity.audience is required" \
    -f "$CHART/ci/wif-scoped-values.yaml" --set workloadIdentity.audience=
refuse "a registry namespaceSelector written as a string" "registries[1].namespaceSelector: write it as a label selector" \
    -f "$CHART/ci/wif-scoped-values.yaml" --set 'registries[1].namespaceSelector=team=a'
refuse "a scoped registry name that cannot be a webhook path" 'registries[1].name: "Team_A"' \
    -f "$CHART/ci/wif-scoped-values.yaml" --set 'registries[1].name=Team_A'
refuse "a registry selector contradicting the opt-in label" "conflicts with the opt-in label" \
    -f "$CHART/ci/wif-scoped-values.yaml" --set 'registries[1].namespaceSelector.matchLabels.pullsecret-injector\.io/inject=no'

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
    # hostNetwork is a host namespace: only Pod Security "privileged" admits it (README), and
    # that must be the one objection.
    local hostnet_warning='would violate PodSecurity "restricted:latest": host namespaces (hostNetwork=true)'
    if [[ $name == hostnet ]]; then
        grep -qF "$hostnet_warning" <<<"$out" || die "case $name: no PodSecurity warning about hostNetwork: $out"
        out=$(grep -vF "$hostnet_warning" <<<"$out")
    fi
    if grep -qi 'warning' <<<"$out"; then
        printf '%s\n' "$out" | grep -i warning | sed 's/^/    /' >&2
        die "case $name: the API server warned (PodSecurity or deprecated fields)"
    fi
    pass "kubectl apply --dry-run=server: $(grep -c '(server dry run)' <<<"$out") objects valid"

    # Pod Security "restricted" enforced on the pod template itself.
    if [[ $name == hostnet ]]; then
        out=$(kubectl create --dry-run=server -f "$dir/pod.yaml" 2>&1) && die "case $name: a hostNetwork pod was admitted under restricted"
        [[ $out == *'host namespaces (hostNetwork=true)'* && $out != *'allowPrivilegeEscalation'* && $out != *'runAsNonRoot'* ]] ||
            die "case $name: refused under restricted for more than hostNetwork: $out"
        pass "pod template: hostNetwork is its only Pod Security objection (needs \"privileged\")"
    else
        out=$(kubectl create --dry-run=server -f "$dir/pod.yaml" 2>&1) ||
            { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "case $name: the pod template violates Pod Security \"restricted\""; }
        pass "pod template admitted under pod-security.kubernetes.io/enforce=restricted"
    fi

    # The real binary accepts the rendered config and injects every registry's Secret.
    out=$("$BIN" explain --config "$dir/config.yaml" -f "$dir/explain-pod.yaml" 2>&1) ||
        { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "case $name: pullsecret-injector refused the rendered config"; }
    while read -r s; do
        grep -q "\"$s\"" <<<"$out" || { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "case $name: explain did not inject $s"; }
    done <"$dir/expected-secrets"
    pass "pullsecret-injector explain: config valid, injects $(paste -sd, "$dir/expected-secrets")"
    while IFS=$'\t' read -r labels want; do
        out=$("$BIN" explain --config "$dir/config.yaml" -f "$dir/explain-pod.yaml" --namespace-labels "$labels" 2>&1) ||
            { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "case $name: explain --namespace-labels $labels failed"; }
        got=$(sed -n 's/^secrets: //p' <<<"$out" | tr -d '[]"')
        [[ $got == "$want" ]] || die "case $name: namespace labelled $labels: explain injects '$got', want '$want'"
        pass "explain --namespace-labels $labels injects exactly $want"
    done <"$dir/scoped-explains"

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
check_case yandex-defaults injector "" --set-file 'credentials.files.key\.json='"$work/key.json"
check_case yandex selfSigned "" -f "$ci/yandex-values.yaml" --set certificates.mode=selfSigned
check_case basic injector "" -f "$ci/basic-values.yaml"
check_case certmanager certManager "" -f "$ci/certmanager-values.yaml"
printf 'certificates:\n  existingSecret:\n    caBundle: %s\n' "$(cat "$work/cabundle")" >"$work/generated-ca-values.yaml"
check_case existing-tls existingSecret "" -f "$ci/existing-tls-values.yaml" -f "$work/generated-ca-values.yaml"
check_case url selfSigned "https://127.0.0.1:8443/mutate" -f "$ci/url-values.yaml"
check_case hostnet injector "" -f "$ci/hostnetwork-values.yaml"
check_case netpol injector "" -f "$ci/networkpolicy-values.yaml"
# What helm install renders on a 1.30+ cluster (it discovers the API), with a retired name and
# a Lease of another name; the API server compiles the policy's CEL in the dry run.
check_case policy selfSigned "" -f "$ci/yandex-values.yaml" --set 'sync.retiredSecretNames={old-pull-secret}' \
    --set sync.leaderElection.leaseName=psi-lease --api-versions admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy --set certificates.mode=selfSigned
# The default install on 1.30+: injector mode, both policies (the Secrets one leaves the TLS
# Secret alone; the certificate one fences the webhook configuration), CEL compiled by the
# API server in the dry run.
check_case policy-injector injector "" -f "$ci/yandex-values.yaml" --api-versions admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy
check_case wif-scoped injector "" -f "$ci/wif-scoped-values.yaml"
check_case wif-scoped-url selfSigned "https://127.0.0.1:8443/mutate" -f "$ci/wif-scoped-values.yaml" -f "$ci/url-values.yaml"
check_case url-injector injector "https://127.0.0.1:8443/mutate" -f "$ci/url-values.yaml" --set certificates.mode=injector

step "certificates.mode=injector renders identically every time (no genCA, no lookup)"
for args in "-f $ci/yandex-values.yaml" "-f $ci/url-values.yaml --set certificates.mode=injector --set metrics.prometheusRule.enabled=true"; do
    # shellcheck disable=SC2086
    a=$("$HELM" template "$RELEASE" "$CHART" --namespace "$NS" $args | sha256sum)
    # shellcheck disable=SC2086
    b=$("$HELM" template "$RELEASE" "$CHART" --namespace "$NS" $args | sha256sum)
    [[ $a == "$b" ]] || die "two renders of $args differ"
done
pass "two helm template renders are byte-identical (default mode and url mode)"
# ... and selfSigned does not (the problem injector mode solves): the check can tell.
a=$("$HELM" template "$RELEASE" "$CHART" --namespace "$NS" -f "$ci/url-values.yaml" | sha256sum)
b=$("$HELM" template "$RELEASE" "$CHART" --namespace "$NS" -f "$ci/url-values.yaml" | sha256sum)
[[ $a != "$b" ]] || die "two selfSigned renders are identical: the identical-render check cannot tell"
pass "selfSigned renders differ each time (genCA), so the check bites"

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

# The chart's RBAC as its ServiceAccount: allowed exactly what the sync task needs, Secrets
# by name only (README "Trust model").
as=system:serviceaccount:$INS:$RELEASE
CANS=0
can() { # EXPECT VERB RESOURCE [NAMESPACE]
    local got where=(--all-namespaces)
    [[ -z ${4:-} ]] || where=(--namespace "$4")
    got=$(kubectl auth can-i "$2" "$3" --as="$as" "${where[@]}" 2>/dev/null || true)
    [[ $got == "$1" ]] || die "RBAC: $as can-i $2 $3${4:+ -n $4}: got '$got', want $1"
    CANS=$((CANS + 1))
}
# can_secrets EXPECT NAME VERB...: the verbs on Secret NAME, in every namespace and in one.
can_secrets() {
    local want=$1 name=$2 verb
    shift 2
    for verb in "$@"; do
        can "$want" "$verb" "secrets/$name"
        can "$want" "$verb" "secrets/$name" default
    done
}
rbac_sync() { # CONFIGURED-NAME [RETIRED-NAME]
    can yes list namespaces
    can yes watch namespaces
    can no get namespaces
    can no update namespaces
    can_secrets yes "$1" get list watch patch delete
    can_secrets no "$1" update
    # Any other name, or no name (a plain list or watch, deletecollection): nothing.
    can_secrets no some-app-password get list watch patch delete update
    can no list secrets
    can no watch secrets
    can no get secrets
    can no deletecollection secrets
    can no list secrets default
    # Create cannot be restricted by name (the admission policy narrows it).
    can yes create secrets
    if [[ -n ${2:-} ]]; then
        can_secrets yes "$2" list watch delete
        can_secrets no "$2" get patch update
    fi
    can yes create events.events.k8s.io
    can yes patch events.events.k8s.io
    can no create events
    can yes get leases.coordination.k8s.io/pullsecret-injector "$INS"
    can yes update leases.coordination.k8s.io/pullsecret-injector "$INS"
    can yes create leases.coordination.k8s.io "$INS"
    can no get leases.coordination.k8s.io/other-lease "$INS"
    can no update leases.coordination.k8s.io/other-lease "$INS"
    can no delete leases.coordination.k8s.io/pullsecret-injector "$INS"
    can no create leases.coordination.k8s.io default
    can no create pods
    # podReport (default on): Pending Pods watched cluster-wide; no delete unless deleteOwnedPods.
    can yes list pods
    can yes watch pods
    can no get pods
    can no delete pods
    can no list configmaps
    can no create mutatingwebhookconfigurations.admissionregistration.k8s.io
}
rbac_sync yc-registry-secret
pass "RBAC as $as: $CANS can-i answers as designed (Secrets by name: yc-registry-secret)"
kubectl get validatingadmissionpolicy "$RELEASE-secrets" >/dev/null 2>&1 ||
    die "helm install on $server did not install the ValidatingAdmissionPolicy (rbac.admissionPolicy=auto)"
kubectl get validatingadmissionpolicybinding "$RELEASE-secrets" >/dev/null 2>&1 || die "no ValidatingAdmissionPolicyBinding"
pass "helm install discovered ValidatingAdmissionPolicy on $server and installed the policy and its binding"

step "upgrade: a renamed secretName is retired for that upgrade; then webhook only"
cat >"$work/renamed-values.yaml" <<'EOF'
registries:
  - name: yandex
    hosts: ["cr.yandex", "registry.yandexcloud.net"]
    secretName: yc-pull
    credentials:
      yandexAuthorizedKey:
        file: /creds/key.json
EOF
upgrade() {
    out=$("$HELM" upgrade "$RELEASE" "$CHART" "${install_args[@]}" "$@" 2>&1) ||
        { printf '%s
' "$out" | sed 's/^/    /' >&2; die "helm upgrade $* failed"; }
}
retired_now() {
    kubectl -n "$INS" get configmap "$RELEASE" -o jsonpath='{.data.config\.yaml}' |
        "$PY" -c 'import sys, yaml; print(",".join(yaml.safe_load(sys.stdin)["sync"].get("retiredSecretNames", [])))'
}
upgrade -f "$work/renamed-values.yaml"
[[ $(retired_now) == yc-registry-secret ]] || die "after the rename, the config retires '$(retired_now)', want yc-registry-secret"
CANS=0
rbac_sync yc-pull yc-registry-secret
pass "renamed yc-registry-secret -> yc-pull: the config retires the old name, RBAC lets it be found and deleted only ($CANS can-i answers)"
kubectl get validatingadmissionpolicy "$RELEASE-secrets" -o jsonpath='{.spec.validations[*].expression}' | grep -q "in \['yc-pull'\]" ||
    die "the admission policy does not follow the renamed secretName"
upgrade -f "$work/renamed-values.yaml"
[[ -z $(retired_now) ]] || die "a second upgrade still retires '$(retired_now)'"
can_secrets no yc-registry-secret list watch delete
upgrade -f "$work/renamed-values.yaml" --set 'sync.retiredSecretNames={yc-registry-secret}'
[[ $(retired_now) == yc-registry-secret ]] || die "sync.retiredSecretNames is not in the config"
can_secrets yes yc-registry-secret delete
pass "the next upgrade forgets the old name unless sync.retiredSecretNames keeps it"

upgrade -f "$work/renamed-values.yaml" --set sync.enabled=false
for obj in "clusterrole/$RELEASE" "clusterrolebinding/$RELEASE" "validatingadmissionpolicy/$RELEASE-secrets" \
    "validatingadmissionpolicybinding/$RELEASE-secrets"; do
    kubectl get "$obj" >/dev/null 2>&1 && die "webhook only, but $obj is still there"
done
kubectl -n "$INS" get role,rolebinding -l app.kubernetes.io/instance="$RELEASE" -o name | grep -q . &&
    die "webhook only, but a Role or RoleBinding is still there"
[[ $(kubectl -n "$INS" get deploy "$RELEASE" -o jsonpath='{.spec.template.spec.automountServiceAccountToken}') == false ]] ||
    die "webhook only, but the pods mount a ServiceAccount token"
[[ $(kubectl -n "$INS" get serviceaccount "$RELEASE" -o jsonpath='{.automountServiceAccountToken}') == false ]] ||
    die "the ServiceAccount automounts its token"
CANS=0
can no list namespaces
can_secrets no yc-pull get list watch patch delete
can no create secrets
can no create events.events.k8s.io
can no get leases.coordination.k8s.io/pullsecret-injector "$INS"
can no list pods
pass "webhook only (sync.enabled=false): no RBAC, no policy, no token mounted; the ServiceAccount can do nothing ($CANS can-i answers)"
"$HELM" uninstall "$RELEASE" -n "$INS" >/dev/null 2>&1 || die "helm uninstall failed"
INSTALLED=
kubectl get mutatingwebhookconfiguration "$RELEASE" >/dev/null 2>&1 && die "helm uninstall left the MutatingWebhookConfiguration"
pass "helm uninstall removed everything cluster-scoped"

# ----------------------------------------------------------------------------------------
step "alerts: promtool check/test of the PrometheusRule, and the API server's real series"
PSI_HELM=$HELM scripts/alerts-check.sh || die "scripts/alerts-check.sh failed"
pass "alerts (scripts/alerts-check.sh)"

say "done in $((SECONDS - T0))s"
printf 'chart-check: %d passed, 0 failed\n' "$PASSED"
