# Shared settings and helpers for the offline kind toolchain (sourced, not run).
# Everything is cached under bin/kind (git-ignored); each step skips work whose
# output exists and is stamped with the inputs that made it.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
kind_dir="${KIND_DIR:-$root/bin/kind}"
kind_bin="$kind_dir/bin"          # kind, crictl, coredns, etcd, kube* binaries
k8s_version=v1.37.2
kind_version=v0.33.0
etcd_version=v3.7.0
coredns_version=v1.14.6
crictl_version=v1.37.0
debian_suite=bookworm
# The image name the node image is saved and loaded under.
node_image="${KIND_NODE_IMAGE:-archipelago/kind-node:${k8s_version}}"
# KIND_OFFLINE=1 (default) builds every image here; KIND_OFFLINE=0 uses the stock
# kind node image and kindnet (a machine that can pull, e.g. a laptop).
kind_offline="${KIND_OFFLINE:-1}"

export PATH="$kind_bin:$PATH"
mkdir -p "$kind_bin"

log() { printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# stamp_ok FILE WANT: FILE exists and holds WANT.
stamp_ok() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }

# hash_files FILE...: a short digest of the inputs of a step.
hash_files() { cat "$@" | sha256sum | cut -c1-16; }
