#!/usr/bin/env bash
# Builds, from the Go module proxy, every binary the offline kind node image
# needs: the Kubernetes node and control-plane binaries (hack/tools/kube, with
# the version ldflags kubeadm checks), etcd, kind, crictl and CoreDNS.
# Idempotent: a binary stamped with the inputs that built it is not rebuilt.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${k8s_version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"

# build_k8s NAME PACKAGE FLAGS: builds from the pinned tools module.
build_k8s() {
  local name=$1 pkg=$2 flags=$3 stamp="$kind_bin/.$1.version" want
  want="$(hash_files "$root/hack/tools/kube/go.mod" "$root/hack/tools/kube/go.sum")-$flags"
  if [[ -x "$kind_bin/$name" ]] && stamp_ok "$stamp" "$want"; then
    log "$name: up to date"
    return
  fi
  log "$name: building $pkg (minutes on a cold Go build cache)"
  local start=$SECONDS
  (cd "$root/hack/tools/kube" && CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "$flags" -o "$kind_bin/$name.tmp" "$pkg")
  mv "$kind_bin/$name.tmp" "$kind_bin/$name"
  echo "$want" >"$stamp"
  log "$name: built in $((SECONDS - start))s"
}

# install_tool NAME MODULE_PACKAGE VERSION FLAGS: go install pkg@version (these
# modules have no replace directives, so their own go.sum pins everything).
install_tool() {
  local name=$1 pkg=$2 version=$3 flags=$4 stamp="$kind_bin/.$1.version"
  if [[ -x "$kind_bin/$name" ]] && stamp_ok "$stamp" "$pkg@$version $flags"; then
    log "$name: up to date"
    return
  fi
  log "$name: building $pkg@$version"
  local start=$SECONDS tmp
  tmp=$(mktemp -d)
  GOBIN="$tmp" CGO_ENABLED=0 nice -n 19 go install -trimpath -ldflags "$flags" "$pkg@$version"
  mv "$tmp/$(basename "$pkg")" "$kind_bin/$name"
  rm -rf "$tmp"
  echo "$pkg@$version $flags" >"$kind_bin/.$name.version"
  log "$name: built in $((SECONDS - start))s"
}

start=$SECONDS
install_tool kind sigs.k8s.io/kind "$kind_version" "-s -w"
if [[ "${1:-}" == "--client-only" ]]; then # stock kind images: only the tools the suite runs
  build_k8s kubectl k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
  exit 0
fi
build_k8s kubeadm k8s.io/kubernetes/cmd/kubeadm "$k8s_ldflags"
build_k8s kubelet k8s.io/kubernetes/cmd/kubelet "$k8s_ldflags"
build_k8s kubectl k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
build_k8s kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build_k8s kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build_k8s kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"
build_k8s kube-proxy k8s.io/kubernetes/cmd/kube-proxy "$k8s_ldflags"
build_k8s etcd go.etcd.io/etcd/server/v3 "-s -w"
install_tool crictl sigs.k8s.io/cri-tools/cmd/crictl "$crictl_version" "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${crictl_version}"
install_tool coredns github.com/coredns/coredns "$coredns_version" "-s -w"
log "binaries: all in $kind_bin ($((SECONDS - start))s)"
