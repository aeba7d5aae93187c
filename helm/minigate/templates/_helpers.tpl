{{/* Names and labels, as `helm create` makes them. */}}
{{- define "minigate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "minigate.fullname" -}}
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

{{- define "minigate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "minigate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "minigate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "minigate.labels" -}}
helm.sh/chart: {{ include "minigate.chart" . }}
{{ include "minigate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: minigate
{{- end }}

{{- define "minigate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret whose keys become the gateway's environment (envFrom); empty when there is none. */}}
{{- define "minigate.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.data }}
{{- include "minigate.fullname" . }}
{{- end }}
{{- end }}

{{/*
The gateway's config file. `config` from the values replaces the chart's default (files/minigate.yaml)
whole: Helm would merge two mappings key by key, leaving the default's routes beside the user's.
With PostgreSQL on, the store's URL comes from a Secret through ${MINIGATE_POSTGRES_URL}, and the
spool (used while the database is down) goes to the data volume. With Redis on, limits.redis_url is the
value's URL or ${MINIGATE_REDIS_URL} (from a Secret), beside limits.fail; `workers` sets server.workers.
*/}}
{{- define "minigate.configData" -}}
{{- $config := deepCopy (.Values.config | default (.Files.Get "files/minigate.yaml" | fromYaml)) }}
{{- if .Values.postgresql.enabled }}
{{- $logging := deepCopy ($config.logging | default dict) }}
{{- $_ := set $logging "store" "${MINIGATE_POSTGRES_URL}" }}
{{- if not $logging.spool }}
{{- $_ := set $logging "spool" "/var/lib/minigate/spool" }}
{{- end }}
{{- $_ := set $config "logging" $logging }}
{{- end }}
{{- $redis := .Values.limits.redis }}
{{- if and $redis.url $redis.urlSecret.name }}
{{- fail "limits.redis: set url or urlSecret.name, not both" }}
{{- end }}
{{- if or $redis.url $redis.urlSecret.name }}
{{- $limits := deepCopy ($config.limits | default dict) }}
{{- $_ := set $limits "redis_url" ($redis.url | default "${MINIGATE_REDIS_URL}") }}
{{- $_ := set $limits "fail" .Values.limits.fail }}
{{- $_ := set $config "limits" $limits }}
{{- end }}
{{- with .Values.workers }}
{{- $server := deepCopy ($config.server | default dict) }}
{{- $_ := set $server "workers" . }}
{{- $_ := set $config "server" $server }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* "true" when the call log is SQLite (one file per pod), empty when it is PostgreSQL. */}}
{{- define "minigate.logIsSqlite" -}}
{{- $store := ((include "minigate.configData" . | fromYaml).logging | default dict).store | default "sqlite://" }}
{{- if not (or .Values.postgresql.enabled (hasPrefix "postgresql://" (toString $store))) }}true{{ end }}
{{- end }}

{{/*
The vLLM servers `minigate serving plan` plans for the config (serving/plan.py), one per upstream of
kind vllm, as a YAML list of {upstream, service, port, command, env, reachable}; reachable: the
upstream's base_url names the Service, so the gateway reaches the server the chart deploys. Mirrored here because Helm cannot
run minigate; tests/test_helm.py checks the two agree.
*/}}
{{- define "minigate.vllmPlans" -}}
{{- $config := include "minigate.configData" . | fromYaml }}
{{- $plans := list }}
{{- range $name, $spec := $config.upstreams }}
{{- if eq (toString $spec.kind) "vllm" }}
{{- $baseUrl := $spec.base_url }}
{{- if not $baseUrl }}
{{- $baseUrl = first $spec.base_urls }}
{{- end }}
{{- if contains "${" $baseUrl }}
{{- fail (printf "upstream '%s': the chart names the vLLM Service after base_url as written, so base_url cannot use ${VAR}: write the URL out" $name) }}
{{- end }}
{{- $url := urlParse $baseUrl }}
{{- $hostPort := splitList ":" (lower $url.host) }}
{{- $port := 8000 }}
{{- if gt (len $hostPort) 1 }}
{{- $port = last $hostPort | int }}
{{- end }}
{{- $label := first (splitList "." (first $hostPort)) }}
{{- $service := $label }}
{{- $reachable := true }}
{{- if or (not (regexMatch "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$" $label)) (eq $label "localhost") }}
{{- $service = regexReplaceAll "[^a-z0-9]+" (lower (printf "vllm-%s" $name)) "-" | trimAll "-" | trunc 63 }}
{{- $reachable = false }}
{{- end }}
{{- $adapters := $spec.adapters | default dict }}
{{- $ids := list }}
{{- range $model, $entry := $config.models }}
{{- if and (eq $entry.upstream $name) (not (hasKey $adapters $entry.model)) }}
{{- $ids = append $ids $entry.model }}
{{- end }}
{{- end }}
{{- $ids = $ids | uniq | sortAlpha }}
{{- if gt (len $ids) 1 }}
{{- fail (printf "upstream '%s': its models name several base models (%s); a vLLM server serves one: set base_model and name the others as adapters" $name (join ", " $ids)) }}
{{- end }}
{{- $base := $spec.base_model | default (first $ids) }}
{{- if not $base }}
{{- fail (printf "upstream '%s': no model entry names its base model; set base_model" $name) }}
{{- end }}
{{- $command := list "vllm" "serve" $base }}
{{- if and $ids (ne (first $ids) $base) }}
{{- $command = concat $command (list "--served-model-name" (first $ids)) }}
{{- end }}
{{- $env := dict }}
{{- if $adapters }}
{{- $command = append $command "--enable-lora" }}
{{- $command = append $command "--lora-modules" }}
{{- range $adapter, $path := $adapters }}
{{- $command = append $command (printf "%s=%s" $adapter $path) }}
{{- end }}
{{- $command = concat $command (list "--max-loras" (len $adapters | toString) "--max-lora-rank" ($.Values.vllm.maxLoraRank | int | toString)) }}
{{- $_ := set $env "VLLM_ALLOW_RUNTIME_LORA_UPDATING" "True" }}
{{- end }}
{{- $command = concat $command (list "--gpu-memory-utilization" (printf "%.2f" (float64 $.Values.vllm.gpuMemoryUtilization)) "--max-num-seqs" ($.Values.vllm.maxNumSeqs | int | toString) "--port" ($port | toString)) }}
{{- $plans = append $plans (dict "upstream" $name "service" $service "port" $port "command" $command "env" $env "reachable" $reachable) }}
{{- end }}
{{- end }}
{{- toYaml $plans }}
{{- end }}

{{/* A vLLM server's labels, those of `minigate serving plan` plus Helm's: (list $ serviceName). */}}
{{- define "minigate.vllmLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: vllm
app.kubernetes.io/instance: {{ index . 1 }}
app.kubernetes.io/part-of: minigate
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ include "minigate.chart" $root }}
{{- end }}
