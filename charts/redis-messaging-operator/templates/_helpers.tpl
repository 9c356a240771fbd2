{{/* The chart's name, as used in app.kubernetes.io/name. */}}
{{- define "redis-messaging-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects (63 characters at most, the DNS label limit). */}}
{{- define "redis-messaging-operator.fullname" -}}
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

{{/* The labels that select the operator's pod: stable across upgrades. */}}
{{- define "redis-messaging-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "redis-messaging-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The standard labels of every object of the chart: the one place they are written. */}}
{{- define "redis-messaging-operator.labels" -}}
{{ include "redis-messaging-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: redis-messaging
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "redis-messaging-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "redis-messaging-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "redis-messaging-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Values that the schema cannot check alone. */}}
{{- define "redis-messaging-operator.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaces") (not .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaces needs watchNamespaces: the namespaces to create Roles in and to watch" }}
{{- end }}
{{- end }}
