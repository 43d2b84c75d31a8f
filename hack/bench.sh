#!/usr/bin/env bash
# Runs archipelago's benchmarks and prints one table. Speed is measured here,
# never asserted in tests: these machines are shared and noisy, so compare
# ratios within one run. Raw `go test -bench` output is kept in bin/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
export KUBEBUILDER_ASSETS="${KUBEBUILDER_ASSETS:-$PWD/bin/k8s}"
out=bin/bench
mkdir -p "$out"

bench() { # file package pattern benchtime [tags]
  local file=$1 pkg=$2 pattern=$3 benchtime=$4 tags=${5:-}
  echo "==> go test -bench '$pattern' $pkg" >&2
  go test ${tags:+-tags "$tags"} -timeout 60m -run '^$' -bench "$pattern" -benchtime "$benchtime" -benchmem -count 1 "$pkg" | tee "$out/$file.txt" >&2
}

bench ipam ./internal/ipam/ . 1s
bench dataplane ./agent/dataplane/ . 20x
bench hub-api ./test/integration/hub/ 'BenchmarkAPIAllocate1000|BenchmarkHubWrites' 1x
bench hub-scale ./test/scale/ BenchmarkHubScale 1x
if [[ $(id -u) -eq 0 && -d test/e2e/lab ]]; then
  bench lab ./test/e2e/lab/ . 1x e2e
fi

# One row per benchmark: name, ns/op, and every custom metric it reported.
printf '\n%-52s %16s  %s\n' BENCHMARK "TIME/OP" "METRICS"
cat "$out"/*.txt | awk '
  /^Benchmark/ {
    name = $1; sub(/-[0-9]+$/, "", name)
    t = ""; m = ""
    for (i = 3; i < NF; i += 2) {
      v = $i; u = $(i + 1)
      if (u == "ns/op") {
        if (v >= 1e9) t = sprintf("%.2f s", v / 1e9)
        else if (v >= 1e6) t = sprintf("%.2f ms", v / 1e6)
        else if (v >= 1e3) t = sprintf("%.2f us", v / 1e3)
        else t = sprintf("%.0f ns", v)
      } else if (u != "B/op" && u != "allocs/op") {
        m = m sprintf("%s %s  ", v, u)
      }
    }
    printf "%-52s %16s  %s\n", name, t, m
  }'
cat <<'EOT'

Targets (docs/benchmarks.md, DESIGN.md §6): allocation <= 1 us at 10,000 members; rebuild of 10,000
allocations <= 2 s; agent no-change pass <= 10 ms at 1,000 peers and <= 100 ms at 10,000;
one peer changed <= 1 ms touching one peer.
EOT
