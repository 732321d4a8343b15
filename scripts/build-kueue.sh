#!/usr/bin/env bash
# Builds Kueue (sigs.k8s.io/kueue), the job-queueing controller the operator's Kueue integration
# is tested against, from the Go module pinned in kube/addons/kueue/ into .cache/kube/kueue/<version>/:
# the kueue controller manager, plus its CRDs, webhook manifests and manager roles copied
# out of the same module's source (config/components/...), so the tests install exactly what that
# release ships.
# A stamp of the pins makes it a no-op until the pin or this script changes. It lives apart from
# build-kube.sh (and under kube/addons/, outside that script's kube/*/go.mod stamp) so that
# adding or bumping it never rebuilds the control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=kube/addons/kueue
version=$(sed -n 's/^require sigs.k8s.io\/kueue \(v[0-9.]*\)$/\1/p' "$pin/go.mod")
out=".cache/kube/kueue/${version}"
pins=$(cat "$pin/go.mod" "$pin/go.sum" scripts/build-kueue.sh | sha256sum | cut -d' ' -f1)
if [ -f "$out/.pins" ] && [ "$(cat "$out/.pins")" = "$pins" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "make kube: Go 1.26+ is needed to build Kueue (https://go.dev/dl/)" >&2
  exit 1
fi
mkdir -p "$out"
start=$(date +%s)
export CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "make kube: building kueue ${version}" >&2
(cd "$pin" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${version}" \
  -o "../../../$out/kueue" sigs.k8s.io/kueue/cmd/kueue)
src=$(cd "$pin" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
rm -rf "$out/config"
mkdir -p "$out/config/crds" "$out/config/rbac"
cp "$src"/config/components/crd/bases/*.yaml "$out/config/crds/"
cp "$src/config/components/webhook/manifests.yaml" "$out/config/webhooks.yaml"
cp "$src"/config/components/rbac/{role,manager_secrets_role}.yaml "$out/config/rbac/"
chmod -R u+w "$out/config"
echo "$pins" > "$out/.pins"
echo "make kube: built kueue ${version} in $(( $(date +%s) - start )) s, $(du -sh "$out" | cut -f1)" >&2
