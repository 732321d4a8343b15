{{/*
Cross-field rules values.schema.json cannot express. Each refuses, at `helm template`/`install`
time, a combination that would render an operator the API server rejects or that crash-loops.
tests/chart/test_chart_refusals.py renders each with the real helm binary.
*/}}

{{/*
Flags refused in operator.extraArgs, with what to do instead. Most are rendered by the chart from
values: a second copy would be refused by the operator's argument parser (--namespace with
--all-namespaces) or silently override the port the probes and Service were rendered with.
*/}}
{{- define "finetune-operator.refusedFlags" -}}
{{- toJson (dict
  "--namespace" "is rendered by the chart; set watchNamespaces instead"
  "-n" "is rendered by the chart; set watchNamespaces instead"
  "--all-namespaces" "is rendered by the chart; leave watchNamespaces empty instead"
  "-A" "is rendered by the chart; leave watchNamespaces empty instead"
  "--metrics-port" "is rendered by the chart; set metrics.port instead"
  "--health-port" "is rendered by the chart; set health.port instead"
  "--default-image" "is rendered by the chart; set runtimeImage.repository and runtimeImage.tag instead"
  "--bind-address" "would move the operator off the pod IP, where the probes and the metrics Service reach it; remove it"
  "--leader-elect" "is rendered by the chart; set leaderElection.enabled instead"
  "--leader-election-id" "is rendered by the chart from the release name"
  "-h" "prints help and exits: the pod would crash-loop; remove it"
  "--help" "prints help and exits: the pod would crash-loop; remove it"
) }}
{{- end }}

{{/*
The other `finetune-operator` flags (operator/finetune_operator/main.py); an unknown flag makes
the operator exit at start. A test keeps this list equal to the parser's flags minus the above.
*/}}
{{- define "finetune-operator.extraArgFlags" -}}
{{- toJson (list "--progress-port" "--resync-seconds" "--log-format" "-v" "--verbose" "--worker-fs-group" "--leader-election-namespace" "--leader-lease-seconds") }}
{{- end }}

