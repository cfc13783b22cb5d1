{{/*
Helpers of the stalk chart. Every define is named stalk.* and says what it returns.
Helpers that need more than the root context take a dict: (dict "ctx" $ "component" "api" ...).
*/}}

{{/* stalk.name: the chart name, or nameOverride; at most 63 characters. */}}
{{- define "stalk.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
stalk.fullname: the prefix of every object name: fullnameOverride, or <release> when it already
contains the chart name, or <release>-<chart>; at most 63 characters.
*/}}
{{- define "stalk.fullname" -}}
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

{{/* stalk.componentName: <fullname>-<component>, at most 63 characters. Takes (dict "ctx" $ "component" "api"). */}}
{{- define "stalk.componentName" -}}
{{- printf "%s-%s" (include "stalk.fullname" .ctx | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" | trunc 63 -}}
{{- end -}}

{{/* stalk.chart: <chart>-<version> for the helm.sh/chart label. */}}
{{- define "stalk.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* stalk.selectorLabels: the labels that select one component's pods. Takes (dict "ctx" $ "component" "api"). */}}
{{- define "stalk.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stalk.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* stalk.labels: the app.kubernetes.io/* labels of every object, plus commonLabels. Takes (dict "ctx" $ "component" "api"). */}}
{{- define "stalk.labels" -}}
helm.sh/chart: {{ include "stalk.chart" .ctx }}
{{ include "stalk.selectorLabels" . }}
app.kubernetes.io/part-of: stalk
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* stalk.imageRef: repository:tag, repository@digest or repository:tag@digest of an image value. Takes (dict "image" .Values.x.image "default" "tag"). */}}
{{- define "stalk.imageRef" -}}
{{- if and .image.digest .image.tag -}}
{{- /* The tag for people, the digest for the runtime; skaffold's file sync finds its pods by this exact reference. */ -}}
{{- printf "%s:%s@%s" .image.repository .image.tag .image.digest -}}
{{- else if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .default .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* stalk.image: the stalk image reference (tag defaults to the chart's appVersion). */}}
{{- define "stalk.image" -}}
{{- include "stalk.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) -}}
{{- end -}}

{{/* stalk.queueSlug: a queue name made fit for object names ('_' and '.' become '-'). Takes the queue name. */}}
{{- define "stalk.queueSlug" -}}
{{- . | replace "_" "-" | replace "." "-" -}}
{{- end -}}

{{/* stalk.workerName: the name of a queue's worker Deployment and TaskQueue, <fullname>-worker-<queue>, at most 63 characters. Takes (dict "ctx" $ "queue" name). */}}
{{- define "stalk.workerName" -}}
{{- include "stalk.componentName" (dict "ctx" .ctx "component" (printf "worker-%s" (include "stalk.queueSlug" .queue))) -}}
{{- end -}}

{{/* stalk.workerLabels / stalk.workerSelectorLabels: a queue's worker labels (component "worker" plus stalk.dev/queue). Takes (dict "ctx" $ "queue" name). */}}
{{- define "stalk.workerSelectorLabels" -}}
{{ include "stalk.selectorLabels" (dict "ctx" .ctx "component" "worker") }}
stalk.dev/queue: {{ .queue | quote }}
{{- end -}}
{{- define "stalk.workerLabels" -}}
{{ include "stalk.labels" (dict "ctx" .ctx "component" "worker") }}
stalk.dev/queue: {{ .queue | quote }}
{{- end -}}

{{/* stalk.operator.serviceAccountName: the operator's ServiceAccount. */}}
{{- define "stalk.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "stalk.componentName" (dict "ctx" . "component" "operator")) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* stalk.operator.discoveryRules: the read-only cluster-scoped rules kopf needs: CRDs always, namespaces when it serves a list of them. */}}
{{- define "stalk.operator.discoveryRules" -}}
# kopf watches CRDs (to notice the TaskQueue CRD change) and, namespaced, namespaces (its watch set).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if not .Values.operator.clusterWide }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end -}}

{{/* stalk.redis.host: the built-in Redis Service's DNS name in the release namespace. */}}
{{- define "stalk.redis.host" -}}
{{- printf "%s.%s.svc" (include "stalk.componentName" (dict "ctx" . "component" "redis")) .Release.Namespace -}}
{{- end -}}

{{/* stalk.redis.secretName: the Secret holding the broker URL (the chart's, or externalRedis.existingSecret). */}}
{{- define "stalk.redis.secretName" -}}
{{- if .Values.redis.enabled -}}
{{- include "stalk.componentName" (dict "ctx" . "component" "redis") -}}
{{- else -}}
{{- required "externalRedis.existingSecret is required when redis.enabled is false" .Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* stalk.redis.brokerKey: the key of the broker URL in stalk.redis.secretName. */}}
{{- define "stalk.redis.brokerKey" -}}
{{- if .Values.redis.enabled -}}broker-url{{- else -}}{{ .Values.externalRedis.brokerUrlKey }}{{- end -}}
{{- end -}}

{{/* stalk.redis.resultKey: the key of the result backend URL in stalk.redis.secretName. */}}
{{- define "stalk.redis.resultKey" -}}
{{- if .Values.redis.enabled -}}result-backend-url{{- else -}}{{ default .Values.externalRedis.brokerUrlKey .Values.externalRedis.resultBackendKey }}{{- end -}}
{{- end -}}

{{/* stalk.redis.tls: "true" when stalk connects to an external Redis over TLS, else empty. */}}
{{- define "stalk.redis.tls" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.enabled -}}true{{- end -}}
{{- end -}}

{{/* stalk.redis.tlsDir: where the Redis CA and client certificate are mounted (STALK_REDIS_TLS_* point into it). */}}
{{- define "stalk.redis.tlsDir" -}}/etc/stalk/redis-tls{{- end -}}

{{/* stalk.redis.masterName: the Sentinel master name of an external Redis behind Sentinel; empty for any other Redis. */}}
{{- define "stalk.redis.masterName" -}}
{{- if not .Values.redis.enabled -}}{{ .Values.externalRedis.sentinel.masterName }}{{- end -}}
{{- end -}}

{{/* stalk.redis.sentinelPasswordSecret: the Secret holding the Sentinels' own password; empty when they need none. */}}
{{- define "stalk.redis.sentinelPasswordSecret" -}}
{{- if include "stalk.redis.masterName" . -}}{{ .Values.externalRedis.sentinel.passwordSecret }}{{- end -}}
{{- end -}}

{{/* stalk.database.secretName: the Secret holding STALK_DATABASE_URL (the chart's, or externalDatabase.existingSecret). */}}
{{- define "stalk.database.secretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "stalk.componentName" (dict "ctx" . "component" "postgresql") -}}
{{- else -}}
{{- required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* stalk.database.key: the key of the database URL in stalk.database.secretName. */}}
{{- define "stalk.database.key" -}}
{{- if .Values.postgresql.enabled -}}database-url{{- else -}}{{ .Values.externalDatabase.key }}{{- end -}}
{{- end -}}

{{/* stalk.api.tokensSecretName: the Secret with the API tokens (api.tokens.existingSecret or the generated one). */}}
{{- define "stalk.api.tokensSecretName" -}}
{{- default (include "stalk.componentName" (dict "ctx" . "component" "api-tokens")) .Values.api.tokens.existingSecret -}}
{{- end -}}

{{/* stalk.api.tokensKey: the key of the tokens in stalk.api.tokensSecretName. */}}
{{- define "stalk.api.tokensKey" -}}
{{- if .Values.api.tokens.existingSecret -}}{{ .Values.api.tokens.key }}{{- else -}}tokens{{- end -}}
{{- end -}}

{{/*
stalk.secretValue: the base64 value of key in an existing Secret of the release namespace, or a new
random alphanumeric value (base64) when there is none, so generated passwords survive upgrades.
`helm template` and --dry-run cannot look up, so they always show a new value.
Takes (dict "ctx" $ "name" secretName "key" key "length" 32).
*/}}
{{- define "stalk.secretValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum (int .length) | b64enc -}}
{{- end -}}
{{- end -}}

{{/* stalk.configMap: the ConfigMap of settings shared by every stalk process (envFrom) and the queue table (STALK_QUEUES_FILE). */}}
{{- define "stalk.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "stalk.componentName" (dict "ctx" . "component" "config") }}
  labels:
    {{- include "stalk.labels" (dict "ctx" . "component" "config") | nindent 4 }}
data:
  STALK_QUEUES_FILE: /etc/stalk/queues/queues.yaml
  STALK_TASK_MODULES: {{ .Values.config.taskModules | quote }}
  STALK_BROKER_KEY_PREFIX: {{ .Values.config.brokerKeyPrefix | quote }}
  {{- with include "stalk.redis.masterName" . }}
  STALK_BROKER_MASTER_NAME: {{ . | quote }}
  {{- end }}
  STALK_SOFT_TIME_LIMIT_SECONDS: {{ .Values.config.softTimeLimitSeconds | int64 | quote }}
  STALK_HARD_TIME_LIMIT_SECONDS: {{ .Values.config.hardTimeLimitSeconds | int64 | quote }}
  STALK_VISIBILITY_TIMEOUT_SECONDS: {{ .Values.config.visibilityTimeoutSeconds | int64 | quote }}
  STALK_RECORD_TASKS: {{ .Values.config.recordTasks | quote }}
  {{- if .Values.beat.enabled }}
  STALK_BEAT_SCHEDULE: {{ .Values.beat.schedule | toJson | quote }}
  {{- end }}
  # The queue table, in the shape of workers/stalk_workers/queues.py (chart-only keys are ignored there).
  queues.yaml: |
    {{- toYaml .Values.queues | nindent 4 }}
{{- end -}}

{{/* stalk.configChecksum: sha256 of stalk.configMap; pods carry it so a change of settings or queues rolls them. */}}
{{- define "stalk.configChecksum" -}}
{{- include "stalk.configMap" . | sha256sum -}}
{{- end -}}

{{/*
stalk.flower.configMap: the ConfigMap with Flower's Celery config module (files/stalk_flower_config.py,
standard library only: Flower's image has no stalk), which turns the Redis settings of stalk.redis.env
into Celery's. Flower imports it through PYTHONPATH (celery --config stalk_flower_config).
*/}}
{{- define "stalk.flower.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "stalk.componentName" (dict "ctx" . "component" "flower") }}
  labels:
    {{- include "stalk.labels" (dict "ctx" . "component" "flower") | nindent 4 }}
data:
  {{- (.Files.Glob "files/stalk_flower_config.py").AsConfig | nindent 2 }}
{{- end -}}

{{/*
stalk.secretsChecksum: sha256 of the data of the user-managed Secrets stalk reads at start (API tokens,
external Redis and database URLs), looked up in the cluster; empty when the chart manages them all.
Pods carry it, so `helm upgrade` after rotating such a Secret restarts them. (Generated Secrets never change.)
*/}}
{{- define "stalk.secretsChecksum" -}}
{{- $names := list -}}
{{- with .Values.api.tokens.existingSecret }}{{ $names = append $names . }}{{ end -}}
{{- if not .Values.redis.enabled }}{{ $names = append $names .Values.externalRedis.existingSecret }}{{ end -}}
{{- if include "stalk.redis.tls" . }}
{{- with .Values.externalRedis.tls.caSecret.name }}{{ $names = append $names . }}{{ end -}}
{{- with .Values.externalRedis.tls.clientCertSecret }}{{ $names = append $names . }}{{ end -}}
{{- end -}}
{{- with include "stalk.redis.sentinelPasswordSecret" . }}{{ $names = append $names . }}{{ end -}}
{{- if not .Values.postgresql.enabled }}{{ $names = append $names .Values.externalDatabase.existingSecret }}{{ end -}}
{{- if $names -}}
{{- $data := dict -}}
{{- range $name := $names | uniq -}}
{{- $secret := lookup "v1" "Secret" $.Release.Namespace $name -}}
{{- $_ := set $data $name (($secret | default dict).data | default dict) -}}
{{- end -}}
{{- $data | toJson | sha256sum -}}
{{- end -}}
{{- end -}}

{{/*
stalk.redis.env: the Redis connection settings besides the URL (TLS files and check, the Sentinels'
password), for stalk's containers and Flower's config module (files/stalk_flower_config.py) alike.
*/}}
{{- define "stalk.redis.env" -}}
{{- if include "stalk.redis.tls" . }}
{{- $tls := .Values.externalRedis.tls }}
- name: STALK_REDIS_TLS_CERT_REQS
  value: {{ $tls.certReqs | quote }}
{{- if $tls.caSecret.name }}
- name: STALK_REDIS_TLS_CA_FILE
  value: {{ include "stalk.redis.tlsDir" . }}/ca.crt
{{- end }}
{{- if $tls.clientCertSecret }}
- name: STALK_REDIS_TLS_CERT_FILE
  value: {{ include "stalk.redis.tlsDir" . }}/tls.crt
- name: STALK_REDIS_TLS_KEY_FILE
  value: {{ include "stalk.redis.tlsDir" . }}/tls.key
{{- end }}
{{- end }}
{{- with include "stalk.redis.sentinelPasswordSecret" . }}
- name: STALK_BROKER_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.externalRedis.sentinel.passwordKey }}}
{{- end }}
{{- end -}}

{{/* stalk.redis.hasTlsFiles: "true" when externalRedis.tls mounts a CA or a client certificate, else empty. */}}
{{- define "stalk.redis.hasTlsFiles" -}}
{{- if and (include "stalk.redis.tls" .) (or .Values.externalRedis.tls.caSecret.name .Values.externalRedis.tls.clientCertSecret) -}}true{{- end -}}
{{- end -}}

{{/* stalk.redis.volumes: the Redis TLS files (CA, client certificate) as one volume when externalRedis.tls has any, else nothing. */}}
{{- define "stalk.redis.volumes" -}}
{{- if include "stalk.redis.hasTlsFiles" . }}
{{- $tls := .Values.externalRedis.tls }}
- name: redis-tls
  projected:
    # Readable by the pod's group (fsGroup) only: the client key is a secret.
    defaultMode: 0440
    sources:
      {{- with $tls.caSecret.name }}
      - secret: {name: {{ . }}, items: [{key: {{ $tls.caSecret.key }}, path: ca.crt}]}
      {{- end }}
      {{- with $tls.clientCertSecret }}
      - secret: {name: {{ . }}, items: [{key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]}
      {{- end }}
{{- end }}
{{- end -}}

{{/* stalk.redis.volumeMounts: the mount of stalk.redis.volumes at stalk.redis.tlsDir (where STALK_REDIS_TLS_* point), or nothing. */}}
{{- define "stalk.redis.volumeMounts" -}}
{{- if include "stalk.redis.hasTlsFiles" . }}
- {name: redis-tls, mountPath: {{ include "stalk.redis.tlsDir" . }}, readOnly: true}
{{- end }}
{{- end -}}

{{/* stalk.env: the environment of every stalk container: the shared ConfigMap and the Redis and database URLs from their Secrets. */}}
{{- define "stalk.env" -}}
- name: STALK_BROKER_URL
  valueFrom:
    secretKeyRef: {name: {{ include "stalk.redis.secretName" . }}, key: {{ include "stalk.redis.brokerKey" . }}}
- name: STALK_RESULT_BACKEND
  valueFrom:
    secretKeyRef: {name: {{ include "stalk.redis.secretName" . }}, key: {{ include "stalk.redis.resultKey" . }}}
- name: STALK_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ include "stalk.database.secretName" . }}, key: {{ include "stalk.database.key" . }}}
{{- include "stalk.redis.env" . }}
{{- with .Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* stalk.envFrom: the shared settings ConfigMap as envFrom. */}}
{{- define "stalk.envFrom" -}}
- configMapRef:
    name: {{ include "stalk.componentName" (dict "ctx" . "component" "config") }}
{{- end -}}

{{/* stalk.volumes: a writable /tmp (the root filesystem is read-only), the queue table, and the Redis TLS files when externalRedis.tls is on. */}}
{{- define "stalk.volumes" -}}
- name: tmp
  emptyDir: {}
- name: queues
  configMap:
    name: {{ include "stalk.componentName" (dict "ctx" . "component" "config") }}
    items:
      - {key: queues.yaml, path: queues.yaml}
{{- include "stalk.redis.volumes" . }}
{{- end -}}

{{/* stalk.volumeMounts: mounts of stalk.volumes; STALK_QUEUES_FILE points into /etc/stalk/queues, STALK_REDIS_TLS_* into stalk.redis.tlsDir. */}}
{{- define "stalk.volumeMounts" -}}
- {name: tmp, mountPath: /tmp}
- {name: queues, mountPath: /etc/stalk/queues, readOnly: true}
{{- include "stalk.redis.volumeMounts" . }}
{{- end -}}

{{/* stalk.podSecurityContext / stalk.containerSecurityContext: the hardened defaults from values. */}}
{{- define "stalk.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}
{{- define "stalk.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/* stalk.imagePullSecrets: the pod's imagePullSecrets block, or nothing. */}}
{{- define "stalk.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* stalk.scheduling: nodeSelector, tolerations and affinity of a pod, each only when set. Takes the values map that holds them. */}}
{{- define "stalk.scheduling" -}}
{{- $out := dict -}}
{{- with .nodeSelector }}{{ $_ := set $out "nodeSelector" . }}{{ end -}}
{{- with .tolerations }}{{ $_ := set $out "tolerations" . }}{{ end -}}
{{- with .affinity }}{{ $_ := set $out "affinity" . }}{{ end -}}
{{- if $out }}{{ toYaml $out }}{{ end -}}
{{- end -}}

{{/* stalk.hasMonitoring: "true" when the cluster serves monitoring.coreos.com/v1 (Prometheus Operator). */}}
{{- define "stalk.hasMonitoring" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- end -}}

{{/* stalk.validate: fails the render with one readable line when values contradict each other (what the schema cannot say). */}}
{{- define "stalk.validate" -}}
{{- if not (hasKey .Values.queues "default") -}}
{{- fail "queues must define the \"default\" queue (tasks no route matches go there)" -}}
{{- end -}}
{{- if le (int .Values.config.visibilityTimeoutSeconds) (int .Values.config.hardTimeLimitSeconds) -}}
{{- fail (printf "config.visibilityTimeoutSeconds (%v) must be larger than config.hardTimeLimitSeconds (%v), or Redis redelivers running tasks" .Values.config.visibilityTimeoutSeconds .Values.config.hardTimeLimitSeconds) -}}
{{- end -}}
{{- if ge (int .Values.config.softTimeLimitSeconds) (int .Values.config.hardTimeLimitSeconds) -}}
{{- fail (printf "config.softTimeLimitSeconds (%v) must be below config.hardTimeLimitSeconds (%v)" .Values.config.softTimeLimitSeconds .Values.config.hardTimeLimitSeconds) -}}
{{- end -}}
{{- if le (int .Values.workers.terminationGracePeriodSeconds) (int .Values.config.hardTimeLimitSeconds) -}}
{{- fail (printf "workers.terminationGracePeriodSeconds (%v) must be above config.hardTimeLimitSeconds (%v), or Kubernetes kills workers in the middle of a task" .Values.workers.terminationGracePeriodSeconds .Values.config.hardTimeLimitSeconds) -}}
{{- end -}}
{{- if and .Values.postgresql.enabled (eq .Values.migrations.mode "job") -}}
{{- fail "migrations.mode job runs before install, when the built-in PostgreSQL does not exist yet: use initContainer, or an external database" -}}
{{- end -}}
{{- $slugs := dict -}}
{{- range $name, $q := .Values.queues -}}
{{- if lt (int $q.maxReplicas) (int (default 0 $q.minReplicas)) -}}
{{- fail (printf "queues.%s: maxReplicas (%v) must be >= minReplicas (%v)" $name $q.maxReplicas $q.minReplicas) -}}
{{- end -}}
{{- $slug := include "stalk.workerName" (dict "ctx" $ "queue" $name) -}}
{{- if hasKey $slugs $slug -}}
{{- fail (printf "queues %s and %s would both be named %s: rename one" (get $slugs $slug) $name $slug) -}}
{{- end -}}
{{- $_ := set $slugs $slug $name -}}
{{- end -}}
{{- end -}}
