{{/* Shared pieces of the certificate Jobs (bootstrap hooks and the renewal CronJob). */}}

{{/* Settings of `coredump certs bootstrap`, as its environment variables. */}}
{{- define "coredump-webhook.certsEnv" -}}
- name: COREDUMP_CERTS_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: COREDUMP_CERTS_SERVICE
  value: {{ include "coredump-webhook.fullname" . | quote }}
- name: COREDUMP_CERTS_SECRET
  value: {{ include "coredump-webhook.tlsSecret" . | quote }}
- name: COREDUMP_CERTS_WEBHOOK_CONFIG
  value: {{ include "coredump-webhook.webhookConfig" . | quote }}
- name: COREDUMP_CERTS_DAYS
  value: {{ .Values.certs.days | quote }}
- name: COREDUMP_CERTS_RENEW_BEFORE
  value: {{ .Values.certs.renewBeforeDays | quote }}
- name: COREDUMP_CERTS_TIMEOUT
  value: {{ .Values.certs.apiTimeoutSeconds | quote }}
{{- end }}

{{/* The pod spec of a certificate Job: include with (list . serviceAccountName command). */}}
{{- define "coredump-webhook.certsPodSpec" -}}
{{- $ctx := index . 0 }}{{ $sa := index . 1 }}{{ $command := index . 2 -}}
serviceAccountName: {{ $sa }}
restartPolicy: Never
{{- include "coredump-webhook.imagePullSecrets" (list $ctx 0) }}
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
containers:
  - name: certs
    image: {{ include "coredump-webhook.image" $ctx }}
    imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
    command:
      {{- toYaml $command | nindent 6 }}
    env:
      {{- include "coredump-webhook.certsEnv" $ctx | nindent 6 }}
    resources:
      {{- toYaml $ctx.Values.certs.resources | nindent 6 }}
    securityContext:
      {{- toYaml $ctx.Values.containerSecurityContext | nindent 6 }}
{{- end }}

{{/* The spec of a certificate Job (hooks and the CronJob's jobTemplate): include with
     (list . serviceAccountName command). */}}
{{- define "coredump-webhook.certsJobSpec" -}}
{{- $ctx := index . 0 -}}
backoffLimit: {{ $ctx.Values.certs.backoffLimit }}
ttlSecondsAfterFinished: {{ $ctx.Values.certs.ttlSecondsAfterFinished }}
template:
  metadata:
    labels:
      {{- include "coredump-webhook.selectorLabels" (list $ctx "certificates") | nindent 6 }}
  spec:
    {{- include "coredump-webhook.certsPodSpec" . | nindent 4 }}
{{- end }}

{{/* Secret rules of the certificate Jobs, exactly the calls of certs/kube.py ensure_secret:
     create (POST when it is missing; RBAC cannot name an object that does not exist yet), get
     (read it to judge it) and update (PUT on rotation, versioned) of that one Secret. */}}
{{- define "coredump-webhook.certsSecretRules" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [{{ include "coredump-webhook.tlsSecret" . }}]
  verbs: [get, update]
{{- end }}
