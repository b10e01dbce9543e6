{{/* Chart name. */}}
{{- define "psi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the prefix of every object name. */}}
{{- define "psi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "psi.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "psi.labels" -}}
helm.sh/chart: {{ include "psi.chart" . }}
{{ include "psi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels that select the pods. */}}
{{- define "psi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "psi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "psi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "psi.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "psi.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Ports the container listens on: the node's own with hostNetwork. */}}
{{- define "psi.webhookPort" -}}
{{- if .Values.hostNetwork.enabled -}}{{ int .Values.hostNetwork.webhookPort }}{{- else -}}{{ int .Values.webhook.containerPort }}{{- end -}}
{{- end -}}
{{- define "psi.adminPort" -}}
{{- if .Values.hostNetwork.enabled -}}{{ int .Values.hostNetwork.adminPort }}{{- else -}}{{ int .Values.admin.containerPort }}{{- end -}}
{{- end -}}

{{/* Namespace of the Lease (sync.leaderElection). */}}
{{- define "psi.leaseNamespace" -}}
{{- .Values.sync.leaderElection.leaseNamespace | default .Release.Namespace -}}
{{- end -}}

{{/* Name of the TLS Secret (mounted at /tls; in injector mode written and read by the injector). */}}
{{- define "psi.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "existingSecret" -}}
{{- required "certificates.existingSecret.name is required when certificates.mode is existingSecret" .Values.certificates.existingSecret.name -}}
{{- else if eq .Values.certificates.mode "injector" -}}
{{- printf "%s-webhook-tls" (include "psi.fullname" .) -}}
{{- else -}}
{{- printf "%s-tls" (include "psi.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
Name of the Secret mounted at credentials.mountPath ("" = none). Only the sync task reads
credentials: a webhook-only install (sync.enabled=false) mounts none.
*/}}
{{- define "psi.credentialsSecretName" -}}
{{- if not .Values.sync.enabled -}}
{{- else if .Values.credentials.existingSecret -}}
{{- .Values.credentials.existingSecret -}}
{{- else if .Values.credentials.files -}}
{{- printf "%s-credentials" (include "psi.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* DNS names of the serving certificate (a YAML list). */}}
{{- define "psi.dnsNames" -}}
{{- $svc := include "psi.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- toYaml (concat $names .Values.certificates.extraDnsNames | uniq) -}}
{{- end -}}

{{/* Namespaces that are never selected: excludeNamespaces + the release namespace. */}}
{{- define "psi.excludedNamespaces" -}}
{{- toYaml (append .Values.namespaceSelector.excludeNamespaces .Release.Namespace | uniq) -}}
{{- end -}}

{{/* The config file's namespaceSelector (kubectl syntax), same namespaces as the webhook's. */}}
{{- define "psi.namespaceSelectorString" -}}
{{- $excluded := include "psi.excludedNamespaces" . | fromYamlArray -}}
{{- printf "%s=%s,kubernetes.io/metadata.name notin (%s)" .Values.namespaceSelector.key .Values.namespaceSelector.value (join "," $excluded) -}}
{{- end -}}

{{/* sync.instance: the label value on every Secret this release manages. */}}
{{- define "psi.instance" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The registries' secretNames, sorted, as a JSON array (RBAC resourceNames, the policy). */}}
{{- define "psi.secretNames" -}}
{{- $names := list -}}
{{- range .Values.registries -}}
{{- $names = append $names .secretName -}}
{{- end -}}
{{- toJson ($names | uniq | sortAlpha) -}}
{{- end -}}

{{/*
Retired Secret names, sorted, as a JSON array: sync.retiredSecretNames, plus, on helm upgrade,
the secretNames the running release configures that these values no longer do (read from its
ConfigMap with lookup, which is empty under helm template: there, list them yourself). A name
the registries configure is never retired. The injector deletes its own Secrets (both labels)
under these names from every namespace.
*/}}
{{- define "psi.retiredSecretNames" -}}
{{- $current := include "psi.secretNames" . | fromJsonArray -}}
{{- $retired := .Values.sync.retiredSecretNames | default list -}}
{{- $running := lookup "v1" "ConfigMap" .Release.Namespace (include "psi.fullname" .) -}}
{{- with (get ($running.data | default dict) "config.yaml") -}}
{{- range ((fromYaml .).registries | default list) -}}
{{- $retired = append $retired .secretName -}}
{{- end -}}
{{- end -}}
{{- $out := list -}}
{{- range $retired -}}
{{- if not (has . $current) -}}
{{- $out = append $out . -}}
{{- end -}}
{{- end -}}
{{- toJson ($out | uniq | sortAlpha) -}}
{{- end -}}

{{/*
Whether to install the ValidatingAdmissionPolicy (rbac.admissionPolicy): true, false, or auto
= when the cluster serves admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy (1.30+).
*/}}
{{- define "psi.admissionPolicy" -}}
{{- $want := .Values.rbac.admissionPolicy -}}
{{- /* Wherever the ServiceAccount may create Secrets: the sync task, or the injector's own
certificate (a webhook-only install in injector mode may create Secrets in its namespace). */ -}}
{{- if and .Values.rbac.create (or .Values.sync.enabled (eq .Values.certificates.mode "injector")) -}}
{{- if eq (toString $want) "auto" -}}
{{- if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy" }}true{{ end -}}
{{- else if eq (toString $want) "true" -}}
true
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The config file (src/config.rs schema; README "Configuration reference"). Strings go through
toJson (a JSON string is a YAML string), so no value can break the YAML; only keys the binary
knows are written (its parser refuses unknown fields).
*/}}
{{- define "psi.config" -}}
{{- $le := .Values.sync.leaderElection -}}
webhook:
  listen: {{ printf "0.0.0.0:%s" (include "psi.webhookPort" .) | toJson }}
  {{- if eq .Values.certificates.mode "injector" }}
  # The injector keeps its own CA and certificate (certificates.mode=injector).
  managedCertificate:
    secretName: {{ include "psi.tlsSecretName" . | toJson }}
    webhookConfiguration: {{ include "psi.fullname" . | toJson }}
    dnsNames: {{ include "psi.dnsNames" . | fromYamlArray | toJson }}
    ipAddresses: {{ .Values.certificates.extraIpAddresses | toJson }}
    caValidity: {{ .Values.certificates.injector.caValidity | toString | toJson }}
    certificateValidity: {{ .Values.certificates.injector.certificateValidity | toString | toJson }}
    publishDelay: {{ .Values.certificates.injector.publishDelay | toString | toJson }}
  {{- else }}
  tlsCertFile: /tls/tls.crt
  tlsKeyFile: /tls/tls.key
  {{- end }}
admin:
  listen: {{ printf "0.0.0.0:%s" (include "psi.adminPort" .) | toJson }}
# The same namespaces as the MutatingWebhookConfiguration's namespaceSelector.
namespaceSelector: {{ include "psi.namespaceSelectorString" . | toJson }}
podOptOutAnnotation: {{ .Values.podOptOutAnnotation | toJson }}
sync:
  refreshInterval: {{ .Values.sync.refreshInterval | toString | toJson }}
  maxWritesPerSecond: {{ int .Values.sync.maxWritesPerSecond }}
  # Label value on every Secret this release manages; another release never touches them.
  instance: {{ include "psi.instance" . | toJson }}
  # Names no registry uses any more: this release's Secrets under them are deleted everywhere.
  retiredSecretNames: {{ include "psi.retiredSecretNames" . }}
  leaderElection:
    enabled: {{ $le.enabled }}
    leaseName: {{ $le.leaseName | toJson }}
    leaseNamespace: {{ include "psi.leaseNamespace" . | toJson }}
podReport:
  enabled: {{ .Values.podReport.enabled }}
  deleteOwnedPods: {{ .Values.podReport.deleteOwnedPods }}
  maxDeletionsPerMinute: {{ int .Values.podReport.maxDeletionsPerMinute }}
registries:
{{ toYaml (include "psi.configRegistries" . | fromYamlArray) }}
{{- end -}}

{{/*
Registries for the config file: as given, with a namespaceSelector (matchLabels /
matchExpressions in the values) rendered as the kubectl-syntax string the binary reads.
*/}}
{{- define "psi.configRegistries" -}}
{{- $out := list -}}
{{- range .Values.registries -}}
{{- $r := omit . "namespaceSelector" -}}
{{- if .namespaceSelector -}}
{{- $_ := set $r "namespaceSelector" (include "psi.selectorString" .namespaceSelector) -}}
{{- end -}}
{{- $out = append $out $r -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
A label selector (matchLabels, matchExpressions) in kubectl syntax: matchLabels sorted by
key, then matchExpressions in order. Equal selectors give equal strings, which the binary's
scopes rely on (src/config.rs Settings::scopes).
*/}}
{{- define "psi.selectorString" -}}
{{- $parts := list -}}
{{- $ml := .matchLabels | default dict -}}
{{- range $k := keys $ml | sortAlpha -}}
{{- $parts = append $parts (printf "%s=%s" $k (get $ml $k)) -}}
{{- end -}}
{{- range .matchExpressions | default list -}}
{{- $values := join "," (.values | default list) -}}
{{- if eq .operator "In" -}}
{{- $parts = append $parts (printf "%s in (%s)" .key $values) -}}
{{- else if eq .operator "NotIn" -}}
{{- $parts = append $parts (printf "%s notin (%s)" .key $values) -}}
{{- else if eq .operator "Exists" -}}
{{- $parts = append $parts .key -}}
{{- else if eq .operator "DoesNotExist" -}}
{{- $parts = append $parts (printf "!%s" .key) -}}
{{- end -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{/*
The MutatingWebhookConfiguration's entries, a YAML list of {name, suffix, namespaceSelector}:
pods.pullsecret-injector.io at webhook.path for the registries without a namespaceSelector
(when there are any), and one entry per distinct registry selector, named after the first
registry with it, at webhook.path/NAME, whose namespaceSelector is the opt-in selector AND the
registry's. The API server evaluates the namespace's labels, so the binary, which only sees
the namespace's name, injects a scoped registry's Secret exactly where the sync task keeps it.
*/}}
{{- define "psi.webhookEntries" -}}
{{- include "psi.validate" . -}}
{{- $top := dict "matchLabels" (dict .Values.namespaceSelector.key .Values.namespaceSelector.value) "matchExpressions" (list (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" (include "psi.excludedNamespaces" . | fromYamlArray))) -}}
{{- $entries := list -}}
{{- $unscoped := false -}}
{{- $seen := dict -}}
{{- $members := dict -}}
{{- range $i, $r := .Values.registries -}}
{{- if $r.namespaceSelector -}}
{{- $key := include "psi.selectorString" $r.namespaceSelector -}}
{{- if not (hasKey $seen $key) -}}
{{- $_ := set $seen $key $r.name -}}
{{- $labels := deepCopy $top.matchLabels -}}
{{- range $k, $v := ($r.namespaceSelector.matchLabels | default dict) -}}
{{- if and (hasKey $labels $k) (ne (get $labels $k) $v) -}}
{{- fail (printf "registries[%d].namespaceSelector.matchLabels.%s: %q conflicts with the opt-in label %s=%s: no namespace could match both" $i $k $v $k (get $labels $k)) -}}
{{- end -}}
{{- $_ := set $labels $k $v -}}
{{- end -}}
{{- $exprs := concat $top.matchExpressions ($r.namespaceSelector.matchExpressions | default list) -}}
{{- $entries = append $entries (dict "name" (printf "%s.pods.pullsecret-injector.io" $r.name) "suffix" (printf "/%s" $r.name) "namespaceSelector" (dict "matchLabels" $labels "matchExpressions" $exprs) "key" $key) -}}
{{- end -}}
{{- $_ := set $members $key (append (get $members $key | default list) (dict "index" $i "hosts" $r.hosts)) -}}
{{- else -}}
{{- $unscoped = true -}}
{{- $_ := set $members "" (append (get $members "" | default list) (dict "index" $i "hosts" $r.hosts)) -}}
{{- end -}}
{{- end -}}
{{- if $unscoped -}}
{{- $entries = prepend $entries (dict "name" "pods.pullsecret-injector.io" "suffix" "" "namespaceSelector" $top "key" "") -}}
{{- end -}}
{{- /* Each entry's registries (index, hosts): its matchConditions look at their hosts only. */ -}}
{{- range $e := $entries -}}
{{- $_ := set $e "registries" (get $members $e.key) -}}
{{- $_ := unset $e "key" -}}
{{- end -}}
{{- toYaml $entries -}}
{{- end -}}

{{/* Whether the sync task runs and a registry uses yandexWorkloadIdentity ("true" or ""). */}}
{{- define "psi.usesWorkloadIdentity" -}}
{{- if .Values.sync.enabled -}}
{{- range .Values.registries -}}
{{- if hasKey (.credentials | default dict) "yandexWorkloadIdentity" -}}true{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Checks that fail the render with a clear message: credential files under mountPath must come
from somewhere, and from one place only.
*/}}
{{- define "psi.validate" -}}
{{- $mount := trimSuffix "/" .Values.credentials.mountPath -}}
{{- if and .Values.credentials.existingSecret .Values.credentials.files -}}
{{- fail "credentials: set either credentials.existingSecret or credentials.files, not both" -}}
{{- end -}}
{{- if not (has .Values.certificates.mode (list "injector" "selfSigned" "certManager" "existingSecret")) -}}
{{- fail (printf "certificates.mode: %q is not one of injector, selfSigned, certManager, existingSecret" .Values.certificates.mode) -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.hostNetwork.enabled -}}
{{- fail "networkPolicy.enabled has no effect with hostNetwork.enabled (NetworkPolicies do not apply to host-network Pods): disable one of them" -}}
{{- end -}}
{{- if and (eq .Values.certificates.mode "existingSecret") (not .Values.certificates.existingSecret.caBundle) -}}
{{- fail "certificates.existingSecret.caBundle (base64 PEM of the CA) is required when certificates.mode is existingSecret" -}}
{{- end -}}
{{- if and (include "psi.usesWorkloadIdentity" .) (not .Values.workloadIdentity.audience) -}}
{{- fail "workloadIdentity.audience is required when a registry uses yandexWorkloadIdentity: the federation's audience (on Yandex Managed Kubernetes the cluster's issuer URL, yc managed-kubernetes cluster get NAME --format json | jq -r .workload_identity_federation.issuer)" -}}
{{- end -}}
{{- range $i, $r := .Values.registries -}}
{{- if and $r.namespaceSelector (not (kindIs "map" $r.namespaceSelector)) -}}
{{- fail (printf "registries[%d].namespaceSelector: write it as a label selector, e.g. {matchLabels: {team: a}} or {matchExpressions: [{key: team, operator: In, values: [a]}]}: the chart renders it into the webhook configuration too" $i) -}}
{{- end -}}
{{- if and $r.namespaceSelector (not (regexMatch "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" $r.name)) -}}
{{- fail (printf "registries[%d].name: %q: a registry with a namespaceSelector is served at the webhook path %s/NAME, so its name must be lowercase letters, digits, '-' and '.'" $i $r.name $.Values.webhook.path) -}}
{{- end -}}
{{- /* Only the sync task reads credentials: a webhook-only install mounts none. */ -}}
{{- range $kind, $src := ($.Values.sync.enabled | ternary ($r.credentials | default dict) dict) -}}
{{- range $field := list "file" "passwordFile" -}}
{{- $path := get ($src | default dict) $field -}}
{{- if and $path (hasPrefix (printf "%s/" $mount) $path) -}}
{{- $file := trimPrefix (printf "%s/" $mount) $path -}}
{{- if and (not $.Values.credentials.existingSecret) (not $.Values.credentials.files) -}}
{{- fail (printf "registries[%d].credentials.%s.%s is %s, but nothing is mounted at %s: create a Secret with that key and set credentials.existingSecret, or pass the file: --set-file 'credentials.files.%s=./%s'" $i $kind $field $path $mount (replace "." "\\." $file) $file) -}}
{{- end -}}
{{- if and $.Values.credentials.files (not (hasKey $.Values.credentials.files $file)) -}}
{{- fail (printf "registries[%d].credentials.%s.%s is %s, but credentials.files has no %q (it has: %s)" $i $kind $field $path $file (keys $.Values.credentials.files | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
