{{/*
Names, labels and the checks every template relies on.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "policyhub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources: fullnameOverride, or
<release>-<chart>, or just <release> when it already contains the chart name.
*/}}
{{- define "policyhub.fullname" -}}
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

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "policyhub.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "policyhub.labels" -}}
helm.sh/chart: {{ include "policyhub.chart" . }}
{{ include "policyhub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the pods. */}}
{{- define "policyhub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "policyhub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount's name. */}}
{{- define "policyhub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "policyhub.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest, or repository:tag. */}}
{{- define "policyhub.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion (toString .Values.image.tag)) }}
{{- end }}
{{- end }}

{{/* Whether storage.type is postgres ("true" or ""). */}}
{{- define "policyhub.postgres" -}}
{{- if eq (toString .Values.storage.type) "postgres" }}true{{ end }}
{{- end }}

{{/* The number of replicas: replicaCount, or 1 (sqlite) / 2 (postgres). */}}
{{- define "policyhub.replicas" -}}
{{- if kindIs "invalid" .Values.replicaCount }}
{{- if include "policyhub.postgres" . }}2{{ else }}1{{ end }}
{{- else }}
{{- int64 .Values.replicaCount }}
{{- end }}
{{- end }}

{{/*
Refuses configurations that cannot work, with a message naming the value to
change. Rendered by validate.yaml.
*/}}
{{- define "policyhub.validate" -}}
{{- /* values.schema.json already refuses unknown keys, types and enums. */ -}}
{{- $type := toString .Values.storage.type }}
{{- $replicas := int64 (include "policyhub.replicas" .) }}
{{- if and (eq $type "sqlite") (gt $replicas 1) }}
{{- fail (printf "storage.type=sqlite runs exactly 1 replica (SQLite is single-process), but replicaCount is %d: set replicaCount=1, or use storage.type=postgres for several replicas" $replicas) }}
{{- end }}
{{- if eq $type "postgres" }}
{{- if or (not .Values.storage.postgres.urlSecret.name) (not .Values.storage.postgres.urlSecret.key) }}
{{- fail "storage.type=postgres needs the database URL from a Secret: set storage.postgres.urlSecret.name (and storage.postgres.urlSecret.key, default database-url) to an existing Secret holding postgres://user:password@host:5432/db" }}
{{- end }}
{{- if not (or .Values.auth.jwks.existingSecret .Values.auth.hs256.existingSecret .Values.auth.issuers) }}
{{- fail "storage.type=postgres needs auth.jwks.existingSecret, auth.hs256.existingSecret or auth.issuers: every replica must accept the same tokens (a JWKS of your token issuer, a shared HS256 secret of at least 32 bytes, or OpenID Connect issuers)" }}
{{- end }}
{{- if not .Values.signing.existingSecret }}
{{- fail "storage.type=postgres needs signing.existingSecret: every replica must sign with the same Ed25519 key (create one with `policyhub generate-key --out signing-key.pem` and store it in a Secret)" }}
{{- end }}
{{- end }}
{{- if and .Values.signing.existingSecret (not .Values.signing.keys) }}
{{- fail "signing.keys must name at least one key of signing.existingSecret (the first signs)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: a Secret holding the certificate chain (tls.certKey) and private key (tls.keyKey)" }}
{{- end }}
{{- range .Values.auth.bindings }}
{{- if and .spiffe_id (not $.Values.tls.clientCA.existingSecret) }}
{{- fail (printf "auth.bindings %q matches a SPIFFE ID, which comes from a client certificate: it needs tls.clientCA.existingSecret (mTLS)" .name) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.clientCA.existingSecret (not .Values.tls.enabled) }}
{{- fail "tls.clientCA.existingSecret (mTLS) needs tls.enabled=true" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled=true" }}
{{- end }}
{{- with .Values.agent }}
{{- if .enabled }}
{{- if not (or .namespaces .policies) }}
{{- fail "agent.enabled needs agent.namespaces or agent.policies: what the agent follows" }}
{{- end }}
{{- if not (or .serviceAccountToken.enabled .token.existingSecret) }}
{{- fail "agent.enabled with agent.serviceAccountToken.enabled=false needs agent.token.existingSecret: a Secret holding a token with the reader role, which the agent presents to the server" }}
{{- end }}
{{- if not (and .api.tls.existingSecret .api.token.existingSecret) }}
{{- fail "agent.enabled needs agent.api.tls.existingSecret and agent.api.token.existingSecret: the agent's API listens on the pod's address, reachable from other pods, so it is served over TLS and asks callers for a token" }}
{{- end }}
{{- if and .metrics.enabled (eq (int64 .metrics.port) (int64 .api.port)) }}
{{- fail "agent.metrics.port and agent.api.port must differ" }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (include "policyhub.postgres" .) (gt $replicas 1) .Values.podDisruptionBudget.enabled }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and (kindIs "invalid" $pdb.maxUnavailable) (kindIs "invalid" $pdb.minAvailable) }}
{{- fail "podDisruptionBudget.enabled needs podDisruptionBudget.maxUnavailable or podDisruptionBudget.minAvailable" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A TOML value: whole numbers as integers, without exponent (Helm reads YAML
numbers as float64), other numbers as floats, booleans as is, lists as
arrays, anything else as a quoted string (JSON string escapes are valid TOML).
*/}}
{{- define "policyhub.tomlValue" -}}
{{- if or (kindIs "int64" .) (kindIs "int" .) }}
{{- int64 . }}
{{- else if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else if kindIs "float64" . }}
{{- . }}
{{- else if kindIs "bool" . }}
{{- . }}
{{- else if kindIs "slice" . }}
{{- toJson . }}
{{- else }}
{{- toString . | toJson }}
{{- end }}
{{- end }}

{{/* Where the container finds its files. */}}
{{- define "policyhub.paths" -}}
config: /etc/policyhub/config
data: /var/lib/policyhub
signing: /etc/policyhub/signing
jwks: /etc/policyhub/auth/jwks
hs256: /etc/policyhub/auth/hs256
clusterCA: /etc/policyhub/auth/cluster-ca
tls: /etc/policyhub/tls
clientCA: /etc/policyhub/tls-client-ca
{{- end }}

{{/*
A probe of grpc.health.v1.Health on the gRPC port: the kubelet's native gRPC
check, or, when the port speaks TLS (the kubelet's gRPC probe has none), the
image's own `policyhub health` run in the container, which speaks TLS without
verifying the certificate (the probe asks whether the server serves, not who
it is) and, with mTLS, presents the server's certificate as its own.
Called with (dict "root" $ "probe" .Values.probes.<name>).
*/}}
{{- define "policyhub.probe" -}}
{{- $values := .root.Values }}
{{- if $values.tls.enabled }}
{{- $paths := include "policyhub.paths" .root | fromYaml }}
exec:
  command:
    - /policyhub
    - health
    - --server
    - {{ printf "https://localhost:%d" (int64 $values.ports.grpc) }}
    - --tls-no-verify
    - --connect-timeout
    - {{ printf "%ds" (int64 .probe.timeoutSeconds) }}
    - --request-timeout
    - {{ printf "%ds" (int64 .probe.timeoutSeconds) }}
    {{- with .probe.grpcService }}
    - --service
    - {{ . | quote }}
    {{- end }}
    {{- if $values.tls.clientCA.existingSecret }}
    - --cert-file
    - {{ printf "%s/%s" $paths.tls $values.tls.certKey }}
    - --key-file
    - {{ printf "%s/%s" $paths.tls $values.tls.keyKey }}
    {{- end }}
{{- else }}
grpc:
  port: {{ int64 $values.ports.grpc }}
  {{- with .probe.grpcService }}
  service: {{ . | quote }}
  {{- end }}
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* The agent's name: <fullname>-agent. */}}
{{- define "policyhub.agent.fullname" -}}
{{- printf "%s-agent" (include "policyhub.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
Labels that select the agent's pods: another app.kubernetes.io/name than the
server's, so that neither selector takes the other's pods.
*/}}
{{- define "policyhub.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-agent" (include "policyhub.name" .) }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every agent resource. */}}
{{- define "policyhub.agent.labels" -}}
helm.sh/chart: {{ include "policyhub.chart" . }}
{{ include "policyhub.agent.selectorLabels" . }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: {{ include "policyhub.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The server the agent follows: agent.server, or this release's Service. */}}
{{- define "policyhub.agent.server" -}}
{{- if .Values.agent.server }}
{{- .Values.agent.server }}
{{- else }}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" .Values.tls.enabled) (include "policyhub.fullname" .) .Release.Namespace (int64 .Values.service.grpcPort) }}
{{- end }}
{{- end }}

{{/* Where the agent container finds its files. */}}
{{- define "policyhub.agent.paths" -}}
token: /etc/policyhub/agent/token
serverCA: /etc/policyhub/agent/server-ca
apiTLS: /etc/policyhub/agent/api-tls
apiToken: /etc/policyhub/agent/api-token
cache: /var/cache/policyhub
{{- end }}
