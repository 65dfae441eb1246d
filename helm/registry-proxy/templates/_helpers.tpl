{{/*
Named templates of the registry-proxy chart.

Public, for host charts (each takes a dict: (dict "root" $ "values" <registry-proxy values>);
a StatefulSet host whose journal comes from a claim template adds "kind" "StatefulSet"):
  registry-proxy.initContainers  the sidecar container in native mode, nothing in classic mode
  registry-proxy.containers      the sidecar container in classic mode, nothing in native mode
  registry-proxy.sidecar         the sidecar container, whatever the mode
  registry-proxy.volumes         the volumes the sidecar mounts (journal, /tmp, Secrets)
  registry-proxy.podLabels       labels the PodMonitor selects the pod by
  registry-proxy.url             the sidecar's URL for the host app: http://127.0.0.1:<port>
Each renders YAML list items (or map entries) at column 0; place them with nindent.
*/}}

{{/* The image tag used when image.tag is empty. Equal to appVersion in Chart.yaml (tested);
a literal because host charts render these templates in their own context, where .Chart is
the host chart. */}}
{{- define "registry-proxy.appVersion" -}}
0.1.0
{{- end }}

{{/* Chart name, 63 characters at most. */}}
{{- define "registry-proxy.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name: fullnameOverride, else the release name when it already holds the chart
name, else <release>-<chart>. */}}
{{- define "registry-proxy.fullname" -}}
{{- $name := include "registry-proxy.name" . }}
{{- $full := .Values.fullnameOverride }}
{{- if not $full }}
{{- $full = ternary .Release.Name (printf "%s-%s" .Release.Name $name) (contains $name .Release.Name) }}
{{- end }}
{{- $full | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "registry-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "registry-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "registry-proxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "registry-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: registry-proxy
{{- end }}

{{/* Fails unless the argument is (dict "root" $ "values" ...). */}}
{{- define "registry-proxy.checkContext" -}}
{{- if not (and (kindIs "map" .) (hasKey . "root") (hasKey . "values")) }}
{{- fail "registry-proxy templates take (dict \"root\" $ \"values\" <the registry-proxy values>), e.g. (dict \"root\" $ \"values\" (index .Values \"registry-proxy\"))" }}
{{- end }}
{{- if not (kindIs "map" .values) }}
{{- fail "registry-proxy templates: \"values\" must be the registry-proxy values map" }}
{{- end }}
{{- end }}

{{/* Combinations the schema cannot express. */}}
{{- define "registry-proxy.validate" -}}
{{- $v := .values }}
{{- if and (eq $v.sidecar.mode "native") (semverCompare "<1.29.0-0" .root.Capabilities.KubeVersion.Version) }}
{{- fail (printf "sidecar.mode=native needs Kubernetes >= 1.29 (native sidecars); this cluster is %s: set sidecar.mode=classic" .root.Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and (eq $v.journal.type "persistentVolumeClaim") (not $v.journal.existingClaim) }}
{{- fail "journal.type=persistentVolumeClaim needs journal.existingClaim" }}
{{- end }}
{{- /* The sidecar always mounts registry-proxy-journal; with claimTemplate nothing but the
host StatefulSet's volumeClaimTemplates provides it, and a Deployment would be rejected by the
API server (or worse, by nobody until a pod starts). The host says what it is. */}}
{{- if and (eq $v.journal.type "claimTemplate") (ne (.kind | default "") "StatefulSet") }}
{{- fail (printf "journal.type=claimTemplate: the journal volume must come from a volumeClaimTemplates entry named registry-proxy-journal, which only a StatefulSet has; a StatefulSet host passes (dict \"root\" $ \"values\" ... \"kind\" \"StatefulSet\") to the registry-proxy templates%s, anything else uses journal.type=emptyDir or persistentVolumeClaim" (ternary "" (printf " (this one passed kind %q)" (toString .kind)) (not .kind))) }}
{{- end }}
{{- end }}

{{/* An env value as the sidecar parses it. Helm reads numbers from values files as float64,
which would print 1e+06; whole numbers are printed as integers. */}}
{{- define "registry-proxy.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}
{{- int64 . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* The env list of the sidecar: what the chart owns, then settings, then extraEnv. */}}
{{- define "registry-proxy.env" -}}
{{- $v := .values }}
{{- $env := list }}
{{- if eq $v.network.listen "all" }}
{{- $env = append $env (dict "name" "REGISTRY_PROXY_HOST" "value" "0.0.0.0") }}
{{- $env = append $env (dict "name" "REGISTRY_PROXY_ALLOW_NON_LOOPBACK" "value" "true") }}
{{- else }}
{{- $env = append $env (dict "name" "REGISTRY_PROXY_HOST" "value" "127.0.0.1") }}
{{- $env = append $env (dict "name" "REGISTRY_PROXY_ALLOW_NON_LOOPBACK" "value" "false") }}
{{- end }}
{{- $env = append $env (dict "name" "REGISTRY_PROXY_PORT" "value" (include "registry-proxy.envValue" $v.network.port)) }}
{{- $env = append $env (dict "name" "REGISTRY_PROXY_DATABASE_URL_FILE" "value" "/etc/registry-proxy/database/url") }}
{{- if $v.database.directSecretKey }}
{{- $env = append $env (dict "name" "REGISTRY_PROXY_DATABASE_DIRECT_URL_FILE" "value" "/etc/registry-proxy/database/direct-url") }}
{{- end }}
{{- if $v.tokens.existingSecret }}
{{- $env = append $env (dict "name" "REGISTRY_PROXY_TOKENS_FILE" "value" "/etc/registry-proxy/tokens/tokens.json") }}
{{- end }}
{{- $env = append $env (dict "name" "REGISTRY_PROXY_JOURNAL__DIR" "value" "/var/lib/registry-proxy/journal") }}
{{- range $key, $value := $v.settings }}
{{- if kindIs "map" $value }}
{{- range $sub, $leaf := $value }}
{{- if kindIs "map" $leaf }}
{{- fail (printf "settings.%s.%s: the sidecar has no settings nested this deep" $key $sub) }}
{{- end }}
{{- if not (kindIs "invalid" $leaf) }}
{{- $env = append $env (dict "name" (printf "REGISTRY_PROXY_%s__%s" (upper $key) (upper $sub)) "value" (include "registry-proxy.envValue" $leaf)) }}
{{- end }}
{{- end }}
{{- else if not (kindIs "invalid" $value) }}
{{- $env = append $env (dict "name" (printf "REGISTRY_PROXY_%s" (upper $key)) "value" (include "registry-proxy.envValue" $value)) }}
{{- end }}
{{- end }}
{{- with $v.extraEnv }}
{{- $env = concat $env . }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/* The exec probe: a GET with the standard library, bypassing any HTTP proxy of the pod;
exits non-zero with a one-line reason on a connection error or a non-2xx answer. */}}
{{- define "registry-proxy.probeScript" -}}
import sys, urllib.request as r
url, timeout = sys.argv[1], float(sys.argv[2])
try:
    r.build_opener(r.ProxyHandler({})).open(url, timeout=timeout).close()
except Exception as exc:
    sys.exit(f"{url}: {exc}")
{{- end }}

{{/* One probe. Argument: (dict "values" $v "probe" <probe values> "path" "/healthz"). */}}
{{- define "registry-proxy.probe" -}}
{{- $v := .values }}
{{- $p := .probe }}
{{- if eq $v.network.listen "all" }}
httpGet:
  path: {{ .path }}
  port: registry-proxy
  scheme: HTTP
{{- else }}
exec:
  command:
    - python
    - -I
    - -S
    - -c
    - {{ include "registry-proxy.probeScript" . | quote }}
    - {{ printf "http://127.0.0.1:%d%s" (int $v.network.port) .path | quote }}
    - {{ max 1 (sub (int $p.timeoutSeconds) 1) | quote }}
{{- end }}
periodSeconds: {{ int $p.periodSeconds }}
timeoutSeconds: {{ int $p.timeoutSeconds }}
failureThreshold: {{ int $p.failureThreshold }}
{{- with $p.initialDelaySeconds }}
initialDelaySeconds: {{ int . }}
{{- end }}
{{- end }}

{{- define "registry-proxy.image" -}}
{{- $img := .values.image }}
{{- $repository := required "image.repository is required: no public registry carries the registry-proxy image; build it from the repository's Dockerfile, push it to a registry your cluster pulls from (docs/image.md) and set image.repository, e.g. --set image.repository=registry.example.com/platform/registry-proxy" $img.repository }}
{{- if $img.digest }}
{{- printf "%s@%s" $repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $repository ($img.tag | default (include "registry-proxy.appVersion" .)) }}
{{- end }}
{{- end }}

{{/* The sidecar container as one list item. */}}
{{- define "registry-proxy.sidecar" -}}
{{- include "registry-proxy.sidecarItem" . | trim }}
{{- end }}

{{- define "registry-proxy.sidecarItem" -}}
{{- include "registry-proxy.checkContext" . }}
{{- include "registry-proxy.validate" . }}
{{- $v := .values }}
- name: {{ $v.sidecar.name }}
  image: {{ include "registry-proxy.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if eq $v.sidecar.mode "native" }}
  restartPolicy: Always
  {{- end }}
  args: ["serve"]
  {{- if eq $v.network.listen "all" }}
  ports:
    - name: registry-proxy
      containerPort: {{ int $v.network.port }}
      protocol: TCP
  {{- end }}
  env:
    {{- include "registry-proxy.env" . | nindent 4 }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.containerSecurityContext | nindent 4 }}
  {{- if $v.probes.startup.enabled }}
  startupProbe:
    {{- include "registry-proxy.probe" (dict "values" $v "probe" $v.probes.startup "path" "/healthz") | trim | nindent 4 }}
  {{- end }}
  {{- if $v.probes.liveness.enabled }}
  livenessProbe:
    {{- include "registry-proxy.probe" (dict "values" $v "probe" $v.probes.liveness "path" "/healthz") | trim | nindent 4 }}
  {{- end }}
  {{- if $v.probes.readiness.enabled }}
  readinessProbe:
    {{- include "registry-proxy.probe" (dict "values" $v "probe" $v.probes.readiness "path" "/readyz") | trim | nindent 4 }}
  {{- end }}
  {{- if and (eq $v.sidecar.mode "classic") (gt (int $v.sidecar.preStopSleepSeconds) 0) }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", {{ int $v.sidecar.preStopSleepSeconds | quote }}]
  {{- end }}
  terminationMessagePolicy: FallbackToLogsOnError
  volumeMounts:
    - name: registry-proxy-journal
      mountPath: /var/lib/registry-proxy/journal
    - name: registry-proxy-tmp
      mountPath: /tmp
    - name: registry-proxy-database
      mountPath: /etc/registry-proxy/database
      readOnly: true
    {{- if $v.tokens.existingSecret }}
    - name: registry-proxy-tokens
      mountPath: /etc/registry-proxy/tokens
      readOnly: true
    {{- end }}
{{- end }}

{{- define "registry-proxy.initContainers" -}}
{{- include "registry-proxy.checkContext" . }}
{{- if eq .values.sidecar.mode "native" }}
{{- include "registry-proxy.sidecar" . }}
{{- end }}
{{- end }}

{{- define "registry-proxy.containers" -}}
{{- include "registry-proxy.checkContext" . }}
{{- if eq .values.sidecar.mode "classic" }}
{{- include "registry-proxy.sidecar" . }}
{{- end }}
{{- end }}

{{/* The volumes of the sidecar, as list items. Secret files are 0444: only the sidecar
container mounts these volumes, and it does not run as the files' owner (root). */}}
{{- define "registry-proxy.volumes" -}}
{{- include "registry-proxy.volumeItems" . | trim }}
{{- end }}

{{- define "registry-proxy.volumeItems" -}}
{{- include "registry-proxy.checkContext" . }}
{{- $v := .values }}
{{- if eq $v.journal.type "emptyDir" }}
- name: registry-proxy-journal
  emptyDir:
    {{- if $v.journal.sizeLimit }}
    sizeLimit: {{ $v.journal.sizeLimit }}
    {{- else }} {}
    {{- end }}
{{- else if eq $v.journal.type "persistentVolumeClaim" }}
- name: registry-proxy-journal
  persistentVolumeClaim:
    claimName: {{ required "journal.existingClaim is required when journal.type=persistentVolumeClaim" $v.journal.existingClaim }}
{{- end }}
- name: registry-proxy-tmp
  emptyDir:
    {{- if $v.tmp.sizeLimit }}
    sizeLimit: {{ $v.tmp.sizeLimit }}
    {{- else }} {}
    {{- end }}
- name: registry-proxy-database
  secret:
    secretName: {{ $v.database.existingSecret }}
    defaultMode: 0444
    items:
      - key: {{ $v.database.secretKey | quote }}
        path: url
      {{- if $v.database.directSecretKey }}
      - key: {{ $v.database.directSecretKey | quote }}
        path: direct-url
      {{- end }}
{{- if $v.tokens.existingSecret }}
- name: registry-proxy-tokens
  secret:
    secretName: {{ $v.tokens.existingSecret }}
    defaultMode: 0444
    items:
      - key: {{ $v.tokens.secretKey | quote }}
        path: tokens.json
{{- end }}
{{- end }}

{{/* Pod labels the PodMonitor of this release selects. */}}
{{- define "registry-proxy.podLabels" -}}
{{- include "registry-proxy.checkContext" . -}}
registry-proxy/release: {{ .root.Release.Name | quote }}
{{- end }}

{{/* The URL the host app calls. */}}
{{- define "registry-proxy.url" -}}
{{- include "registry-proxy.checkContext" . -}}
{{- printf "http://127.0.0.1:%d" (int .values.network.port) }}
{{- end }}
