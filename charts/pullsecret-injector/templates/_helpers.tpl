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

{{/* Name of the TLS Secret mounted at /tls. */}}
{{- define "psi.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "existingSecret" -}}
{{- required "certificates.existingSecret.name is required when certificates.mode is existingSecret" .Values.certificates.existingSecret.name -}}
{{- else -}}
{{- printf "%s-tls" (include "psi.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret mounted at credentials.mountPath ("" = none). */}}
{{- define "psi.credentialsSecretName" -}}
{{- if .Values.credentials.existingSecret -}}
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

{{/*
The config file (src/config.rs schema; README "Configuration reference"). Strings go through
toJson (a JSON string is a YAML string), so no value can break the YAML; only keys the binary
knows are written (its parser refuses unknown fields).
*/}}
{{- define "psi.config" -}}
{{- $le := .Values.sync.leaderElection -}}
webhook:
  listen: {{ printf "0.0.0.0:%d" (int .Values.webhook.containerPort) | toJson }}
  tlsCertFile: /tls/tls.crt
  tlsKeyFile: /tls/tls.key
admin:
  listen: {{ printf "0.0.0.0:%d" (int .Values.admin.containerPort) | toJson }}
# The same namespaces as the MutatingWebhookConfiguration's namespaceSelector.
namespaceSelector: {{ include "psi.namespaceSelectorString" . | toJson }}
podOptOutAnnotation: {{ .Values.podOptOutAnnotation | toJson }}
sync:
  refreshInterval: {{ .Values.sync.refreshInterval | toString | toJson }}
  maxWritesPerSecond: {{ int .Values.sync.maxWritesPerSecond }}
  # Label value on every Secret this release manages; another release never touches them.
  instance: {{ .Release.Name | trunc 63 | trimSuffix "-" | toJson }}
  leaderElection:
    enabled: {{ $le.enabled }}
    leaseName: {{ $le.leaseName | toJson }}
    leaseNamespace: {{ $le.leaseNamespace | default .Release.Namespace | toJson }}
podReport:
  enabled: {{ .Values.podReport.enabled }}
  deleteOwnedPods: {{ .Values.podReport.deleteOwnedPods }}
  maxDeletionsPerMinute: {{ int .Values.podReport.maxDeletionsPerMinute }}
registries:
{{ toYaml .Values.registries }}
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
{{- if not (has .Values.certificates.mode (list "selfSigned" "certManager" "existingSecret")) -}}
{{- fail (printf "certificates.mode: %q is not one of selfSigned, certManager, existingSecret" .Values.certificates.mode) -}}
{{- end -}}
{{- if and (eq .Values.certificates.mode "existingSecret") (not .Values.certificates.existingSecret.caBundle) -}}
{{- fail "certificates.existingSecret.caBundle (base64 PEM of the CA) is required when certificates.mode is existingSecret" -}}
{{- end -}}
{{- range $i, $r := .Values.registries -}}
{{- range $kind, $src := ($r.credentials | default dict) -}}
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
