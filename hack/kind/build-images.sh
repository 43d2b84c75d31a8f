#!/usr/bin/env bash
# Builds the offline kind node image (archipelago/kind-node:<k8s version>) and
# saves it as bin/kind/node-image.tar.zst; on the next run it is loaded from
# there (seconds) instead of rebuilt. Needs the binaries of build-binaries.sh and
# a working Docker (docker.sh). Nothing is pulled: the base is a Debian rootfs
# made with mmdebstrap, every other image is built FROM scratch here.
# --rootfs-only builds just the two Debian rootfs (they need no binaries).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

kind_mod=$(cd "$root/hack/tools/kube" && go env GOMODCACHE)/sigs.k8s.io/kind@${kind_version}
k8s_mod=$(cd "$root/hack/tools/kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
ctx="$kind_dir/ctx"
node_tar="$kind_dir/node-image.tar.zst"
export DOCKER_BUILDKIT=0 # the classic builder: FROM scratch and local bases only, never a pull

node_packages=(systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod libseccomp2
  pigz bash ca-certificates jq procps containerd runc containernetworking-plugins
  iputils-ping tcpdump wireguard-tools)
proxy_packages=(iptables nftables conntrack)

# rootfs NAME IMAGE PACKAGES...: a minbase Debian rootfs with PACKAGES, imported as IMAGE.
rootfs() {
  local name=$1 image=$2
  shift 2
  local tar="$kind_dir/rootfs-$name.tar" want="$debian_suite $*"
  if [[ -f "$tar" ]] && stamp_ok "$tar.stamp" "$want"; then
    log "rootfs $name: up to date"
  else
    [[ $(id -u) == 0 ]] || die "mmdebstrap needs root (rootfs $name)"
    command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
    # Use this machine's apt sources and options (mirrors, proxies): the
    # rootfs comes from the same Debian archive the host installs from.
    local sources=/etc/apt/sources.list aptopts=()
    [[ -s /etc/apt/sources.list.d/debian.sources ]] && sources=/etc/apt/sources.list.d/debian.sources
    for f in /etc/apt/apt.conf.d/*; do grep -qs '^Acquire' "$f" && aptopts+=("--aptopt=$f"); done
    log "rootfs $name: mmdebstrap $debian_suite with $* (about a minute)"
    local start=$SECONDS
    nice -n 19 mmdebstrap --quiet --format=tar --variant=minbase --include="$(
      IFS=,
      echo "$*"
    )" "${aptopts[@]}" \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/var/cache/apt/*' \
      "$debian_suite" "$tar.tmp" "$sources"
    mv "$tar.tmp" "$tar"
    echo "$want" >"$tar.stamp"
    docker image rm -f "$image" >/dev/null 2>&1 || true
    log "rootfs $name: built in $((SECONDS - start))s ($(du -h "$tar" | cut -f1))"
  fi
  if [[ "$(docker image inspect -f '{{index .Config.Labels "archipelago.stamp"}}' "$image" 2>/dev/null)" != "$(hash_files "$tar.stamp")" ]]; then
    log "rootfs $name: docker import as $image"
    docker import --change "LABEL archipelago.stamp=$(hash_files "$tar.stamp")" "$tar" "$image" >/dev/null
  fi
}

# build_image TAG DOCKERFILE_DIR FILE...: docker build FROM local images only,
# with a context of just FILE... (bin/kind is large).
build_image() {
  local tag=$1 dir=$2 c
  shift 2
  c="$ctx/$(echo "$tag" | tr '/:' '__')"
  rm -rf "$c" && mkdir -p "$c"
  cp -a "$@" "$c/"
  docker build -q -f "$dir/Dockerfile" "${build_args[@]}" -t "$tag" "$c" >/dev/null
  build_args=()
}
build_args=()

node_stamp() {
  {
    cat "$kind_bin"/.*.version "$root"/build/kind/*/Dockerfile "$root/hack/kind/default-cni.yaml" "$root/hack/kind/build-images.sh"
    sha256sum <"$kind_bin/kindcni" # content only: a fresh clone elsewhere reuses the image
  } | sha256sum | cut -c1-16
}

start_all=$SECONDS
if [[ "${1:-}" == "--rootfs-only" ]]; then
  rootfs node archipelago/kind-rootfs:bookworm "${node_packages[@]}"
  rootfs proxy archipelago/kind-proxy-rootfs:bookworm "${proxy_packages[@]}"
  exit 0
fi
log "kindcni: go build ./test/kindcni"
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$kind_bin/kindcni" ./test/kindcni)
want=$(node_stamp)
have=$(docker image inspect -f '{{index .Config.Labels "archipelago.stamp"}}' "$node_image" 2>/dev/null || true)
if [[ "$have" == "$want" ]]; then
  log "node image $node_image: up to date"
  exit 0
fi
if [[ -f "$node_tar" ]] && stamp_ok "$node_tar.stamp" "$want"; then
  log "node image: loading $node_tar"
  start=$SECONDS
  zstd -dc "$node_tar" | docker load -q
  log "node image: loaded in $((SECONDS - start))s"
  exit 0
