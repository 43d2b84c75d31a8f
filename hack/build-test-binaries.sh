#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager (its resourcequota controller
# makes quotas count in the hub tests), kubectl and etcd from the Go module proxy into bin/k8s/
# (the folder KUBEBUILDER_ASSETS points at). Idempotent: a binary that exists with
# the right version stamp is not built again. Prints progress for each step.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="${1:-$root/bin/k8s}"
k8s_version=v1.37.2
mkdir -p "$out"
# bin/ is a module of its own, so that `go test ./...` never walks into what
# is built or unpacked there (kind node rootfs trees, caches).
if [[ ! -f "$root/bin/go.mod" ]]; then
  mkdir -p "$root/bin"
  printf 'module archipelago.invalid/bin\n\n// Build outputs; not Go code of the project.\n' >"$root/bin/go.mod"
fi
cd "$root/hack/tools/kube"

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${k8s_version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"

build() { # name package ldflags
  local name=$1 pkg=$2 flags=$3 stamp="$out/.$1.version" want
  want="$(sha256sum go.mod go.sum | sha256sum | cut -c1-16)"
  if [[ -x "$out/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "==> $name: up to date ($out/$name)"
    return
  fi
  echo "==> $name: building $pkg (minutes on a cold Go build cache)"
  local start=$SECONDS
  CGO_ENABLED=0 go build -trimpath -ldflags "$flags" -o "$out/$name.tmp" "$pkg"
  mv "$out/$name.tmp" "$out/$name"
  echo "$want" >"$stamp"
  echo "==> $name: built in $((SECONDS - start))s"
}

build etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$ldflags"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$ldflags"
build kubectl k8s.io/kubernetes/cmd/kubectl "$ldflags"
