#!/usr/bin/env bash
# alerts-check.sh - the chart's PrometheusRule checked and unit-tested with promtool.
#
#   scripts/alerts-check.sh     (called by scripts/chart-check.sh; with KUBECONFIG pointing at a
#                                test API server it also runs step 5)
#
# 1. helm template of the chart (release psi, namespace psi, metrics.prometheusRule.enabled)
#    and its spec.groups written as a Prometheus rule file.
# 2. promtool check rules, and promtool test rules tests/alerts/prometheusrule-test.yaml (every
#    alert firing on its series and quiet otherwise).
# 3. The tests bite: each alert in turn is replaced by one that never fires, and the tests
#    must then fail for that alert.
# 4. Every alert has a runbook_url whose anchor is a "### <alert>" heading of README.md.
# 5. Against the real kube-apiserver: the chart's webhook registered by URL on a closed port,
#    once with failurePolicy Ignore and once with Fail; a Pod created under each (admitted
#    without its Secret; refused). The API server's /metrics must then show
#    apiserver_admission_webhook_fail_open_count and _rejection_count for the webhook with the
#    labels the alerts use (and _admission_duration_seconds), and promtool must fire
#    PullsecretInjectorWebhookFailingOpen and ...Rejecting on exactly those series.
#
# promtool and helm come from scripts/install-tools.sh (built from the Go module proxy, cached).
# Knobs: PSI_HELM, PSI_PROMTOOL (binaries). Everything created on the API server is removed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'alerts-check: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    say "FAILED"
    exit 1
}
PASSED=0
pass() {
    PASSED=$((PASSED + 1))
    say "  ok: $*"
}

CHART=charts/pullsecret-injector
TESTS=tests/alerts/prometheusrule-test.yaml
HELM=${PSI_HELM:-$(scripts/install-tools.sh helm)} || die "could not install helm"
PROMTOOL=${PSI_PROMTOOL:-$(scripts/install-tools.sh promtool)} || die "could not install promtool"
say "$("$PROMTOOL" --version 2>&1 | head -n 1) ($PROMTOOL)"
python3 -c 'import yaml' 2>/dev/null || die "python3 with PyYAML is needed (apt-get install python3-yaml)"