fi

for b in kubelet kubeadm kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns crictl; do
  [[ -x "$kind_bin/$b" ]] || die "$kind_bin/$b is missing: run hack/kind/build-binaries.sh first"
done

start=$SECONDS
rootfs node archipelago/kind-rootfs:bookworm "${node_packages[@]}"
rootfs proxy archipelago/kind-proxy-rootfs:bookworm "${proxy_packages[@]}"
log "rootfs: done in $((SECONDS - start))s"

start=$SECONDS
log "base image: kind ${kind_version} images/base files on the Debian rootfs"
base_ctx="$ctx/base"
rm -rf "$base_ctx" && mkdir -p "$base_ctx/files/usr/local/bin"
cp -a "$kind_mod/images/base/files/." "$base_ctx/files/"
chmod -R u+w "$base_ctx"
cp "$kind_bin/crictl" "$base_ctx/files/usr/local/bin/"
docker build -q -f "$root/build/kind/base/Dockerfile" -t archipelago/kind-base:dev "$base_ctx" >/dev/null
log "base image: built in $((SECONDS - start))s"

start=$SECONDS
log "component images: tags from 'kubeadm config images list' and kind's containerd config"
mapfile -t kubeadm_images < <("$kind_bin/kubeadm" config images list --kubernetes-version "$k8s_version")
pause_image=$(sed -n 's/^ *sandbox_image *= *"\(.*\)"/\1/p' "$kind_mod/images/base/files/etc/containerd/config.toml")
[[ -n "$pause_image" ]] || die "no sandbox_image in kind's containerd config"
if [[ ! -x "$kind_bin/pause" || "$k8s_mod/build/pause/linux/pause.c" -nt "$kind_bin/pause" ]]; then
  command -v gcc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
  gcc -Os -Wall -Werror -static -DVERSION=v3.10-archipelago -o "$kind_bin/pause" "$k8s_mod/build/pause/linux/pause.c"
fi
images=()
for img in "${kubeadm_images[@]}" "$pause_image"; do
  repo=${img%:*}
  case "${repo##*/}" in
    kube-apiserver | kube-controller-manager | kube-scheduler | etcd)
      build_args=(--build-arg "BINARY=${repo##*/}")
      build_image "$img" "$root/build/kind/component" "$kind_bin/${repo##*/}" ;;
    kube-proxy) build_image "$img" "$root/build/kind/kube-proxy" "$kind_bin/kube-proxy" ;;
    coredns) build_image "$img" "$root/build/kind/coredns" "$kind_bin/coredns" ;;
    pause) build_image "$img" "$root/build/kind/pause" "$kind_bin/pause" ;;
    *) die "no recipe for image $img" ;;
  esac
  images+=("$img")
  log "  $img"
done
build_image archipelago/kindcni:dev "$root/build/kindcni" "$kind_bin/kindcni"
images+=(archipelago/kindcni:dev)
log "  archipelago/kindcni:dev"
docker save "${images[@]}" -o "$kind_dir/node-images.tar"
log "component images: built in $((SECONDS - start))s"

start=$SECONDS
log "node image: importing the images into the node's containerd"
id=$(docker run -d --entrypoint=sleep --security-opt seccomp=unconfined archipelago/kind-base:dev infinity)
trap 'docker rm -f "$id" >/dev/null 2>&1 || true' EXIT
for b in kubelet kubeadm kubectl; do
  docker cp "$kind_bin/$b" "$id:/usr/bin/$b"
done
docker exec "$id" mkdir -p /kind/manifests
docker cp "$root/hack/kind/default-cni.yaml" "$id:/kind/manifests/default-cni.yaml"
echo "$k8s_version" | docker exec -i "$id" sh -c 'cat >/kind/version'
docker cp "$kind_dir/node-images.tar" "$id:/node-images.tar"
docker exec "$id" bash -c 'nohup containerd >/var/log/containerd-build.log 2>&1 & echo $! >/run/containerd-build.pid
for i in $(seq 50); do [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1 && break; sleep 0.2; done
ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests /node-images.tar >/dev/null
ctr --namespace=k8s.io images list -q | grep -v "^sha256:"
kill $(cat /run/containerd-build.pid); while kill -0 $(cat /run/containerd-build.pid) 2>/dev/null; do sleep 0.2; done
rm -f /node-images.tar /run/containerd-build.pid /var/log/containerd-build.log'
docker commit \
  --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
  --change "LABEL archipelago.stamp=$want" \
  "$id" "$node_image" >/dev/null
docker rm -f "$id" >/dev/null
trap - EXIT
rm -f "$kind_dir/node-images.tar"
log "node image: $node_image committed in $((SECONDS - start))s"

start=$SECONDS
log "node image: saving to $node_tar"
docker save "$node_image" | zstd -q -T0 -3 -f -o "$node_tar.tmp"
mv "$node_tar.tmp" "$node_tar"
echo "$want" >"$node_tar.stamp"
log "node image: saved in $((SECONDS - start))s ($(du -h "$node_tar" | cut -f1)); all images built in $((SECONDS - start_all))s"
