#!/usr/bin/env bash
# End-to-end test on a real Kubernetes cluster (kind): build both images, install the Helm
# chart, run examples/finetune-tiny-cpu.yaml to Succeeded, print its status, tear down.
#
# Needs: docker (a running daemon), kind, kubectl, helm. No GPU: the job trains a tiny model
# on CPU. See docs/e2e-kind.md.
#
# Settings (environment):
#   CLUSTER_NAME        kind cluster name                       (finetune-e2e)
#   KIND_NODE_IMAGE     kind node image, e.g. kindest/node:v1.33.1 (kind's default)
#   IMAGE_TAG           tag for both images                     (e2e)
#   RUNTIME_DOCKERFILE  runtime image to build                  (images/runtime/Dockerfile.cpu)
#   OPERATOR_NAMESPACE  where the chart is installed            (finetune-system)
#   JOB_NAMESPACE       where the FineTuneJob runs              (default)
#   JOB_TIMEOUT         seconds to wait for Succeeded           (1200)
#   POLL_SECONDS        seconds between status polls            (5)
#   KEEP_CLUSTER=1      keep the cluster afterwards (debugging)
#   REUSE_CLUSTER=1     use an existing cluster of that name instead of creating one
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_NAME="${CLUSTER_NAME:-finetune-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
IMAGE_TAG="${IMAGE_TAG:-e2e}"
RUNTIME_DOCKERFILE="${RUNTIME_DOCKERFILE:-images/runtime/Dockerfile.cpu}"
OPERATOR_NAMESPACE="${OPERATOR_NAMESPACE:-finetune-system}"
JOB_NAMESPACE="${JOB_NAMESPACE:-default}"
JOB_TIMEOUT="${JOB_TIMEOUT:-1200}"
POLL_SECONDS="${POLL_SECONDS:-5}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
REUSE_CLUSTER="${REUSE_CLUSTER:-0}"

RELEASE="finetune-operator"
OPERATOR_IMAGE="finetune-operator:${IMAGE_TAG}"
RUNTIME_IMAGE="finetune-runtime:${IMAGE_TAG}"
EXAMPLE="examples/finetune-tiny-cpu.yaml"
JOB="tiny-cpu"
KUBE_CONTEXT="kind-${CLUSTER_NAME}"
CREATED_CLUSTER=0

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'e2e-kind: %s\n' "$*" >&2; exit 2; }

require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed or not on PATH (see docs/e2e-kind.md)"
  done
}

kc() { kubectl --context "$KUBE_CONTEXT" "$@"; }

diagnostics() {
  log "diagnostics"
  kc get finetunejobs,pods,services,configmaps,pvc -A -o wide || true
  kc -n "$JOB_NAMESPACE" describe finetunejob "$JOB" || true
  kc -n "$JOB_NAMESPACE" get events --sort-by=.lastTimestamp || true
  kc -n "$OPERATOR_NAMESPACE" logs "deployment/${RELEASE}" --tail=200 || true
  kc -n "$JOB_NAMESPACE" logs -l "finetune.dev/job=${JOB}" --all-containers --prefix --tail=200 || true
}

cleanup() {
  local rc=$?
  trap - EXIT
  if [[ $rc -ne 0 ]]; then
    diagnostics
  fi
  if [[ "$KEEP_CLUSTER" == "1" ]]; then
    log "keeping cluster ${CLUSTER_NAME} (kind delete cluster --name ${CLUSTER_NAME})"
  elif [[ "$CREATED_CLUSTER" == "1" ]]; then
    log "deleting cluster ${CLUSTER_NAME}"
    kind delete cluster --name "$CLUSTER_NAME" || true
  fi
  exit "$rc"
}