work=$(mktemp -d "${TMPDIR:-/tmp}/psi-alerts-check.XXXXXX")
CREATED=()
cleanup() {
    local rc=$? obj
    for obj in "${CREATED[@]}"; do
        # shellcheck disable=SC2086
        kubectl delete $obj --wait=false >/dev/null 2>&1 || true
    done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
say "== render the chart's PrometheusRule"
"$HELM" template psi "$CHART" --namespace psi --set credentials.existingSecret=x \
    --set metrics.prometheusRule.enabled=true --show-only templates/prometheusrule.yaml >"$work/prometheusrule.yaml" ||
    die "helm template failed"
python3 - "$work/prometheusrule.yaml" "$work/rules.yaml" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["kind"] == "PrometheusRule", doc["kind"]
yaml.safe_dump({"groups": doc["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
EOF
alerts=$(python3 -c 'import sys, yaml; print("\n".join(r["alert"] for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"]))' "$work/rules.yaml")
say "$(wc -l <<<"$alerts") alerts: $(paste -sd' ' <<<"$alerts")"

say "== promtool check rules / test rules"
out=$("$PROMTOOL" check rules "$work/rules.yaml" 2>&1) || { printf '%s\n' "$out" >&2; die "promtool check rules failed"; }
pass "promtool check rules: $(grep -o 'SUCCESS.*' <<<"$out")"
cp "$TESTS" "$work/tests.yaml"
out=$("$PROMTOOL" test rules "$work/tests.yaml" 2>&1) || { printf '%s\n' "$out" >&2; die "promtool test rules $TESTS failed"; }
pass "promtool test rules $TESTS"

# Every alert appears in the tests with a firing expectation.
while read -r a; do
    python3 - "$TESTS" "$a" <<'EOF' || die "$TESTS has no test in which $a fires"
import sys, yaml
tests, alert = yaml.safe_load(open(sys.argv[1])), sys.argv[2]
fires = [c for t in tests["tests"] for c in t.get("alert_rule_test", []) if c["alertname"] == alert and c.get("exp_alerts")]
quiet = [c for t in tests["tests"] for c in t.get("alert_rule_test", []) if c["alertname"] == alert and not c.get("exp_alerts")]
sys.exit(0 if fires and quiet else 1)
EOF
done <<<"$alerts"
pass "every alert has a firing and a quiet case"

say "== the tests bite: each alert replaced by one that never fires"
while read -r a; do
    python3 - "$work/rules.yaml" "$work/broken.yaml" "$a" <<'EOF'
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
for g in rules["groups"]:
    for r in g["rules"]:
        if r["alert"] == sys.argv[3]:
            r["expr"] = "vector(1) > 2"
yaml.safe_dump(rules, open(sys.argv[2], "w"), sort_keys=False)
EOF
    sed 's#^  - rules.yaml$#  - broken.yaml#' "$TESTS" >"$work/broken-tests.yaml"
    if out=$("$PROMTOOL" test rules "$work/broken-tests.yaml" 2>&1); then
        die "with $a never firing, the tests still pass: they do not test it"
    fi
    grep -q "alertname: $a," <<<"$out" || { printf '%s\n' "$out" >&2; die "with $a never firing, the tests fail, but not on $a"; }
done <<<"$alerts"
pass "breaking any one alert fails its test"

say "== runbooks"
while read -r a; do
    anchor=$(echo "$a" | tr '[:upper:]' '[:lower:]')
    grep -q "^### $a\$" README.md || die "README.md has no runbook heading '### $a'"
    grep -q "runbook_url: .*#$anchor\$" "$work/rules.yaml" || die "$a has no runbook_url ending in #$anchor"
done <<<"$alerts"
pass "every alert has a runbook_url whose anchor is a README.md heading"

# ---------------------------------------------------------------------------------------------
if [[ -z ${KUBECONFIG:-} ]]; then
    say "KUBECONFIG is not set: skipping the live check against kube-apiserver (scripts/chart-check.sh runs it)"
    say "done: $PASSED passed"
    exit 0
fi
say "== live: the API server's fail-open and rejection series for the chart's webhook"
suffix=$(openssl rand -hex 3)
closed=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key=alerts-check.pullsecret-injector.io/live
for policy in Ignore Fail; do
    rel=psi-alerts-$(tr '[:upper:]' '[:lower:]' <<<"$policy")-$suffix
    ns=$rel
    kubectl create namespace "$ns" >/dev/null
    CREATED+=("namespace $ns")
    kubectl label namespace "$ns" "$key=$rel" >/dev/null
    kubectl -n "$ns" create serviceaccount default >/dev/null 2>&1 || true
    # Rendered for another release namespace: the webhook never selects its own.
    "$HELM" template "$rel" "$CHART" --namespace psi-alerts-system --set credentials.existingSecret=x \
        --set "webhook.url=https://127.0.0.1:$closed/mutate" --set "webhook.failurePolicy=$policy" \
        --set "namespaceSelector.key=$key" --set "namespaceSelector.value=$rel" \
        --show-only templates/webhook.yaml >"$work/webhook-$policy.yaml" || die "helm template (webhook, $policy) failed"
    kubectl apply -f "$work/webhook-$policy.yaml" >/dev/null || die "applying the webhook ($policy) failed"
    CREATED+=("mutatingwebhookconfiguration $rel")
done
# The API server sees a new webhook configuration within moments; wait until a Pod created
# under "Fail" is refused by it (bounded).
pod() { # NAMESPACE NAME
    kubectl -n "$1" create -f - -o jsonpath='{.spec.imagePullSecrets}' 2>&1 <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $2}
spec:
  automountServiceAccountToken: false
  containers: [{name: app, image: cr.yandex/crp/app:1}]
EOF
}
ns_ignore=psi-alerts-ignore-$suffix
ns_fail=psi-alerts-fail-$suffix
for i in $(seq 1 100); do
    if out=$(pod "$ns_fail" "probe-$i"); then
        sleep 0.1
        continue
    fi
    [[ $out == *'failed calling webhook "pods.pullsecret-injector.io"'* ]] ||
        die "a Pod under failurePolicy Fail was refused, but not by the webhook: $out"
    break
done
[[ ${out:-} == *"failed calling webhook"* ]] || die "the API server never called the registered webhook within 10 s"

kubectl get --raw /metrics >"$work/before.txt"
out=$(pod "$ns_ignore" open) || die "under failurePolicy Ignore a Pod was refused: $out"
[[ -z $out ]] || die "a Pod admitted while the webhook is down has imagePullSecrets: $out"
pass "failurePolicy Ignore: the Pod was admitted without its Secret (failed open)"
if out=$(pod "$ns_fail" refused); then die "under failurePolicy Fail a Pod was admitted while the webhook is down"; fi
pass "failurePolicy Fail: the Pod was refused ($(grep -o 'failed calling webhook[^:]*' <<<"$out" | head -n 1))"
kubectl get --raw /metrics >"$work/after.txt"

python3 - "$work/before.txt" "$work/after.txt" "$work/live-tests.yaml" <<'EOF'
import re, sys, yaml

NAME = "pods.pullsecret-injector.io"
line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)$')
label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

def series(path):
    out = {}
    for line in open(path):
        m = line_re.match(line.strip())
        if not m or not m.group(1).startswith("apiserver_admission_webhook_"):
            continue
        labels = dict(label_re.findall(m.group(2)))
        if labels.get("name") != NAME:
            continue
        out[(m.group(1), tuple(sorted(labels.items())))] = float(m.group(3))
    return out

before, after = series(sys.argv[1]), series(sys.argv[2])
def of(metric):
    return {k: v for k, v in after.items() if k[0] == metric}
def fail(msg):
    print(f"alerts-check: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)

want = {
    "apiserver_admission_webhook_fail_open_count": {"name", "type"},
    "apiserver_admission_webhook_rejection_count": {"name", "type", "operation", "error_type", "rejection_code"},
    "apiserver_admission_webhook_admission_duration_seconds_bucket": {"name", "type", "operation", "rejected", "le"},
}
for metric, labels in want.items():
    found = of(metric)
    if not found:
        fail(f"the API server exports no {metric}{{name=\"{NAME}\"}}")
    for (_, ls) in found:
        if set(dict(ls)) != labels:
            fail(f"{metric} has labels {sorted(dict(ls))}, the alerts expect {sorted(labels)}")
    print(f"alerts-check:   {metric}: {len(found)} series for {NAME}, labels {sorted(labels)}", file=sys.stderr)

def delta(k):
    return after[k] - before.get(k, 0.0)
opened = [k for k in of("apiserver_admission_webhook_fail_open_count") if dict(k[1])["type"] == "admit" and delta(k) > 0]
rejected = [k for k in of("apiserver_admission_webhook_rejection_count") if dict(k[1])["type"] == "admit" and delta(k) > 0]
if not opened:
    fail("apiserver_admission_webhook_fail_open_count did not grow when a Pod failed open")
if not rejected:
    fail("apiserver_admission_webhook_rejection_count did not grow when a Pod was refused")

# The real series (labels exactly as scraped; the counts relative to before the two Pods) fed
# to the chart's rules: the two alerts must fire on them, with these labels.
def promql(k):
    return k[0] + "{" + ",".join(f'{a}="{b}"' for a, b in k[1]) + "}"
def humanize(v):
    return "%.4g" % v
inputs, fo_alerts, rj_alerts = [], [], []
for k in opened + rejected:
    inputs.append({"series": promql(k), "values": f"0x10 {delta(k):g}x20"})
fo = {}
for k in opened:
    fo[dict(k[1])["name"]] = fo.get(dict(k[1])["name"], 0) + delta(k)
for name, v in fo.items():
    fo_alerts.append({"exp_labels": {"severity": "critical", "name": name}, "exp_annotations": {
        "summary": f"The API server admitted Pods without calling webhook {name}",
        "description": f"{humanize(v)} admission requests in the last 10 minutes failed open on webhook {name}: the API server could not call pullsecret-injector and admitted the Pods without their pull secrets.",
        "runbook_url": "https://github.com/pullsecret-injector/pullsecret-injector/blob/main/README.md#pullsecretinjectorwebhookfailingopen"}})
for k in rejected:
    l = dict(k[1])
    rj_alerts.append({"exp_labels": {"severity": "critical", "name": l["name"], "operation": l["operation"], "error_type": l["error_type"], "rejection_code": l["rejection_code"]}, "exp_annotations": {
        "summary": f"The API server refused requests because of webhook {l['name']}",
        "description": f"{humanize(delta(k))} {l['operation']} requests in the last 10 minutes were refused by webhook {l['name']} (error_type {l['error_type']}, code {l['rejection_code']}).",
        "runbook_url": "https://github.com/pullsecret-injector/pullsecret-injector/blob/main/README.md#pullsecretinjectorwebhookrejecting"}})
    print(f"alerts-check:   refused: {promql(k)} +{delta(k):g}", file=sys.stderr)
for k in opened:
    print(f"alerts-check:   failed open: {promql(k)} +{delta(k):g}", file=sys.stderr)
yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
    "name": "the alerts fire on kube-apiserver's own fail-open and rejection series",
    "interval": "1m", "input_series": inputs,
    "alert_rule_test": [
        {"eval_time": "5m", "alertname": "PullsecretInjectorWebhookFailingOpen", "exp_alerts": []},
        {"eval_time": "12m", "alertname": "PullsecretInjectorWebhookFailingOpen", "exp_alerts": fo_alerts},
        {"eval_time": "12m", "alertname": "PullsecretInjectorWebhookRejecting", "exp_alerts": rj_alerts},
    ]}]}, open(sys.argv[3], "w"), sort_keys=False)
EOF
pass "kube-apiserver $(kubectl version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') exports the webhook's series with the labels the alerts use"
out=$("$PROMTOOL" test rules "$work/live-tests.yaml" 2>&1) || { printf '%s\n' "$out" >&2; die "the alerts do not fire on the API server's real series"; }
pass "PullsecretInjectorWebhookFailingOpen and ...Rejecting fire on the real series"
say "done: $PASSED passed"
