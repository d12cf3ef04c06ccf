{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "modelarts-otel-receiver.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; the release name alone when it already contains the chart name. */}}
{{- define "modelarts-otel-receiver.fullname" -}}
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

{{- define "modelarts-otel-receiver.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelarts-otel-receiver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelarts-otel-receiver.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelarts-otel-receiver.labels" -}}
helm.sh/chart: {{ include "modelarts-otel-receiver.chart" . }}
{{ include "modelarts-otel-receiver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "modelarts-otel-receiver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelarts-otel-receiver.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelarts-otel-receiver.secretName" -}}
{{- default (printf "%s-credentials" (include "modelarts-otel-receiver.fullname" .)) .Values.credentials.existingSecret }}
{{- end }}

{{- define "modelarts-otel-receiver.claimName" -}}
{{- default (printf "%s-checkpoints" (include "modelarts-otel-receiver.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{- define "modelarts-otel-receiver.image" -}}
{{- $repository := required "image.repository is required: no public image is published. Build and push it (docker build -t REGISTRY/modelarts-otel-receiver:VERSION . && docker push REGISTRY/modelarts-otel-receiver:VERSION), then set image.repository=REGISTRY/modelarts-otel-receiver" .Values.image.repository }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The receiver's config file: .Values.config with what the pod layout fixes. telemetry.listen must
match the probe port; checkpoints default to the data volume; with the sidecar, the exporter
defaults to it (plain gRPC on localhost).
*/}}
{{- define "modelarts-otel-receiver.receiverConfig" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $telemetry := (get $cfg "telemetry") | default dict }}
{{- $_ := set $telemetry "listen" (printf "0.0.0.0:%d" (int .Values.telemetry.port)) }}
{{- $_ = set $cfg "telemetry" $telemetry }}
{{- $checkpoint := (get $cfg "checkpoint") | default dict }}
{{- if .Values.checkpointDatabase.urlSecret.name }}
{{- $_ = set $checkpoint "url" "${env:MODELARTS_CHECKPOINT_URL}" }}
{{- else if not (get $checkpoint "path") }}
{{- $_ = set $checkpoint "path" "/var/lib/modelarts-receiver/checkpoints.db" }}
{{- end }}
{{- $_ = set $cfg "checkpoint" $checkpoint }}
{{- if .Values.collector.enabled }}
{{- $exporter := (get $cfg "exporter") | default dict }}
{{- if not (get $exporter "endpoint") }}
{{- $_ = set $exporter "endpoint" "http://localhost:4317" }}
{{- $_ = set $exporter "protocol" "grpc" }}
{{- $tls := (get $exporter "tls") | default dict }}
{{- $_ = set $tls "insecure" true }}
{{- $_ = set $exporter "tls" $tls }}
{{- end }}
{{- $_ = set $cfg "exporter" $exporter }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
The sidecar collector's config: OTLP in on localhost only, a memory limiter, the exporters from
values, its own metrics and health check on ports that do not clash with the receiver's.
*/}}
{{- define "modelarts-otel-receiver.collectorConfig" -}}
{{- $c := .Values.collector }}
{{- $exporters := $c.exporters | default dict }}
{{- $cfg := dict
  "receivers" (dict "otlp" (dict "protocols" (dict
    "grpc" (dict "endpoint" "localhost:4317")
    "http" (dict "endpoint" "localhost:4318"))))
  "processors" (dict "memory_limiter" (dict
    "check_interval" "1s" "limit_percentage" 80 "spike_limit_percentage" 20))
  "exporters" $exporters
  "extensions" (dict "health_check" (dict "endpoint" (printf "0.0.0.0:%d" (int $c.healthPort))))
  "service" (dict
    "extensions" (list "health_check")
    "telemetry" (dict "metrics" (dict "readers" (list (dict "pull" (dict "exporter" (dict "prometheus" (dict "host" "0.0.0.0" "port" (int $c.metricsPort))))))))
    "pipelines" (dict "logs" (dict
      "receivers" (list "otlp")
      "processors" (list "memory_limiter")
      "exporters" (keys $exporters | sortAlpha))))
}}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy ($c.config | default dict))) }}
{{- end }}
