{{/* Names, labels, images. */}}

{{- define "parapet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: the release name when it already contains the chart name
(`helm install parapet ...` gives `parapet-dataplane`, not `parapet-parapet-dataplane`).
Kept to 40 characters so that the longest suffix ("-dataplane-admin") fits a DNS label.
*/}}
{{- define "parapet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "parapet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "parapet.labels" -}}
helm.sh/chart: {{ include "parapet.chart" . }}
app.kubernetes.io/name: {{ include "parapet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: parapet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "parapet.selectorLabels" (list . "operator") */}}
{{- define "parapet.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "parapet.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "parapet.componentLabels" -}}
{{ include "parapet.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "parapet.operator.fullname" -}}
{{- printf "%s-operator" (include "parapet.fullname" .) -}}
{{- end -}}

{{- define "parapet.dataplane.fullname" -}}
{{- printf "%s-dataplane" (include "parapet.fullname" .) -}}
{{- end -}}

{{/* The headless Service whose EndpointSlices list the data-plane pods to push to. */}}
{{- define "parapet.dataplane.adminService" -}}
{{- printf "%s-dataplane-admin" (include "parapet.fullname" .) -}}
{{- end -}}

{{- define "parapet.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "parapet.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "parapet.tokenSecretName" -}}
{{- default (printf "%s-snapshot-token" (include "parapet.fullname" .)) .Values.snapshotToken.existingSecret -}}
{{- end -}}

{{/* An image reference: include "parapet.image" (list . .Values.operator.image) */}}
{{- define "parapet.image" -}}
{{- $ctx := index . 0 -}}
{{- $img := index . 1 -}}
{{- $repo := $img.repository -}}
{{- with $ctx.Values.image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default $ctx.Chart.AppVersion $ctx.Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where the token Secret is mounted, in both components. */}}
{{- define "parapet.tokenDir" -}}/etc/parapet/token{{- end -}}

{{/* Pod and container security contexts shared by both components. */}}
{{- define "parapet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "parapet.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "parapet.tokenVolume" -}}
- name: snapshot-token
  secret:
    secretName: {{ include "parapet.tokenSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.snapshotToken.secretKey }}
        path: token
{{- end -}}

{{/* The namespaces whose objects the operator reads (empty list: all). */}}
{{- define "parapet.watchNamespaces" -}}
{{- join "," (uniq .Values.watchNamespaces) -}}
{{- end -}}

{{/*
mTLS on the snapshot channel. Who issues the certificate:
  secret       the user's Secret (snapshotTLS.secretName), mounted by both components;
  certManager  a cert-manager Certificate the chart renders, mounted by both components;
  operator     the operator keeps a CA in <fullname>-snapshot-ca and issues
               <fullname>-snapshot-tls, which only the data plane mounts (the operator's
               client certificate lives in its memory);
  off          plain HTTP.
*/}}
{{- define "parapet.snapshotTLS.mode" -}}
{{- $t := .Values.snapshotTLS -}}
{{- if not $t.enabled -}}off
{{- else if $t.secretName -}}secret
{{- else if $t.certManager.enabled -}}
{{- if not (and $t.certManager.issuerRef $t.certManager.issuerRef.name) -}}
{{- fail "snapshotTLS.certManager.enabled needs snapshotTLS.certManager.issuerRef.name: the cert-manager Issuer or ClusterIssuer that signs the snapshot certificate" -}}
{{- end -}}
certManager
{{- else -}}operator
{{- end -}}
{{- end -}}

{{/* The Secret the data plane mounts (ca.crt, tls.crt, tls.key). */}}
{{- define "parapet.snapshotTLS.secretName" -}}
{{- default (printf "%s-snapshot-tls" (include "parapet.fullname" .)) .Values.snapshotTLS.secretName -}}
{{- end -}}

{{/* The Secret holding the CA the operator issues from (operator mode). */}}
{{- define "parapet.snapshotTLS.caSecretName" -}}
{{- printf "%s-snapshot-ca" (include "parapet.fullname" .) -}}
{{- end -}}

{{- define "parapet.snapshotTLS.dir" -}}/etc/parapet/snapshot-tls{{- end -}}

{{- define "parapet.snapshotTLS.serverName" -}}
{{- default (printf "%s.%s.svc" (include "parapet.dataplane.adminService" .) .Release.Namespace) .Values.snapshotTLS.serverName -}}
{{- end -}}

{{- define "parapet.snapshotTLS.volume" -}}
- name: snapshot-tls
  secret:
    secretName: {{ include "parapet.snapshotTLS.secretName" . }}
    defaultMode: 0440
{{- end -}}
