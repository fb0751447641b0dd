{{/* Names and labels. */}}
{{- define "etcdbot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "etcdbot.fullname" -}}
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

{{- define "etcdbot.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "etcdbot.labels" -}}
{{ include "etcdbot.commonLabels" . }}
{{ include "etcdbot.selectorLabels" . }}
{{- end -}}

{{- define "etcdbot.redisLabels" -}}
{{ include "etcdbot.commonLabels" . }}
{{ include "etcdbot.redisSelectorLabels" . }}
{{- end -}}

{{- define "etcdbot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etcdbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: bot
{{- end -}}

{{- define "etcdbot.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "etcdbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "etcdbot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "etcdbot.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "etcdbot.secretName" -}}
{{- default (include "etcdbot.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* The bundled Redis's password: the value given, else the one an earlier install stored (so an
upgrade does not lock the bot out of its own Redis), else a new random one. */}}
{{- define "etcdbot.redisPassword" -}}
{{- if .Values.redis.auth.password -}}
{{- .Values.redis.auth.password -}}
{{- else -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "etcdbot.fullname" .) -}}
{{- if and $found $found.data (index $found.data "redis-password") -}}
{{- index $found.data "redis-password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "etcdbot.redisUrl" -}}
{{- printf "redis://%s-redis:6379/0" (include "etcdbot.fullname" .) -}}
{{- end -}}

{{/*
A pod or container securityContext; with .Values.openshift the fields that OpenShift's restricted
SCC sets itself (or refuses) are dropped. Call with (dict "ctx" $sc "openshift" $bool).
*/}}
{{- define "etcdbot.securityContext" -}}
{{- $sc := deepCopy .ctx -}}
{{- if .openshift -}}
{{- $_ := unset $sc "runAsUser" -}}
{{- $_ := unset $sc "runAsGroup" -}}
{{- $_ := unset $sc "fsGroup" -}}
{{- $_ := unset $sc "seccompProfile" -}}
{{- end -}}
{{- toYaml $sc -}}
{{- end -}}

{{/* ETCDBOT_CLUSTERS: the clusters list, SSH key paths defaulted to the mounted secret files. */}}
{{- define "etcdbot.clustersJson" -}}
{{- $out := list -}}
{{- range .Values.clusters -}}
{{- $c := deepCopy . -}}
{{- if not $c.name -}}{{- fail "every entry of clusters needs a name" -}}{{- end -}}
{{- if hasKey $c "ssh" -}}
{{- $ssh := $c.ssh -}}
{{- if not $ssh.private_key -}}
{{- $_ := set $ssh "private_key" (printf "%s/%s" $.Values.ssh.mountPath $.Values.ssh.privateKeyFile) -}}
{{- end -}}
{{- if not $ssh.known_hosts -}}
{{- $_ := set $ssh "known_hosts" (printf "%s/%s" $.Values.ssh.mountPath $.Values.ssh.knownHostsFile) -}}
{{- end -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Validation: fails the render with a message a person can act on. */}}
{{- define "etcdbot.validate" -}}
{{- if not (has .Values.slack.mode (list "socket" "http")) -}}
{{- fail (printf "slack.mode must be socket or http, not %q" .Values.slack.mode) -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.url) (not .Values.existingSecret) -}}
{{- fail "redis.enabled=false needs redis.url (or an existingSecret holding the key redis-url)" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) .Values.backups.persistence.enabled (not .Values.backups.persistence.existingClaim) (not (has "ReadWriteMany" .Values.backups.persistence.accessModes)) -}}
{{- fail "replicaCount > 1 shares the backup store between pods: set backups.persistence.accessModes to [ReadWriteMany]" -}}
{{- end -}}
{{- if and .Values.route.enabled (ne .Values.slack.mode "http") -}}
{{- fail "route.enabled is for slack.mode=http" -}}
{{- end -}}
{{- end -}}

{{/* The HMAC key of approval records: the value given, else the one already in the release's
Secret (kept across upgrades, so approvals in flight stay valid), else a new random one. */}}
{{- define "etcdbot.approvalSecret" -}}
{{- if .Values.secrets.approvalSecret -}}
{{- .Values.secrets.approvalSecret -}}
{{- else -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "etcdbot.fullname" .) -}}
{{- if and $found $found.data (index $found.data "approval-secret") -}}
{{- index $found.data "approval-secret" | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}