{{/* A Prometheus duration (1h30m, 30s, 500ms) in milliseconds. */}}
{{- define "finetune-operator.durationMs" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 "w" 604800000 "y" 31536000000 }}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d|w|y)" (toString .) -1 }}
{{- $total = add $total (mul (regexFind "^[0-9]+" . | int64) (get $units (regexReplaceAll "^[0-9]+" . ""))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* A resource quantity (100m, 1, 1.5, 512Mi, 2G, 1e3) as a float in base units. */}}
{{- define "finetune-operator.quantity" -}}
{{- $q := toString . }}
{{- $number := regexFind "^[+]?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?" $q }}
{{- $suffix := trimPrefix $number $q }}
{{- $scale := dict "" 1.0 "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 }}
{{- mulf (float64 (trimPrefix "+" $number)) (get $scale $suffix) }}
{{- end }}

{{/* operator.extraArgs: known flags only, none the chart renders, values the parser accepts. */}}
{{- define "finetune-operator.validateExtraArgs" -}}
{{- $args := list }}
{{- range . }}{{ $args = append $args (toString .) }}{{ end }}
{{- $refused := include "finetune-operator.refusedFlags" . | fromJson }}
{{- $known := include "finetune-operator.extraArgFlags" . | fromJsonArray }}
{{- range $i, $arg := $args }}
{{- if hasPrefix "-" $arg }}
{{- $flag := regexReplaceAll "=.*$" $arg "" }}
{{- if hasKey $refused $flag }}
{{- fail (printf "operator.extraArgs: %s %s" $flag (get $refused $flag)) }}
{{- end }}
{{- if not (has $flag $known) }}
{{- fail (printf "operator.extraArgs: %s is not a finetune-operator flag (the operator would exit at start); known: %s" $flag (join ", " $known)) }}
{{- end }}
{{- $value := "" }}
{{- if contains "=" $arg }}
{{- $value = regexReplaceAll "^[^=]*=" $arg "" }}
{{- else if lt (add1 $i) (len $args) }}
{{- $value = index $args (add1 $i) }}
{{- end }}
{{- if and (eq $flag "--log-format") (not (has $value (list "json" "plain" "full"))) }}
{{- fail (printf "operator.extraArgs: --log-format takes json, plain or full, not %q" $value) }}
{{- end }}
{{- if and (eq $flag "--resync-seconds") (not (regexMatch "^([0-9]*[1-9][0-9]*(\\.[0-9]*)?|[0-9]*\\.[0-9]*[1-9][0-9]*)$" $value)) }}
{{- fail (printf "operator.extraArgs: --resync-seconds takes a number of seconds above 0, not %q" $value) }}
{{- end }}
{{- if and (eq $flag "--progress-port") (not (and (regexMatch "^[0-9]{1,5}$" $value) (le (atoi $value) 65535) (ge (atoi $value) 1))) }}
{{- fail (printf "operator.extraArgs: --progress-port takes a port number (1-65535), not %q" $value) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "finetune-operator.validateValues" -}}
{{- $v := .Values }}
{{- if eq (int $v.metrics.port) (int $v.health.port) }}
{{- fail (printf "metrics.port and health.port are both %v: the operator cannot serve /metrics and /healthz on one port; give them different ports" $v.metrics.port) }}
{{- end }}
{{- $service := include "finetune-operator.metricsServiceName" . }}
{{- if and $v.metrics.service.enabled (not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $service)) }}
{{- fail (printf "the metrics Service name %q (from the release name %q and nameOverride/fullnameOverride) is not a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): set fullnameOverride, e.g. --set fullnameOverride=finetune-operator" $service .Release.Name) }}
{{- end }}
{{- with $v.metrics.serviceMonitor }}
{{- if .enabled }}
{{- $interval := include "finetune-operator.durationMs" .interval | int64 }}
{{- $timeout := include "finetune-operator.durationMs" .scrapeTimeout | int64 }}
{{- if le $interval 0 }}
{{- fail (printf "metrics.serviceMonitor.interval %q must be longer than zero" .interval) }}
{{- end }}
{{- if gt $timeout $interval }}
{{- fail (printf "metrics.serviceMonitor.scrapeTimeout %q is longer than interval %q; Prometheus refuses such a scrape config: make scrapeTimeout at most the interval" .scrapeTimeout .interval) }}
{{- end }}
{{- end }}
{{- end }}
{{- include "finetune-operator.validateExtraArgs" $v.operator.extraArgs }}
{{- range $env := $v.operator.env }}
{{- if eq $env.name "FINETUNE_OPERATOR_BIND_ADDRESS" }}
{{- fail "operator.env: FINETUNE_OPERATOR_BIND_ADDRESS would move the operator off the pod IP, where the probes and the metrics Service reach it; remove it" }}
{{- end }}
{{- end }}
{{- $podLabels := include "finetune-operator.selectorLabels" . | fromYaml }}
{{- $_ := set $podLabels "app.kubernetes.io/component" "operator" }}
{{- range $key, $_ := $v.podLabels }}
{{- if hasKey $podLabels $key }}
{{- fail (printf "podLabels: %s is set by the chart (the Deployment selects its pod by it); remove it" $key) }}
{{- end }}
{{- end }}
{{- $labels := include "finetune-operator.labels" . | fromYaml }}
{{- range $key, $_ := $v.metrics.serviceMonitor.labels }}
{{- if hasKey $labels $key }}
{{- fail (printf "metrics.serviceMonitor.labels: %s is set by the chart; use another label to match your Prometheus" $key) }}
{{- end }}
{{- end }}
{{- with ($v.resources.limits | default dict).memory }}
{{- if lt (include "finetune-operator.quantity" . | float64) 134217728.0 }}
{{- fail (printf "resources.limits.memory %v is below 128Mi: the idle operator measured 87 MiB RSS (bench/RESULTS.md), so it would be OOM-killed in a loop" .) }}
{{- end }}
{{- end }}
{{- range $resource, $limit := $v.resources.limits }}
{{- $request := get ($v.resources.requests | default dict) $resource }}
{{- if and $request (gt (include "finetune-operator.quantity" $request | float64) (include "finetune-operator.quantity" $limit | float64)) }}
{{- fail (printf "resources.requests.%s (%v) is more than resources.limits.%s (%v): the API server would refuse the operator pod" $resource $request $resource $limit) }}
{{- end }}
{{- end }}
{{- end }}
