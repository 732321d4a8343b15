{{/*
The operator's API permissions, in one place: exactly the calls the operator and kopf make
(tests/chart/test_chart_rbac_audit.py records them from the real operator and fails on a call
these rules deny or a grant nothing uses). Deliberately absent: secrets (worker pods reference
S3 credentials through secretKeyRef; the operator never reads them), any wildcard, pods/exec.
*/}}

{{/* Rules needed in every namespace whose FineTuneJobs the operator reconciles. */}}
{{- define "finetune-operator.rbac.namespacedRules" -}}
# kopf watches jobs and patches its finalizer/bookkeeping; the operator reads a job before
# writing its status and deletes it after ttlSecondsAfterFinished.
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion; clusters running the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers.
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs/finalizers"]
  verbs: ["update"]
# The worker gang: watched for phase changes, replaced as a whole on failure.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "delete"]
# The last lines of a permanently failed worker's log go into the Failed condition.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Gang scheduling (spec.runPolicy.schedulingPolicy.scheduler): the job's PodGroup for the
# scheduler-plugins coscheduling plugin or Volcano; removed by garbage collection.
- apiGroups: ["scheduling.x-k8s.io", "scheduling.volcano.sh"]
  resources: ["podgroups"]
  verbs: ["get", "create"]
# Kueue: a worker deleted while its gang is still queued releases the gang's Workload (Kueue
# keeps its finalizer on the pods of an unadmitted group until that Workload is gone).
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["delete"]
# Rendezvous Service and checkpoint PVC: created once, removed by garbage collection with the job.
- apiGroups: [""]
  resources: ["services", "persistentvolumeclaims"]
  verbs: ["get", "create"]
# The effective training config, patched in place when spec.config changes.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# spec.serve: the inference Deployment, created once the job succeeded, patched to roll the
# replicas onto new outputs or rescale, deleted (with its Service) when spec.serve is removed.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["delete"]
{{- with .Values.rbac.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* kopf discovers the FineTuneJob resource through CRDs: always cluster-scoped. */}}
{{- define "finetune-operator.rbac.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
Only with watchNamespaces: kopf lists and watches namespaces to match the names (and globs)
against them and to notice a watched namespace created later. Cluster-wide watching
(--all-namespaces) never reads namespaces.
*/}}
{{- define "finetune-operator.rbac.namespaceWatchRules" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}

{{/* Leader election: the Lease in the operator's own namespace. */}}
{{- define "finetune-operator.rbac.leaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "patch"]
{{- end }}
