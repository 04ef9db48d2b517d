{{/* Names, labels and shared pieces of the coredump-webhook chart. */}}

{{- define "coredump-webhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: the release name, plus the chart name unless it is already in it. */}}
{{- define "coredump-webhook.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "coredump-webhook.agentName" -}}
{{- printf "%s-agent" (include "coredump-webhook.fullname" .) }}
{{- end }}

{{/* "true" when the agent posts CoreDumped Events (agent.settings.events, the agent's default
     true), empty otherwise: only then does it get `create` on events. */}}
{{- define "coredump-webhook.agentEvents" -}}
{{- if or (not (hasKey .Values.agent.settings "events")) .Values.agent.settings.events }}true{{ end }}
{{- end }}

{{/* "true" when the agent watches its node's pods (agent.settings.watch_pods, the agent's
     default true), empty otherwise: only then does it get `list`/`watch` on pods. */}}
{{- define "coredump-webhook.agentWatchPods" -}}
{{- if or (not (hasKey .Values.agent.settings "watch_pods")) .Values.agent.settings.watch_pods }}true{{ end }}
{{- end }}

{{/* "true" when the webhook calls the Kubernetes API at all (then it gets a ClusterRole and a token). */}}
{{- define "coredump-webhook.webhookUsesApi" -}}
{{- if or .Values.webhook.rbac.patchWebhookConfiguration .Values.registry.readPullSecrets .Values.webhook.addCapability }}true{{ end }}
{{- end }}

{{/* "true" when the agent reads its own DaemonSet at stop (agent.restoreOnStop "removed"):
     then it gets a Role with `get` on that one DaemonSet. */}}
{{- define "coredump-webhook.agentReadsDaemonSet" -}}
{{- if eq .Values.agent.restoreOnStop "removed" }}true{{ end }}
{{- end }}

{{/* "true" when the agent calls the Kubernetes API at all (then it gets a token). */}}
{{- define "coredump-webhook.agentUsesApi" -}}
{{- if or (include "coredump-webhook.agentEvents" .) (include "coredump-webhook.agentWatchPods" .) (include "coredump-webhook.agentIndex" .) (include "coredump-webhook.agentReadsDaemonSet" .) }}true{{ end }}
{{- end }}

{{/* "true" when the agent has a ClusterRole (pod watch, Events or the crash index). */}}
{{- define "coredump-webhook.agentClusterRole" -}}
{{- if or (include "coredump-webhook.agentEvents" .) (include "coredump-webhook.agentWatchPods" .) (include "coredump-webhook.agentIndex" .) }}true{{ end }}
{{- end }}

{{/* "true" when the agent writes the crash index (agent.settings.index, the agent's default
     true), empty otherwise: only then may it create/update CoreDumps. */}}
{{- define "coredump-webhook.agentIndex" -}}
{{- if or (not (hasKey .Values.agent.settings "index")) .Values.agent.settings.index }}true{{ end }}
{{- end }}

{{/* The agent's stop timeout in whole seconds (agent.settings.stop_timeout_seconds, else the
     agent's default 40), and the margin the grace period keeps beyond it (restoring the kernel
     settings, asking the API whether this is a removal, cutting late dumps). */}}
{{- define "coredump-webhook.agentStopTimeout" -}}
{{- if hasKey .Values.agent.settings "stop_timeout_seconds" }}{{ .Values.agent.settings.stop_timeout_seconds | ceil | int }}{{ else }}40{{ end }}
{{- end }}
{{- define "coredump-webhook.agentStopMargin" -}}20{{- end }}

{{/* The read-only cores page (agent.page): its DaemonSet, ServiceAccount and Service. */}}
{{- define "coredump-webhook.pageName" -}}
{{- printf "%s-page" (include "coredump-webhook.fullname" .) }}
{{- end }}

{{/* "true" when the page is rendered: it reads the agent's node location, so it needs the agent. */}}
{{- define "coredump-webhook.pageEnabled" -}}
{{- if and .Values.agent.enabled .Values.agent.page.enabled }}true{{ end }}
{{- end }}

{{- define "coredump-webhook.certsName" -}}
{{- printf "%s-certs" (include "coredump-webhook.fullname" .) }}
{{- end }}

{{/* The kubernetes.io/tls Secret the webhook mounts (bootstrap Job or cert-manager writes it). */}}
{{- define "coredump-webhook.tlsSecret" -}}
{{- printf "%s-tls" (include "coredump-webhook.fullname" .) }}
{{- end }}

{{/* The MutatingWebhookConfiguration: cluster-scoped, so the namespace is part of the name. */}}
{{- define "coredump-webhook.webhookConfig" -}}
{{- if eq .Release.Namespace (include "coredump-webhook.fullname" .) }}
{{- include "coredump-webhook.fullname" . }}
{{- else }}
{{- printf "%s-%s" (include "coredump-webhook.fullname" .) .Release.Namespace | trunc 253 }}
{{- end }}
{{- end }}

{{/* Cluster-scoped RBAC objects get the namespace in their name as well. */}}
{{- define "coredump-webhook.clusterName" -}}
{{- $ctx := index . 0 }}{{ $suffix := index . 1 }}
{{- printf "%s-%s" (include "coredump-webhook.webhookConfig" $ctx) $suffix }}
{{- end }}

{{- define "coredump-webhook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coredump-webhook.labels" -}}
helm.sh/chart: {{ include "coredump-webhook.chart" . }}
app.kubernetes.io/name: {{ include "coredump-webhook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: coredump-webhook
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (list . "webhook"). */}}
{{- define "coredump-webhook.selectorLabels" -}}
{{- $ctx := index . 0 }}{{ $component := index . 1 -}}
app.kubernetes.io/name: {{ include "coredump-webhook.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ $component }}
{{- end }}

{{/* All labels of one component. */}}
{{- define "coredump-webhook.componentLabels" -}}
{{- $ctx := index . 0 }}{{ $component := index . 1 -}}
{{ include "coredump-webhook.labels" $ctx }}
app.kubernetes.io/component: {{ $component }}
{{- end }}

{{/* The project image, by digest when one is given. */}}
{{- define "coredump-webhook.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* An env var value as a string; whole numbers stay integers (YAML numbers reach templates as
     float64, and 8589934592 would otherwise render as 8.589934592e+09). */}}
{{- define "coredump-webhook.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq (float64 (int64 .)) . }}{{ int64 . | toString | quote }}{{ else }}{{ . | toString | quote }}{{ end }}
{{- else }}
{{- . | toString | quote }}
{{- end }}
{{- end }}

{{/* The Service's DNS name inside the cluster. */}}
{{- define "coredump-webhook.serviceHost" -}}
{{- printf "%s.%s.svc" (include "coredump-webhook.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The chart's imagePullSecrets in a pod spec (nothing when there are none): include with
     (list . INDENT), INDENT being the pod spec's own indentation. */}}
{{- define "coredump-webhook.imagePullSecrets" -}}
{{- $ctx := index . 0 }}{{ $indent := index . 1 }}
{{- with $ctx.Values.imagePullSecrets }}
{{- "imagePullSecrets:" | nindent $indent }}
{{- range . }}
{{- printf "  - name: %s" . | nindent $indent }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the agent's pods go (agent.tolerations, nodeSelector, affinity), for a pod spec at
     INDENT: include with (list . INDENT). The page's pods go to the same nodes, since it reads
     the node location the agent writes. */}}
{{- define "coredump-webhook.agentPlacement" -}}
{{- $ctx := index . 0 }}{{ $indent := index . 1 }}
{{- range $key := list "tolerations" "nodeSelector" "affinity" }}
{{- with index $ctx.Values.agent $key }}
{{- printf "%s:" $key | nindent $indent }}
{{- toYaml . | nindent (add $indent 2 | int) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A ClusterRoleBinding of one of the chart's ServiceAccounts to the chart's ClusterRole of
     the same suffix: include with (list . SUFFIX COMPONENT SERVICEACCOUNT). */}}
{{- define "coredump-webhook.clusterRoleBinding" -}}
{{- $ctx := index . 0 }}{{ $suffix := index . 1 }}{{ $component := index . 2 }}{{ $sa := index . 3 -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ include "coredump-webhook.clusterName" (list $ctx $suffix) }}
  labels:
    {{- include "coredump-webhook.componentLabels" (list $ctx $component) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ include "coredump-webhook.clusterName" (list $ctx $suffix) }}
subjects:
  - kind: ServiceAccount
    name: {{ $sa }}
    namespace: {{ $ctx.Release.Namespace }}
{{- end }}

{{/* A list of strings as CEL string literals joined by ", " (names never contain quotes: the
     schema allows only user-name characters). */}}
{{- define "coredump-webhook.celStrings" -}}
{{- $out := list }}{{ range . }}{{ $out = append $out (printf "'%s'" .) }}{{ end }}{{ join ", " $out }}
{{- end }}

{{/* NAME-<hash of SPEC>, at most 63 characters: include with (list NAME SPEC). For objects
     whose spec is immutable (Jobs), so a changed spec gets a new object. */}}
{{- define "coredump-webhook.specName" -}}
{{- printf "%s-%s" (index . 0 | trunc 56 | trimSuffix "-") (index . 1 | sha256sum | trunc 6) }}
{{- end }}
