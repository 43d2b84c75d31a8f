#!/usr/bin/env bash
# make docker-build: the project's images, FROM scratch, nothing pulled.
#   archipelago/hub:dev (config/hub)  archipelago/agent:latest (config/agent)  archipelago/probe:dev (verify)
# The binaries are built static here (CGO_ENABLED=0); the probe image also gets
# Debian's static busybox (ping, nc, sh) from the busybox-static package.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
export DOCKER_BUILDKIT=0 # the classic builder never pulls FROM scratch

tag_hub=${HUB_IMAGE:-archipelago/hub:dev}
tag_agent=${AGENT_IMAGE:-archipelago/agent:latest}
tag_probe=${PROBE_IMAGE:-archipelago/probe:dev}
ctx="$kind_dir/ctx"

busybox="$kind_bin/busybox"
if [[ ! -x "$busybox" ]]; then
  if [[ -x /bin/busybox ]] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
    cp /bin/busybox "$busybox"
  else
    log "probe: fetching Debian's busybox-static package"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download busybox-static >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get download busybox-static >/dev/null; })
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/x"
    cp "$tmp/x/bin/busybox" "$busybox"
    rm -rf "$tmp"
  fi
fi

start=$SECONDS
log "docker-build: go build (static) hub, agent, probe"
mkdir -p "$ctx/hub" "$ctx/agent" "$ctx/probe"
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ctx/hub/archipelago-hub" ./cmd/hub)
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ctx/agent/archipelago-agent" ./cmd/agent)
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ctx/probe/archipelago-probe" ./cmd/archipelago-probe)
cp "$busybox" "$ctx/probe/busybox"
for img in "hub $tag_hub" "agent $tag_agent" "probe $tag_probe"; do
  set -- $img
  docker build -q -f "$root/build/$1/Dockerfile" -t "$2" "$ctx/$1" 2> >(grep -v -e DEPRECATED -e "legacy builder" -e BuildKit -e "environment-variable" -e "^ *$" >&2) >/dev/null
  log "docker-build: $2 ($(docker image inspect -f '{{.Size}}' "$2" | numfmt --to=iec))"
done
log "docker-build: done in $((SECONDS - start))s"
