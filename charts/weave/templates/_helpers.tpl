{{/* The image reference. */}}
{{- define "weave.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "weave.labels" -}}
app.kubernetes.io/name: weave
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
{{- end -}}

{{/* The agent's settings, shared by the init container (which checks them) and the agent. */}}
{{- define "weave.agentEnv" -}}
- name: WEAVE_KUBE_PEERS
  value: "true"
- name: WEAVE_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: WEAVE_KUBE_NAMESPACE
  value: {{ .Release.Namespace }}
- name: WEAVE_IPALLOC_RANGE
  value: {{ .Values.ipam.range | quote }}
{{- with .Values.ipam.defaultSubnet }}
- name: WEAVE_IPALLOC_DEFAULT_SUBNET
  value: {{ . | quote }}
{{- end }}
{{- if .Values.mtu }}
- name: WEAVE_MTU
  value: {{ .Values.mtu | quote }}
{{- end }}
{{- if .Values.password.secretName }}
- name: WEAVE_PASSWORD_FILE
  value: /etc/weave/password/{{ .Values.password.secretKey }}
{{- end }}
- name: WEAVE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: WEAVE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
