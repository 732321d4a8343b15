#!/usr/bin/env bash
# Builds the peer controllers the operator bench compares against, from the Go modules pinned
# under kube/peers/ into .cache/kube/peers/ (today: Kubeflow training-operator, PyTorchJob).
# Only `make bench` needs them, never `make test`. A stamp of the pins skips an unchanged build.
set -euo pipefail
cd "$(dirname "$0")/.."
out=".cache/kube/peers"
pins=$(cat kube/peers/*/go.mod kube/peers/*/go.sum scripts/build-kube-peers.sh | sha256sum | cut -d' ' -f1)
if [ -f "$out/.pins" ] && [ "$(cat "$out/.pins")" = "$pins" ]; then
  exit 0
fi
command -v go >/dev/null 2>&1 || { echo "make kube-peers: Go 1.26+ is needed" >&2; exit 1; }
mkdir -p "$out"
start=$(date +%s)
echo "make kube-peers: building training-operator" >&2
(cd kube/peers/training-operator && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
  -ldflags "-s -w" -o "../../../$out/training-operator" \
  github.com/kubeflow/training-operator/cmd/training-operator.v1)
echo "$pins" > "$out/.pins"
echo "make kube-peers: built in $(( $(date +%s) - start )) s" >&2
