{{/* Names and labels. */}}
{{- define "maas.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "maas.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Selector of one component: gateway (the default), postgresql, redis, migrations. */}}
{{- define "maas.componentSelector" -}}
app.kubernetes.io/name: {{ include "maas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "maas.componentLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "maas.componentSelector" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "maas.selectorLabels" -}}
{{ include "maas.componentSelector" (dict "root" . "component" "gateway") }}
{{- end }}

{{- define "maas.labels" -}}
{{ include "maas.componentLabels" (dict "root" . "component" "gateway") }}
{{- end }}

{{- define "maas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "maas.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "maas.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the pods read: the user's, or the chart's. */}}
{{- define "maas.secretName" -}}
{{- default (include "maas.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* The database URL the chart knows of ("" when none: SQLite in the pod, or in existingSecret). */}}
{{- define "maas.databaseUrl" -}}
{{- if .Values.externalDatabase.url }}
{{- .Values.externalDatabase.url }}
{{- else if .Values.postgresql.enabled }}
{{- $password := required "postgresql.auth.password is required with the bundled PostgreSQL (or use secrets.existingSecret)" .Values.postgresql.auth.password }}
{{- printf "postgresql+psycopg://%s:%s@%s-postgresql:5432/%s" .Values.postgresql.auth.username (urlquery $password) (include "maas.fullname" .) .Values.postgresql.auth.database }}
{{- end }}
{{- end }}

{{- define "maas.redisUrl" -}}
{{- if .Values.externalRedis.url }}
{{- .Values.externalRedis.url }}
{{- else if .Values.redis.enabled }}
{{- printf "redis://%s-redis:6379/0" (include "maas.fullname" .) }}
{{- end }}
{{- end }}

{{/* Whether a shared database is configured: several replicas need one. */}}
{{- define "maas.hasDatabase" -}}
{{- if or .Values.secrets.existingSecret .Values.externalDatabase.url .Values.postgresql.enabled }}true{{- end }}
{{- end }}

{{- define "maas.terminationGracePeriodSeconds" -}}
{{- $drain := int (ceil .Values.gateway.drainTimeoutSeconds) }}
{{- $sleep := int .Values.gateway.preStopSleepSeconds }}
{{- $grace := int (default (add $drain $sleep 15) .Values.gateway.terminationGracePeriodSeconds) }}
{{- if le $grace (add $drain $sleep) }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + drainTimeoutSeconds (%d)" $grace (add $drain $sleep)) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* The gateway's environment, shared by the Deployment and the migration Job. */}}
{{- define "maas.env" -}}
- name: MAAS_HOST
  value: "0.0.0.0"
- name: MAAS_PORT
  value: "8000"
- name: MAAS_MODELS_DIR
  value: {{ .Values.models.mountPath | quote }}
- name: MAAS_DATA_DIR
  value: /var/lib/maas
- name: HF_HOME
  value: /var/lib/maas/huggingface
- name: MAAS_DEVICES
  value: {{ .Values.gateway.devices | quote }}
- name: MAAS_LOG_LEVEL
  value: {{ .Values.gateway.logLevel | quote }}
- name: MAAS_LOG_FORMAT
  value: {{ .Values.gateway.logFormat | quote }}
- name: MAAS_DRAIN_TIMEOUT_S
  value: {{ .Values.gateway.drainTimeoutSeconds | quote }}
- name: MAAS_WORKERS
  value: {{ .Values.gateway.workers | toString | quote }}
- name: MAAS_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "maas.secretName" . }}
      key: admin-key
{{- if or .Values.secrets.existingSecret (include "maas.databaseUrl" .) }}
- name: MAAS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "maas.secretName" . }}
      key: database-url
      optional: {{ not (include "maas.databaseUrl" .) }}
{{- end }}
{{- if or .Values.secrets.existingSecret (include "maas.redisUrl" .) }}
- name: MAAS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "maas.secretName" . }}
      key: redis-url
      optional: {{ not (include "maas.redisUrl" .) }}
{{- end }}
{{- range $name, $value := .Values.gateway.settings }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.gateway.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
