#!/usr/bin/env bash
# CI's decision for the kind e2e tier (make e2e-kind), for .ci/run to call
# after make test:
#
#   hack/ci-kind.sh [SECONDS_ALREADY_USED]
#
# Runs make e2e-kind when its estimated duration fits into what is left of
# CI_KIND_BUDGET (default 3600 s, the share of CI's 90 minutes the kind tier
# may push the whole run to); otherwise prints why it skips and exits 0.
# The estimate depends on what is cached on this machine (bin/kind, Docker's
# images, the Go build cache): the numbers are the ones measured on the
# project's 2-core CI machine kind (docs/kind.md, "Timings").
#   CI_KIND=0 never runs it; CI_KIND=1 runs it whatever the estimate;
#   CI_KIND_DRY_RUN=1 only prints the decision.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
used=${1:-0}
budget=${CI_KIND_BUDGET:-3600}

# Measured, seconds, on the 2-core machine kind, with the Go build cache that
# make test leaves (kube-apiserver, kubectl, etcd already compiled), while
# other builds shared the CPU (docs/kind.md, "Timings").
cold_binaries=${CI_KIND_COLD_BINARIES:-1100} # kubelet, kubeadm, kcm, scheduler, proxy, crictl, coredns, kind (measured 1070)
cold_images=${CI_KIND_COLD_IMAGES:-570}      # docker install (14) + rootfs, base, components, node image (323) + project images (226)
warm_build=${CI_KIND_WARM_BUILD:-120}        # Go cache warm: binaries relinked (52), node image reused or loaded (11), project images (7)
suite=${CI_KIND_SUITE:-720}                  # clusters, install, all checks, delete (measured 530-676 with dual-stack members)

if [[ "${CI_KIND:-}" == 0 ]]; then
  echo "==> kind e2e: skipped (CI_KIND=0)"
  exit 0
fi
if [[ $(id -u) != 0 ]] && ! docker info >/dev/null 2>&1; then
  echo "==> kind e2e: skipped (no Docker engine, and not root to start one)"
  exit 0
fi

# Warm: this machine built the node image before (Docker keeps it across
# clones; bin/kind keeps the saved copy) and so has the Go build cache.
if docker image inspect archipelago/kind-node:v1.37.2 >/dev/null 2>&1 || [[ -f "$root/bin/kind/node-image.tar.zst.stamp" ]]; then
  estimate=$((suite + warm_build))
  state=warm
else
  estimate=$((suite + cold_binaries + cold_images))
  state=cold
fi
left=$((budget - used))
echo "==> kind e2e: $state cache, estimated ${estimate}s; ${used}s of the ${budget}s budget used, ${left}s left"
if [[ "${CI_KIND:-}" != 1 && $estimate -gt $left ]]; then
  echo "==> kind e2e: skipped (does not fit; run 'make e2e-kind' by hand, or CI_KIND=1)"
  exit 0
fi
if [[ -n "${CI_KIND_DRY_RUN:-}" ]]; then
  echo "==> kind e2e: would run (CI_KIND_DRY_RUN set)"
  exit 0
fi
cd "$root"
exec make e2e-kind
