{{/* Names ---------------------------------------------------------------------------- */}}

{{- define "rlhf-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rlhf-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A name derived from the full name with a suffix, kept within 63 characters. */}}
{{- define "rlhf-operator.suffixed" -}}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "rlhf-operator.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "rlhf-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rlhf-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rlhf-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "rlhf-operator.labels" -}}
helm.sh/chart: {{ include "rlhf-operator.chart" . }}
{{ include "rlhf-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rlhf-operator
{{- end }}

{{- define "rlhf-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rlhf-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Images ----------------------------------------------------------------------------- */}}

{{- define "rlhf-operator.image" -}}
{{- $tag := toString (default .Chart.AppVersion .Values.image.tag) }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "rlhf-operator.workerImage" -}}
{{- default (printf "ghcr.io/rlhf-dev/rlhf-workers:%s" .Chart.AppVersion) .Values.workerImage }}
{{- end }}

{{/* Modes ------------------------------------------------------------------------------ */}}

{{/* "true" when the operator watches only .Values.watchNamespaces. */}}
{{- define "rlhf-operator.namespaced" -}}
{{- if .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/* "true" when kopf peering is on: explicitly, or because replicas > 1. */}}
{{- define "rlhf-operator.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicas) 1) }}true{{ end }}
{{- end }}

{{- define "rlhf-operator.peeringName" -}}
{{- default (include "rlhf-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{- define "rlhf-operator.webhookServiceName" -}}
{{- include "rlhf-operator.suffixed" (list . "webhook") }}
{{- end }}

{{- define "rlhf-operator.webhookSecretName" -}}
{{- include "rlhf-operator.suffixed" (list . "webhook-tls") }}
{{- end }}

{{- define "rlhf-operator.webhookCertDir" -}}
/etc/rlhf/webhook-certs
{{- end }}

{{/*
The chart-generated webhook certificate (webhook.certManager.enabled=false), as a dict of
base64 "ca.crt", "tls.crt", "tls.key". An existing Secret is reused (lookup) so upgrades keep
the certificate; otherwise a CA and a serving certificate are generated. Memoised for the
render, so the Secret, the caBundle and the pod's checksum annotation agree.
*/}}
{{- define "rlhf-operator.webhookCerts" -}}
{{- if not (hasKey .Values "__rlhfWebhookCerts") }}
{{- $secretName := include "rlhf-operator.webhookSecretName" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName }}
{{- $certs := dict }}
{{- if and $existing $existing.data (index $existing.data "ca.crt") (index $existing.data "tls.crt") (index $existing.data "tls.key") }}
{{- $certs = dict "ca.crt" (index $existing.data "ca.crt") "tls.crt" (index $existing.data "tls.crt") "tls.key" (index $existing.data "tls.key") }}
{{- else }}
{{- $svc := include "rlhf-operator.webhookServiceName" . }}
{{- $ns := .Release.Namespace }}
{{- $days := int .Values.webhook.selfSigned.validityDays }}
{{- $ca := genCA (printf "%s-webhook-ca" (include "rlhf-operator.fullname" .)) $days }}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) }}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) nil $dns $days $ca }}
{{- $certs = dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) }}
{{- end }}
{{- $_ := set .Values "__rlhfWebhookCerts" $certs }}
{{- end }}
{{- toJson (index .Values "__rlhfWebhookCerts") }}
{{- end }}

{{/* RBAC ------------------------------------------------------------------------------- */}}

{{/*
Namespaced rules: everything the operator does to workloads. The operator never reads
Secrets (workers get them through secretKeyRef in their pod specs).
*/}}
{{- define "rlhf-operator.workloadRules" -}}
- apiGroups: ["rlhf.dev"]
  resources: ["rlhfjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["rlhf.dev"]
  resources: ["rlhfjobs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# A job's own NetworkPolicy (spec.cluster.networkPolicy): created, read back when adopted.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  # delete: the snapshot of a launch the API server refused is removed at once (launch._remove).
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# A job's code-check pod (spec.preflight), before its RayJob: created, read for its verdict, deleted.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* kopf's resource discovery: read-only access to CRDs. */}}
{{- define "rlhf-operator.crdDiscoveryRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Cluster-scoped objects carry the release namespace so releases in different namespaces never collide. */}}
{{- define "rlhf-operator.clusterScopedName" -}}
{{- printf "%s-%s" (include "rlhf-operator.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{/* Fails the render on value combinations the schema cannot express. */}}
{{- define "rlhf-operator.checks" -}}
{{- if le (float64 .Values.progress.stallSeconds) (float64 .Values.progress.intervalSeconds) }}
{{- fail "progress.stallSeconds must be greater than progress.intervalSeconds" }}
{{- end }}
{{- if and .Values.webhook.enabled (eq (int .Values.webhook.port) (int .Values.health.port)) }}
{{- fail "webhook.port and health.port must differ" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- if and (index .Values "kuberay-operator" "enabled") (not (hasKey .Subcharts "kuberay-operator")) }}
{{- fail "kuberay-operator.enabled is true but the subchart is missing: run `helm dependency build` on the chart first (docs/install.md)" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) .Values.rbac.create }}
{{- fail "serviceAccount.create=false needs serviceAccount.name (RBAC would otherwise bind the namespace's default ServiceAccount)" }}
{{- end }}
{{- end }}
