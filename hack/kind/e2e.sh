#!/usr/bin/env bash
# make e2e-kind / make kind-images: everything the kind e2e suite needs, then
# the suite (test/e2e/kind). Every phase is timed; the timings are printed at
# the end and written to bin/kind/timings.txt.
#   KIND_OFFLINE=1 (default)  build kind, Kubernetes, the node image and its
#                             images here (nothing can be pulled)
#   KIND_OFFLINE=0            a machine that can pull: stock kind node image
#                             and kindnet; only kind and kubectl are built
#   --images-only             stop before the suite (make kind-images)
#   E2E_KEEP=1 / E2E_REUSE=1  keep the clusters / reuse kept ones (debugging)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

images_only=
[[ "${1:-}" == "--images-only" ]] && images_only=1
timings=()
phase() { # NAME CMD...
  local name=$1 start=$SECONDS
  shift
  log "phase $name"
  "$@"
  timings+=("$(printf '%-16s %5ss' "$name" "$((SECONDS - start))")")
  log "phase $name: $((SECONDS - start))s"
}
report() {
  local rc=$?
  printf '\n==> kind e2e timings (KIND_OFFLINE=%s)\n' "$kind_offline"
  printf '  %s\n' "${timings[@]}" | tee "$kind_dir/timings.txt"
  return $rc
}
trap report EXIT
start_all=$SECONDS

phase docker "$root/hack/kind/docker.sh"
if [[ "$kind_offline" == 1 ]]; then
  phase binaries "$root/hack/kind/build-binaries.sh"
  phase node-image "$root/hack/kind/build-images.sh"
  export KIND_NODE_IMAGE="$node_image"
else
  phase binaries "$root/hack/kind/build-binaries.sh" --client-only
fi
phase project-images "$root/hack/kind/docker-build.sh"
phase plugin bash -c "cd '$root' && CGO_ENABLED=0 go build -trimpath -o bin/kubectl-archipelago ./cmd/kubectl-archipelago"
if [[ -n "$images_only" ]]; then
  timings+=("$(printf '%-16s %5ss' total "$((SECONDS - start_all))")")
  exit 0
fi
phase suite bash -c "cd '$root' && ARCHIPELAGO_KIND_E2E=1 KIND_OFFLINE=$kind_offline go test -count=1 -tags e2e -timeout 40m -v ./test/e2e/kind/"
timings+=("$(printf '%-16s %5ss' total "$((SECONDS - start_all))")")
