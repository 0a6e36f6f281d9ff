{{/* Chart name, truncated to a DNS label. */}}
{{- define "sarathi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release full name: the prefix of every object name. */}}
{{- define "sarathi.fullname" -}}
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

{{/*
"<fullname>-<suffix>", failing instead of truncating: two variants must never
end up with the same name. Call with (list $ "suffix").
*/}}
{{- define "sarathi.objname" -}}
{{- $root := index . 0 }}
{{- $name := printf "%s-%s" (include "sarathi.fullname" $root) (index . 1) }}
{{- if gt (len $name) 63 }}
{{- fail (printf "object name %q is longer than 63 characters: shorten the release name, fullnameOverride or the variant name" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{- define "sarathi.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select pods: never change them after install. */}}
{{- define "sarathi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sarathi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sarathi.labels" -}}
helm.sh/chart: {{ include "sarathi.chart" . }}
{{ include "sarathi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sarathi-serve
{{- end }}

{{/* Selector labels of one component; call with (list $ "component" "variant"), variant may be "". */}}
{{- define "sarathi.componentSelector" -}}
{{- $root := index . 0 }}
{{- include "sarathi.selectorLabels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- with index . 2 }}
sarathi-serve.io/variant: {{ . }}
{{- end }}
{{- end }}

{{- define "sarathi.componentLabels" -}}
{{- $root := index . 0 }}
{{- include "sarathi.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- with index . 2 }}
sarathi-serve.io/variant: {{ . }}
{{- end }}
{{- end }}

{{- define "sarathi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sarathi.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sarathi.image" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) }}
{{- end }}

{{- define "sarathi.workerImage" -}}
{{- if .Values.worker.gpu.enabled }}
{{- $repo := default .Values.image.repository .Values.gpuImage.repository }}
{{- printf "%s:%s" $repo (default (printf "%s-cuda" .Chart.AppVersion) .Values.gpuImage.tag) }}
{{- else }}
{{- include "sarathi.image" . }}
{{- end }}
{{- end }}

{{/*
The variants as a JSON list, defaults filled in: [{name, weight, policy,
tokenBudget, workerReplicas}]. Fails on duplicate names or weights that do not
add up to 100. Use: {{ range include "sarathi.variants" . | fromJsonArray }}
*/}}
{{- define "sarathi.variants" -}}
{{- $out := list }}
{{- $raw := .Values.variants }}
{{- if not $raw }}
{{- $raw = list (dict "name" "default" "weight" 100) }}
{{- end }}
{{- $seen := dict }}
{{- $total := 0 }}
{{- range $raw }}
{{- if hasKey $seen .name }}
{{- fail (printf "variants: the name %q is listed twice" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- $total = add $total .weight }}
{{- $out = append $out (dict
    "name" .name
    "weight" (int .weight)
    "policy" (default $.Values.scheduler.policy .policy)
    "tokenBudget" (int (default $.Values.scheduler.tokenBudget .tokenBudget))
    "workerReplicas" (int (ternary .workerReplicas $.Values.worker.replicas (hasKey . "workerReplicas")))
    "shards" (int (default (default 1 $.Values.scheduler.shards) .shards))
  ) }}
{{- end }}
{{- if ne (int $total) 100 }}
{{- fail (printf "variants: the weights add up to %d, not 100" (int $total)) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The scheduler sets as a JSON list: one per variant and shard, each a variant's
fields plus its set name (the variant's with one shard, "<variant>-s<k>" with
several), which names its objects, selects its pods and prefixes its Redis keys.
Use: {{ range include "sarathi.schedulerSets" . | fromJsonArray }}
*/}}
{{- define "sarathi.schedulerSets" -}}
{{- $out := list }}
{{- range include "sarathi.variants" . | fromJsonArray }}
{{- $v := . }}
{{- range $k := until (int $v.shards) }}
{{- $name := ternary $v.name (printf "%s-s%d" $v.name $k) (eq (int $v.shards) 1) }}
{{- $out = append $out (merge (dict "name" $name "variant" $v.name "shard" $k) (omit $v "name")) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The gateway's route to a variant: its shards' scheduler Services, ";"-separated;
call with (list $ "variant"). */}}
{{- define "sarathi.variantRoute" -}}
{{- $root := index . 0 }}
{{- $addrs := list }}
{{- range include "sarathi.schedulerSets" $root | fromJsonArray }}
{{- if eq .variant (index $ 1) }}
{{- $addrs = append $addrs (include "sarathi.schedulerAddr" (list $root .name)) }}
{{- end }}
{{- end }}
{{- join ";" $addrs }}
{{- end }}

{{/* Object name of a scheduler set's scheduler; call with (list $ "set name"). */}}
{{- define "sarathi.schedulerName" -}}
{{- include "sarathi.objname" (list (index . 0) (printf "scheduler-%s" (index . 1))) }}
{{- end }}

{{- define "sarathi.workerName" -}}
{{- include "sarathi.objname" (list (index . 0) (printf "worker-%s" (index . 1))) }}
{{- end }}

{{/* host:port of a variant's scheduler Service; call with (list $ "variant"). */}}
{{- define "sarathi.schedulerAddr" -}}
{{- $root := index . 0 }}
{{- printf "%s.%s.svc.%s:%d" (include "sarathi.schedulerName" .) $root.Release.Namespace $root.Values.clusterDomain (int $root.Values.scheduler.port) }}
{{- end }}

{{- define "sarathi.redisName" -}}
{{- include "sarathi.objname" (list . "redis") }}
{{- end }}

{{- define "sarathi.redisExternal" -}}
{{- if or .Values.redis.external.url .Values.redis.external.existingSecret }}true{{ end }}
{{- end }}

{{- define "sarathi.modelClaimName" -}}
{{- default (include "sarathi.objname" (list . "models")) .Values.model.volume.existingClaim }}
{{- end }}

{{/* The gateway needs the model files when model.name is a path (the tokenizer). */}}
{{- define "sarathi.gatewayMountsModel" -}}
{{- if and .Values.model.volume.enabled (hasPrefix "/" .Values.model.name) }}true{{ end }}
{{- end }}

{{- define "sarathi.apiKeysSecret" -}}
{{- if .Values.gateway.auth.existingSecret }}
{{- .Values.gateway.auth.existingSecret }}
{{- else if .Values.gateway.auth.apiKeys }}
{{- include "sarathi.objname" (list . "api-keys") }}
{{- end }}
{{- end }}

{{- define "sarathi.apiKeysSecretKey" -}}
{{- if .Values.gateway.auth.existingSecret }}
{{- .Values.gateway.auth.existingSecretKey }}
{{- else }}api-keys{{ end }}
{{- end }}

{{- define "sarathi.internalTokenSecret" -}}
{{- .Values.internalAuth.existingSecret | default (include "sarathi.objname" (list . "internal-token")) }}
{{- end }}

{{- define "sarathi.internalTokenSecretKey" -}}
{{- if .Values.internalAuth.existingSecret }}{{ .Values.internalAuth.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* Environment shared by sarathi-serve containers: writable places on a read-only root,
and the internal token of the scheduler's port. */}}
{{- define "sarathi.commonEnv" -}}
- name: HOME
  value: /tmp
- name: HF_HOME
  value: /tmp/huggingface
- name: HF_HUB_OFFLINE
  value: "1"
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
- name: SARATHI_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "sarathi.internalTokenSecret" . }}
      key: {{ include "sarathi.internalTokenSecretKey" . }}
{{- end }}

{{- define "sarathi.podSpecCommon" -}}
serviceAccountName: {{ include "sarathi.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* nodeSelector, tolerations, affinity of one component's values. */}}
{{- define "sarathi.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* prometheus.io scrape annotations; call with (list $ port path). */}}
{{- define "sarathi.scrapeAnnotations" -}}
{{- $root := index . 0 }}
{{- if $root.Values.metrics.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ index . 1 | quote }}
prometheus.io/path: {{ index . 2 }}
{{- end }}
{{- end }}

{{/* NetworkPolicy egress rule allowing DNS. */}}
{{- define "sarathi.dnsEgress" -}}
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
  {{- with .Values.networkPolicy.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Every acknowledged write is on disk: scheduler state survives a Redis restart. */}}
{{- define "sarathi.redisConf" -}}
bind 0.0.0.0 -::*
port 6379
protected-mode no
dir /data
appendonly yes
appendfsync always
save ""
{{- end }}

{{/* NetworkPolicy ingress rule for Prometheus; empty when metrics are off. */}}
{{- define "sarathi.metricsIngress" -}}
{{- if and .Values.metrics.enabled .Values.networkPolicy.metricsFrom }}
- from:
    {{- toYaml .Values.networkPolicy.metricsFrom | nindent 4 }}
  ports:
    - protocol: TCP
      port: {{ .Values.metrics.port }}
{{- end }}
{{- end }}

{{/* Seconds the gateway's preStop waits (endpoints drop the pod) before SIGTERM. */}}
{{- define "sarathi.gatewayPreStopS" -}}
{{- min 5 (div (int .Values.gateway.terminationGracePeriodSeconds) 3) }}
{{- end }}

{{/* "true" when worker groups have several pipeline stages (one pod each: a
LeaderWorkerSet), else empty. */}}
{{- define "sarathi.workerPipelined" -}}
{{- if gt (int .Values.worker.pipelineParallelSize) 1 }}true{{ end }}
{{- end }}
