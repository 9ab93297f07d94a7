{{/*
Names. Kubernetes names are limited to 63 characters (DNS labels).
*/}}
{{- define "tokencache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokencache.fullname" -}}
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

{{- define "tokencache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. The instance label scopes every selector (Deployment, Service, PDB,
NetworkPolicy, peer discovery) to one release: two releases in a namespace must never
join one hash ring.
*/}}
{{- define "tokencache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokencache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Ring labels: the selector labels plus a label kubecache's pods cannot carry (its chart
has no such key), so peer discovery and the Service never pick a Go pod, even with
nameOverride=kubecache and kubecache's customLabels during an upgrade: the two peer
protocols must never share a ring. Not part of the Deployment selector (immutable).
*/}}
{{- define "tokencache.ringLabels" -}}
{{ include "tokencache.selectorLabels" . }}
tokencache.io/peer-protocol: tokencache-v1
{{- end }}

{{/*
A port value as kubecache's chart accepted it (8080 or "8080"); a named port fails
the render naming the key.
*/}}
{{- define "tokencache.port" -}}
{{- $v := toString (index . 1) }}
{{- if not (regexMatch "^[0-9]+$" $v) }}
{{- fail (printf "%s: %q is not a port number; named ports are not supported here, set the number the proxy listens on (e.g. 8080)" (index . 0) $v) }}
{{- end }}
{{- $v }}
{{- end }}

{{/*
A configMapProperties value as text: templates rendered (kubecache did), and whole
numbers written out (YAML reads 100000000 as a float, which toString gives as 1e+08).
*/}}
{{- define "tokencache.envValue" -}}
{{- $v := index . 0 }}
{{- if and (kindIs "float64" $v) (eq $v (floor $v)) }}
{{- printf "%.0f" $v }}
{{- else if kindIs "string" $v }}
{{- tpl $v (index . 1) }}
{{- else }}
{{- toString $v }}
{{- end }}
{{- end }}

{{- define "tokencache.labels" -}}
helm.sh/chart: {{ include "tokencache.chart" . }}
{{ include "tokencache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The same selector as a Kubernetes label-selector string (KUBEGROUP_LABEL_SELECTOR).
*/}}
{{- define "tokencache.selectorString" -}}
{{- $pairs := list }}
{{- range $k, $v := (include "tokencache.ringLabels" . | fromYaml) }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "tokencache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokencache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret and key GROUPCACHE_PEER_SECRET is read from: the operator's Secret when it
names a key, otherwise the one this chart generates.
*/}}
{{- define "tokencache.peerSecretName" -}}
{{- if and .Values.secrets.existingSecret .Values.secrets.peerSecretKey }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-peer" (include "tokencache.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "tokencache.peerSecretKey" -}}
{{- if and .Values.secrets.existingSecret .Values.secrets.peerSecretKey }}
{{- .Values.secrets.peerSecretKey }}
{{- else }}
{{- "GROUPCACHE_PEER_SECRET" }}
{{- end }}
{{- end }}

{{/*
The generated peer secret's value: derived from secrets.peerSecretSeed when given
(stable under `helm template`, for GitOps), else random and kept from the cluster.
*/}}
{{- define "tokencache.peerSecretSeeded" -}}
{{- with .Values.secrets.peerSecretSeed }}
{{- printf "%s/%s/%s" . $.Release.Namespace $.Release.Name | sha256sum | b64enc }}
{{- end }}
{{- end }}

{{- define "tokencache.generatePeerSecret" -}}
{{- not (and .Values.secrets.existingSecret .Values.secrets.peerSecretKey) }}
{{- end }}

{{/*
The environment the chart owns: ports, paths and discovery must agree with the
declared container ports and probes, so they are derived from values and never
taken from configMapProperties.
*/}}
{{- define "tokencache.managedConfig" -}}
LISTEN_ADDR: {{ printf ":%s" (include "tokencache.port" (list "service.targetPort" .Values.service.targetPort)) | quote }}
GROUPCACHE_PORT: {{ printf ":%v" .Values.peer.port | quote }}
PROXY_WORKERS: {{ .Values.workers | default 1 | quote }}
HEALTH_ADDR: {{ printf ":%s" (include "tokencache.port" (list "podHealthCheck.port" .Values.podHealthCheck.port)) | quote }}
HEALTH_PATH: {{ .Values.podHealthCheck.path | quote }}
READY_PATH: {{ .Values.podHealthCheck.readyPath | quote }}
METRICS_ADDR: {{ printf ":%v" .Values.metrics.port | quote }}
METRICS_PATH: {{ .Values.metrics.path | quote }}
PEER_DISCOVERY: "kubernetes"
KUBEGROUP_LABEL_SELECTOR: {{ include "tokencache.selectorString" . | quote }}
SHUTDOWN_TIMEOUT: {{ printf "%vs" .Values.shutdown.timeoutSeconds | quote }}
{{- with .Values.secretRoleArn }}
SECRET_ROLE_ARN: {{ . | quote }}
{{- end }}
{{- with .Values.oauth2.tokenUrl }}
OAUTH2_TOKEN_URL: {{ . | quote }}
{{- end }}
{{- with .Values.oauth2.clientId }}
OAUTH2_CLIENT_ID: {{ . | quote }}
{{- end }}
{{- with .Values.oauth2.scope }}
OAUTH2_SCOPE: {{ . | quote }}
{{- end }}
{{- with .Values.oauth2.authMethod }}
OAUTH2_AUTH_METHOD: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Keys that must not come from configMapProperties: the managed ones, the env the pod
spec sets (POD_IP, secrets), and the settings that would break discovery.
*/}}
{{- define "tokencache.reservedKeys" -}}
{{- $keys := keys (include "tokencache.managedConfig" . | fromYaml) }}
{{- $keys = concat $keys (list "POD_IP" "GROUPCACHE_PEER_SECRET" "GROUPCACHE_TLS_CERT" "GROUPCACHE_TLS_KEY" "GROUPCACHE_TLS_CA" "GROUPCACHE_PEERS" "GROUPCACHE_SELF_URL" "SECRET_ROLE_ARN" "OAUTH2_TOKEN_URL" "OAUTH2_CLIENT_ID" "OAUTH2_SCOPE" "OAUTH2_AUTH_METHOD") }}
{{- if and .Values.secrets.existingSecret .Values.secrets.oauth2ClientSecretKey }}
{{- $keys = append $keys "OAUTH2_CLIENT_SECRET" }}
{{- end }}
{{- toJson (uniq $keys) }}
{{- end }}

{{/*
The grace period: preStop sleep + drain + margin, or an explicit larger value.
*/}}
{{- define "tokencache.gracePeriod" -}}
{{- add .Values.shutdown.preStopSleepSeconds .Values.shutdown.timeoutSeconds .Values.shutdown.marginSeconds }}
{{- end }}

{{/*
The Service name: service.name keeps a kubecache release's (e.g. r1-kubecache), the
DNS name its clients use; default the chart's full name.
*/}}
{{- define "tokencache.serviceName" -}}
{{- .Values.service.name | default (include "tokencache.fullname" .) }}
{{- end }}
