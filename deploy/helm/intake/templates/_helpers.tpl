{{/* The release's name for its objects, within the 63 characters of a label. */}}
{{- define "intake.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "intake.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "intake.labels" -}}
{{ include "intake.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The configuration parsed, to check it against the pod's settings; an unreadable TOML stops the release here. */}}
{{- define "intake.config" -}}
{{- $config := fromToml .Values.config -}}
{{- if hasKey $config "Error" -}}
{{- fail (printf "config is not valid TOML: %s" $config.Error) -}}
{{- end -}}
{{- toJson $config -}}
{{- end -}}

{{/* Refuses what would run but misbehave: a grace period shorter than the shutdown, a pull channel with several owners. */}}
{{- define "intake.checks" -}}
{{- $config := include "intake.config" . | fromJson -}}
{{- $drain := 2.0 -}}
{{- if hasKey $config "drain_seconds" }}{{ $drain = float64 $config.drain_seconds }}{{ end -}}
{{- $grace := 15.0 -}}
{{- if hasKey $config "shutdown_grace_seconds" }}{{ $grace = float64 $config.shutdown_grace_seconds }}{{ end -}}
{{- if le (float64 .Values.terminationGracePeriodSeconds) (addf $drain $grace) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be above drain_seconds + shutdown_grace_seconds (%v + %v): Kubernetes would kill the gateway while it flushes to Kafka" .Values.terminationGracePeriodSeconds $drain $grace) -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- $email := $config.email | default dict -}}
{{- if $email.imap -}}
{{- fail "[[email.imap]] mailboxes need one owner: put them in a release of their own with replicaCount: 1 (see values.yaml)" -}}
{{- end -}}
{{- $telegram := $config.telegram | default dict -}}
{{- if and $telegram.enabled (eq ($telegram.mode | default "polling") "polling") -}}
{{- fail "Telegram polling needs one owner: put it in a release of its own with replicaCount: 1, or use mode = \"webhook\" (see values.yaml)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
