{{/*
The pod that both workloads run: the StatefulSet (SQLite, a volume per
replica) and the Deployment (PostgreSQL, no volume). Only the store and
what follows from it differ; `idplane.postgres` says which.
*/}}

{{/* The labels that select idplane's pods. */}}
{{- define "idplane.selector" -}}
{app.kubernetes.io/name: idplane, app.kubernetes.io/instance: {{ .Release.Name }}}
{{- end }}

{{/*
"true" when database.postgres names the Secret with the URL: the
Deployment. Refuses the values idplane would refuse at start.
*/}}
{{- define "idplane.postgres" -}}
{{- with .Values.database.postgres }}
{{- if and .passwordSecret.name (not .urlSecret.name) }}
{{- fail "database.postgres.passwordSecret needs database.postgres.urlSecret.name (the Secret with the postgres:// URL)" }}
{{- end }}
{{- if .urlSecret.name }}
{{- if not .urlSecret.key }}
{{- fail "database.postgres.urlSecret.key is empty: the key of the Secret's postgres:// URL" }}
{{- end }}
{{- if and .passwordSecret.name (not .passwordSecret.key) }}
{{- fail "database.postgres.passwordSecret.key is empty: the key of the Secret's password" }}
{{- end }}
{{- if not $.Values.otp.hashKeySecret.name }}
{{- fail "database.postgres needs otp.hashKeySecret.name: every replica must hash passcodes with the same key (a Secret with at least 32 characters), or a code sent through one replica cannot be verified on another" }}
{{- end }}
{{- range $.Values.extraArgs }}
{{- if hasPrefix "--database" . }}
{{- fail (printf "extraArgs: %s with database.postgres: the database comes from database.postgres (its URL and password from Secrets), and --database-max-size caps SQLite files only" (splitList "=" . | first)) }}
{{- end }}
{{- end }}
true
{{- end }}
{{- end }}
{{- end }}

{{/* The pod template of either workload. */}}
{{- define "idplane.pod" -}}
{{- $postgres := include "idplane.postgres" . | trim -}}
metadata:
  labels: {{ include "idplane.selector" . }}
