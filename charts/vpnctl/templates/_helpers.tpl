{{/*
Names and labels. The controller's own objects carry the usual Helm labels with
component "controller"; the objects the controller builds for each tenant carry
app.kubernetes.io/managed-by=vpnctl instead (vpnctl/reconcile/names.py), so the two
never select each other.
*/}}

{{- define "vpnctl.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "vpnctl" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-vpnctl" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vpnctl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vpnctl.labels" -}}
helm.sh/chart: {{ include "vpnctl.chart" . }}
app.kubernetes.io/name: vpnctl
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vpnctl
{{- end -}}

{{- define "vpnctl.controller.selectorLabels" -}}
app.kubernetes.io/name: vpnctl
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "vpnctl.controller.labels" -}}
{{ include "vpnctl.labels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "vpnctl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vpnctl.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name the existing ServiceAccount the controller runs as" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vpnctl.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The namespace the controller watches: controller.namespace, else "*" (every
namespace: tenants live in namespaces of their own, never the release's). */}}
{{- define "vpnctl.watchNamespace" -}}
{{- default "*" .Values.controller.namespace -}}
{{- end -}}

{{/* The controller's command line (see values.yaml: controller.args). */}}
{{- define "vpnctl.controller.args" -}}
{{- $c := .Values.controller -}}
{{- if $c.args -}}
{{- toYaml $c.args -}}
{{- else -}}
- run
{{- if $c.leaderElection.enabled }}
- --leader-elect
{{- end }}
{{- $ns := include "vpnctl.watchNamespace" . }}
{{- if ne $ns "*" }}
- --namespace={{ $ns }}
{{- end }}
- --metrics-address=:{{ $c.metricsPort }}
- --health-address=:{{ $c.healthPort }}
- --agent-image={{ default (include "vpnctl.image" .) $c.agentImage }}
- --image-rollout-max-rolling={{ $c.imageRollout.maxRolling }}
- --image-rollout-deadline={{ $c.imageRollout.deadline }}
{{- range .Values.reservedCIDRs }}
- --reserved-cidr={{ . }}
{{- end }}
{{- if not .Values.detectReservedCIDRs }}
- --no-detect-reserved-cidrs
{{- end }}
{{- range $c.metricsAllowNamespaces }}
- --metrics-allow-namespace={{ . }}
{{- end }}
{{- range $component := list "server" "sidecar" "agent" }}
{{- with index $.Values.tenantResources $component }}
- --{{ $component }}-resources={{ include "vpnctl.resourcesFlag" . }}
{{- end }}
{{- end }}
{{- with $c.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* {requests: {cpu, memory}, limits: {...}} as the controller's flag syntax:
requests.cpu=50m,limits.memory=256Mi (vpnctl/reconcile/container_resources.py). */}}
{{- define "vpnctl.resourcesFlag" -}}
{{- $terms := list -}}
{{- range $kind := list "requests" "limits" -}}
{{- $section := index $ $kind | default dict -}}
{{- range $name := keys $section | sortAlpha -}}
{{- $terms = append $terms (printf "%s.%s=%v" $kind $name (index $section $name)) -}}
{{- end -}}
{{- end -}}
{{- join "," $terms -}}
{{- end -}}

{{/* --- Cluster API ---------------------------------------------------------------- */}}

{{- define "vpnctl.capi.labels" -}}
{{ include "vpnctl.labels" . }}
cluster.x-k8s.io/provider: cluster-api
{{- end -}}

{{/* Cluster-scoped CAPI objects get the fullname as prefix, so they never collide with
a clusterctl-installed CAPI's "capi-manager-role" and friends. */}}
{{- define "vpnctl.capi.clusterPrefix" -}}
{{- include "vpnctl.fullname" . | trunc 40 | trimSuffix "-" -}}
{{- end -}}
