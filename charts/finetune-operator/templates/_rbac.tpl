{{/*
The operator's API permissions, in one place. Keep in sync with docs/operator.md (the operator's
own list of API calls). Deliberately absent: secrets (worker pods reference S3 credentials through
secretKeyRef; the operator never reads them), any wildcard, and pods/exec.
*/}}

{{/* Rules needed in every namespace whose FineTuneJobs the operator reconciles. */}}
{{- define "finetune-operator.rbac.namespacedRules" -}}
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch", "patch", "update", "delete"]
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs/status"]
  verbs: ["get", "patch", "update"]
# Children carry ownerReferences with blockOwnerDeletion; clusters running the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers.
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The effective-config ConfigMap is patched in place when spec.config changes.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- with .Values.rbac.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* kopf discovers the FineTuneJob resource through CRDs: always cluster-scoped. */}}
{{- define "finetune-operator.rbac.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
Only with watchNamespaces: kopf lists and watches namespaces to match the names (and globs)
against them and to notice a watched namespace created later. Cluster-wide watching
(--all-namespaces) never reads namespaces.
*/}}
{{- define "finetune-operator.rbac.namespaceWatchRules" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