spec:
  serviceAccountName: {{ .Release.Name }}
  {{- if $postgres }}
  # The image's user (not root); the pod writes nothing to disk.
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
  {{- else }}
  # The image's user (not root); fsGroup lets it write the state volume.
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532}
  {{- end }}
  # The pre-stop wait, then --shutdown-grace for the work under way after
  # SIGTERM; the pod is killed 10 s after that at the latest.
  terminationGracePeriodSeconds: {{ add (add (int .Values.preStopSeconds) (int .Values.shutdownGraceSeconds)) 10 }}
  {{- if $postgres }}
  {{- with .Values.database.postgres.spread }}
  {{- range $key, $when := . }}
  {{- if and $when (not (has $when (list "DoNotSchedule" "ScheduleAnyway"))) }}
  {{- fail (printf "database.postgres.spread.%s is DoNotSchedule, ScheduleAnyway or empty (no constraint), not %v" $key $when) }}
  {{- end }}
  {{- end }}
  {{- if or .hostname .zone }}
  # Replicas on different nodes (and zones where there are), so that one
  # node or zone lost leaves a replica serving.
  topologySpreadConstraints:
    {{- if .hostname }}
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: {{ .hostname }}
      # A cordoned node (drained) is not a place to spread to.
      nodeTaintsPolicy: Honor
      labelSelector: {matchLabels: {{ include "idplane.selector" $ }}}
    {{- end }}
    {{- if .zone }}
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: {{ .zone }}
      nodeTaintsPolicy: Honor
      labelSelector: {matchLabels: {{ include "idplane.selector" $ }}}
    {{- end }}
  {{- end }}
  {{- end }}
  {{- end }}
  containers:
    - name: idplane
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - operator
        - --listen=0.0.0.0:8080
        {{- if not $postgres }}
        - --database=/var/lib/idplane/idplane.db
        {{- end }}
        - --lease-name={{ .Release.Name }}-status-writer
        - --lease-seconds={{ int .Values.lease.seconds }}
        - --status-writes-per-second={{ int .Values.status.writesPerSecond }}
        - --status-write-burst={{ int .Values.status.writeBurst }}
        - --status-concurrency={{ int .Values.status.concurrency }}
        - --shutdown-grace={{ int .Values.shutdownGraceSeconds }}s
        {{- if not $postgres }}
        {{- with .Values.persistence.databaseMaxSize }}
        - {{ printf "--database-max-size=%s" . | quote }}
        {{- end }}
        {{- end }}
        {{- with .Values.namespaces }}
        - --namespaces={{ join "," . }}
        {{- end }}
        {{- with .Values.email.defaultSender }}
        - {{ printf "--email-default-sender=%s" . | quote }}
        {{- end }}
        {{- with .Values.email.defaultProvider }}
        {{- if .host }}
        {{- if and .username (not .passwordSecret.name) }}
        {{- fail "email.defaultProvider.username needs email.defaultProvider.passwordSecret.name (the Secret with its password)" }}
        {{- end }}
        {{- if and (eq .tls "none") (not .allowInsecure) }}
        {{- fail "email.defaultProvider.tls none sends mail and the password in clear text; set email.defaultProvider.allowInsecure: true to mean it" }}
        {{- end }}
        - {{ printf "--smtp-host=%s" .host | quote }}
        - --smtp-port={{ int .port }}
        - --smtp-tls={{ .tls }}
        {{- if .allowInsecure }}
        - --smtp-allow-insecure
        {{- end }}
        {{- with .username }}
        - {{ printf "--smtp-username=%s" . | quote }}
        {{- end }}
        - --smtp-max-attempts={{ int .maxAttempts }}
        - --smtp-initial-delay={{ .initialDelay }}
        - --smtp-multiplier={{ int .multiplier }}
        - --smtp-max-delay={{ .maxDelay }}
        {{- end }}
        {{- end }}
        {{- with .Values.egress }}
        {{- if not (has .private (list "allow" "deny")) }}
        {{- fail "egress.private is allow or deny" }}
        {{- end }}
        - --egress-private={{ .private }}
        {{- with .allow }}
        - {{ printf "--egress-allow=%s" (join "," .) | quote }}
        {{- end }}
        {{- with .deny }}
        - {{ printf "--egress-deny=%s" (join "," .) | quote }}
        {{- end }}
        {{- end }}
        {{- with .Values.webhook }}
        {{- if .enabled }}
        # The admission webhook (webhook.yaml): its TLS from cert-manager's
        # Secret, mounted, or from the Secret idplane manages itself.
        - --webhook-listen=0.0.0.0:{{ int .port }}
        {{- if .certManager.enabled }}
        - --webhook-cert-dir=/etc/idplane/webhook-tls
        {{- else }}
        - --webhook-secret={{ $.Release.Name }}-webhook-tls
        - --webhook-service={{ $.Release.Name }}-webhook
        - --webhook-configuration={{ $.Release.Name }}
        {{- end }}
        {{- end }}
        {{- end }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        {{- if $postgres }}
        {{- with .Values.database.postgres }}
        # The shared store, from Secrets: never in the values, the
        # arguments or the pod spec.
        - name: IDPLANE_DATABASE
          valueFrom:
            secretKeyRef: {name: {{ .urlSecret.name }}, key: {{ .urlSecret.key }}}
        {{- if .passwordSecret.name }}
        - name: IDPLANE_DATABASE_PASSWORD
          valueFrom:
            secretKeyRef: {name: {{ .passwordSecret.name }}, key: {{ .passwordSecret.key }}}
        {{- end }}
        {{- end }}
        {{- end }}
        {{- with .Values.otp.hashKeySecret }}
        {{- if .name }}
        # The passcode HMAC key: the same on every replica, and across
        # restarts, so that any replica verifies any replica's codes.
        - name: IDPLANE_OTP_HASH_KEY
          valueFrom:
            secretKeyRef: {name: {{ .name }}, key: {{ .key }}}
        {{- end }}
        {{- end }}
        {{- with .Values.email.defaultProvider }}
        {{- if and .host .passwordSecret.name }}
        # The default provider's password, read from a Secret: never in
        # the values, the arguments or the pod spec.
        - name: IDPLANE_SMTP_PASSWORD
          valueFrom:
            secretKeyRef: {name: {{ .passwordSecret.name }}, key: {{ .passwordSecret.key }}}
        {{- end }}
        {{- end }}
      {{- if .Values.preStopSeconds }}
      # Keep serving while the Service's endpoints drop the pod, so that
      # no caller is refused in between; SIGTERM comes after this.
      lifecycle:
        preStop:
          exec: {command: [sleep, "{{ int .Values.preStopSeconds }}"]}
      {{- end }}
      ports:
        - {name: http, containerPort: 8080}
        {{- if .Values.webhook.enabled }}
        - {name: webhook, containerPort: {{ int .Values.webhook.port }}}
        {{- end }}
      readinessProbe:
        httpGet: {path: /readyz, port: http}
      livenessProbe:
        httpGet: {path: /healthz, port: http}
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      resources: {{- toYaml .Values.resources | nindent 8 }}
      {{- $certManager := and .Values.webhook.enabled .Values.webhook.certManager.enabled }}
      {{- if or (not $postgres) $certManager }}
      volumeMounts:
        {{- if not $postgres }}
        - {name: state, mountPath: /var/lib/idplane}
        {{- end }}
        {{- if $certManager }}
        - {name: webhook-tls, mountPath: /etc/idplane/webhook-tls, readOnly: true}
        {{- end }}
      {{- end }}
  {{- $emptyState := and (not $postgres) (not .Values.persistence.enabled) }}
  {{- if or $emptyState $certManager }}
  volumes:
    {{- if $emptyState }}
    # No persistence: the state (queued mail included) is lost when the
    # pod is replaced. For trying idplane out only.
    - name: state
      emptyDir: {}
    {{- end }}
    {{- if $certManager }}
    # cert-manager's Secret (webhook.yaml); the kubelet updates the files
    # when it is renewed.
    - name: webhook-tls
      secret: {secretName: {{ .Release.Name }}-webhook-tls}
    {{- end }}
  {{- end }}
{{- end }}