create_cluster() {
  if [[ "$REUSE_CLUSTER" == "1" ]] && kind get clusters | grep -qx "$CLUSTER_NAME"; then
    log "reusing cluster ${CLUSTER_NAME}"
    return
  fi
  log "creating kind cluster ${CLUSTER_NAME}"
  local args=(create cluster --name "$CLUSTER_NAME" --wait 180s)
  if [[ -n "$KIND_NODE_IMAGE" ]]; then
    args+=(--image "$KIND_NODE_IMAGE")
  fi
  CREATED_CLUSTER=1
  kind "${args[@]}"
}

build_images() {
  log "building ${OPERATOR_IMAGE} and ${RUNTIME_IMAGE} (${RUNTIME_DOCKERFILE})"
  DOCKER_BUILDKIT=1 docker build -f images/operator/Dockerfile -t "$OPERATOR_IMAGE" .
  DOCKER_BUILDKIT=1 docker build -f "$RUNTIME_DOCKERFILE" -t "$RUNTIME_IMAGE" .
  log "loading images into ${CLUSTER_NAME}"
  kind load docker-image --name "$CLUSTER_NAME" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"
}

install_chart() {
  log "installing the chart into ${OPERATOR_NAMESPACE}"
  helm --kube-context "$KUBE_CONTEXT" upgrade --install "$RELEASE" charts/finetune-operator \
    --namespace "$OPERATOR_NAMESPACE" --create-namespace \
    --set fullnameOverride="$RELEASE" \
    --set image.repository=finetune-operator \
    --set image.tag="$IMAGE_TAG" \
    --set image.pullPolicy=Never \
    --set runtimeImage.repository=finetune-runtime \
    --set runtimeImage.tag="$IMAGE_TAG" \
    --wait --timeout 5m
  kc wait --for=condition=Established crd/finetunejobs.finetune.dev --timeout=60s
  kc -n "$OPERATOR_NAMESPACE" rollout status "deployment/${RELEASE}" --timeout=180s
}

# Polls the job's phase so a Failed job ends the run at once (kubectl wait alone would sit
# until the timeout), printing phase and progress as they change.
wait_for_job() {
  local deadline=$((SECONDS + JOB_TIMEOUT)) phase="" line="" last=""
  log "waiting up to ${JOB_TIMEOUT}s for ftj/${JOB} to succeed"
  while :; do
    phase="$(kc -n "$JOB_NAMESPACE" get finetunejob "$JOB" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    line="$(kc -n "$JOB_NAMESPACE" get finetunejob "$JOB" --no-headers 2>/dev/null || true)"
    if [[ "$line" != "$last" ]]; then
      printf '%s\n' "$line" >&2
      last="$line"
    fi
    case "$phase" in
      Succeeded) break ;;
      Failed) die "ftj/${JOB} failed" ;;
      *) ;;
    esac
    if ((SECONDS >= deadline)); then
      die "ftj/${JOB} did not succeed within ${JOB_TIMEOUT}s (phase: ${phase:-none})"
    fi
    sleep "$POLL_SECONDS"
  done
  # The documented way to wait; returns at once now that the condition is set.
  kc -n "$JOB_NAMESPACE" wait --for=condition=Succeeded "finetunejob/${JOB}" --timeout=60s
}

main() {
  require docker kind kubectl helm
  docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (is it running?)"
  cd "$ROOT"
  [[ -f "$RUNTIME_DOCKERFILE" ]] || die "RUNTIME_DOCKERFILE=${RUNTIME_DOCKERFILE} does not exist"
  trap cleanup EXIT

  create_cluster
  build_images
  install_chart

  log "applying ${EXAMPLE} in namespace ${JOB_NAMESPACE}"
  kc -n "$JOB_NAMESPACE" delete finetunejob "$JOB" --ignore-not-found --wait=true
  kc -n "$JOB_NAMESPACE" apply -f "$EXAMPLE"
  wait_for_job

  log "ftj/${JOB} succeeded"
  kc -n "$JOB_NAMESPACE" get finetunejobs -o wide
  kc -n "$JOB_NAMESPACE" get finetunejob "$JOB" -o jsonpath='{.status}'
  printf '\n'
  log "e2e-kind: PASS"
}

main "$@"
