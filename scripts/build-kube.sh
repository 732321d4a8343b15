#!/usr/bin/env bash
# Builds the test control plane from the pinned Go modules under kube/ into
# .cache/kube/<version>/: kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes),
# etcd (go.etcd.io/etcd/server/v3) and kwok (sigs.k8s.io/kwok). Nothing is downloaded but Go
# modules through the module proxy; a stamp holding the hash of every go.mod/go.sum makes the
# build a no-op until a pin changes.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' kube/kubernetes/go.mod)
out=".cache/kube/${version}"
pins=$(cat kube/*/go.mod kube/*/go.sum scripts/build-kube.sh | sha256sum | cut -d' ' -f1)
if [ -f "$out/.pins" ] && [ "$(cat "$out/.pins")" = "$pins" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "make kube: Go 1.26+ is needed to build the test control plane (https://go.dev/dl/)" >&2
  exit 1
fi
mkdir -p "$out"
start=$(date +%s)
export CGO_ENABLED=0 GOFLAGS=-mod=mod
# -trimpath keeps the binaries independent of this checkout's path; -s -w drops debug info
# (a third of the size), which the tests never need; -X stamps the release into the
# Kubernetes binaries (/version), as the upstream build does from its git tag.
minor=$(echo "$version" | cut -d. -f2)
stamp="k8s.io/component-base/version"
flags=(-trimpath -ldflags "-s -w -X $stamp.gitVersion=$version -X $stamp.gitMajor=1 -X $stamp.gitMinor=$minor -X $stamp.gitTreeState=clean")
build() {  # build DIR PACKAGE NAME
  echo "make kube: building $3" >&2
  (cd "kube/$1" && go build "${flags[@]}" -o "../../$out/$3" "$2")
}
build kubernetes k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build kubernetes k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager
build kubernetes k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler
build etcd go.etcd.io/etcd/server/v3 etcd
build kwok sigs.k8s.io/kwok/cmd/kwok kwok
echo "$pins" > "$out/.pins"
echo "make kube: built $(ls "$out" | tr '\n' ' ')in $(( $(date +%s) - start )) s, $(du -sh "$out" | cut -f1)" >&2
