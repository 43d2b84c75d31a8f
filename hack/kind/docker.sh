#!/usr/bin/env bash
# Makes sure a Docker engine works: keeps a working one, otherwise installs
# Debian's docker.io/containerd/runc (root) and starts dockerd in the background.
# Where the host's capability bounding set lacks CAP_SYS_RESOURCE (privileged
# containers fail there), dockerd gets hack/kind/runc-shim as its default runtime.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if docker info >/dev/null 2>&1; then
  log "docker: running ($(docker version -f '{{.Server.Version}}'))"
  exit 0
fi
[[ $(id -u) == 0 ]] || die "no working Docker engine; start one (or run this as root to have it installed and started)"

start=$SECONDS
if ! command -v dockerd >/dev/null || ! command -v jq >/dev/null; then
  log "docker: installing Debian packages docker.io containerd runc jq"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io containerd runc jq iptables >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io containerd runc jq iptables >/dev/null; }
fi

mkdir -p /etc/docker
capbnd=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
if (((0x$capbnd >> 24) & 1)); then
  log "docker: CAP_SYS_RESOURCE is in the bounding set; plain runc"
  [[ -f /etc/docker/daemon.json ]] || echo '{}' >/etc/docker/daemon.json
else
  log "docker: CAP_SYS_RESOURCE is missing from the bounding set; using the runc wrapper"
  install -m 0755 "$root/hack/kind/runc-shim" /usr/local/sbin/archipelago-runc-shim
  cat >/etc/docker/daemon.json <<JSON
{"runtimes": {"shim": {"path": "/usr/local/sbin/archipelago-runc-shim"}}, "default-runtime": "shim"}
JSON
fi

mkdir -p "$kind_dir/logs"
log "docker: starting dockerd (log: $kind_dir/logs/dockerd.log)"
# dockerd outlives this script: it must not inherit descriptors beyond stdio,
# such as the lock of `flock LOCK make e2e-kind`, which it would hold for as
# long as it runs.
setsid nohup bash -c 'for fd in /proc/$$/fd/*; do fd=${fd##*/}; ((fd > 2)) && eval "exec $fd>&-"; done; exec dockerd' \
  >"$kind_dir/logs/dockerd.log" 2>&1 </dev/null &
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && break
  sleep 1
done
docker info >/dev/null 2>&1 || { tail -20 "$kind_dir/logs/dockerd.log"; die "dockerd did not start"; }
log "docker: running ($((SECONDS - start))s)"
